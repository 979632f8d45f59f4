"""SSD's "zoom out" (:class:`SSDExpand`): the image on a larger canvas filled with the pixel
mean, so small objects become more frequent; :class:`MeanPadTransform` does the padding."""

from typing import Sequence, Union

import numpy as np

from segtron.data.transforms import Augmentation, NoOpTransform, PadTransform, Transform

__all__ = ["MeanPadTransform", "SSDExpand"]


class MeanPadTransform(PadTransform):
    """``PadTransform`` whose image fill may be one value per channel (e.g. the pixel mean).

    Same arguments as ``PadTransform`` (``x0, y0``: pixels added left/top, ``x1, y1``:
    right/bottom); ``pad_value`` is a number or a sequence with one value per channel of the
    image, rounded (and clipped to the dtype's range) for integer images. Segmentations are
    padded with ``seg_pad_value``, except boolean masks, which are padded with False (a mask
    cannot hold an "ignore" value). Coordinates shift by ``(x0, y0)``; the inverse is a crop.
    """

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        fill = np.asarray(self.pad_value, dtype=np.float64)
        channels = img.shape[2] if img.ndim == 3 else 1
        if fill.ndim > 1 or fill.size not in (1, channels):
            raise ValueError(
                f"MeanPadTransform: pad_value {self.pad_value!r} has {fill.size} values but the "
                f"image {img.shape} has {channels} channel(s)."
            )
        if img.ndim == 2:
            fill = fill.reshape(())
        if img.dtype.kind in "biu":
            info = np.iinfo(img.dtype) if img.dtype.kind != "b" else None
            fill = np.rint(fill) if info is None else np.clip(np.rint(fill), info.min, info.max)
        h, w = img.shape[:2]
        out_shape = (self.y0 + h + self.y1, self.x0 + w + self.x1) + img.shape[2:]
        out = np.empty(out_shape, dtype=img.dtype)
        out[...] = fill.astype(img.dtype)
        out[self.y0 : self.y0 + h, self.x0 : self.x0 + w] = img
        return out

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if segmentation.dtype == bool:
            padding = [(self.y0, self.y1), (self.x0, self.x1)] + [(0, 0)] * (
                segmentation.ndim - 2
            )
            return np.pad(segmentation, padding, mode="constant", constant_values=False)
        return super().apply_segmentation(segmentation)


class SSDExpand(Augmentation):
    """SSD's "zoom out": with probability ``prob``, put the image on a larger mean-filled canvas.

    The canvas is ``(int(h * r), int(w * r))`` for ``r ~ U(1, max_ratio)`` (the paper's
    "canvas of 16x of the original image size" is ``max_ratio = 4`` per side), and the image's
    top-left corner is drawn uniformly among the integer positions that keep it inside.

    Args:
        pixel_mean: the canvas colour, one value per channel in the images' channel order
            (``cfg.MODEL.PIXEL_MEAN``), or a single number.
        max_ratio: largest canvas/image side ratio (>= 1).
        prob: probability of expanding.
        seg_pad_value: fill of the semantic label map outside the image (the ignore label).
            Boolean instance masks are padded with False; polygons and boxes just shift.
            (Integer 0/1 instance masks, e.g. decoded RLE, also go through the label-map path
            and get ``seg_pad_value``: pass ``seg_pad_value=0`` for such datasets.)

    ``get_transform(image)`` returns a :class:`MeanPadTransform` (boxes, polygons and
    keypoints shifted by the offset), or a ``NoOpTransform`` when not expanding.
    """

    def __init__(
        self,
        pixel_mean: Union[float, Sequence[float]],
        max_ratio: float = 4.0,
        prob: float = 0.5,
        seg_pad_value: int = 255,
    ):
        super().__init__()
        if max_ratio < 1.0:
            raise ValueError(f"SSDExpand: max_ratio must be >= 1, got {max_ratio}.")
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"SSDExpand: prob must be in [0, 1], got {prob}.")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        if self._rand_range() >= self.prob:
            return NoOpTransform()
        h, w = image.shape[:2]
        ratio = np.random.uniform(1.0, self.max_ratio)
        canvas_h, canvas_w = int(h * ratio), int(w * ratio)
        left = int(np.random.randint(0, canvas_w - w + 1))
        top = int(np.random.randint(0, canvas_h - h + 1))
        return MeanPadTransform(
            left, top, canvas_w - w - left, canvas_h - h - top, orig_w=w, orig_h=h,
            pad_value=self.pixel_mean, seg_pad_value=self.seg_pad_value,
        )
