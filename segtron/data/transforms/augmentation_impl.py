"""The built-in augmentations of Detectron2 (``detectron2.data.transforms.augmentation_impl``).

All randomness comes from ``np.random`` (the global numpy generator), drawn in the same order
as Detectron2, so a seeded run makes the same choices. Images are ``HxW[xC]`` numpy arrays;
sizes are ``(h, w)``.
"""

import sys
from typing import Sequence, Tuple

import numpy as np
from fvcore.transforms.transform import (
    BlendTransform,
    CropTransform,
    HFlipTransform,
    NoOpTransform,
    PadTransform,
    Transform,
    TransformList,
    VFlipTransform,
)
from PIL import Image

from .augmentation import Augmentation, _transform_to_aug
from .transform import ExtentTransform, ResizeTransform, RotationTransform

__all__ = [
    "FixedSizeCrop",
    "RandomApply",
    "RandomBrightness",
    "RandomContrast",
    "RandomCrop",
    "RandomExtent",
    "RandomFlip",
    "RandomSaturation",
    "RandomLighting",
    "RandomRotation",
    "Resize",
    "ResizeScale",
    "ResizeShortestEdge",
    "RandomCrop_CategoryAreaConstraint",
    "RandomResize",
    "MinIoURandomCrop",
]

_SAMPLE_STYLES = ("range", "choice")
_CROP_TYPES = ("relative_range", "relative", "absolute", "absolute_range")


def _check_sample_style(owner: str, sample_style: str) -> None:
    if sample_style not in _SAMPLE_STYLES:
        raise ValueError(
            f"{owner}: sample_style must be one of {list(_SAMPLE_STYLES)}, got {sample_style!r}."
        )


class RandomApply(Augmentation):
    """Apply an augmentation (or a fixed transform) with probability ``prob``, else do nothing.

    Args:
        tfm_or_aug: the ``Augmentation`` or ``Transform`` to apply.
        prob: probability in [0, 1] of applying it.
    """

    def __init__(self, tfm_or_aug, prob=0.5):
        super().__init__()
        self.aug = _transform_to_aug(tfm_or_aug)
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"RandomApply: prob must be between 0.0 and 1.0, got {prob}.")
        self.prob = prob

    def get_transform(self, *args) -> Transform:
        if self._rand_range() < self.prob:
            return self.aug.get_transform(*args)
        return NoOpTransform()

    def __call__(self, aug_input) -> Transform:
        if self._rand_range() < self.prob:
            return self.aug(aug_input)
        return NoOpTransform()


class RandomFlip(Augmentation):
    """Flip horizontally (``x -> W - x``) or vertically (``y -> H - y``) with probability ``prob``.

    Args:
        prob: probability of flipping.
        horizontal, vertical: which flip; exactly one must be True.
    """

    def __init__(self, prob=0.5, *, horizontal=True, vertical=False):
        super().__init__()
        if horizontal and vertical:
            raise ValueError(
                "RandomFlip: horizontal and vertical cannot both be True; use two RandomFlip."
            )
        if not horizontal and not vertical:
            raise ValueError("RandomFlip: one of horizontal or vertical must be True.")
        self._init(locals())

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        if self._rand_range() < self.prob:
            return HFlipTransform(w) if self.horizontal else VFlipTransform(h)
        return NoOpTransform()


class Resize(Augmentation):
    """Resize to a fixed ``shape`` = ``(h, w)`` (an int means square).

    Args:
        shape: ``(h, w)`` or an int.
        interp: PIL resampling filter.
    """

    def __init__(self, shape, interp=Image.BILINEAR):
        if isinstance(shape, int):
            shape = (shape, shape)
        shape = tuple(shape)
        self._init(locals())

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        return ResizeTransform(h, w, self.shape[0], self.shape[1], self.interp)


class ResizeShortestEdge(Augmentation):
    """Resize keeping the aspect ratio: shorter edge to a sampled length, longer <= ``max_size``.

    Args:
        short_edge_length: with ``sample_style="range"``, ``(min, max)``: the length is drawn
            uniformly among the integers in ``[min, max]``; with ``"choice"``, a list of lengths
            to pick from. An int means that single length. A sampled length of 0 is a no-op.
        max_size: upper bound on the longer edge after resizing.
        sample_style: ``"range"`` or ``"choice"``.
        interp: PIL resampling filter.

    The output size is :meth:`get_output_shape`.
    """

    def __init__(
        self, short_edge_length, max_size=sys.maxsize, sample_style="range", interp=Image.BILINEAR
    ):
        super().__init__()
        _check_sample_style("ResizeShortestEdge", sample_style)
        self.is_range = sample_style == "range"
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        if self.is_range and len(short_edge_length) != 2:
            raise ValueError(
                "ResizeShortestEdge: with sample_style='range', short_edge_length must be two "
                f"values (min, max); got {short_edge_length!r}."
            )
        self._init(locals())

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        newh, neww = ResizeShortestEdge.get_output_shape(h, w, size, self.max_size)
        return ResizeTransform(h, w, newh, neww, self.interp)

    @staticmethod
    def get_output_shape(
        oldh: int, oldw: int, short_edge_length: int, max_size: int
    ) -> Tuple[int, int]:
        """Output ``(h, w)`` for an ``(oldh, oldw)`` input.

        The shorter side becomes ``short_edge_length`` and the longer one is scaled by the same
        factor; if the longer side then exceeds ``max_size``, both are scaled down so that it
        equals ``max_size``. Each side is finally rounded half up: ``int(x + 0.5)``.
        (Computed in this order, which matters at exact .5 ties.)
        """
        short = short_edge_length * 1.0
        scale = short / min(oldh, oldw)
        if oldh < oldw:
            newh, neww = short, scale * oldw
        else:
            newh, neww = scale * oldh, short
        longest = max(newh, neww)
        if longest > max_size:
            shrink = max_size * 1.0 / longest
            newh, neww = newh * shrink, neww * shrink
        return int(newh + 0.5), int(neww + 0.5)


class ResizeScale(Augmentation):
    """Resize to fit a randomly scaled target box, keeping the aspect ratio.

    A scale ``s`` is drawn uniformly from ``[min_scale, max_scale)``; the image is resized by
    ``min(s * target_height / h, s * target_width / w)``, each side rounded with ``np.round``.
    (The resize half of the "large scale jitter" / TF ``resize_and_crop`` recipe; pair it with
    :class:`FixedSizeCrop`.)
    """

    def __init__(
        self,
        min_scale: float,
        max_scale: float,
        target_height: int,
        target_width: int,
        interp: int = Image.BILINEAR,
    ):
        super().__init__()
        self._init(locals())

    def _get_resize(self, image: np.ndarray, scale: float) -> Transform:
        h, w = image.shape[:2]
        factor = np.minimum(self.target_height * scale / h, self.target_width * scale / w)
        new_h, new_w = np.round(np.multiply((h, w), factor)).astype(int)
        return ResizeTransform(h, w, int(new_h), int(new_w), self.interp)

    def get_transform(self, image: np.ndarray) -> Transform:
        return self._get_resize(image, np.random.uniform(self.min_scale, self.max_scale))


class RandomRotation(Augmentation):
    """Rotate by a random angle (degrees, counter-clockwise) around a possibly random centre.

    Args:
        angle: with ``sample_style="range"``, ``(min, max)`` degrees to draw uniformly from;
            with ``"choice"``, a list of angles. A number means that angle.
        expand: enlarge the output to hold the whole rotated image (else keep the size).
        center: None for the image centre. With ``"range"``, ``((min_x, min_y), (max_x,
            max_y))`` in relative coordinates (``(0, 0)`` top-left, ``(1, 1)`` bottom-right) to
            draw from; with ``"choice"``, a list of relative ``(x, y)`` centres. A single pair
            means that centre. Only visible when ``expand`` is False.
        sample_style: ``"range"`` or ``"choice"``.
        interp: OpenCV interpolation flag (default bilinear).

    Angles that are multiples of 360 give a no-op.
    """

    def __init__(self, angle, expand=True, center=None, sample_style="range", interp=None):
        super().__init__()
        _check_sample_style("RandomRotation", sample_style)
        self.is_range = sample_style == "range"
        if isinstance(angle, (float, int)):
            angle = (angle, angle)
        if center is not None and isinstance(center[0], (float, int)):
            center = (center, center)
        self._init(locals())

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        center = None
        if self.is_range:
            angle = np.random.uniform(self.angle[0], self.angle[1])
            if self.center is not None:
                center = (
                    np.random.uniform(self.center[0][0], self.center[1][0]),
                    np.random.uniform(self.center[0][1], self.center[1][1]),
                )
        else:
            angle = np.random.choice(self.angle)
            if self.center is not None:
                center = self.center[np.random.choice(len(self.center))]
        if center is not None:
            center = (w * center[0], h * center[1])
        if angle % 360 == 0:
            return NoOpTransform()
        return RotationTransform(h, w, angle, expand=self.expand, center=center, interp=self.interp)


class FixedSizeCrop(Augmentation):
    """Crop (randomly) to ``crop_size`` when larger, pad bottom/right to it when smaller.

    One uniform draw ``u`` places the crop at ``round(u * (H - crop_h), u * (W - crop_w))``
    (clamped at 0). With ``pad``, smaller images are padded at the bottom and right with
    ``pad_value`` (image) and ``seg_pad_value`` (segmentation).

    Args:
        crop_size: target ``(h, w)``.
        pad: pad images smaller than ``crop_size``.
        pad_value: image padding value.
        seg_pad_value: segmentation padding value (255 = ignore).
    """

    def __init__(
        self,
        crop_size: Tuple[int, int],
        pad: bool = True,
        pad_value: float = 128.0,
        seg_pad_value: int = 255,
    ):
        super().__init__()
        self._init(locals())

    def _get_crop(self, image: np.ndarray) -> Transform:
        in_h, in_w = image.shape[:2]
        out_h, out_w = self.crop_size
        max_offset = np.maximum(np.subtract((in_h, in_w), (out_h, out_w)), 0)
        off_y, off_x = np.round(max_offset * np.random.uniform(0.0, 1.0)).astype(int)
        return CropTransform(int(off_x), int(off_y), out_w, out_h, in_w, in_h)

    def _get_pad(self, image: np.ndarray) -> Transform:
        in_h, in_w = image.shape[:2]
        out_h, out_w = self.crop_size
        pad_h, pad_w = (int(v) for v in np.maximum(np.subtract((out_h, out_w), (in_h, in_w)), 0))
        kept_h, kept_w = min(in_h, out_h), min(in_w, out_w)
        return PadTransform(0, 0, pad_w, pad_h, kept_w, kept_h, self.pad_value, self.seg_pad_value)

    def get_transform(self, image: np.ndarray) -> TransformList:
        transforms = [self._get_crop(image)]
        if self.pad:
            transforms.append(self._get_pad(image))
        return TransformList(transforms)


class RandomCrop(Augmentation):
    """Crop a random window whose size depends on ``crop_type``; for an ``(H, W)`` image:

    - ``"relative"``: ``(int(H*ch + 0.5), int(W*cw + 0.5))`` for ``crop_size = (ch, cw)`` in
      ``(0, 1]``;
    - ``"relative_range"``: ``ch ~ U[crop_size[0], 1)``, ``cw ~ U[crop_size[1], 1)``, then as
      ``"relative"``;
    - ``"absolute"``: ``(min(crop_size[0], H), min(crop_size[1], W))`` pixels;
    - ``"absolute_range"``: with ``crop_size = (lo, hi)``, the height is drawn among the
      integers in ``[min(H, lo), min(H, hi)]`` and the width in ``[min(W, lo), min(W, hi)]``.

    The window's top-left corner is then drawn uniformly so that it lies inside the image.
    """

    def __init__(self, crop_type: str, crop_size):
        super().__init__()
        if crop_type not in _CROP_TYPES:
            raise ValueError(
                f"RandomCrop: crop_type must be one of {list(_CROP_TYPES)}, got {crop_type!r}."
            )
        if crop_type == "absolute_range" and crop_size[0] > crop_size[1]:
            raise ValueError(
                "RandomCrop: with crop_type='absolute_range', crop_size is (min, max) and needs "
                f"min <= max; got {tuple(crop_size)!r}."
            )
        self._init(locals())

    def get_transform(self, image) -> Transform:
        h, w = image.shape[:2]
        croph, cropw = self.get_crop_size((h, w))
        if croph > h or cropw > w:
            raise ValueError(
                f"{self}: computed crop size {(croph, cropw)} does not fit image {(h, w)}."
            )
        h0 = np.random.randint(h - croph + 1)
        w0 = np.random.randint(w - cropw + 1)
        return CropTransform(w0, h0, cropw, croph)

    def get_crop_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """The crop ``(h, w)`` in pixels for an image of size ``image_size = (h, w)``."""
        h, w = image_size
        if self.crop_type == "relative":
            ch, cw = self.crop_size
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "relative_range":
            low = np.asarray(self.crop_size, dtype=np.float32)
            ch, cw = low + np.random.rand(2) * (1 - low)
            return int(h * ch + 0.5), int(w * cw + 0.5)
        if self.crop_type == "absolute":
            return min(self.crop_size[0], h), min(self.crop_size[1], w)
        lo, hi = self.crop_size  # absolute_range
        ch = np.random.randint(min(h, lo), min(h, hi) + 1)
        cw = np.random.randint(min(w, lo), min(w, hi) + 1)
        return int(ch), int(cw)


class RandomCrop_CategoryAreaConstraint(Augmentation):
    """:class:`RandomCrop` that avoids windows dominated by one semantic category.

    Up to 10 windows are drawn; the first where at least two categories are present and the
    largest one covers less than ``single_category_max_area`` of the (non-ignored) pixels is
    used, else the 10th. Reads ``image`` and ``sem_seg`` (HxW label map).

    Args:
        crop_type, crop_size: as in :class:`RandomCrop`.
        single_category_max_area: largest allowed area fraction of one category; 1.0 disables
            the constraint (a plain :class:`RandomCrop`).
        ignored_category: label not counted (typically the ignore label), or None.
    """

    def __init__(
        self,
        crop_type: str,
        crop_size,
        single_category_max_area: float = 1.0,
        ignored_category: int = None,
    ):
        self.crop_aug = RandomCrop(crop_type, crop_size)
        self._init(locals())

    def get_transform(self, image, sem_seg) -> Transform:
        if self.single_category_max_area >= 1.0:
            return self.crop_aug.get_transform(image)
        h, w = sem_seg.shape
        for _ in range(10):
            crop_h, crop_w = self.crop_aug.get_crop_size((h, w))
            y0 = np.random.randint(h - crop_h + 1)
            x0 = np.random.randint(w - crop_w + 1)
            window = sem_seg[y0 : y0 + crop_h, x0 : x0 + crop_w]
            labels, counts = np.unique(window, return_counts=True)
            if self.ignored_category is not None:
                counts = counts[labels != self.ignored_category]
            if len(counts) > 1 and np.max(counts) < np.sum(counts) * self.single_category_max_area:
                break
        return CropTransform(x0, y0, crop_w, crop_h)


class RandomExtent(Augmentation):
    """Take a random, scaled and shifted sub-rectangle of the image (may extend outside it).

    The rectangle starts as the whole image centred on its centre, is scaled by
    ``U(scale_range)``, then shifted by ``shift_range[0] * W * (U[0,1) - 0.5)`` horizontally and
    ``shift_range[1] * H * (U[0,1) - 0.5)`` vertically. The output has the rectangle's size
    (truncated to ints); pixels outside the image are 0.

    Args:
        scale_range: ``(low, high)`` of the size factor.
        shift_range: ``(x, y)`` relative shift amplitudes; 0 keeps the crop centred.
    """

    def __init__(self, scale_range, shift_range):
        super().__init__()
        self._init(locals())

    def get_transform(self, image) -> Transform:
        img_h, img_w = image.shape[:2]
        rect = np.array([-0.5 * img_w, -0.5 * img_h, 0.5 * img_w, 0.5 * img_h])
        rect *= np.random.uniform(self.scale_range[0], self.scale_range[1])
        rect[0::2] += self.shift_range[0] * img_w * (np.random.rand() - 0.5)
        rect[1::2] += self.shift_range[1] * img_h * (np.random.rand() - 0.5)
        rect[0::2] += 0.5 * img_w
        rect[1::2] += 0.5 * img_h
        return ExtentTransform(
            src_rect=tuple(float(v) for v in rect),
            output_size=(int(rect[3] - rect[1]), int(rect[2] - rect[0])),
        )


class RandomContrast(Augmentation):
    """Blend with the image mean: ``w * img + (1 - w) * img.mean()``, ``w ~ U[min, max)``.

    ``w < 1`` lowers contrast, ``w > 1`` raises it; uint8 results are clipped to 0..255.
    """

    def __init__(self, intensity_min, intensity_max):
        super().__init__()
        self._init(locals())

    def get_transform(self, image) -> Transform:
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=image.mean(), src_weight=1 - w, dst_weight=w)


class RandomBrightness(Augmentation):
    """Scale intensities: ``w * img``, ``w ~ U[min, max)`` (blend with black).

    ``w < 1`` darkens, ``w > 1`` brightens; uint8 results are clipped to 0..255.
    """

    def __init__(self, intensity_min, intensity_max):
        super().__init__()
        self._init(locals())

    def get_transform(self, image) -> Transform:
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        return BlendTransform(src_image=0, src_weight=1 - w, dst_weight=w)


class RandomSaturation(Augmentation):
    """Blend with the grayscale image: ``w * img + (1 - w) * gray``, ``w ~ U[min, max)``.

    The image must be ``HxWx3`` in **RGB** order: gray = ``0.299 R + 0.587 G + 0.114 B``
    (Detectron2 uses these weights whatever ``INPUT.FORMAT`` is). ``w < 1`` desaturates.
    """

    def __init__(self, intensity_min, intensity_max):
        super().__init__()
        self._init(locals())

    def get_transform(self, image) -> Transform:
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"RandomSaturation needs an HxWx3 RGB image, got shape {image.shape}.")
        w = np.random.uniform(self.intensity_min, self.intensity_max)
        grayscale = image.dot([0.299, 0.587, 0.114])[:, :, np.newaxis]
        return BlendTransform(src_image=grayscale, src_weight=1 - w, dst_weight=w)


class RandomLighting(Augmentation):
    """AlexNet "lighting" noise along ImageNet's RGB PCA axes.

    Adds ``eigen_vecs @ (alpha * eigen_vals)`` to every pixel, ``alpha ~ N(0, scale)`` per
    component. The image must be ``HxWx3`` in RGB order (values 0..255 in Detectron2's use).

    Args:
        scale: standard deviation of the component weights.
    """

    def __init__(self, scale):
        super().__init__()
        self._init(locals())
        # Principal components of ImageNet RGB pixels (columns) and their eigenvalues.
        self.eigen_vecs = np.array(
            [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
        )
        self.eigen_vals = np.array([0.2175, 0.0188, 0.0045])

    def get_transform(self, image) -> Transform:
        if image.shape[-1] != 3:
            raise ValueError(f"RandomLighting needs an HxWx3 RGB image, got shape {image.shape}.")
        weights = np.random.normal(scale=self.scale, size=3)
        shift = self.eigen_vecs.dot(weights * self.eigen_vals)
        return BlendTransform(src_image=shift, src_weight=1.0, dst_weight=1.0)


class RandomResize(Augmentation):
    """Resize to a size picked uniformly from ``shape_list`` (a list of ``(h, w)``)."""

    def __init__(self, shape_list: Sequence[Tuple[int, int]], interp=Image.BILINEAR):
        self._init(locals())

    def get_transform(self, image) -> Transform:
        h, w = self.shape_list[np.random.randint(low=0, high=len(self.shape_list))]
        return ResizeTransform(image.shape[0], image.shape[1], h, w, self.interp)


class MinIoURandomCrop(Augmentation):
    """SSD-style crop: the window's IoU with every box is at least a sampled threshold.

    Reads ``image`` and ``boxes`` (``(N, 4)`` XYXY). A mode is drawn from
    ``(1, *min_ious, 0)``: 1 means no crop; otherwise up to ``crop_trials`` windows of side
    ``U[min_crop_size, 1)`` times the image side with aspect ratio ``h/w`` in ``[0.5, 2]`` are
    tried; a window is kept if its IoU with every box reaches the threshold and at least one
    box centre lies strictly inside it. Gives up (no-op) after ``mode_trials`` modes.

    The window offset is drawn as ``np.random.uniform(W - w_crop)`` (i.e. between
    ``W - w_crop`` and 1), as Detectron2 (after mmdetection) does.
    """

    def __init__(
        self,
        min_ious=(0.1, 0.3, 0.5, 0.7, 0.9),
        min_crop_size=0.3,
        mode_trials=1000,
        crop_trials=50,
    ):
        self.min_ious = min_ious
        self.sample_mode = (1, *min_ious, 0)
        self.min_crop_size = min_crop_size
        self.mode_trials = mode_trials
        self.crop_trials = crop_trials

    @staticmethod
    def _iou_with_window(window: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """IoU of one XYXY ``window`` with each of ``(N, 4)`` ``boxes``."""
        lt = np.maximum(window[:2], boxes[:, :2])
        rb = np.minimum(window[2:], boxes[:, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        area_w = np.prod(window[2:] - window[:2])
        area_b = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        union = area_w + area_b - inter
        return np.where(inter > 0, inter / np.where(union > 0, union, 1), 0.0)

    def get_transform(self, image, boxes) -> Transform:
        if boxes is None:
            return NoOpTransform()
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        h, w = image.shape[:2]
        for _ in range(self.mode_trials):
            mode = np.random.choice(self.sample_mode)
            self.mode = mode
            if mode == 1:
                return NoOpTransform()
            for _ in range(self.crop_trials):
                new_w = np.random.uniform(self.min_crop_size * w, w)
                new_h = np.random.uniform(self.min_crop_size * h, h)
                if new_h / new_w < 0.5 or new_h / new_w > 2:
                    continue
                left = np.random.uniform(w - new_w)
                top = np.random.uniform(h - new_h)
                window = np.array((int(left), int(top), int(left + new_w), int(top + new_h)))
                if window[2] == window[0] or window[3] == window[1]:
                    continue
                overlaps = self._iou_with_window(window.astype(np.float64), boxes)
                if len(overlaps) > 0 and overlaps.min() < mode:
                    continue
                if len(overlaps) > 0:
                    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
                    inside = (
                        (centers[:, 0] > window[0]) & (centers[:, 1] > window[1])
                        & (centers[:, 0] < window[2]) & (centers[:, 1] < window[3])
                    )
                    if not inside.any():
                        continue
                return CropTransform(int(left), int(top), int(new_w), int(new_h))
        return NoOpTransform()
