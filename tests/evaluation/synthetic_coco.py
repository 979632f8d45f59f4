"""A seeded generator of COCO ground truth and of detections to score against it.

Used by the evaluation tests (a few tiny images) and by ``benchmarks/coco_eval.py`` (hundreds of
images, 100 detections each). No image files are needed: COCO evaluation only reads the json.

Ground truth: each image has a few objects of 4 categories with non-contiguous ids (so the
contiguous <-> dataset id mapping is exercised), drawn as axis-aligned rectangles (polygon
segmentation), triangles (polygon) or ellipses (compressed RLE), with sizes spread over COCO's
small / medium / large ranges, and now and then a crowd region (RLE, ``iscrowd=1``).

Detections: most ground-truth objects get a detection whose shape is a jittered copy of the
object (sometimes with the wrong class), plus false positives at random places; every
detection has a bool mask, a tight XYXY box around it (slightly jittered) and a score.
"""

from typing import Any, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

CATEGORIES = [
    {"id": 1, "name": "rect"},
    {"id": 3, "name": "tri"},
    {"id": 7, "name": "ellipse"},
    {"id": 10, "name": "blob"},
]
SHAPE_KINDS = ("rect", "tri", "ellipse")


def _random_shape(rng: np.random.Generator, height: int, width: int) -> Dict[str, Any]:
    """A shape that lies inside the image, of a log-uniform size between 4 px and the image."""
    kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
    max_side = 0.9 * min(height, width)
    w = float(np.exp(rng.uniform(np.log(4.0), np.log(max_side))))
    h = float(np.clip(w * np.exp(rng.uniform(-0.4, 0.4)), 4.0, max_side))
    x0 = float(rng.uniform(0, width - w))
    y0 = float(rng.uniform(0, height - h))
    return {"kind": kind, "x0": x0, "y0": y0, "w": w, "h": h}


def _jitter_shape(rng: np.random.Generator, shape: Dict[str, Any], height: int, width: int,
                  amount: float) -> Dict[str, Any]:
    """A copy of ``shape`` moved and resized by up to ``amount`` of its size, kept in the image."""
    w = float(np.clip(shape["w"] * (1 + rng.uniform(-amount, amount)), 3.0, width - 1))
    h = float(np.clip(shape["h"] * (1 + rng.uniform(-amount, amount)), 3.0, height - 1))
    x0 = float(np.clip(shape["x0"] + rng.uniform(-amount, amount) * shape["w"], 0, width - w))
    y0 = float(np.clip(shape["y0"] + rng.uniform(-amount, amount) * shape["h"], 0, height - h))
    return {"kind": shape["kind"], "x0": x0, "y0": y0, "w": w, "h": h}


def _polygon(shape: Dict[str, Any]) -> List[float]:
    x0, y0, w, h = shape["x0"], shape["y0"], shape["w"], shape["h"]
    if shape["kind"] == "rect":
        points = [x0, y0, x0 + w, y0, x0 + w, y0 + h, x0, y0 + h]
    else:  # triangle: apex at the top centre
        points = [x0 + w / 2, y0, x0 + w, y0 + h, x0, y0 + h]
    return [round(v, 2) for v in points]


def _shape_mask(shape: Dict[str, Any], height: int, width: int) -> np.ndarray:
    """Rasterise ``shape`` to an (H, W) bool mask (polygons with pycocotools, as COCO does)."""
    if shape["kind"] == "ellipse":
        cx, cy = shape["x0"] + shape["w"] / 2, shape["y0"] + shape["h"] / 2
        rx, ry = shape["w"] / 2, shape["h"] / 2
        mask = np.zeros((height, width), dtype=bool)
        x_lo, x_hi = int(max(np.floor(cx - rx), 0)), int(min(np.ceil(cx + rx) + 1, width))
        y_lo, y_hi = int(max(np.floor(cy - ry), 0)), int(min(np.ceil(cy + ry) + 1, height))
        ys = np.arange(y_lo, y_hi)[:, None] + 0.5
        xs = np.arange(x_lo, x_hi)[None, :] + 0.5
        mask[y_lo:y_hi, x_lo:x_hi] = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1.0
        return mask
    rle = mask_util.merge(mask_util.frPyObjects([_polygon(shape)], height, width))
    return mask_util.decode(rle).astype(bool)


def _encode(mask: np.ndarray) -> Dict[str, Any]:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _polygon_area(points: Sequence[float]) -> float:
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def make_categories(num_categories: int = 0) -> List[Dict[str, Any]]:
    """``CATEGORIES`` (0), or ``num_categories`` classes with odd ids 1, 3, 5, ..."""
    if num_categories <= 0:
        return [dict(c) for c in CATEGORIES]
    return [{"id": 2 * i + 1, "name": f"class{i}"} for i in range(num_categories)]


def make_synthetic_coco(num_images: int, *, seed: int = 0, min_size: int = 96,
                        max_size: int = 160, max_objects: int = 8,
                        crowd_prob: float = 0.05, num_categories: int = 0) -> Dict[str, Any]:
    """A COCO instances dict with ``num_images`` images of ``min_size``..``max_size`` pixels.

    Every image has 1..``max_objects`` objects (and the first image none, to cover images
    without ground truth when ``num_images > 2``) of the categories of
    ``make_categories(num_categories)``. The ``_shape`` key of each annotation (dropped before
    writing json) keeps the shape for ``make_detections``.
    """
    rng = np.random.default_rng(seed)
    categories = make_categories(num_categories)
    images, annotations = [], []
    for index in range(num_images):
        image_id = 100 + 3 * index  # ids that are neither contiguous nor 0-based
        height = int(rng.integers(min_size, max_size + 1))
        width = int(rng.integers(min_size, max_size + 1))
        images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "height": height,
                       "width": width})
        count = 0 if (index == 0 and num_images > 2) else int(rng.integers(1, max_objects + 1))
        for _ in range(count):
            shape = _random_shape(rng, height, width)
            category = categories[int(rng.integers(len(categories)))]["id"]
            crowd = bool(rng.random() < crowd_prob)
            ann: Dict[str, Any] = {"id": len(annotations) + 1, "image_id": image_id,
                                   "category_id": category, "iscrowd": int(crowd)}
            if shape["kind"] == "ellipse" or crowd:
                rle = _encode(_shape_mask(shape, height, width))
                ann["segmentation"] = rle
                ann["area"] = float(mask_util.area(rle))
                ann["bbox"] = [float(v) for v in mask_util.toBbox(rle)]
            else:
                poly = _polygon(shape)
                xs, ys = poly[0::2], poly[1::2]
                ann["segmentation"] = [poly]
                ann["area"] = _polygon_area(poly)
                ann["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            if ann["area"] <= 0:
                continue
            ann["_shape"] = shape
            annotations.append(ann)
    return {
        "info": {"description": "segtron synthetic COCO for evaluation tests"},
        "images": images,
        "annotations": annotations,
        "categories": [dict(c, supercategory="shape") for c in categories],
    }


def strip_private(coco: Dict[str, Any]) -> Dict[str, Any]:
    """The COCO dict without the generator's ``_shape`` keys (what gets written to json)."""
    anns = [{k: v for k, v in a.items() if not k.startswith("_")} for a in coco["annotations"]]
    return dict(coco, annotations=anns)


def make_detections(coco: Dict[str, Any], *, seed: int = 1, recall: float = 0.9,
                    wrong_class_prob: float = 0.1, false_positives: Tuple[int, int] = (0, 6),
                    dets_per_image: int = 0) -> Iterator[Tuple[int, Dict[str, np.ndarray]]]:
    """Yield ``(image_id, detections)`` for every image of ``coco`` (from ``make_synthetic_coco``).

    ``detections`` has ``boxes`` ((N, 4) float32 XYXY), ``scores`` ((N,) float32, distinct),
    ``category_ids`` ((N,) dataset ids) and ``masks`` ((N, H, W) bool). Each non-crowd object is
    detected with probability ``recall`` (jittered shape, score in [0.3, 1)); false positives
    (score in [0, 0.6)) number ``false_positives`` (inclusive range) per image, or fill the
    image up to ``dets_per_image`` detections when that is > 0.
    """
    rng = np.random.default_rng(seed)
    by_image: Dict[int, List[Dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    category_ids = [c["id"] for c in coco["categories"]]
    for image in coco["images"]:
        height, width = image["height"], image["width"]
        shapes, labels, scores = [], [], []
        for ann in by_image.get(image["id"], []):
            if ann["iscrowd"] or rng.random() >= recall:
                continue
            shapes.append(_jitter_shape(rng, ann["_shape"], height, width, 0.12))
            label = ann["category_id"]
            if rng.random() < wrong_class_prob:
                label = category_ids[int(rng.integers(len(category_ids)))]
            labels.append(label)
            scores.append(rng.uniform(0.3, 1.0))
        if dets_per_image > 0:
            num_fp = max(dets_per_image - len(shapes), 0)
        else:
            num_fp = int(rng.integers(false_positives[0], false_positives[1] + 1))
        for _ in range(num_fp):
            shapes.append(_random_shape(rng, height, width))
            labels.append(category_ids[int(rng.integers(len(category_ids)))])
            scores.append(rng.uniform(0.0, 0.6))

        masks = np.zeros((len(shapes), height, width), dtype=bool)
        boxes = np.zeros((len(shapes), 4), dtype=np.float32)
        for i, shape in enumerate(shapes):
            masks[i] = _shape_mask(shape, height, width)
            rows, cols = np.flatnonzero(masks[i].any(axis=1)), np.flatnonzero(masks[i].any(axis=0))
            if len(rows):
                box = [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
            else:
                box = [shape["x0"], shape["y0"], shape["x0"] + shape["w"], shape["y0"] + shape["h"]]
            noise = rng.uniform(-1.5, 1.5, size=4)
            boxes[i] = np.clip(np.asarray(box, dtype=np.float64) + noise, 0, [width, height] * 2)
        # Distinct scores: tie order is an implementation detail the two COCO APIs may not share.
        scores_arr = np.asarray(scores, dtype=np.float32)
        scores_arr = scores_arr + np.arange(len(scores_arr), dtype=np.float32) * 1e-6
        yield image["id"], {
            "boxes": boxes,
            "scores": scores_arr,
            "category_ids": np.asarray(labels, dtype=np.int64),
            "masks": masks,
        }


def detections_to_coco_results(image_id: int, dets: Dict[str, np.ndarray],
                               with_bbox: bool = True) -> List[Dict[str, Any]]:
    """COCO result dicts of one image's detections, built directly (reference conversion).

    ``with_bbox=False`` leaves the boxes out, so the COCO API takes areas from the masks: how
    mask AP is computed (see ``COCOEvaluator``).
    """
    results = []
    for i in range(len(dets["scores"])):
        x0, y0, x1, y1 = (float(v) for v in dets["boxes"][i])
        result: Dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(dets["category_ids"][i]),
            "score": float(dets["scores"][i]),
            "segmentation": _encode(dets["masks"][i]),
        }
        if with_bbox:
            result["bbox"] = [x0, y0, x1 - x0, y1 - y0]
        results.append(result)
    return results
