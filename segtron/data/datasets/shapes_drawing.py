"""Drawing one synthetic "shapes" image: outlines, textured background, placement, annotations.

Pure functions of a ``numpy.random.Generator``; ``shapes.py`` turns them into dataset splits.
See ``shapes.py`` for what the dataset contains and why.
"""

import math
import warnings
from typing import Any, Dict, List, Tuple
import zlib

import cv2
import numpy as np
from pycocotools import mask as mask_util

SHAPES_CLASSES = ("circle", "square", "triangle", "star", "cross")
# RGB colours for visualisation only (object colours in the images are random).
SHAPES_COLORS = ([230, 25, 75], [0, 130, 200], [60, 180, 75], [255, 190, 0], [145, 30, 180])

MAX_OBJECTS = 8
MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_PIXELS = 64
_PLACEMENT_TRIES = 15
_COLOR_TRIES = 12
_MIN_COLOR_DISTANCE = 80.0
# Full-shape area range (pixels) at image_size=256, sampled log-uniformly: spans COCO's small
# (< 32^2), medium and large (> 96^2) buckets.
_AREA_RANGE = (250.0, 26000.0)
# A shape's circumscribed radius is at most this fraction of the shorter image side.
_MAX_RADIUS_FRACTION = 0.45
_NOISE_PROBABILITY = 0.25
_NOISE_MAX = 4.0  # standard deviation of the pixel noise, at most
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 2]


# ----------------------------------------------------------------------------- shape outlines


def _unit_outline(class_id: int) -> np.ndarray:
    """Outline of class ``class_id`` centred on the origin, circumradius about 1, (N, 2)."""
    name = SHAPES_CLASSES[class_id]
    if name == "circle":
        t = np.linspace(0.0, 2.0 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) / math.sqrt(2)
    if name == "triangle":
        t = np.pi / 2 + np.arange(3) * 2.0 * np.pi / 3
        return np.stack([np.cos(t), np.sin(t)], axis=1)
    if name == "star":
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if name == "cross":
        a, b = 0.32, 0.95
        return np.array(
            [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a],
             [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]], dtype=np.float64)
    raise AssertionError(name)


_OUTLINES = [_unit_outline(i) for i in range(len(SHAPES_CLASSES))]


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.sum(x * np.roll(y, -1) - y * np.roll(x, -1))))


def _sample_outline(rng: np.random.Generator, class_id: int, target_area: float,
                    height: int, width: int) -> np.ndarray:
    """A rotated, slightly stretched, scaled outline placed fully inside the image (N, 2)."""
    aspect = math.exp(rng.uniform(math.log(0.9), math.log(1 / 0.9)))
    poly = _OUTLINES[class_id] * np.array([aspect, 1.0 / aspect])
    angle = rng.uniform(0.0, 2.0 * np.pi)
    cos, sin = math.cos(angle), math.sin(angle)  # rotate (no BLAS: safe in forked workers)
    poly = np.stack([poly[:, 0] * cos - poly[:, 1] * sin, poly[:, 0] * sin + poly[:, 1] * cos], 1)
    scale = math.sqrt(target_area / _polygon_area(poly))
    max_scale = _MAX_RADIUS_FRACTION * min(height, width) / float(np.max(np.hypot(*poly.T)))
    poly = poly * min(scale, max_scale)
    lo = -poly.min(axis=0) + 1.0
    hi = np.array([width, height], dtype=np.float64) - 2.0 - poly.max(axis=0)
    center = rng.uniform(lo, np.maximum(hi, lo))
    return np.round(poly + center, 2)


def _rasterize(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boolean (H, W) mask of ``poly`` exactly as pycocotools decodes the polygon annotation."""
    rle = mask_util.merge(mask_util.frPyObjects([poly.reshape(-1).tolist()], height, width))
    with warnings.catch_warnings():
        # pycocotools 2.0.x under numpy 2 warns about np.array(copy=False) on every decode.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(rle).astype(bool)


# ----------------------------------------------------------------------------- textures


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A float32 (H, W, 3) textured background in random colours."""
    kind = int(rng.integers(4))
    if kind == 3:  # smooth colour noise: a coarse random colour grid, upsampled
        cells = int(rng.integers(3, 12))
        grid = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.float32)
        return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    c1, c2 = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0.0, np.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    if kind == 0:  # linear gradient
        t = (u - u.min()) / max(float(u.max() - u.min()), 1.0)
    elif kind == 1:  # stripes, soft or hard
        period = rng.uniform(5.0, 32.0)
        t = 0.5 + 0.5 * np.sin(2.0 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
        if rng.random() < 0.5:
            t = (t > 0.5).astype(np.float32)
    else:  # rotated checks
        period = rng.uniform(8.0, 40.0)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        t = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    return c1 * (1.0 - t[..., None]) + c2 * t[..., None]


def _pick_color(rng: np.random.Generator, under: np.ndarray, avoid: List[np.ndarray]) -> np.ndarray:
    """A random colour that stands out from the pixels ``under`` (M, 3) it will cover and
    from the colours ``avoid`` of the shapes it overlaps."""
    if len(under) > 256:
        under = under[rng.choice(len(under), 256, replace=False)]
    candidates = rng.uniform(0, 255, size=(_COLOR_TRIES, 3)).astype(np.float32)
    distances = np.linalg.norm(under[None, :, :] - candidates[:, None, :], axis=2)
    scores = np.percentile(distances, 15, axis=1)
    for other in avoid:
        scores = np.minimum(scores, np.linalg.norm(candidates - other, axis=1))
    good = np.flatnonzero(scores >= _MIN_COLOR_DISTANCE)
    return candidates[good[0] if len(good) else int(np.argmax(scores))]


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray,
           box: Tuple[int, int, int, int], avoid: List[np.ndarray]) -> np.ndarray:
    """Fill ``mask`` on ``canvas`` with a random, linearly shaded colour (in place); return
    the colour (chosen to differ from the canvas under it and from ``avoid``)."""
    x0, y0, x1, y1 = box
    sub_mask = mask[y0:y1, x0:x1]
    sub = canvas[y0:y1, x0:x1]
    color = _pick_color(rng, sub[sub_mask], avoid)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ys, xs = np.nonzero(sub_mask)
    u = (xs - (x1 - x0 - 1) / 2.0) * math.cos(angle) + (ys - (y1 - y0 - 1) / 2.0) * math.sin(angle)
    u /= max(float(np.abs(u).max()), 1.0)
    shade = (1.0 + rng.uniform(0.0, 0.3) * u).astype(np.float32)
    sub[ys, xs] = np.clip(color[None, :] * shade[:, None], 0, 255)
    return color


def _mask_box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Tight (x0, y0, x1, y1) of a non-empty mask, x1/y1 exclusive."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ----------------------------------------------------------------------------- one image


def _image_rng(seed: int, split: str, index: int, *stream: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split``; ``stream`` (extra ints) separates the
    random streams of other datasets drawn from the same (seed, split, index)."""
    entropy = [seed, zlib.crc32(split.encode()), index, *stream]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def _place_shapes(rng: np.random.Generator, height: int, width: int,
                  image_size: int) -> List[Dict[str, Any]]:
    """Choose 1-8 shapes (class, outline, full and visible masks), drawn in list order.

    A shape is only placed where every earlier shape keeps at least ``MIN_VISIBLE_FRACTION``
    of its pixels (and ``MIN_VISIBLE_PIXELS``); it is dropped after ``_PLACEMENT_TRIES``.
    """
    area_scale = (image_size / 256.0) ** 2
    log_area = (math.log(_AREA_RANGE[0] * area_scale), math.log(_AREA_RANGE[1] * area_scale))
    shapes: List[Dict[str, Any]] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        class_id = int(rng.integers(len(SHAPES_CLASSES)))
        target_area = math.exp(rng.uniform(*log_area))
        for _attempt in range(_PLACEMENT_TRIES):
            poly = _sample_outline(rng, class_id, target_area, height, width)
            mask = _rasterize(poly, height, width)
            full = int(mask.sum())
            if full < MIN_VISIBLE_PIXELS:
                continue
            x0, y0, x1, y1 = _mask_box(mask)
            new_visible, covers = [], []
            for j, s in enumerate(shapes):
                bx0, by0, bx1, by1 = s["box"]
                if bx0 >= x1 or x0 >= bx1 or by0 >= y1 or y0 >= by1:
                    new_visible.append(s["visible"])
                    continue
                covered = int((s["mask"][y0:y1, x0:x1] & mask[y0:y1, x0:x1]).sum())
                new_visible.append(s["visible"] - covered)
                if covered:
                    covers.append(j)
            if all(v >= max(MIN_VISIBLE_FRACTION * s["full"], MIN_VISIBLE_PIXELS)
                   for v, s in zip(new_visible, shapes)):
                for v, s in zip(new_visible, shapes):
                    s["mask"][y0:y1, x0:x1] &= ~mask[y0:y1, x0:x1]  # now-hidden pixels go
                    s["visible"] = v
                shapes.append({"class_id": class_id, "poly": poly, "full_mask": mask,
                               "mask": mask.copy(), "box": (x0, y0, x1, y1), "full": full,
                               "visible": full, "covers": covers})
                break
    return shapes


def _render(rng: np.random.Generator, shapes: List[Dict[str, Any]], height: int,
            width: int) -> np.ndarray:
    """Paint ``shapes`` in order on a textured background; blur / noise it; uint8 (H, W, 3)."""
    canvas = _background(rng, height, width)
    _paint_shapes(rng, canvas, shapes)
    return _finish(rng, canvas)


def _paint_shapes(rng: np.random.Generator, canvas: np.ndarray,
                  shapes: List[Dict[str, Any]]) -> None:
    """Paint ``shapes`` in list order on the float32 ``canvas`` (in place)."""
    colors: List[np.ndarray] = []
    for s in shapes:
        avoid = [colors[j] for j in s["covers"]]
        colors.append(_paint(rng, canvas, s["full_mask"], s["box"], avoid))


def _finish(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Blur and / or add pixel noise to some images; round to uint8 (H, W, 3)."""
    if rng.random() < 0.5:
        canvas = cv2.GaussianBlur(canvas, (3, 3), 0)
    if rng.random() < _NOISE_PROBABILITY:  # pixel noise on some images (it bloats the PNGs)
        sigma = rng.uniform(1.0, _NOISE_MAX)
        canvas = canvas + rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def _annotate(shapes: List[Dict[str, Any]], height: int, width: int) -> List[Dict[str, Any]]:
    """COCO annotations (no ids) of the visible part of each shape."""
    annotations = []
    for s in shapes:
        visible = s["mask"]
        x0, y0, x1, y1 = _mask_box(visible)
        if s["visible"] == s["full"]:  # unoccluded: the outline itself
            segmentation: Any = [[float(v) for v in s["poly"].reshape(-1)]]
        else:
            rle = mask_util.encode(np.asfortranarray(visible.astype(np.uint8)))
            segmentation = {"size": [height, width], "counts": rle["counts"].decode("ascii")}
        annotations.append({
            "category_id": s["class_id"] + 1,
            "segmentation": segmentation,
            "area": float(s["visible"]),
            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
            "iscrowd": 0,
        })
    return annotations
