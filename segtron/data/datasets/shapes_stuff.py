"""Drawing the "stuff" of a shapes image: a background split into textured regions.

The background is cut into 2 to 4 large regions by a warped Voronoi partition: every pixel
belongs to the nearest of a few random centres, where each centre's distance is bent by its own
smooth random field, so the boundaries are smooth curves rather than straight lines. Each
region gets a different stuff class, and the class decides the *texture* only; its colours are
random. So a region is recognised by its texture, as the shapes are by their outline:

* ``stripes``: hard two-colour stripes, each 10-24 px wide at ``image_size`` 256;
* ``checks``: a rotated two-colour checkerboard, squares 10-24 px a side;
* ``dots``: small discs on a rotated square lattice 10-24 px apart, radius 15-25 % of that;
* ``noise``: smooth random colour blotches about 8-16 px across (no period).

There is no smooth "gradient" class on purpose: the shapes are filled with flat, slightly
shaded colours, and a smooth background region looks like a shape's inside, so a small
network can only tell them apart from the outline (in a 3-minute CPU test a small FCN left such
a class at 0.18 IoU, taking most of it for shapes; the textures above reached 0.7-0.85).

Pure functions of a ``numpy.random.Generator``, like ``shapes_drawing``.
"""

import math
from typing import Iterable, Tuple

import cv2
import numpy as np

__all__ = ["STUFF_CLASSES", "STUFF_COLORS", "draw_stuff"]

STUFF_CLASSES = ("stripes", "checks", "dots", "noise")
# RGB colours for visualisation only (region colours in the images are random).
STUFF_COLORS = ([128, 128, 128], [70, 130, 180], [152, 251, 152], [244, 164, 96])

MIN_REGIONS, MAX_REGIONS = 2, 4
# Every region should cover at least this fraction of the image (best of a few tries).
MIN_REGION_FRACTION = 0.12
_PARTITION_TRIES = 8
_COARSE = 4  # the partition's distances are computed on a grid this many times coarser
# How far (fraction of the shorter side) the smooth fields bend the Voronoi boundaries.
_WARP_AMPLITUDE = 0.15
# Stripe width, check size and dot spacing at image_size 256 (scaled with image_size, at least
# _MIN_CELL px): over 8 px, so a stride-8 network sees the pattern.
_CELL_RANGE = (10.0, 24.0)
_BLOTCH_RANGE = (8.0, 16.0)
_DOT_RADIUS_RANGE = (0.15, 0.25)  # dot radius, as a fraction of the dot spacing
_MIN_CELL = 4.0
_MIN_CONTRAST = 90.0  # distance between a texture's two RGB colours, at least


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """A smooth random float32 (H, W) field in about [-1, 1]: a coarse grid upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _warped_distances(rng: np.random.Generator, height: int, width: int,
                      num_regions: int) -> np.ndarray:
    """(num_regions, H', W') float32 warped distances to random centres, on a grid 4x coarser
    than the image (the fields are smooth, so they are upsampled without visible loss)."""
    low_h, low_w = -(-height // _COARSE), -(-width // _COARSE)
    yy = np.arange(low_h, dtype=np.float32)[:, None] * _COARSE
    xx = np.arange(low_w, dtype=np.float32)[None, :] * _COARSE
    amplitude = _WARP_AMPLITUDE * min(height, width)
    centres = rng.uniform((0.0, 0.0), (width, height), size=(num_regions, 2))
    return np.stack([
        np.hypot(xx - cx, yy - cy) + amplitude * _smooth_field(rng, low_h, low_w, 4)
        for cx, cy in centres
    ])


def _partition(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Split the image into 2-4 regions (a warped Voronoi partition); region index per pixel,
    (H, W) int64.

    Partitions are drawn until the smallest region covers ``MIN_REGION_FRACTION`` of the
    image (measured on the coarse grid); after ``_PARTITION_TRIES`` the most balanced one
    drawn is kept.
    """
    num_regions = int(rng.integers(MIN_REGIONS, MAX_REGIONS + 1))
    best, best_smallest = None, -1.0
    for _ in range(_PARTITION_TRIES):
        distances = _warped_distances(rng, height, width, num_regions)
        counts = np.bincount(np.argmin(distances, axis=0).ravel(), minlength=num_regions)
        smallest = counts.min() / counts.sum()
        if smallest > best_smallest:
            best, best_smallest = distances, smallest
        if smallest >= MIN_REGION_FRACTION:
            break
    return _nearest(cv2.resize(d, (width, height), interpolation=cv2.INTER_LINEAR)
                    for d in best)


def _nearest(distances: Iterable[np.ndarray]) -> np.ndarray:
    """Index of the smallest of several (H, W) maps at every pixel, (H, W) int64 (the first
    one on ties, as ``np.argmin``; faster than it over a stacked first axis)."""
    maps = iter(distances)
    smallest = next(maps).copy()
    index = np.zeros(smallest.shape, dtype=np.int64)
    for k, d in enumerate(maps, start=1):
        closer = d < smallest
        index[closer] = k
        np.minimum(smallest, d, out=smallest)
    return index


def _two_colors(rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Two random RGB float32 colours at least ``_MIN_CONTRAST`` apart (best of a few)."""
    pairs = rng.uniform(0, 255, size=(8, 2, 3)).astype(np.float32)
    gaps = np.linalg.norm(pairs[:, 0] - pairs[:, 1], axis=1)
    good = np.flatnonzero(gaps >= _MIN_CONTRAST)
    c1, c2 = pairs[good[0] if len(good) else int(np.argmax(gaps))]
    return c1, c2


def _texture(rng: np.random.Generator, stuff_class: int, ys: np.ndarray, xs: np.ndarray,
             height: int, width: int, image_size: int) -> np.ndarray:
    """The colours (N, 3) float32 of the texture of ``stuff_class`` (random colours, size and
    angle) at the pixels ``(ys, xs)`` of an (H, W) image."""
    name = STUFF_CLASSES[stuff_class]
    scale = image_size / 256.0
    if name == "noise":
        blotch = max(rng.uniform(*_BLOTCH_RANGE) * scale, _MIN_CELL)
        cells_y = max(int(round(height / blotch)), 2)
        cells_x = max(int(round(width / blotch)), 2)
        grid = rng.uniform(0, 255, size=(cells_y, cells_x, 3)).astype(np.float32)
        full = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        return np.clip(full[ys, xs], 0, 255)
    c1, c2 = _two_colors(rng)
    angle = rng.uniform(0.0, np.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    x, y = xs.astype(np.float32), ys.astype(np.float32)
    u = x * cos + y * sin
    v = y * cos - x * sin
    cell = max(rng.uniform(*_CELL_RANGE) * scale, _MIN_CELL)
    u_offset, v_offset = rng.uniform(0.0, cell, size=2)
    if name == "dots":  # discs on a square lattice
        radius = rng.uniform(*_DOT_RADIUS_RANGE) * cell
        du = (u + u_offset) % cell - cell / 2
        dv = (v + v_offset) % cell - cell / 2
        t = (du * du + dv * dv < radius * radius).astype(np.float32)
    else:  # stripes, checks: colour 1 or 2 by the parity of the cell index (along u, and v)
        t = np.floor((u + u_offset) / cell)
        if name == "checks":
            t += np.floor((v + v_offset) / cell)
        t %= 2
    return c1 * (1.0 - t[:, None]) + c2 * t[:, None]


def draw_stuff(rng: np.random.Generator, height: int, width: int,
               image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Draw a textured background made of 2-4 stuff regions, each of a different class.

    Returns ``(canvas, stuff)``: the float32 (H, W, 3) RGB-range background and the stuff
    class (index into ``STUFF_CLASSES``) of every pixel, uint8 (H, W).
    """
    regions = _partition(rng, height, width)
    num_regions = int(regions.max()) + 1
    classes = rng.permutation(len(STUFF_CLASSES))[:num_regions]
    canvas = np.zeros((height, width, 3), dtype=np.float32)
    for region, stuff_class in enumerate(classes):
        ys, xs = np.nonzero(regions == region)
        canvas[ys, xs] = _texture(rng, int(stuff_class), ys, xs, height, width, image_size)
    return canvas, classes[regions].astype(np.uint8)
