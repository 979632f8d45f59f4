"""A small synthetic scene (image, boxes, label map, polygons) for consistency checks.

Two objects on a dark textured background of size 96x128:
- label 1: an axis-aligned rectangle, pixels [20, 60) x [30, 50) (x, y), red;
- label 2: a concave (L-shaped) polygon, green.
``boxes`` holds their XYXY boxes: the rectangle's exact box and the polygon's bounding box.
"""

import warnings

import numpy as np
from pycocotools import mask as mask_util

H, W = 96, 128
RECT = (20, 30, 60, 50)  # x0, y0, x1, y1 (integers: the mask covers exactly this box)
POLY = np.array(
    [[72, 15], [120, 15], [120, 40], [98, 40], [98, 85], [72, 85]], dtype=np.float64
)
RECT_COLOR = (220, 40, 40)
POLY_COLOR = (40, 220, 40)


def rasterize(polygons, height, width) -> np.ndarray:
    """Union of ``(K, 2)`` polygons as an ``(height, width)`` bool mask (COCO rasteriser)."""
    polygons = [np.asarray(p, dtype=np.float64).reshape(-1) for p in polygons]
    polygons = [p.tolist() for p in polygons if len(p) >= 6]
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_util.frPyObjects(polygons, height, width)
    with warnings.catch_warnings():  # pycocotools' decode trips a numpy 2 DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_util.decode(mask_util.merge(rles)).astype(bool)


def rect_polygon() -> np.ndarray:
    x0, y0, x1, y1 = RECT
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def make_scene():
    """Return ``(image uint8 HxWx3, boxes (2, 4) float64, sem_seg HxW uint8, polygons)``.

    ``polygons`` is ``[rectangle polygon, L polygon]``; ``sem_seg`` labels 1 and 2.
    """
    rng = np.random.RandomState(7)
    image = rng.randint(0, 30, size=(H, W, 3)).astype(np.uint8)
    sem_seg = np.zeros((H, W), dtype=np.uint8)
    x0, y0, x1, y1 = RECT
    sem_seg[y0:y1, x0:x1] = 1
    sem_seg[rasterize([POLY], H, W)] = 2
    image[sem_seg == 1] = RECT_COLOR
    image[sem_seg == 2] = POLY_COLOR
    boxes = np.array(
        [list(RECT), [*POLY.min(axis=0), *POLY.max(axis=0)]], dtype=np.float64
    )
    return image, boxes, sem_seg, [rect_polygon(), POLY.copy()]


def tight_box(mask: np.ndarray):
    """XYXY box (continuous coordinates) of the True pixels of ``mask``, or None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def clip_box(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip an XYXY box to the image ``[0, width] x [0, height]``."""
    return np.clip(box, 0, [width, height, width, height])


def color_mask(image: np.ndarray, color) -> np.ndarray:
    """Pixels close to ``color`` (the object's paint), as a bool mask."""
    diff = np.abs(image.astype(np.int32) - np.asarray(color, dtype=np.int32)).max(axis=2)
    return diff < 60
