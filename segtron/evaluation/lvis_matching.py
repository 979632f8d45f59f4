"""LVIS's federated matching of detections to ground truth (the first half of LVIS AP).

LVIS is annotated *federatedly* (Gupta et al., "LVIS: A Dataset for Large Vocabulary Instance
Segmentation", 2019): an image is checked only for some categories. Each image has

* positive categories: those with ground truth in the image;
* negative categories (``neg_category_ids``): verified absent from the image;
* ``not_exhaustive_category_ids``: present, but not every instance was annotated.

The rules that turn this into a COCO-like evaluation, as the lvis-api applies them:

1. at most ``max_dets`` (300) detections per image are kept: the highest-scoring over all
   categories (stable on equal scores);
2. a detection of a category that is neither positive nor negative on its image is dropped
   (nothing is known about that category there);
3. per image and category, detections are matched to ground truth as in COCO at each IoU
   threshold 0.50:0.05:0.95 and area range (all/small/medium/large): by descending score, each
   takes the unmatched ground truth of highest IoU >= the threshold; ground truth outside the
   area range is ignored (and so is a detection matched to it); LVIS has no crowd regions;
4. an unmatched detection is ignored (neither true nor false positive) when its area is
   outside the range -- as in COCO -- or when its category is not exhaustively annotated on
   the image: a "false positive" there may be a real, unannotated object. On a negative
   category every unmatched detection is a false positive.

The per-threshold matching is COCO's own (``coco_matching``); this module adds the federated
selection around it. Detection areas are box areas (w * h) for "bbox" and mask areas for
"segm"; ground-truth areas are the annotations' ``area`` field.
"""

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util

from .coco_matching import _match_image_category

__all__ = [
    "FederatedMatches",
    "LVIS_AREA_RANGES",
    "LVIS_IOU_THRESHOLDS",
    "flat_detections",
    "limit_detections_per_image",
    "match_federated",
    "select_federated_detections",
]

logger = logging.getLogger(__name__)

# (label, lowest area, highest area), inclusive at both ends, in pixels^2.
LVIS_AREA_RANGES: Tuple[Tuple[str, float, float], ...] = (
    ("all", 0.0, 1e10),
    ("small", 0.0, 32.0**2),
    ("medium", 32.0**2, 96.0**2),
    ("large", 96.0**2, 1e10),
)
LVIS_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)

_Pair = Tuple[int, int]  # (image id, category id)


@dataclass
class FederatedMatches:
    """The matching of all evaluated detections, grouped for accumulation.

    Attributes:
        cat_ids: the evaluated category ids (every category of the ground truth), sorted.
        parts: ``{(category index, area index, threshold index): [(scores, is_tp), ...]}``,
            one entry per image in image-id order: the non-ignored detections (score order)
            and whether each is a true positive.
        num_gt: (K, A) int array, the non-ignored ground truth per category and area range.
    """

    cat_ids: List[int]
    parts: Dict[Tuple[int, int, int], List[Tuple[np.ndarray, np.ndarray]]]
    num_gt: np.ndarray


def flat_detections(matches: FederatedMatches, iou_threshold: float = 0.5, area: str = "all"
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The non-ignored detections of one IoU threshold and area range, flattened.

    Args:
        matches: ``match_federated``'s result.
        iou_threshold: one of ``LVIS_IOU_THRESHOLDS``.
        area: one of the ``LVIS_AREA_RANGES`` labels.

    Returns:
        ``(scores, is_tp, classes, num_gt)``: per detection its score, whether it is a true
        positive and its category index (into ``matches.cat_ids``); per category the number
        of non-ignored ground-truth objects.

    Raises:
        ValueError: for a threshold or area LVIS does not evaluate.
    """
    close = np.flatnonzero(np.isclose(LVIS_IOU_THRESHOLDS, iou_threshold))
    labels = [label for label, _, _ in LVIS_AREA_RANGES]
    if close.size != 1 or area not in labels:
        raise ValueError(
            f"flat_detections: IoU {iou_threshold} / area {area!r} is not evaluated by LVIS; "
            f"use one of {LVIS_IOU_THRESHOLDS.round(2).tolist()} and {labels}."
        )
    t, a = int(close[0]), labels.index(area)
    scores, is_tp, classes = [np.zeros(0)], [np.zeros(0, dtype=bool)], [np.zeros(0, np.int64)]
    for k in range(len(matches.cat_ids)):
        for part_scores, part_tp in matches.parts.get((k, a, t), []):
            scores.append(part_scores)
            is_tp.append(part_tp)
            classes.append(np.full(part_scores.size, k, dtype=np.int64))
    return (np.concatenate(scores), np.concatenate(is_tp), np.concatenate(classes),
            matches.num_gt[:, a].copy())


def limit_detections_per_image(results: Sequence[dict], max_dets: int) -> List[dict]:
    """Keep the ``max_dets`` highest-scoring results of each image (all when ``max_dets < 0``).

    Takes LVIS/COCO result dicts (``image_id``, ``score``); returns them grouped by image (in
    order of first appearance), an image's kept results in descending score (stable).
    """
    by_image: Dict[int, List[dict]] = defaultdict(list)
    for result in results:
        by_image[result["image_id"]].append(result)
    kept: List[dict] = []
    for anns in by_image.values():
        if 0 <= max_dets < len(anns):
            order = np.argsort([-a["score"] for a in anns], kind="stable")[:max_dets]
            anns = [anns[i] for i in order]
        kept.extend(anns)
    return kept


def select_federated_detections(gt_api, results: Sequence[dict],
                                max_dets: int = 300) -> Dict[_Pair, List[dict]]:
    """Rules 1 and 2: the detections LVIS evaluates, per (image id, category id).

    Args:
        gt_api: the ground truth as a pycocotools ``COCO`` of the LVIS json (``imgs``,
            ``imgToAnns``; images with ``neg_category_ids``).
        results: result dicts (``image_id``, ``category_id``, ``score``, ...).
        max_dets: detections kept per image (rule 1); negative for no limit.

    Returns:
        ``{(image id, category id): results}``, each list in descending score (stable).

    Raises:
        ValueError: for a result whose image is not in the ground truth.
    """
    unknown = sorted({r["image_id"] for r in results} - set(gt_api.imgs))
    if unknown:
        raise ValueError(
            f"LVIS evaluation: results for image ids {unknown[:5]} that the ground-truth json "
            "does not have. Evaluate against the json of the split the model was run on."
        )
    evaluated: Dict[int, set] = {}
    for img_id, img in gt_api.imgs.items():
        positive = {a["category_id"] for a in gt_api.imgToAnns.get(img_id, [])}
        evaluated[img_id] = positive | set(img.get("neg_category_ids", []))
    pairs: Dict[_Pair, List[dict]] = defaultdict(list)
    dropped = 0
    for result in limit_detections_per_image(results, max_dets):
        img_id, cat_id = result["image_id"], result["category_id"]
        if cat_id in evaluated[img_id]:
            pairs[img_id, cat_id].append(result)
        else:
            dropped += 1
    logger.debug("LVIS: %d detections of categories not verified on their image are ignored.",
                 dropped)
    for key, dts in pairs.items():
        order = np.argsort([-d["score"] for d in dts], kind="stable")
        pairs[key] = [dts[i] for i in order]
    return pairs


def _detection_rle(gt_api, result: dict, where: str):
    if "segmentation" not in result:
        raise ValueError(
            f"LVIS segm evaluation: the result for {where} has no 'segmentation'. Evaluate "
            "'segm' only for models that predict masks (tasks=('bbox',) otherwise)."
        )
    return gt_api.annToRLE(result)


def _ious_and_areas(gt_api, gts: List[dict], dts: List[dict], iou_type: str,
                    where: str) -> Tuple[Any, np.ndarray]:
    """IoU matrix (detections x ground truth, no crowd; [] when either is empty) and the
    detections' areas (box w * h for "bbox", mask area for "segm")."""
    if iou_type == "bbox":
        dt_geo = np.asarray([d["bbox"] for d in dts], dtype=np.float64).reshape(-1, 4)
        areas = dt_geo[:, 2] * dt_geo[:, 3]
    else:
        dt_geo = [_detection_rle(gt_api, d, where) for d in dts]
        areas = np.asarray(mask_util.area(dt_geo) if dts else [], dtype=np.float64).reshape(-1)
    if not gts or not dts:
        return [], areas
    if iou_type == "bbox":
        gt_geo = np.asarray([g["bbox"] for g in gts], dtype=np.float64).reshape(-1, 4)
    else:
        gt_geo = [gt_api.annToRLE(g) for g in gts]
    return mask_util.iou(dt_geo, gt_geo, [0] * len(gts)), areas


def match_federated(gt_api, results: Sequence[dict], iou_type: str,
                    max_dets: int = 300) -> FederatedMatches:
    """Apply the federated rules 1-4 to ``results`` and match them at every threshold and area.

    Args:
        gt_api: the LVIS ground truth as a pycocotools ``COCO`` (see
            ``select_federated_detections``); annotations need ``bbox``, ``area`` and, for
            "segm", ``segmentation``.
        results: result dicts with ``bbox`` (XYWH) for "bbox", ``segmentation`` for "segm".
        iou_type: "bbox" or "segm".
        max_dets: detections kept per image (negative: all).

    Returns:
        A ``FederatedMatches`` over every category of ``gt_api``.

    Raises:
        ValueError: for another ``iou_type``, or results that do not fit the ground truth.
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"LVIS evaluation: iou_type '{iou_type}' is not supported; use "
                         "'bbox' or 'segm'.")
    cat_ids = sorted(gt_api.cats)
    cat_index = {c: k for k, c in enumerate(cat_ids)}
    gts_by_pair: Dict[_Pair, List[dict]] = defaultdict(list)
    for ann in gt_api.dataset.get("annotations", []):
        if ann["category_id"] in cat_index:
            gts_by_pair[ann["image_id"], ann["category_id"]].append(ann)
    dts_by_pair = select_federated_detections(gt_api, results, max_dets)

    parts: Dict[Tuple[int, int, int], List[Tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    num_gt = np.zeros((len(cat_ids), len(LVIS_AREA_RANGES)), dtype=np.int64)
    for img_id, cat_id in sorted(gts_by_pair.keys() | dts_by_pair.keys()):
        gts, dts = gts_by_pair.get((img_id, cat_id), []), dts_by_pair.get((img_id, cat_id), [])
        where = f"image {img_id}, category {cat_id}"
        ious, areas = _ious_and_areas(gt_api, gts, dts, iou_type, where)
        exhaustive = cat_id not in gt_api.imgs[img_id].get("not_exhaustive_category_ids", [])
        k = cat_index[cat_id]
        for a, area_range in enumerate(LVIS_AREA_RANGES):
            count, per_threshold = _match_pair(gts, dts, ious, areas, area_range, exhaustive,
                                               where)
            num_gt[k, a] += count
            for t, (scores, is_tp) in enumerate(per_threshold):
                if scores.size:
                    parts[k, a, t].append((scores, is_tp))
    return FederatedMatches(cat_ids=cat_ids, parts=dict(parts), num_gt=num_gt)


def _match_pair(gts: List[dict], dts: List[dict], ious, areas: np.ndarray,
                area_range: Tuple[str, float, float], exhaustive: bool, where: str
                ) -> Tuple[int, List[Tuple[np.ndarray, np.ndarray]]]:
    """Rules 3 and 4 for one image, category and area range, at every IoU threshold.

    Returns the non-ignored ground-truth count and, per threshold, (scores, is_tp) of the
    non-ignored detections in score order.
    """
    _, lo, hi = area_range
    if not gts or not dts:  # nothing to match: same outcome at every threshold
        count = sum(1 for g in gts if lo <= g["area"] <= hi)
        in_range = (areas >= lo) & (areas <= hi) if exhaustive else np.zeros(len(dts), bool)
        scores = np.asarray([d["score"] for d in dts], dtype=np.float64)[in_range]
        return count, [(scores, np.zeros(len(scores), dtype=bool))] * len(LVIS_IOU_THRESHOLDS)
    # COCO's matcher reads only these fields (and no "iscrowd": LVIS has no crowd).
    light_gts = [{"area": float(g["area"])} for g in gts]
    light_dts = [{"score": float(d["score"]), "area": float(a)} for d, a in zip(dts, areas)]
    per_threshold = []
    for threshold in LVIS_IOU_THRESHOLDS:
        scores, is_tp, count = _match_image_category(
            light_gts, light_dts, ious, float(threshold), (lo, hi), len(light_dts), where
        )
        if not exhaustive:  # rule 4: unmatched detections do not count here
            scores, is_tp = scores[is_tp], is_tp[is_tp]
        per_threshold.append((scores, is_tp))
    return count, per_threshold
