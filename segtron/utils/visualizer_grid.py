"""Tile several pictures into one: a contact sheet of visualizations.

``tile_images`` lays RGB images out in a grid of equal cells separated by thin background
gaps, each with an optional one-line caption under it. ``tools/visualize_json_results.py
--grid`` uses it to show a run's predictions on many images at once.

Example::

    pictures = [Visualizer(img, metadata).draw_instance_predictions(p).get_image() for ...]
    sheet = tile_images(pictures, columns=4, captions=[f"image {i}" for i in ids])
    Image.fromarray(sheet).save("grid.png")
"""

import math
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["tile_images", "caption_height"]

_CAPTION_COLOR = (60, 60, 60)


def _caption_font_size(tile_width: int) -> int:
    return int(min(16, max(10, tile_width // 20)))


def caption_height(font_size: int) -> int:
    """Height in pixels of the caption strip under each tile for text of ``font_size``."""
    return font_size + 2 * max(2, font_size // 3)


def _load_font(size: int):
    """DejaVu Sans (bundled with matplotlib, the font of the Visualizer's labels) at ``size``
    pixels, else Pillow's default font."""
    try:
        from matplotlib import font_manager

        path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"),
                                     fallback_to_default=True)
        return ImageFont.truetype(path, size)
    except (ImportError, OSError, ValueError):
        pass
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, ValueError, OSError):
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, max_width: int) -> str:
    """``text``, shortened with an ellipsis until it is at most ``max_width`` pixels wide."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "\u2026", font=font) > max_width:
        text = text[:-1]
    return text + "\u2026" if text else ""


def _as_rgb(image: np.ndarray, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.shape[0] == 0 or \
            image.shape[1] == 0:
        raise ValueError(
            f"tile_images: image {index} has shape {image.shape}; expected HxWx3 RGB (or HxW "
            "grayscale, HxWx4 RGBA)."
        )
    if image.dtype != np.uint8:
        raise ValueError(f"tile_images: image {index} has dtype {image.dtype}; expected uint8 "
                         "(convert with .astype(np.uint8) after scaling to [0, 255]).")
    return image[:, :, :3]


def _fit_into(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``image`` (keeping its aspect ratio) to the largest size within height x width."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    factor = min(height / h, width / w)
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    if size == (w, h):
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def tile_images(images: Sequence[np.ndarray], columns: int,
                captions: Optional[Sequence[str]] = None, gap: int = 4,
                tile_size: Optional[Tuple[int, int]] = None, background: int = 255,
                font_size: Optional[int] = None) -> np.ndarray:
    """Lay images out in a grid, row by row, with gaps and optional captions.

    Every image gets a cell of the same size (``tile_size``, default: the largest height and
    the largest width among the images); an image of another size is resized to fit the cell
    keeping its aspect ratio, and centred. Cells are separated by, and the grid surrounded by,
    ``gap`` pixels of ``background``. With ``captions``, a strip of ``caption_height(font_size)``
    pixels under each cell holds its caption, centred, in dark grey (shortened with an
    ellipsis when it is wider than the cell). Unused cells of the last row stay empty.

    Args:
        images: HxWx3 uint8 RGB arrays (HxW grayscale and HxWx4 RGBA are accepted too).
        columns: cells per row (reduced to the number of images when there are fewer).
        captions: one string per image, or None for no caption strips.
        gap: pixels between cells and around the grid.
        tile_size: ``(height, width)`` of each cell's image area.
        background: grey level (0-255) of the gaps and caption strips.
        font_size: caption text height in pixels; default from the cell width (10 to 16).

    Returns:
        An ``(rows * (tile_h + caption_h) + (rows + 1) * gap, columns * tile_w +
        (columns + 1) * gap, 3)`` uint8 array, ``rows = ceil(len(images) / columns)`` and
        ``caption_h = caption_height(font_size)`` with captions, else 0.

    Raises:
        ValueError: for no images, columns < 1, gap < 0, a caption count different from the
            image count, or an image that is not an RGB uint8 array.
    """
    if len(images) == 0:
        raise ValueError("tile_images: no images to tile.")
    if columns < 1:
        raise ValueError(f"tile_images: columns must be >= 1, got {columns}.")
    if gap < 0:
        raise ValueError(f"tile_images: gap must be >= 0, got {gap}.")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"tile_images: {len(captions)} captions for {len(images)} images; "
                         "pass one caption per image (or none).")
    rgb = [_as_rgb(image, i) for i, image in enumerate(images)]
    if tile_size is None:
        tile_h = max(image.shape[0] for image in rgb)
        tile_w = max(image.shape[1] for image in rgb)
    else:
        tile_h, tile_w = (int(v) for v in tile_size)
        if tile_h < 1 or tile_w < 1:
            raise ValueError(f"tile_images: tile_size must be positive, got {tile_size}.")
    columns = min(columns, len(rgb))
    rows = math.ceil(len(rgb) / columns)
    if font_size is None:
        font_size = _caption_font_size(tile_w)
    cap_h = caption_height(font_size) if captions is not None else 0
    cell_h = tile_h + cap_h

    canvas = np.full((rows * cell_h + (rows + 1) * gap, columns * tile_w + (columns + 1) * gap, 3),
                     background, dtype=np.uint8)
    for index, image in enumerate(rgb):
        row, col = divmod(index, columns)
        top = gap + row * (cell_h + gap)
        left = gap + col * (tile_w + gap)
        fitted = _fit_into(image, tile_h, tile_w)
        dy = (tile_h - fitted.shape[0]) // 2
        dx = (tile_w - fitted.shape[1]) // 2
        canvas[top + dy: top + dy + fitted.shape[0], left + dx: left + dx + fitted.shape[1]] = \
            fitted

    if captions is not None:
        picture = Image.fromarray(canvas)
        draw = ImageDraw.Draw(picture)
        font = _load_font(font_size)
        for index, caption in enumerate(captions):
            row, col = divmod(index, columns)
            text = _fit_text(draw, str(caption), font, tile_w - 4)
            if not text:
                continue
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            x = gap + col * (tile_w + gap) + (tile_w - (right - left)) / 2 - left
            strip_top = gap + row * (cell_h + gap) + tile_h
            y = strip_top + (cap_h - (bottom - top)) / 2 - top
            draw.text((x, y), text, fill=_CAPTION_COLOR, font=font)
        canvas = np.asarray(picture).copy()
    return canvas
