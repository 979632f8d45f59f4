"""Deterministic transforms (Detectron2's ``detectron2.data.transforms.transform``).

A :class:`Transform` is a fixed geometric or photometric operation: once built (all random
choices already made by an :class:`~segtron.data.transforms.Augmentation`), it can be applied
to the image and to everything annotated on it, keeping them consistent:

- images: numpy ``HxW``, ``HxWxC`` arrays, ``uint8`` (0..255) or floating point;
- coordinates: float ``(N, 2)`` arrays of ``(x, y)`` in absolute pixels, where the image
  ``(H, W)`` spans ``[0, W] x [0, H]`` (a coordinate, not a pixel index);
- boxes: float ``(N, 4)`` ``XYXY`` arrays in the same coordinates;
- polygons: lists of float ``(K, 2)`` arrays;
- segmentations: ``HxW`` integer or bool label maps (resampled with nearest neighbour).

The base classes (``Transform``, ``TransformList``, ``NoOpTransform``, ``HFlipTransform``,
``VFlipTransform``, ``CropTransform``, ``PadTransform``, ``BlendTransform``, ...) come from
``fvcore.transforms.transform`` exactly as in Detectron2; this module adds Detectron2's own.
"""

from typing import Callable, List, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from fvcore.transforms.transform import (
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    Transform,
    TransformList,
)
from PIL import Image

__all__ = [
    "ExtentTransform",
    "ResizeTransform",
    "RotationTransform",
    "ColorTransform",
    "PILColorTransform",
]

# F.interpolate modes equivalent to the PIL filters Detectron2 accepts for float images.
_TORCH_MODE_FOR_PIL_FILTER = {
    Image.NEAREST: "nearest",
    Image.BILINEAR: "bilinear",
    Image.BICUBIC: "bicubic",
}


# ---------------------------------------------------------------------------------------------
# image helpers
# ---------------------------------------------------------------------------------------------
def _as_channels(img: np.ndarray) -> Tuple[np.ndarray, Tuple[int, ...]]:
    """View ``img`` (HxW, HxWxC or HxWxAxB) as HxWxK and return it with the trailing shape."""
    trailing = tuple(img.shape[2:])
    return img.reshape(img.shape[0], img.shape[1], -1), trailing


def _pil_apply_uint8(img: np.ndarray, op: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Run a PIL image operation on a uint8 array of any channel layout.

    Gray (HxW) and 3/4-channel images go through PIL in one piece (``L``, ``RGB``, ``RGBA``);
    any other layout (HxWx1, HxWx2, HxWx5, HxWxAxB) is processed one channel at a time, so the
    result keeps the input's number of dimensions.
    """
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] in (3, 4)):
        return np.asarray(op(Image.fromarray(np.ascontiguousarray(img))))
    flat, trailing = _as_channels(img)
    planes = [np.asarray(op(Image.fromarray(np.ascontiguousarray(flat[:, :, k]))))
              for k in range(flat.shape[2])]
    out = np.stack(planes, axis=2)
    return out.reshape(out.shape[0], out.shape[1], *trailing)


def _pil_index_map(h: int, w: int, op: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Where a nearest-neighbour PIL geometric ``op`` reads each output pixel from.

    Applies ``op`` to an int32 ``I``-mode image holding ``1 + flat pixel index``; the result
    holds, per output pixel, the source flat index + 1, or 0 where ``op`` filled (outside).
    This reproduces PIL's sampling exactly for label maps of any dtype.
    """
    index = np.arange(1, h * w + 1, dtype=np.int32).reshape(h, w)
    return np.asarray(op(Image.fromarray(index))).astype(np.int64)


def _gather_nearest(img: np.ndarray, index_map: np.ndarray, fill=0) -> np.ndarray:
    """Build the output of a nearest-neighbour op from ``_pil_index_map`` for any dtype."""
    flat, trailing = _as_channels(img)
    flat = flat.reshape(-1, flat.shape[2])
    out = flat[np.maximum(index_map - 1, 0)]
    out[index_map == 0] = fill
    return out.reshape(index_map.shape[0], index_map.shape[1], *trailing)


def _torch_resize(img: np.ndarray, new_h: int, new_w: int, interp) -> np.ndarray:
    """Resize a floating-point HxW[xC...] array with ``F.interpolate`` (Detectron2's float path).

    ``interp`` is a PIL filter among NEAREST, BILINEAR, BICUBIC; bilinear/bicubic use
    ``align_corners=False``.
    """
    if interp not in _TORCH_MODE_FOR_PIL_FILTER:
        raise ValueError(
            f"ResizeTransform: interpolation {interp!r} is not supported for floating-point "
            f"images; use one of PIL's NEAREST ({Image.NEAREST}), BILINEAR ({Image.BILINEAR}) "
            f"or BICUBIC ({Image.BICUBIC})."
        )
    mode = _TORCH_MODE_FOR_PIL_FILTER[interp]
    flat, trailing = _as_channels(np.ascontiguousarray(img))
    # HxWxK -> 1xKxHxW
    tensor = torch.from_numpy(flat).permute(2, 0, 1).unsqueeze(0)
    align = None if mode == "nearest" else False
    out = F.interpolate(tensor, size=(new_h, new_w), mode=mode, align_corners=align)
    out = out[0].permute(1, 2, 0).numpy()
    if img.ndim == 2:
        return out[:, :, 0]
    return out.reshape(new_h, new_w, *trailing)


def _cv2_warp_affine(img: np.ndarray, matrix: np.ndarray, size: Tuple[int, int], flags: int):
    """``cv2.warpAffine`` that also accepts dtypes OpenCV lacks (bool, int32, int64, ...).

    Unsupported dtypes are warped as float64 (exact for integers below 2**53) and converted
    back, rounding when the interpolation is not nearest. A trailing channel of size 1, which
    OpenCV drops, is restored.
    """
    native = img.dtype in (np.uint8, np.uint16, np.int16, np.float32, np.float64)
    src = img if native else img.astype(np.float64)
    out = cv2.warpAffine(np.ascontiguousarray(src), matrix, size, flags=flags)
    if img.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    if not native:
        if flags != cv2.INTER_NEAREST and img.dtype.kind in "biu":
            out = np.rint(out)
        out = out.astype(img.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------
class ExtentTransform(Transform):
    """Take the sub-rectangle ``src_rect`` of the image and scale it to ``output_size``.

    The rectangle may extend past the image; those output pixels get ``fill``. Mirrors PIL's
    ``Image.transform(..., Image.Transform.EXTENT)``.

    Args:
        src_rect: ``(x0, y0, x1, y1)`` in input coordinates (floats allowed).
        output_size: ``(h, w)`` of the output image.
        interp: PIL resampling filter for images (default BILINEAR); segmentations always use
            NEAREST.
        fill: value for output pixels that fall outside the input image.
    """

    def __init__(self, src_rect, output_size, interp=Image.BILINEAR, fill=0):
        super().__init__()
        self._set_attributes(locals())

    def _pil_op(self, resample):
        h, w = self.output_size
        return lambda pil: pil.transform(
            size=(w, h), method=Image.Transform.EXTENT, data=tuple(self.src_rect),
            resample=resample, fill=self.fill,
        )

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """Extract and scale; uint8 through PIL directly, other dtypes channel-wise.

        Returns an array of shape ``output_size + img.shape[2:]`` and the input dtype.
        """
        # (Detectron2 tests `if interp`, so NEAREST == 0 silently fell back to self.interp and
        # label maps were blended; segtron honours NEAREST.)
        resample = interp if interp is not None else self.interp
        if img.dtype == np.uint8:
            return _pil_apply_uint8(img, self._pil_op(resample))
        if resample == Image.NEAREST:
            index_map = _pil_index_map(img.shape[0], img.shape[1], self._pil_op(Image.NEAREST))
            return _gather_nearest(img, index_map, fill=self.fill)
        # Float (or integer with a smooth filter): per channel in PIL's 32-bit float mode.
        flat, trailing = _as_channels(img)
        op = self._pil_op(resample)
        planes = [np.asarray(op(Image.fromarray(flat[:, :, k].astype(np.float32))))
                  for k in range(flat.shape[2])]
        out = np.stack(planes, axis=2)
        if img.dtype.kind in "biu":
            out = np.rint(out)
        return out.astype(img.dtype).reshape(out.shape[0], out.shape[1], *trailing)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` input coordinates to output coordinates (float32 copy)."""
        h, w = self.output_size
        x0, y0, x1, y1 = self.src_rect
        out = np.asarray(coords).astype(np.float32)
        # Centre of the source rect goes to the centre of the output, scaled per axis.
        out[:, 0] = (out[:, 0] - 0.5 * (x0 + x1)) * (w / (x1 - x0)) + 0.5 * w
        out[:, 1] = (out[:, 1] - 0.5 * (y0 + y1)) * (h / (y1 - y0)) + 0.5 * h
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Nearest-neighbour version of :meth:`apply_image` for label maps."""
        return self.apply_image(segmentation, interp=Image.NEAREST)


class ResizeTransform(Transform):
    """Resize an ``(h, w)`` image to ``(new_h, new_w)``.

    uint8 images are resized by PIL with ``interp`` (default BILINEAR); floating-point images by
    ``torch.nn.functional.interpolate`` (bilinear/bicubic with ``align_corners=False``), as
    Detectron2 does. Integer and bool label maps use PIL's NEAREST sampling whatever their
    dtype. Coordinates are scaled by ``new_w / w`` and ``new_h / h``.

    Args:
        h, w: input size.
        new_h, new_w: output size.
        interp: PIL resampling filter (``Image.NEAREST``, ``Image.BILINEAR``, ...).
    """

    def __init__(self, h, w, new_h, new_w, interp=None):
        super().__init__()
        if interp is None:
            interp = Image.BILINEAR
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """Resize ``img`` (HxW, HxWxC or HxWxAxB with ``img.shape[:2] == (h, w)``).

        Returns an array of shape ``(new_h, new_w) + img.shape[2:]`` and the input dtype.
        """
        if tuple(img.shape[:2]) != (self.h, self.w):
            raise ValueError(
                f"ResizeTransform expects an image of size (h, w) = ({self.h}, {self.w}), "
                f"got an array of shape {img.shape}."
            )
        if img.ndim > 4:
            raise ValueError(f"ResizeTransform: at most 4 dimensions, got shape {img.shape}.")
        method = interp if interp is not None else self.interp
        size = (int(self.new_w), int(self.new_h))
        if img.dtype == np.uint8:
            return _pil_apply_uint8(img, lambda pil: pil.resize(size, method))
        if img.dtype.kind == "f":
            return _torch_resize(img, int(self.new_h), int(self.new_w), method)
        # bool / other integer label maps
        if method == Image.NEAREST:
            index_map = _pil_index_map(self.h, self.w, lambda pil: pil.resize(size, method))
            return _gather_nearest(img, index_map)
        out = _torch_resize(img.astype(np.float64), int(self.new_h), int(self.new_w), method)
        return np.rint(out).astype(img.dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Scale ``(N, 2)`` coordinates in place: ``x *= new_w / w``, ``y *= new_h / h``."""
        coords[:, 0] = coords[:, 0] * (self.new_w * 1.0 / self.w)
        coords[:, 1] = coords[:, 1] * (self.new_h * 1.0 / self.h)
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Nearest-neighbour resize of a label map (any integer or bool dtype)."""
        return self.apply_image(segmentation, interp=Image.NEAREST)

    def inverse(self) -> "ResizeTransform":
        """The resize back from ``(new_h, new_w)`` to ``(h, w)``."""
        return ResizeTransform(self.new_h, self.new_w, self.h, self.w, self.interp)


class RotationTransform(Transform):
    """Rotate an ``(h, w)`` image by ``angle`` degrees counter-clockwise (OpenCV convention).

    Args:
        h, w: input size.
        angle: rotation in degrees, counter-clockwise.
        expand: if True the output is enlarged to ``(bound_h, bound_w)`` (rounded) so that the
            whole rotated image fits, centred; if False it keeps ``(h, w)`` and corners are lost.
        center: ``(x, y)`` rotation centre in absolute coordinates; default the image centre
            ``(w / 2, h / 2)``. With ``expand`` it has no visible effect (it only shifts).
        interp: OpenCV interpolation flag for images, default ``cv2.INTER_LINEAR``;
            segmentations use ``cv2.INTER_NEAREST``.

    Attributes ``bound_w``/``bound_h`` give the output size; ``rm_coords`` is the 2x3 matrix
    applied to coordinates and ``rm_image`` the one given to ``cv2.warpAffine`` (shifted by
    half a pixel because OpenCV samples at pixel indices, not pixel centres).
    """

    def __init__(self, h, w, angle, expand=True, center=None, interp=None):
        super().__init__()
        image_center = np.array((w / 2, h / 2))
        if center is None:
            center = image_center
        if interp is None:
            interp = cv2.INTER_LINEAR
        rad = np.deg2rad(angle)
        cos_a, sin_a = abs(np.cos(rad)), abs(np.sin(rad))
        if expand:
            bound_w, bound_h = (int(v) for v in np.rint(
                [h * sin_a + w * cos_a, h * cos_a + w * sin_a]))
        else:
            bound_w, bound_h = w, h
        self.h, self.w, self.angle, self.expand = h, w, angle, expand
        self.center, self.interp = center, interp
        self.image_center = image_center
        self.bound_w, self.bound_h = bound_w, bound_h
        self.rm_coords = self.create_rotation_matrix()
        self.rm_image = self.create_rotation_matrix(offset=-0.5)

    def create_rotation_matrix(self, offset: float = 0) -> np.ndarray:
        """The 2x3 affine matrix of this rotation, with both centres shifted by ``offset``.

        With ``expand``, the translation is chosen so the input image centre lands on the centre
        of the ``(bound_h, bound_w)`` output.
        """
        center = (float(self.center[0]) + offset, float(self.center[1]) + offset)
        matrix = cv2.getRotationMatrix2D(center, self.angle, 1)
        if self.expand:
            moved = cv2.transform(self.image_center[None, None, :] + offset, matrix)[0, 0, :]
            target = np.array([self.bound_w / 2, self.bound_h / 2]) + offset
            matrix[:, 2] += target - moved
        return matrix

    def apply_image(self, img: np.ndarray, interp=None) -> np.ndarray:
        """Warp ``img`` (HxW or HxWxC) to ``(bound_h, bound_w)``; empty areas become 0."""
        if len(img) == 0 or self.angle % 360 == 0:
            return img
        if tuple(img.shape[:2]) != (self.h, self.w):
            raise ValueError(
                f"RotationTransform expects an image of size (h, w) = ({self.h}, {self.w}), "
                f"got an array of shape {img.shape}."
            )
        flags = interp if interp is not None else self.interp
        return _cv2_warp_affine(img, self.rm_image, (self.bound_w, self.bound_h), flags)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        """Rotate ``(N, 2)`` coordinates; returns a new float64 array."""
        coords = np.asarray(coords, dtype=float)
        if len(coords) == 0 or self.angle % 360 == 0:
            return coords
        return cv2.transform(coords[:, np.newaxis, :], self.rm_coords)[:, 0, :]

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        """Nearest-neighbour rotation of a label map."""
        return self.apply_image(segmentation, interp=cv2.INTER_NEAREST)

    def inverse(self) -> TransformList:
        """Rotate back by ``-angle`` (expanding again) and crop the original ``(h, w)`` centre.

        Only defined for ``expand=True``: without it the corners are lost.
        """
        if not self.expand:
            raise NotImplementedError(
                "RotationTransform.inverse() needs expand=True; with expand=False part of the "
                "image is cut off and cannot be recovered."
            )
        back = RotationTransform(self.bound_h, self.bound_w, -self.angle, True, None, self.interp)
        crop = CropTransform(
            (back.bound_w - self.w) // 2, (back.bound_h - self.h) // 2, self.w, self.h
        )
        return TransformList([back, crop])


class ColorTransform(Transform):
    """A photometric transform given by a function ``op(ndarray) -> ndarray`` on the image.

    Coordinates, boxes, polygons and segmentations are left unchanged; the inverse is a no-op.
    """

    def __init__(self, op):
        if not callable(op):
            raise ValueError(f"ColorTransform: op must be callable, got {type(op).__name__}.")
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img):
        """Return ``op(img)``."""
        return self.op(img)

    def apply_coords(self, coords):
        """Coordinates are unchanged."""
        return coords

    def apply_segmentation(self, segmentation):
        """Segmentations are unchanged."""
        return segmentation

    def inverse(self) -> Transform:
        """Photometric: geometrically a no-op."""
        return NoOpTransform()


class PILColorTransform(ColorTransform):
    """Like :class:`ColorTransform`, with ``op(PIL.Image) -> PIL.Image``.

    The uint8 array is wrapped in a PIL image for ``op`` and converted back to an array.
    """

    def __init__(self, op):
        if not callable(op):
            raise ValueError(f"PILColorTransform: op must be callable, got {type(op).__name__}.")
        super().__init__(op)

    def apply_image(self, img):
        """Return ``np.asarray(op(Image.fromarray(img)))``."""
        return np.asarray(super().apply_image(Image.fromarray(img)))


# ---------------------------------------------------------------------------------------------
# extra data types
# ---------------------------------------------------------------------------------------------
def _hflip_rotated_box(transform: HFlipTransform, rotated_boxes: np.ndarray) -> np.ndarray:
    """HFlip of ``(N, 5)`` rotated boxes ``(cx, cy, w, h, angle_degrees)``, in place."""
    rotated_boxes[:, 0] = transform.width - rotated_boxes[:, 0]
    rotated_boxes[:, 4] = -rotated_boxes[:, 4]
    return rotated_boxes


def _resize_rotated_box(transform: ResizeTransform, rotated_boxes: np.ndarray) -> np.ndarray:
    """Resize of ``(N, 5)`` rotated boxes ``(cx, cy, w, h, angle_degrees)``, in place.

    With per-axis factors ``sx, sy`` the centre scales exactly; width, height and angle are the
    usual approximation (a scaled rotated rectangle is a parallelogram): the width vector
    ``(cos t, sin t)`` becomes ``(sx cos t, sy sin t)`` and the height vector likewise.
    """
    sx = transform.new_w * 1.0 / transform.w
    sy = transform.new_h * 1.0 / transform.h
    rotated_boxes[:, 0] *= sx
    rotated_boxes[:, 1] *= sy
    theta = np.deg2rad(rotated_boxes[:, 4])
    c, s = np.cos(theta), np.sin(theta)
    rotated_boxes[:, 2] *= np.hypot(sx * c, sy * s)
    rotated_boxes[:, 3] *= np.hypot(sx * s, sy * c)
    rotated_boxes[:, 4] = np.rad2deg(np.arctan2(sx * s, sy * c))
    return rotated_boxes


def _noop_rotated_box(transform: Transform, rotated_boxes: np.ndarray) -> np.ndarray:
    return rotated_boxes


def _clip_polygon_to_rect(poly: np.ndarray, x0, y0, x1, y1) -> np.ndarray:
    """Clip a (K, 2) polygon to the axis-aligned rectangle (Sutherland-Hodgman).

    Returns the clipped ring (possibly empty). A concave polygon split by the rectangle comes
    back as one ring whose pieces are joined by zero-area edges along the rectangle border; it
    covers exactly the same area.
    """
    pts = [tuple(p) for p in np.asarray(poly, dtype=np.float64)]
    # Each edge: (axis, bound, keep-if-greater)
    for axis, bound, keep_greater in ((0, x0, True), (0, x1, False), (1, y0, True),
                                      (1, y1, False)):
        if not pts:
            break

        def inside(p):
            return p[axis] >= bound if keep_greater else p[axis] <= bound

        def cross(p, q):
            t = (bound - p[axis]) / (q[axis] - p[axis])
            r = [p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])]
            r[axis] = bound
            return tuple(r)

        out: List[tuple] = []
        prev = pts[-1]
        for cur in pts:
            if inside(cur):
                if not inside(prev):
                    out.append(cross(prev, cur))
                out.append(cur)
            elif inside(prev):
                out.append(cross(prev, cur))
            prev = cur
        pts = out
    # drop repeated consecutive vertices
    ring = [p for i, p in enumerate(pts) if p != pts[i - 1]] if len(pts) > 1 else pts
    return np.asarray(ring, dtype=np.float64).reshape(-1, 2)


def _polygon_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _crop_polygons_without_shapely(transform: CropTransform, polygons: list) -> list:
    """Crop polygons to the crop window and shift them into the crop's coordinates.

    Polygons entirely outside the window (or reduced to a line or point) are dropped, as
    fvcore's shapely-based version does.
    """
    x0, y0 = transform.x0, transform.y0
    x1, y1 = x0 + transform.w, y0 + transform.h
    result = []
    for poly in polygons:
        ring = _clip_polygon_to_rect(poly, x0, y0, x1, y1)
        if len(ring) >= 3 and _polygon_area(ring) > 0:
            result.append(transform.apply_coords(ring))
    return result


def _shapely_available() -> bool:
    try:
        import shapely.geometry  # noqa: F401
    except ImportError:
        return False
    return True


HFlipTransform.register_type("rotated_box", _hflip_rotated_box)
ResizeTransform.register_type("rotated_box", _resize_rotated_box)
NoOpTransform.register_type("rotated_box", _noop_rotated_box)
if not _shapely_available():
    # fvcore crops polygons with shapely, which segtron does not depend on.
    CropTransform.register_type("polygons", _crop_polygons_without_shapely)
