"""Average recall of region proposals against COCO ground truth (used by ``COCOEvaluator``).

This is the proposal metric of Detectron2 (and of Fast/Faster R-CNN before it), not a COCO API
metric: for each image the proposals (best objectness first, at most ``limit``) are greedily
matched one-to-one with the non-crowd ground-truth boxes of the chosen area range, each match
taking the currently best-covered ground truth and its best proposal; recall is the fraction of
ground-truth boxes whose matched IoU reaches a threshold, averaged over thresholds 0.5:0.05:0.95.
"""

import logging
from typing import Any, Dict, List, Optional

import torch

from ..structures import Boxes, BoxMode, pairwise_iou

__all__ = ["evaluate_box_proposals_ar", "PROPOSAL_AREA_RANGES"]

logger = logging.getLogger(__name__)

# Ground-truth area ranges (COCO ``area`` field, pixels^2), inclusive at both ends.
PROPOSAL_AREA_RANGES = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
    "96-128": (96.0**2, 128.0**2),
    "128-256": (128.0**2, 256.0**2),
    "256-512": (256.0**2, 512.0**2),
    "512-inf": (512.0**2, 1e10),
}


def _greedy_matched_ious(overlaps: torch.Tensor) -> torch.Tensor:
    """IoU of each greedy one-to-one match in a (proposals, gts) IoU matrix.

    Repeatedly take the ground truth whose best proposal overlaps most, record that IoU and
    remove both from further matching; stops when either side runs out.
    """
    overlaps = overlaps.clone()
    num_matches = min(overlaps.shape)
    matched = torch.zeros(overlaps.shape[1])
    for j in range(num_matches):
        best_per_gt, best_proposal = overlaps.max(dim=0)
        _, gt_index = best_per_gt.max(dim=0)
        proposal_index = best_proposal[gt_index]
        matched[j] = overlaps[proposal_index, gt_index]
        overlaps[proposal_index, :] = -1
        overlaps[:, gt_index] = -1
    return matched


def evaluate_box_proposals_ar(
    dataset_predictions: List[Dict[str, Any]],
    coco_api,
    thresholds: Optional[torch.Tensor] = None,
    area: str = "all",
    limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Average recall of the proposals in ``dataset_predictions``.

    Args:
        dataset_predictions: dicts with ``image_id`` and ``proposals`` (``Instances`` with
            ``proposal_boxes`` (XYXY_ABS) and ``objectness_logits``).
        coco_api: the ground truth (a pycocotools / faster-coco-eval ``COCO``).
        thresholds: IoU thresholds (default 0.5, 0.55, ..., 0.95).
        area: a key of ``PROPOSAL_AREA_RANGES``.
        limit: use at most this many proposals per image (the highest-scoring).

    Returns:
        dict with ``ar`` (scalar tensor), ``recalls`` (per threshold), ``thresholds``,
        ``gt_overlaps`` (sorted matched IoUs) and ``num_pos`` (ground truths counted). Images
        without proposals or without (non-crowd) ground truth are skipped entirely; with no
        ground truth counted at all the recalls are NaN.
    """
    if area not in PROPOSAL_AREA_RANGES:
        raise ValueError(
            f"Unknown proposal area range '{area}'; choose from {list(PROPOSAL_AREA_RANGES)}."
        )
    low, high = PROPOSAL_AREA_RANGES[area]
    matched_ious = []
    num_pos = 0
    for prediction in dataset_predictions:
        proposals = prediction["proposals"]
        order = proposals.objectness_logits.sort(descending=True)[1]
        proposals = proposals[order]

        anns = coco_api.loadAnns(coco_api.getAnnIds(imgIds=prediction["image_id"]))
        anns = [a for a in anns if not a.get("iscrowd", 0)]
        gt_boxes = torch.as_tensor(
            [BoxMode.convert(list(a["bbox"]), BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns],
            dtype=torch.float32,
        ).reshape(-1, 4)
        gt_areas = torch.as_tensor([float(a["area"]) for a in anns], dtype=torch.float32)
        if len(gt_boxes) == 0 or len(proposals) == 0:
            continue

        in_range = (gt_areas >= low) & (gt_areas <= high)
        gt_boxes = gt_boxes[in_range]
        num_pos += len(gt_boxes)
        if len(gt_boxes) == 0:
            continue
        if limit is not None and len(proposals) > limit:
            proposals = proposals[:limit]
        overlaps = pairwise_iou(proposals.proposal_boxes, Boxes(gt_boxes))
        matched_ious.append(_greedy_matched_ious(overlaps))

    gt_overlaps = (
        torch.cat(matched_ious, dim=0) if matched_ious else torch.zeros(0, dtype=torch.float32)
    )
    gt_overlaps, _ = torch.sort(gt_overlaps)
    if thresholds is None:
        thresholds = torch.arange(0.5, 0.95 + 1e-5, 0.05, dtype=torch.float32)
    recalls = torch.zeros_like(thresholds)
    for i, threshold in enumerate(thresholds):
        # 0 / 0 = NaN when no ground truth falls in the area range, as in Detectron2.
        recalls[i] = (gt_overlaps >= threshold).float().sum() / float(num_pos)
    if num_pos == 0:
        logger.debug("No ground-truth boxes in area range '%s': proposal recall is NaN.", area)
    return {
        "ar": recalls.mean(),
        "recalls": recalls,
        "thresholds": thresholds,
        "gt_overlaps": gt_overlaps,
        "num_pos": num_pos,
    }
