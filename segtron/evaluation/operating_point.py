"""The operating point of a detector at maximum F1: precision, recall, F1 and score threshold.

AP summarises a detector over all score thresholds; deploying it means picking one. This
module gives, next to AP, the point a practitioner would pick a threshold from.

Definition (per COCO task, ``bbox`` or ``segm``):

1. Matching: COCO's own, at IoU >= 0.5, area range "all", at most ``maxDets[-1]`` (100)
   detections per image and category (``coco_matching.match_detections``). Crowd regions and
   the detections matched to them are ignored, as for AP.
2. Sweep: keeping the detections with score >= t, for every t among the (non-ignored)
   detection scores: TP(t), FP(t) = kept - TP(t), FN(t) = num_gt - TP(t); precision =
   TP / (TP + FP), recall = TP / num_gt, F1 = 2 TP / (2 TP + FP + FN). Detections of equal
   score are kept or dropped together.
3. Choice: the t of maximal F1; on ties the highest such t (fewest detections).

Per class, each class gets its own best threshold. Overall, the detections of all classes are
pooled (micro-average: TP, FP and FN summed over classes) and one common threshold is chosen;
detections of a class without ground truth count there as false positives.

Values: precision, recall and F1 in percent, like AP; the threshold is a score in [0, 1].
Special cases:

* no (non-crowd) ground truth: nothing to recall, all four values NaN (as COCO's AP-<class>);
  per class the class is skipped that way;
* ground truth but no true positive at any threshold (e.g. no detections): P = R = F1 = 0 and
  the threshold NaN, since no threshold gives a useful operating point.

The model only outputs detections above its test score threshold (e.g.
``MODEL.ROI_HEADS.SCORE_THRESH_TEST``, 0.05 by default), so lower thresholds cannot be chosen.

Result keys (``operating_point_results``): ``P@F1max``, ``R@F1max``, ``F1max``,
``thresh@F1max`` overall, and per class ``P@F1max-<class>``, ..., ``thresh@F1max-<class>`` (the
``-<class>`` suffix as in ``AP-<class>``, so ``print_csv_format`` leaves them out). As for
``AP-<class>``, per-class keys come only with more than one class whose names match the
ground truth's categories. ``COCOEvaluator`` adds them to its bbox and segm results after the
AP keys (not for keypoints, whose OKS matching has other ignore rules, nor when there were no
predictions at all, where AP is NaN throughout) and logs them as two tables
(``report_operating_points``).

With more than ``MAX_CLASSES_IN_RESULTS`` (100) classes (LVIS has 1203), the per-class points
are not added to the results, where 4 keys per class would swamp ``metrics.json`` and
TensorBoard, nor logged as a table: they go to ``<output_dir>/operating_points_<task>.csv`` (one
row per class) when the evaluator has an output directory, and the log names the file.

Other evaluators report the same keys with their own matching in step 1, through
``report_operating_points_from_detections`` (per non-ignored detection: score, true positive or
not, class; per class: the ground-truth count), which does steps 2 and 3:

* ``PascalVOCDetectionEvaluator`` (bbox): the VOC devkit's matching at IoU > 0.5 (VOC's strict
  rule), all detections; difficult objects are not counted and detections matched to them are
  ignored; a second detection of an already matched object is a false positive;
* ``LVISEvaluator`` (bbox, segm): LVIS's federated matching at IoU >= 0.5, area "all", at most
  its ``max_dets_per_image`` detections per image; detections LVIS ignores (a category not
  verified on the image, or unmatched on a not exhaustively annotated one) are neither true
  nor false positives.
"""

import csv
import logging
import math
import os
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from ..utils.logger import create_small_table
from .coco_matching import CategoryMatches, match_detections

__all__ = [
    "MAX_CLASSES_IN_RESULTS",
    "OPERATING_POINT_IOU",
    "OperatingPoint",
    "best_f1_point",
    "compute_operating_points",
    "operating_point_results",
    "operating_points_from_detections",
    "per_class_table",
    "report_operating_points",
    "report_operating_points_from_detections",
]

logger = logging.getLogger(__name__)

OPERATING_POINT_IOU = 0.5
# Per-class keys go into the results (and the log) up to this many classes; beyond, to a CSV.
MAX_CLASSES_IN_RESULTS = 100
_NAMES = ("P@F1max", "R@F1max", "F1max", "thresh@F1max")


class OperatingPoint(NamedTuple):
    """Precision, recall and F1 (percent) at the score ``threshold`` that maximises F1."""

    precision: float
    recall: float
    f1: float
    threshold: float


_UNDEFINED = OperatingPoint(math.nan, math.nan, math.nan, math.nan)
_NO_TRUE_POSITIVE = OperatingPoint(0.0, 0.0, 0.0, math.nan)


def best_f1_point(scores: np.ndarray, is_tp: np.ndarray, num_gt: int) -> OperatingPoint:
    """The operating point of maximal F1 of one set of matched detections.

    Args:
        scores: (N,) scores of the (non-ignored) detections.
        is_tp: (N,) bool, whether each is a true positive.
        num_gt: the number of ground-truth objects they could match.

    Returns:
        The ``OperatingPoint`` (see the module docstring for the special cases).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    if scores.shape != is_tp.shape:
        raise ValueError(
            f"best_f1_point: {scores.size} scores but {is_tp.size} true-positive flags; pass one "
            "flag per detection."
        )
    if num_gt <= 0:
        return _UNDEFINED
    if not is_tp.any():
        return _NO_TRUE_POSITIVE
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    true_pos = np.cumsum(is_tp[order])
    kept = np.arange(1, len(scores) + 1)
    # The last detection of each run of equal scores: thresholds keep whole runs.
    ends = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    f1 = 2.0 * true_pos[ends] / (kept[ends] + num_gt)
    best = ends[int(np.argmax(f1))]  # the first maximum: the highest threshold
    return OperatingPoint(
        precision=100.0 * float(true_pos[best]) / float(kept[best]),
        recall=100.0 * float(true_pos[best]) / num_gt,
        f1=100.0 * float(f1.max()),
        threshold=float(sorted_scores[best]),
    )


def _as_detections(
    scores, is_tp, classes, num_gt: Sequence[int]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated flat arrays: scores (float64), is_tp (bool), classes (int64), num_gt (int64)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_tp = np.asarray(is_tp, dtype=bool).reshape(-1)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    num_gt = np.asarray(num_gt, dtype=np.int64).reshape(-1)
    if not scores.shape == is_tp.shape == classes.shape:
        raise ValueError(
            f"operating points: {scores.size} scores, {is_tp.size} true-positive flags and "
            f"{classes.size} classes; pass one of each per detection."
        )
    if classes.size and (classes.min() < 0 or classes.max() >= num_gt.size):
        raise ValueError(
            f"operating points: class indices must lie in [0, {num_gt.size}) (one ground-truth "
            f"count per class), got {classes.min()}..{classes.max()}."
        )
    return scores, is_tp, classes, num_gt


def operating_points_from_detections(
    scores, is_tp, classes, num_gt: Sequence[int],
    class_names: Optional[Sequence[str]] = None,
) -> Tuple[OperatingPoint, Dict[str, OperatingPoint], float]:
    """The overall (pooled) and per-class operating points of matched detections.

    Any matching can feed this (COCO's, VOC's, LVIS's): it only needs, per evaluated
    detection, whether it is a true positive; ignored detections are left out by the caller.

    Args:
        scores: (N,) scores of the non-ignored detections.
        is_tp: (N,) bool, whether each is a true positive (else a false positive).
        classes: (N,) int, each detection's class index into ``num_gt``.
        num_gt: (K,) the number of non-ignored ground-truth objects of each class.
        class_names: K names, one per class index; per-class points only when given with
            exactly K names (else none are computed).

    Returns:
        ``(overall, {class name: point}, lowest score)``: the lowest score among the given
        detections (NaN when none), to tell how low a threshold could have gone.

    Raises:
        ValueError: for arrays of different lengths or class indices outside ``num_gt``.
    """
    scores, is_tp, classes, num_gt = _as_detections(scores, is_tp, classes, num_gt)
    overall = best_f1_point(scores, is_tp, int(num_gt.sum()))
    per_class: Dict[str, OperatingPoint] = {}
    if class_names and len(class_names) == num_gt.size:
        for k, name in enumerate(class_names):
            mine = classes == k
            per_class[name] = best_f1_point(scores[mine], is_tp[mine], int(num_gt[k]))
    lowest = float(scores.min()) if scores.size else math.nan
    return overall, per_class, lowest


def _flatten_coco_matches(
    matches: Mapping[int, CategoryMatches]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[int]]:
    """``match_detections``'s per-category matches as flat (scores, is_tp, classes, num_gt),
    class indices in category-id order."""
    ordered = [matches[cat_id] for cat_id in sorted(matches)]
    if not ordered:
        return np.zeros(0), np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64), []
    scores = np.concatenate([m.scores for m in ordered])
    is_tp = np.concatenate([m.is_tp for m in ordered])
    classes = np.concatenate([np.full(m.scores.size, k) for k, m in enumerate(ordered)])
    return scores, is_tp, classes, [m.num_gt for m in ordered]


def compute_operating_points(
    coco_eval, class_names: Optional[Sequence[str]] = None
) -> Tuple[OperatingPoint, Dict[str, OperatingPoint], float]:
    """The overall (pooled) and per-class operating points of an evaluated COCOeval.

    Args:
        coco_eval: a bbox or segm COCOeval after ``evaluate()`` (either back-end).
        class_names: names in category-id order; per-class points need one name per category
            of the ground truth (else none are computed).

    Returns:
        As ``operating_points_from_detections``.
    """
    matches = match_detections(coco_eval, OPERATING_POINT_IOU)
    return operating_points_from_detections(*_flatten_coco_matches(matches), class_names)


def operating_point_results(
    overall: OperatingPoint, per_class: Mapping[str, OperatingPoint]
) -> Dict[str, float]:
    """The result-dict entries of the operating points.

    Returns:
        ``{"P@F1max": .., "R@F1max": .., "F1max": .., "thresh@F1max": ..}`` then, per class,
        the same names suffixed with ``-<class>``.
    """
    results = dict(zip(_NAMES, map(float, overall)))
    for name, point in per_class.items():
        results.update({f"{key}-{name}": float(v) for key, v in zip(_NAMES, point)})
    return results


def per_class_table(per_class: Mapping[str, OperatingPoint], groups_per_row: int = 2) -> str:
    """A pipe table of the per-class points: (category, P, R, F1, thresh) groups side by side.

    Args:
        per_class: ``{class name: OperatingPoint}``.
        groups_per_row: classes per table row.

    Returns:
        The table text (P, R, F1 with 3 decimals, the threshold with 3; NaN as ``nan``).
    """
    if groups_per_row < 1:
        raise ValueError(f"per_class_table: groups_per_row={groups_per_row}; use 1 or more.")
    cells: List[List] = [[name, *point] for name, point in per_class.items()]
    width = min(groups_per_row, max(len(cells), 1))
    rows = []
    for start in range(0, len(cells), width):
        group = cells[start : start + width]
        group += [[None] * 5] * (width - len(group))
        rows.append([value for cell in group for value in cell])
    headers = ["category", "P", "R", "F1", "thresh"] * width
    return tabulate(rows, headers=headers, tablefmt="pipe", floatfmt=".3f", numalign="left")


def report_operating_points(
    coco_eval, iou_type: str, class_names: Optional[Sequence[str]] = None,
    output_dir: Optional[str] = None,
) -> Dict[str, float]:
    """Compute the operating points of a COCOeval, log them as tables and return them.

    Args:
        coco_eval: a bbox or segm COCOeval after ``evaluate()``.
        iou_type: "bbox" or "segm", for the log lines.
        class_names: names in category-id order; per-class points (and keys) only with more
            than one class, as for ``AP-<class>``.
        output_dir: where the per-class CSV goes when there are too many classes for the
            results (see ``report_operating_points_from_detections``).

    Returns:
        ``operating_point_results`` of the overall and per-class points.
    """
    matches = match_detections(coco_eval, OPERATING_POINT_IOU)
    return report_operating_points_from_detections(
        *_flatten_coco_matches(matches), iou_type=iou_type, class_names=class_names,
        output_dir=output_dir,
    )


def write_per_class_csv(per_class: Mapping[str, OperatingPoint], path: str) -> None:
    """Write ``{class: OperatingPoint}`` as CSV rows ``category,P,R,F1,thresh`` to ``path``."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["category", "P", "R", "F1", "thresh"])
        for name, point in per_class.items():
            writer.writerow([name, *(f"{v:.4f}" for v in point)])


def report_operating_points_from_detections(
    scores, is_tp, classes, num_gt: Sequence[int], iou_type: str,
    class_names: Optional[Sequence[str]] = None, matching: str = "COCO",
    output_dir: Optional[str] = None,
) -> Dict[str, float]:
    """Compute the operating points of matched detections, log them as tables, return them.

    Args:
        scores, is_tp, classes, num_gt: as ``operating_points_from_detections``.
        iou_type: "bbox" or "segm", for the log lines.
        class_names: one name per class index; per-class points (and keys) only with more
            than one class and one name per class.
        matching: the matching rules used ("COCO", "VOC", "LVIS"), for the log lines.
        output_dir: with more than ``MAX_CLASSES_IN_RESULTS`` classes the per-class points are
            left out of the results and the log and written to
            ``<output_dir>/operating_points_<iou_type>.csv`` instead (nowhere without it).

    Returns:
        ``operating_point_results`` of the overall and, up to ``MAX_CLASSES_IN_RESULTS``
        classes, the per-class points.
    """
    names = class_names if class_names and len(class_names) > 1 else None
    overall, per_class, lowest = operating_points_from_detections(
        scores, is_tp, classes, num_gt, names
    )
    hint = ""
    if overall.threshold == lowest:
        hint = " The best threshold is that lowest score: a lower test threshold might do better."
    logger.info(
        "Operating point of %s at max F1 (IoU %.2f, %s matching, classes pooled; P/R/F1 in %%, "
        "thresh a score): \n%s\nThresholds below %.3f, the lowest score evaluated, cannot be "
        "chosen: the model drops scores under its test threshold (e.g. "
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST).%s",
        iou_type,
        OPERATING_POINT_IOU,
        matching,
        create_small_table(operating_point_results(overall, {})),
        lowest,
        hint,
    )
    if len(per_class) > MAX_CLASSES_IN_RESULTS:
        where = "not kept (the evaluator has no output directory)"
        if output_dir:
            path = os.path.join(output_dir, f"operating_points_{iou_type}.csv")
            os.makedirs(output_dir, exist_ok=True)
            write_per_class_csv(per_class, path)
            where = f"written to {path}"
        logger.info(
            "Per-category %s operating points of %d categories (more than %d, so not in the "
            "results): %s.", iou_type, len(per_class), MAX_CLASSES_IN_RESULTS, where,
        )
        per_class = {}
    if per_class:
        logger.info(
            "Per-category %s operating point at max F1 (each class its own threshold): \n%s",
            iou_type,
            per_class_table(per_class),
        )
    return operating_point_results(overall, per_class)
