"""COCO's greedy detection-to-ground-truth matching at one IoU threshold, per category.

``COCOeval.evaluate`` matches detections to ground truth for every IoU threshold, area range
and image, but only pycocotools keeps the result readable from Python (``evalImgs``);
faster-coco-eval (the default back-end) keeps it in C++. Both back-ends do keep the IoUs they
computed (``coco_eval.ious[img_id, cat_id]``: rows the image's detections of that category
sorted by score, at most ``maxDets[-1]``; columns its ground truth in annotation order), so
``match_detections`` replays COCO's ``evaluateImg`` on them for one IoU threshold and the area
range "all". It reuses COCO's IoUs and rules and computes no IoU itself:

* ground truth with ``iscrowd`` (or an area outside the range) is *ignored*; the others are
  sorted first;
* detections, by descending score (stable), each take the unmatched non-ignored ground truth
  of highest IoU >= the threshold (the last one on equal IoU, as COCO); only when there is
  none, an ignored one (a crowd region may take any number of detections);
* a detection matched to ignored ground truth, or unmatched with an area outside the range,
  is ignored: neither a true nor a false positive.

The result per category is what COCO's ``accumulate`` reads for AP at that IoU: the scores of
the non-ignored detections, which of them are true positives, and the number of non-ignored
ground-truth objects.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np

__all__ = ["CategoryMatches", "match_detections"]


@dataclass
class CategoryMatches:
    """The matching of one category over all evaluated images.

    Attributes:
        scores: (N,) float64 scores of the non-ignored detections (image by image).
        is_tp: (N,) bool, True where that detection matched non-ignored ground truth.
        num_gt: the number of non-ignored (non-crowd) ground-truth objects.
    """

    scores: np.ndarray
    is_tp: np.ndarray
    num_gt: int


def _by_category(anns: Sequence[dict]) -> Dict[int, List[dict]]:
    grouped: Dict[int, List[dict]] = defaultdict(list)
    for ann in anns:
        grouped[ann["category_id"]].append(ann)
    return grouped


def _match_image_category(
    gts: List[dict], dts: List[dict], ious, iou_threshold: float,
    area_range: Tuple[float, float], max_det: int, where: str,
) -> Tuple[np.ndarray, np.ndarray, int]:
    """COCO's ``evaluateImg`` for one image, one category, one IoU threshold.

    Takes the ground truth and detections in the order COCOeval stored them and its IoU
    matrix; returns (scores, is_tp) of the non-ignored detections and the non-ignored gt count.
    """
    lo, hi = area_range
    gt_ignore = np.array([bool(g.get("iscrowd", 0)) or not lo <= g["area"] <= hi for g in gts],
                         dtype=bool)
    gt_order = np.argsort(gt_ignore, kind="mergesort")
    gt_ignore = gt_ignore[gt_order]
    crowd = np.array([bool(gts[i].get("iscrowd", 0)) for i in gt_order], dtype=bool)
    dt_order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:max_det]
    dts = [dts[i] for i in dt_order]
    num_gt = int((~gt_ignore).sum())

    ious = np.asarray(ious, dtype=np.float64)
    if len(gts) and len(dts):
        if ious.shape != (len(dts), len(gts)):
            raise ValueError(
                f"match_detections: COCOeval's IoUs of {where} have shape {ious.shape}, expected "
                f"({len(dts)}, {len(gts)}) (detections x ground truth). Pass a COCOeval after "
                "evaluate() from pycocotools or faster-coco-eval, with params unchanged since."
            )
        ious = ious[:, gt_order]

    threshold = min(iou_threshold, 1 - 1e-10)  # COCO's guard against IoU 1 thresholds
    # Plain lists: the loop below is COCO's, element by element.
    rows, is_crowd, gt_ig = ious.tolist(), crowd.tolist(), gt_ignore.tolist()
    gt_taken = [False] * len(gts)
    matched = np.zeros(len(dts), dtype=bool)
    ignored = np.zeros(len(dts), dtype=bool)
    for d in range(len(dts) if len(gts) else 0):
        best, m = threshold, -1
        row = rows[d]
        for g in range(len(gts)):
            if gt_taken[g] and not is_crowd[g]:
                continue
            if m > -1 and not gt_ig[m] and gt_ig[g]:
                break  # matched regular ground truth: ignored ground truth cannot do better
            if row[g] < best:
                continue
            best, m = row[g], g
        if m == -1:
            continue
        matched[d], ignored[d], gt_taken[m] = True, gt_ig[m], True
    out_of_range = np.array([not lo <= d["area"] <= hi for d in dts], dtype=bool)
    ignored |= ~matched & out_of_range
    scores = np.array([d["score"] for d in dts], dtype=np.float64)
    return scores[~ignored], matched[~ignored], num_gt


def match_detections(coco_eval, iou_threshold: float = 0.5) -> Dict[int, CategoryMatches]:
    """Match detections to ground truth the way COCO does, at one IoU threshold.

    Args:
        coco_eval: a bbox or segm COCOeval (pycocotools or faster-coco-eval) after
            ``evaluate()``: its ``params`` (images, categories, ``maxDets[-1]``, the "all"
            area range), ``ious``, ``cocoGt`` and ``cocoDt`` are read.
        iou_threshold: a detection matches ground truth with IoU >= this.

    Returns:
        ``{category id: CategoryMatches}`` for every category of ``params.catIds``.

    Raises:
        ValueError: for keypoints (OKS matching ignores other ground truth) or IoUs that do not
            fit the annotations.
    """
    params = coco_eval.params
    if params.iouType not in ("bbox", "segm"):
        raise ValueError(
            f"match_detections: iouType '{params.iouType}' is not supported; pass a bbox or "
            "segm COCOeval."
        )
    area_range = tuple(params.areaRng[list(params.areaRngLbl).index("all")])
    max_det = int(max(params.maxDets))
    cat_ids = [int(c) for c in params.catIds]
    evaluated = set(cat_ids)
    parts: Dict[int, List[Tuple[np.ndarray, np.ndarray]]] = {c: [] for c in cat_ids}
    num_gt = dict.fromkeys(cat_ids, 0)
    for img_id in sorted({int(i) for i in params.imgIds}):
        gts = _by_category(coco_eval.cocoGt.imgToAnns.get(img_id, []))
        dts = _by_category(coco_eval.cocoDt.imgToAnns.get(img_id, []))
        for cat_id in sorted((gts.keys() | dts.keys()) & evaluated):
            scores, is_tp, count = _match_image_category(
                gts.get(cat_id, []), dts.get(cat_id, []), coco_eval.ious.get((img_id, cat_id), []),
                iou_threshold, area_range, max_det, f"image {img_id}, category {cat_id}",
            )
            num_gt[cat_id] += count
            if scores.size:
                parts[cat_id].append((scores, is_tp))
    result = {}
    for cat_id in cat_ids:
        scores = [s for s, _ in parts[cat_id]]
        flags = [t for _, t in parts[cat_id]]
        result[cat_id] = CategoryMatches(
            scores=np.concatenate(scores) if scores else np.zeros(0, dtype=np.float64),
            is_tp=np.concatenate(flags) if flags else np.zeros(0, dtype=bool),
            num_gt=num_gt[cat_id],
        )
    return result
