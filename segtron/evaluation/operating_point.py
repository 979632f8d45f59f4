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
"""

import logging
import math
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from tabulate import tabulate

from ..utils.logger import create_small_table
from .coco_matching import CategoryMatches, match_detections

__all__ = [
    "OPERATING_POINT_IOU",
    "OperatingPoint",
    "best_f1_point",
    "compute_operating_points",
    "operating_point_results",
    "per_class_table",
    "report_operating_points",
]

logger = logging.getLogger(__name__)

OPERATING_POINT_IOU = 0.5
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


def _pooled(matches: Iterable[CategoryMatches]) -> OperatingPoint:
    matches = list(matches)
    scores = np.concatenate([m.scores for m in matches]) if matches else np.zeros(0)
    is_tp = np.concatenate([m.is_tp for m in matches]) if matches else np.zeros(0, dtype=bool)
    return best_f1_point(scores, is_tp, sum(m.num_gt for m in matches))


def compute_operating_points(
    coco_eval, class_names: Optional[Sequence[str]] = None
) -> Tuple[OperatingPoint, Dict[str, OperatingPoint], float]:
    """The overall (pooled) and per-class operating points of an evaluated COCOeval.

    Args:
        coco_eval: a bbox or segm COCOeval after ``evaluate()`` (either back-end).
        class_names: names in category-id order; per-class points need one name per category
            of the ground truth (else none are computed).

    Returns:
        ``(overall, {class name: point}, lowest score)``: the lowest score among the evaluated
        detections (NaN when none), to tell how low a threshold could have gone.
    """
    matches = match_detections(coco_eval, OPERATING_POINT_IOU)
    overall = _pooled(matches.values())
    per_class: Dict[str, OperatingPoint] = {}
    if class_names and len(class_names) == len(matches):
        for name, cat_id in zip(class_names, sorted(matches)):
            m = matches[cat_id]
            per_class[name] = best_f1_point(m.scores, m.is_tp, m.num_gt)
    lowest = min((float(m.scores.min()) for m in matches.values() if m.scores.size),
                 default=math.nan)
    return overall, per_class, lowest


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
    coco_eval, iou_type: str, class_names: Optional[Sequence[str]] = None
) -> Dict[str, float]:
    """Compute the operating points of a COCOeval, log them as tables and return them.

    Args:
        coco_eval: a bbox or segm COCOeval after ``evaluate()``.
        iou_type: "bbox" or "segm", for the log lines.
        class_names: names in category-id order; per-class points (and keys) only with more
            than one class, as for ``AP-<class>``.

    Returns:
        ``operating_point_results`` of the overall and per-class points.
    """
    names = class_names if class_names and len(class_names) > 1 else None
    overall, per_class, lowest = compute_operating_points(coco_eval, names)
    hint = ""
    if overall.threshold == lowest:
        hint = " The best threshold is that lowest score: a lower test threshold might do better."
    logger.info(
        "Operating point of %s at max F1 (IoU %.2f, classes pooled; P/R/F1 in %%, thresh a "
        "score): \n%s\nThresholds below %.3f, the lowest score evaluated, cannot be chosen: the "
        "model drops scores under its test threshold (e.g. MODEL.ROI_HEADS.SCORE_THRESH_TEST).%s",
        iou_type,
        OPERATING_POINT_IOU,
        create_small_table(operating_point_results(overall, {})),
        lowest,
        hint,
    )
    if per_class:
        logger.info(
            "Per-category %s operating point at max F1 (each class its own threshold): \n%s",
            iou_type,
            per_class_table(per_class),
        )
    return operating_point_results(overall, per_class)
