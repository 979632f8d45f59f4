"""SSD's photometric distortion: random brightness, contrast, saturation and hue, in the order
of the authors' Caffe code (:class:`SSDPhotometricDistortion`)."""

import functools
from typing import Optional, Tuple

import cv2
import numpy as np

from segtron.data.transforms import Augmentation, ColorTransform, NoOpTransform, Transform

__all__ = ["SSDPhotometricDistortion"]

_HSV_CONVERSIONS = {
    "BGR": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR),
    "RGB": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB),
}


# ---------------------------------------------------------------------------------------------
# photometric distortion
# ---------------------------------------------------------------------------------------------
def _distort_colors(
    img: np.ndarray,
    *,
    image_format: str,
    brightness_delta: Optional[float] = None,
    contrast_alpha: Optional[float] = None,
    contrast_first: bool = True,
    saturation_alpha: Optional[float] = None,
    hue_delta: Optional[float] = None,
    channel_order: Optional[Tuple[int, int, int]] = None,
) -> np.ndarray:
    """Apply the chosen SSD colour operations to an ``HxWx3`` image with values in 0..255.

    Operations given as None are skipped. Everything is computed in float32 and clipped to
    [0, 255] after each step (an 8-bit pipeline saturates there too, and HSV needs
    non-negative values); integer images are rounded back to their dtype once, at the end.
    """
    out = img.astype(np.float32)
    if brightness_delta is not None:
        out = np.clip(out + brightness_delta, 0.0, 255.0)
    if contrast_alpha is not None and contrast_first:
        out = np.clip(out * contrast_alpha, 0.0, 255.0)
    if saturation_alpha is not None or hue_delta is not None:
        to_hsv, from_hsv = _HSV_CONVERSIONS[image_format]
        # float32 HSV in OpenCV: hue in degrees [0, 360), saturation in [0, 1], value = max.
        hsv = cv2.cvtColor(np.ascontiguousarray(out), to_hsv)
        if saturation_alpha is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * saturation_alpha, 0.0, 1.0)
        if hue_delta is not None:
            hsv[..., 0] = np.mod(hsv[..., 0] + hue_delta, 360.0)
        out = np.clip(cv2.cvtColor(hsv, from_hsv), 0.0, 255.0)
    if contrast_alpha is not None and not contrast_first:
        out = np.clip(out * contrast_alpha, 0.0, 255.0)
    if channel_order is not None:
        out = out[..., list(channel_order)]
    if img.dtype.kind in "biu":
        out = np.rint(out)
    return out.astype(img.dtype)


class SSDPhotometricDistortion(Augmentation):
    """SSD's colour jitter, in the order of the authors' Caffe code (and mmdetection's).

    1. with probability ``brightness_prob``: add ``delta ~ U(-brightness_delta,
       brightness_delta)`` to every channel;
    2. a fair coin decides whether the contrast step comes here or last (step 5);
    3. with probability ``saturation_prob``: multiply the HSV saturation by
       ``U(*saturation_range)``;
    4. with probability ``hue_prob``: rotate the hue by ``U(-hue_delta, hue_delta)`` degrees;
    5. (contrast) with probability ``contrast_prob``: multiply every channel by
       ``U(*contrast_range)``;
    6. with probability ``channel_swap_prob``: permute the three channels at random.

    Contrast and brightness are the SSD ones: a plain product and sum (not segtron's
    ``RandomContrast``/``RandomBrightness``, which blend with the mean image / scale). The
    operations run in float32 with the values clipped to [0, 255] after each step; a uint8
    image comes back uint8 (rounded), a float image in its own dtype. The deltas assume pixel
    values in 0..255, which is what the dataset mapper reads.

    Args:
        brightness_delta: half-width of the additive brightness shift (pixel values).
        contrast_range: ``(low, high)`` of the contrast factor.
        saturation_range: ``(low, high)`` of the saturation factor.
        hue_delta: half-width of the hue shift, in degrees (OpenCV's float HSV, hue in
            [0, 360)).
        brightness_prob, contrast_prob, saturation_prob, hue_prob: probability of applying
            each step.
        channel_swap_prob: probability of the random channel permutation; 0 (off) as in the
            paper's configuration.
        image_format: channel order of the images, ``"BGR"`` or ``"RGB"`` (the mapper's
            ``INPUT.FORMAT``); it fixes the direction of the hue rotation.

    ``get_transform(image)`` takes an ``HxWx3`` array and returns a ``ColorTransform`` (boxes,
    polygons, masks and label maps unchanged), or a ``NoOpTransform`` when no step was drawn.
    """

    def __init__(
        self,
        brightness_delta: float = 32.0,
        contrast_range: Tuple[float, float] = (0.5, 1.5),
        saturation_range: Tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18.0,
        brightness_prob: float = 0.5,
        contrast_prob: float = 0.5,
        saturation_prob: float = 0.5,
        hue_prob: float = 0.5,
        channel_swap_prob: float = 0.0,
        image_format: str = "BGR",
    ):
        super().__init__()
        params = dict(locals())
        if image_format not in _HSV_CONVERSIONS:
            raise ValueError(
                "SSDPhotometricDistortion: image_format must be one of "
                f"{sorted(_HSV_CONVERSIONS)} (the saturation/hue step needs colour), got "
                f"{image_format!r}."
            )
        for name in ("brightness_prob", "contrast_prob", "saturation_prob", "hue_prob",
                     "channel_swap_prob"):
            if not 0.0 <= params[name] <= 1.0:
                raise ValueError(
                    f"SSDPhotometricDistortion: {name} must be in [0, 1], got {params[name]}."
                )
        for name in ("contrast_range", "saturation_range"):
            if len(params[name]) != 2 or not 0.0 <= params[name][0] <= params[name][1]:
                raise ValueError(
                    f"SSDPhotometricDistortion: {name} must be (low, high) with 0 <= low <= "
                    f"high, got {params[name]!r}."
                )
        self._init(params)

    def get_transform(self, image: np.ndarray) -> Transform:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                "SSDPhotometricDistortion needs an HxWx3 colour image, got an array of shape "
                f"{image.shape}."
            )
        params = {}
        if self._rand_range() < self.brightness_prob:
            params["brightness_delta"] = float(
                np.random.uniform(-self.brightness_delta, self.brightness_delta)
            )
        contrast_first = bool(np.random.randint(2))
        if self._rand_range() < self.contrast_prob:
            params["contrast_alpha"] = float(np.random.uniform(*self.contrast_range))
            params["contrast_first"] = contrast_first
        if self._rand_range() < self.saturation_prob:
            params["saturation_alpha"] = float(np.random.uniform(*self.saturation_range))
        if self._rand_range() < self.hue_prob:
            params["hue_delta"] = float(np.random.uniform(-self.hue_delta, self.hue_delta))
        if self._rand_range() < self.channel_swap_prob:
            params["channel_order"] = tuple(int(i) for i in np.random.permutation(3))
        if not params:
            return NoOpTransform()
        return ColorTransform(
            functools.partial(_distort_colors, image_format=self.image_format, **params)
        )
