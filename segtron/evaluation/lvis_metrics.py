"""LVIS AP and AR from the federated matching (the second half of LVIS evaluation).

Given ``lvis_matching.match_federated``'s per-image matches, precision and recall are
accumulated per IoU threshold, category and area range exactly as COCO does (and as the
lvis-api does): the category's non-ignored detections over all images sorted by descending
score (stable), precision made non-increasing from the right, then read at the 101 recall
points 0:0.01:1 (0 past the highest recall reached); recall is the final recall. A category
without non-ignored ground truth in an area range is undefined there (-1) and left out of
every mean.

Summary (``LVIS_METRICS``, fractions; -1 when nothing is defined): AP (mean over thresholds,
recall points and categories, area "all"), AP50, AP75, APs / APm / APl (by area range), APr /
APc / APf (over the rare / common / frequent categories: the ``frequency`` field "r", "c",
"f" of each json category, by training-image count < 10, 10..99, >= 100), then AR@<max dets>
and ARs / ARm / ARl at that limit (mean final recall over thresholds and categories).
"""

import logging
from collections import OrderedDict
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .lvis_matching import (
    LVIS_AREA_RANGES,
    LVIS_IOU_THRESHOLDS,
    FederatedMatches,
    match_federated,
)

__all__ = [
    "FREQUENCY_GROUPS",
    "LVIS_RECALL_THRESHOLDS",
    "accumulate_federated",
    "evaluate_lvis",
    "format_summary_lines",
    "frequency_groups",
    "lvis_metric_names",
    "precision_at_recalls",
    "summarize_lvis",
    "summarize_matches",
]

logger = logging.getLogger(__name__)

LVIS_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
FREQUENCY_GROUPS = ("r", "c", "f")
_AREA_LABELS = [label for label, _, _ in LVIS_AREA_RANGES]


def lvis_metric_names(max_dets: int = 300) -> List[str]:
    """The summary keys, in order: AP ... APf, then ``AR@<max_dets>`` and ARs/ARm/ARl."""
    aps = ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"]
    return aps + [f"AR{s}@{max_dets}" for s in ("", "s", "m", "l")]


def precision_at_recalls(scores: np.ndarray, is_tp: np.ndarray, num_gt: int,
                         recall_thresholds: np.ndarray = LVIS_RECALL_THRESHOLDS
                         ) -> Tuple[np.ndarray, float]:
    """COCO's interpolated precision of one category at one IoU threshold and area range.

    Args:
        scores: (N,) scores of the non-ignored detections (any order).
        is_tp: (N,) bool, whether each is a true positive.
        num_gt: the number of non-ignored ground-truth objects (> 0).
        recall_thresholds: the recall points.

    Returns:
        (precision at each recall point, final recall).
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = np.asarray(is_tp, dtype=bool)[order]
    tp = np.cumsum(hits).astype(np.float64)
    fp = np.cumsum(~hits).astype(np.float64)
    recall = tp / num_gt
    precision = tp / (fp + tp + np.spacing(1))
    # Non-increasing from the right: the best precision at this recall or any higher one.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at_recall = np.zeros(len(recall_thresholds), dtype=np.float64)
    idx = np.searchsorted(recall, recall_thresholds, side="left")
    reached = idx < len(precision)
    at_recall[reached] = precision[idx[reached]]
    return at_recall, float(recall[-1]) if len(recall) else 0.0


def accumulate_federated(matches: FederatedMatches) -> Tuple[np.ndarray, np.ndarray]:
    """Precision (T, R, K, A) and recall (T, K, A) arrays of ``matches``; -1 where undefined."""
    num_t, num_k, num_a = len(LVIS_IOU_THRESHOLDS), len(matches.cat_ids), len(LVIS_AREA_RANGES)
    precision = -np.ones((num_t, len(LVIS_RECALL_THRESHOLDS), num_k, num_a))
    recall = -np.ones((num_t, num_k, num_a))
    empty = (np.zeros(0), np.zeros(0, dtype=bool))
    for k in range(num_k):
        for a in range(num_a):
            if matches.num_gt[k, a] == 0:
                continue
            for t in range(num_t):
                parts = matches.parts.get((k, a, t), [empty])
                scores = np.concatenate([s for s, _ in parts])
                is_tp = np.concatenate([h for _, h in parts])
                precision[t, :, k, a], recall[t, k, a] = precision_at_recalls(
                    scores, is_tp, int(matches.num_gt[k, a])
                )
    return precision, recall


def frequency_groups(categories: Sequence[dict]) -> List[List[int]]:
    """Indices (into ``categories`` sorted by id) of the rare, common and frequent categories.

    Raises:
        ValueError: for a category without a ``frequency`` of "r", "c" or "f".
    """
    groups: List[List[int]] = [[] for _ in FREQUENCY_GROUPS]
    for idx, cat in enumerate(sorted(categories, key=lambda c: c["id"])):
        frequency = cat.get("frequency")
        if frequency not in FREQUENCY_GROUPS:
            raise ValueError(
                f"LVIS evaluation: category {cat['id']} ({cat.get('name')!r}) has frequency "
                f"{frequency!r}; every LVIS category needs 'r', 'c' or 'f' (rare / common / "
                "frequent). Use an LVIS json, or add the field to its categories."
            )
        groups[FREQUENCY_GROUPS.index(frequency)].append(idx)
    return groups


def _mean_defined(values: np.ndarray) -> float:
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else -1.0


def summarize_lvis(precision: np.ndarray, recall: np.ndarray, groups: List[List[int]],
                   max_dets: int = 300) -> "OrderedDict[str, float]":
    """The summary metrics (``lvis_metric_names(max_dets)``) of accumulated arrays, fractions.

    Args:
        precision: (T, R, K, A) from ``accumulate_federated``.
        recall: (T, K, A).
        groups: ``frequency_groups`` of the K categories.
        max_dets: the per-image limit used (only names the AR keys).
    """
    every = _AREA_LABELS.index("all")
    t50 = int(np.argmin(np.abs(LVIS_IOU_THRESHOLDS - 0.5)))
    t75 = int(np.argmin(np.abs(LVIS_IOU_THRESHOLDS - 0.75)))
    values = [
        _mean_defined(precision[..., every]),
        _mean_defined(precision[t50, ..., every]),
        _mean_defined(precision[t75, ..., every]),
    ]
    values += [_mean_defined(precision[..., _AREA_LABELS.index(a)])
               for a in ("small", "medium", "large")]
    values += [_mean_defined(precision[:, :, group, every]) for group in groups]
    values += [_mean_defined(recall[..., _AREA_LABELS.index(a)])
               for a in ("all", "small", "medium", "large")]
    return OrderedDict(zip(lvis_metric_names(max_dets), values))


def evaluate_lvis(gt_api, results: Sequence[dict], iou_type: str,
                  max_dets: int = 300) -> "OrderedDict[str, float]":
    """LVIS's federated evaluation of ``results`` (what lvis-api's LVISEval reports).

    Args:
        gt_api: the LVIS json as a pycocotools ``COCO`` (categories with ``frequency``,
            images with ``neg_category_ids`` / ``not_exhaustive_category_ids``).
        results: result dicts (``image_id``, ``category_id`` in json ids, ``score``, ``bbox``
            XYWH for "bbox" / ``segmentation`` RLE for "segm"); not modified.
        iou_type: "bbox" or "segm".
        max_dets: detections kept per image, top scores over all categories (-1: all).

    Returns:
        ``OrderedDict`` of ``lvis_metric_names(max_dets)`` -> fraction in [0, 1], or -1 where
        no category has ground truth (e.g. APr without rare categories).
    """
    return summarize_matches(gt_api, match_federated(gt_api, results, iou_type, max_dets),
                             max_dets)


def summarize_matches(gt_api, matches: FederatedMatches,
                      max_dets: int = 300) -> "OrderedDict[str, float]":
    """``evaluate_lvis``'s summary from an existing ``match_federated`` result (``gt_api``'s
    categories give the frequency groups; ``max_dets`` only names the AR keys)."""
    groups = frequency_groups(list(gt_api.cats.values()))
    precision, recall = accumulate_federated(matches)
    return summarize_lvis(precision, recall, groups, max_dets)


def format_summary_lines(results: Dict[str, float], iou_type: str, max_dets: int) -> List[str]:
    """Takes ``summarize_lvis``'s dict; returns a title and one lvis-api style line per metric
    ("Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=300 ... ] = 0.123")."""
    lines = [f"LVIS {iou_type} evaluation (federated; maxDets: detections kept per image):"]
    for key, value in results.items():
        kind = "Average Precision  (AP)" if key.startswith("AP") else "Average Recall     (AR)"
        tag = key[2:3]
        iou = f"{int(key[2:]) / 100:0.2f}" if tag.isdigit() else "0.50:0.95"
        area = {"s": "small", "m": "medium", "l": "large"}.get(tag, "all")
        cats = tag if tag in FREQUENCY_GROUPS else "all"
        lines.append(f" {kind} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_dets} "
                     f"catIds={cats:>3s} ] = {value:0.3f}")
    return lines
