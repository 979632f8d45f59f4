"""Reading image files into arrays (``detection_utils.read_image`` and its helpers).

Everything here is re-exported by ``segtron.data.detection_utils`` under Detectron2's names;
this module only keeps image decoding (PIL, EXIF orientation, 16-bit and alpha handling,
colour formats) apart from the annotation helpers.
"""

from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

from segtron.utils.file_io import PathManager

__all__ = ["convert_PIL_to_numpy", "convert_image_to_rgb", "read_image"]


# ITU-R BT.601 conversion between RGB in [0, 1] and YUV (rows: Y, U, V and R, G, B).
_RGB_TO_YUV = np.array(
    [[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]]
)
_YUV_TO_RGB = np.array([[1.0, 0.0, 1.13983], [1.0, -0.39465, -0.58060], [1.0, 2.03211, 0.0]])

# EXIF tag 0x0112 (Orientation) -> the PIL transpose that brings the pixels upright.
_EXIF_ORIENTATION_TAG = 0x0112
_ORIENTATION_TO_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_SUPPORTED_FORMATS = (None, "BGR", "RGB", "L", "YUV-BT.601")

# PIL modes of single-channel images with more than 8 bits per pixel. A 16-bit grayscale PNG
# opens as one of the "I;16" modes (or as "I" in older Pillow versions).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_INT_MODES = _SIXTEEN_BIT_MODES + ("I",)


def _int_mode_to_8bit(image: Image.Image) -> Image.Image:
    """An "L" image from a 16-bit ("I;16*", or "I" holding values in 0..65535) image, keeping
    the top 8 bits of each value (``value >> 8``, so 65535 -> 255 and 256 -> 1). That is how
    Pillow itself reads 16-bit RGB PNGs, so 16-bit gray and colour files come out alike.

    Raises ValueError for "I" images with values outside 0..65535 (not 16-bit data)."""
    array = np.asarray(image)
    if image.mode == "I" and array.size and (array.min() < 0 or array.max() > 65535):
        raise ValueError(
            f"32-bit integer image (PIL mode 'I') with values {int(array.min())}.."
            f"{int(array.max())}, outside the 16-bit range 0..65535, has no 8-bit reading; "
            "convert it to an 8-bit image first"
        )
    return Image.fromarray((array.astype(np.uint32) >> 8).astype(np.uint8), mode="L")


def _convert_mode(image: Image.Image, pil_mode: str) -> Image.Image:
    """``image.convert(pil_mode)``, reading 16-bit data as 8 bits first (Pillow would clip
    every value above 255 to 255) and refusing modes that have no faithful 8-bit reading.

    Raises ValueError naming the mode (callers add the file name)."""
    if image.mode == pil_mode or pil_mode in _INT_MODES + ("F",):
        return image.convert(pil_mode)  # asked for a wide mode: Pillow's own conversion
    if image.mode in _INT_MODES:
        image = _int_mode_to_8bit(image)
    elif image.mode == "F":
        raise ValueError(
            "floating-point image (PIL mode 'F') has no defined 8-bit reading; convert it to an "
            "8-bit PNG or JPEG first"
        )
    try:
        return image.convert(pil_mode)
    except ValueError as e:
        raise ValueError(
            f"cannot convert an image of PIL mode '{image.mode}' to '{pil_mode}' ({e}); "
            "convert it to an 8-bit RGB or grayscale PNG or JPEG first"
        ) from e


def convert_PIL_to_numpy(image: Image.Image, format: Optional[str]) -> np.ndarray:
    """Convert a PIL image to a numpy array in the requested channel format.

    Args:
        image: a PIL image of any mode. 16-bit grayscale images (modes "I;16*", or "I" with
            values in 0..65535) are read as 8 bits by keeping the top byte (``value >> 8``)
            before conversion; alpha channels are dropped (RGBA -> RGB).
        format: "BGR", "RGB", "L", "YUV-BT.601", any other PIL mode, or None to keep the image's
            own mode (16-bit data then stays 16-bit).

    Returns:
        HxWxC array: uint8 for "BGR"/"RGB"/"L" (HxWx1 for "L"), float64 YUV for "YUV-BT.601"
        (Y in [0, 1]); with ``format=None`` whatever shape PIL gives for the image's mode.

    Raises:
        ValueError: naming the image's mode when it cannot be converted to ``format`` (e.g.
            a floating-point image).
    """
    if format is not None:
        pil_mode = "RGB" if format in ("BGR", "YUV-BT.601") else format
        image = _convert_mode(image, pil_mode)
    array = np.asarray(image)
    if format == "L":
        array = array[:, :, None]  # PIL drops the channel axis of single-channel images
    elif format == "BGR":
        array = array[:, :, ::-1]
    elif format == "YUV-BT.601":
        array = (array / 255.0) @ _RGB_TO_YUV.T
    return array


def convert_image_to_rgb(image: Union[np.ndarray, torch.Tensor], format: str) -> np.ndarray:
    """Convert an HxWxC image in ``format`` back to RGB for display.

    Args:
        image: HxWxC numpy array or tensor (as produced by :func:`read_image` with ``format``).
        format: "BGR", "RGB", "L", "YUV-BT.601" or another PIL mode.

    Returns:
        HxWx3 RGB array: uint8, except float for "YUV-BT.601" (0..255 scale).
    """
    if isinstance(image, torch.Tensor):
        image = image.cpu().numpy()
    if format == "BGR":
        return image[:, :, [2, 1, 0]]
    if format == "YUV-BT.601":
        return (image @ _YUV_TO_RGB.T) * 255.0
    if format == "L":
        gray = image[:, :, 0] if image.ndim == 3 else image
        return np.repeat(gray.astype(np.uint8)[:, :, None], 3, axis=2)
    if format == "RGB":
        return image.astype(np.uint8)
    return np.asarray(Image.fromarray(image.astype(np.uint8)).convert("RGB"))


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """Return ``image`` rotated/flipped upright according to its EXIF orientation tag, if any.

    Without this, a JPEG written by a phone held sideways would be read with its pixels in
    sensor order and its annotations (made on the upright image) would not line up.
    """
    try:
        exif = image.getexif()
    except Exception:  # broken EXIF blocks happen in the wild; keep the pixels as stored
        return image
    method = _ORIENTATION_TO_TRANSPOSE.get(exif.get(_EXIF_ORIENTATION_TAG)) if exif else None
    return image.transpose(method) if method is not None else image


def _open_image(file_name: str) -> Image.Image:
    """Open and decode ``file_name`` with PIL, upright per its EXIF orientation.

    Raises FileNotFoundError or ValueError (undecodable), both naming the file."""
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()  # decode now, while the file is open, so corrupt data fails here
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Image file not found: {file_name}. Check the dataset's 'file_name' entries and the "
            "image root it was registered with."
        ) from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(
            f"cannot decode image {file_name}: {e}. The file may be truncated or not an image; "
            "re-download or remove it from the dataset."
        ) from e
    return _apply_exif_orientation(image)


def read_image(file_name: str, format: Optional[str] = None) -> np.ndarray:
    """Read an image file into a numpy array, applying its EXIF orientation.

    Args:
        file_name: path of the image (local, or any URI ``PathManager`` handles).
        format: one of "BGR" (the default model input), "RGB", "L", "YUV-BT.601", another PIL
            mode, or None to keep the file's own mode. See :func:`convert_PIL_to_numpy`: 16-bit
            images are read as 8 bits (``value >> 8``) and alpha channels are dropped.

    Returns:
        HxWxC array (uint8 except for "YUV-BT.601").

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file exists but cannot be decoded as an image, or its mode cannot be
            converted to ``format`` (naming the file and the mode).
    """
    image = _open_image(file_name)
    try:
        return convert_PIL_to_numpy(image, format)
    except ValueError as e:
        raise ValueError(
            f"Cannot read image {file_name} as {format}: {e}. Re-save it, or remove it from the "
            "dataset."
        ) from e


def _peek_mode(file_name: str) -> Optional[str]:
    """The PIL mode in the file's header (no pixels decoded), or None if it cannot be read."""
    try:
        with PathManager.open(file_name, "rb") as f:
            return Image.open(f).mode
    except (OSError, SyntaxError, ValueError):
        return None
