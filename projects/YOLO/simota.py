"""YOLOX's SimOTA label assignment (Ge et al., "YOLOX: Exceeding YOLO Series in 2021", Sec. 2.2):
which anchor points of one image are foreground, and for which ground-truth box.

Pure tensor functions, no model; every coordinate is in input-image pixels. The steps:

1. :func:`center_candidates`: an anchor point is a *candidate* when it lies inside some GT box
   or inside the square of half-side ``radius * stride`` around some GT centre. Only candidates
   enter the cost matrix (the others are background).
2. The cost of pairing GT ``g`` with candidate ``a`` (:func:`simota_cost`) is
   ``cls_cost + 3.0 * (-log IoU) + 100000 * (a is not inside both g's box and g's centre
   region)``, where ``cls_cost`` is the binary cross-entropy, summed over the classes, between
   ``sqrt(p_cls * p_obj)`` and the one-hot class of ``g``.
3. :func:`dynamic_ks`: each GT takes ``k = max(1, int(sum of its 10 largest IoUs))``.
4. :func:`dynamic_k_matching`: each GT claims its ``k`` lowest-cost candidates; a candidate
   claimed by several GTs goes to the claimant with the lowest cost.

:func:`simota_assign` chains them and returns the per-anchor training targets.
"""

from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F

from segtron.structures import Boxes, pairwise_iou

__all__ = [
    "SimOTAResult",
    "center_candidates",
    "dynamic_k_matching",
    "dynamic_ks",
    "simota_assign",
    "simota_cost",
]


def _check_boxes(name: str, boxes: torch.Tensor) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be (N, 4) XYXY boxes, got shape {tuple(boxes.shape)}.")


def center_candidates(
    anchor_centers: torch.Tensor,
    strides: torch.Tensor,
    gt_boxes: torch.Tensor,
    radius: float = 2.5,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The anchors SimOTA considers, from the geometry of the GT boxes alone.

    "Inside" is strict: a point on a box edge (or on the centre square's edge) is outside.

    Args:
        anchor_centers: (A, 2) anchor points (x, y) in pixels, e.g. ``((i + 0.5) * stride,
            (j + 0.5) * stride)`` for grid cell (i, j).
        strides: (A,) the stride (pixels) of each anchor's feature map.
        gt_boxes: (G, 4) XYXY ground-truth boxes in pixels.
        radius: half-side of the centre square, in strides.

    Returns:
        ``(candidate, in_box_and_center)``: ``candidate`` (A,) bool, True where the anchor is
        inside at least one GT box or one GT centre square; ``in_box_and_center`` (G, C) bool
        over the C = ``candidate.sum()`` candidates (in anchor order), True where the candidate
        is inside both the box and the centre square of that GT.
    """
    if anchor_centers.dim() != 2 or anchor_centers.shape[1] != 2:
        raise ValueError(
            f"anchor_centers must be (A, 2) points (x, y), got {tuple(anchor_centers.shape)}."
        )
    if strides.shape != anchor_centers.shape[:1]:
        raise ValueError(
            f"strides must be (A,) with A = {anchor_centers.shape[0]} anchors, got "
            f"{tuple(strides.shape)}; repeat each level's stride once per anchor of that level."
        )
    _check_boxes("gt_boxes", gt_boxes)
    x = anchor_centers[:, 0][None, :]  # (1, A)
    y = anchor_centers[:, 1][None, :]
    x0, y0, x1, y1 = (gt_boxes[:, i : i + 1] for i in range(4))  # each (G, 1)
    in_box = (x > x0) & (x < x1) & (y > y0) & (y < y1)  # (G, A)

    half = radius * strides[None, :].to(anchor_centers.dtype)  # (1, A)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    in_center = (x > cx - half) & (x < cx + half) & (y > cy - half) & (y < cy + half)

    candidate = in_box.any(dim=0) | in_center.any(dim=0)
    in_box_and_center = (in_box & in_center)[:, candidate]
    return candidate, in_box_and_center


def simota_cost(
    joint_scores: torch.Tensor,
    ious: torch.Tensor,
    gt_classes: torch.Tensor,
    in_box_and_center: torch.Tensor,
    iou_weight: float = 3.0,
    outside_cost: float = 100000.0,
) -> torch.Tensor:
    """The (G, C) cost of pairing each GT with each candidate anchor.

    Args:
        joint_scores: (C, K) ``sqrt(p_cls * p_obj)`` of the candidates, in [0, 1].
        ious: (G, C) IoU of each GT box with each candidate's predicted box.
        gt_classes: (G,) int64 class indices in [0, K).
        in_box_and_center: (G, C) bool, from :func:`center_candidates`.
        iou_weight: weight of ``-log(IoU + 1e-8)``.
        outside_cost: added where ``in_box_and_center`` is False.

    Returns:
        (G, C) float cost: summed BCE(joint score, one-hot class) + weighted IoU cost +
        ``outside_cost`` outside the box-and-centre region.
    """
    # BCE against a one-hot target, summed over the K classes: -log(p) for the GT class plus
    # -log(1 - p) for every other class. Written out (logs clamped at -100, as torch's BCE
    # does) rather than with F.binary_cross_entropy, which CUDA autocast refuses; and so in
    # O(G * C) memory instead of O(G * C * K).
    neg = -torch.log(1 - joint_scores).clamp(min=-100)  # (C, K)
    pos = -torch.log(joint_scores).clamp(min=-100)
    cls_cost = neg.sum(dim=1)[None, :] + (pos - neg)[:, gt_classes].T  # (G, C)
    iou_cost = -torch.log(ious + 1e-8)
    return cls_cost + iou_weight * iou_cost + outside_cost * (~in_box_and_center).to(ious.dtype)


def dynamic_ks(ious: torch.Tensor, top_candidates: int = 10) -> torch.Tensor:
    """How many anchors each GT takes: ``max(1, int(sum of its top_candidates largest IoUs))``.

    Args:
        ious: (G, C) IoU of each GT with each candidate's predicted box; C >= 1.
        top_candidates: how many of the largest IoUs are summed (fewer if C is smaller).

    Returns:
        (G,) int64, each in [1, C] (a sum of n IoUs <= 1 is at most n <= C).
    """
    n = min(top_candidates, ious.shape[1])
    top = torch.topk(ious, n, dim=1).values
    return top.sum(dim=1).to(torch.int64).clamp(min=1)


def dynamic_k_matching(
    cost: torch.Tensor, ious: torch.Tensor, top_candidates: int = 10
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Assign candidates to GTs: each GT claims its ``k`` (:func:`dynamic_ks`) lowest-cost
    candidates (the lower index first on equal cost); a candidate claimed by several GTs goes
    to the claimant with the lowest cost (the lower GT index on a tie). A GT can end up with no
    candidate when all of its claims go to other GTs.

    Args:
        cost: (G, C) pairing cost (:func:`simota_cost`).
        ious: (G, C) IoUs, for the dynamic k.
        top_candidates: passed to :func:`dynamic_ks`.

    Returns:
        ``(matched_gt, fg_mask)``: (C,) int64 GT index per candidate, -1 for background, and
        (C,) bool ``matched_gt >= 0``.
    """
    if cost.dim() != 2 or cost.shape != ious.shape:
        raise ValueError(
            f"cost and ious must both be (G, C) matrices of the same shape, got "
            f"{tuple(cost.shape)} and {tuple(ious.shape)}."
        )
    num_gt, num_cand = cost.shape
    matched_gt = torch.full((num_cand,), -1, dtype=torch.int64, device=cost.device)
    if num_gt == 0 or num_cand == 0:
        return matched_gt, matched_gt >= 0

    ks = dynamic_ks(ious, top_candidates)  # (G,)
    order = torch.argsort(cost, dim=1, stable=True)  # candidates by increasing cost, per GT
    rank_ok = torch.arange(num_cand, device=cost.device)[None, :] < ks[:, None]  # (G, C)
    claims = torch.zeros_like(cost, dtype=torch.bool)
    claims.scatter_(1, order, rank_ok)  # claims[g, order[g, r]] = r < k_g

    # Each claimed candidate goes to its cheapest claimant; unclaimed ones stay background.
    claimant_cost = torch.where(claims, cost, torch.full_like(cost, float("inf")))
    best_gt = claimant_cost.argmin(dim=0)
    fg_mask = claims.any(dim=0)
    matched_gt[fg_mask] = best_gt[fg_mask]
    return matched_gt, fg_mask


class SimOTAResult(NamedTuple):
    """Per-anchor targets of one image (A anchors, K classes).

    Attributes:
        matched_gt: (A,) int64 index of the assigned GT, -1 for background.
        fg_mask: (A,) bool, ``matched_gt >= 0``.
        iou_target: (A,) float IoU of each foreground anchor's predicted box with its GT box
            (0 for background).
        cls_target: (A, K) float, ``one_hot(gt class) * iou_target`` on foreground anchors,
            0 elsewhere (the classification target; train only foreground rows).
        obj_target: (A,) float, 1 on foreground anchors and 0 elsewhere (the objectness
            target; train all rows).
        num_fg: number of foreground anchors (python int).
    """

    matched_gt: torch.Tensor
    fg_mask: torch.Tensor
    iou_target: torch.Tensor
    cls_target: torch.Tensor
    obj_target: torch.Tensor
    num_fg: int


@torch.no_grad()
def simota_assign(
    cls_probs: torch.Tensor,
    obj_probs: torch.Tensor,
    pred_boxes: torch.Tensor,
    anchor_centers: torch.Tensor,
    strides: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_classes: torch.Tensor,
    *,
    radius: float = 2.5,
    top_candidates: int = 10,
    iou_weight: float = 3.0,
    outside_cost: float = 100000.0,
) -> SimOTAResult:
    """Run SimOTA on one image (no gradient flows through the assignment).

    Args:
        cls_probs: (A, K) class probabilities, i.e. ``sigmoid(class logits)``.
        obj_probs: (A,) or (A, 1) objectness probabilities, ``sigmoid(objectness logit)``.
            The classification cost uses ``sqrt(cls_probs * obj_probs)``.
        pred_boxes: (A, 4) decoded predicted boxes, XYXY pixels.
        anchor_centers: (A, 2) anchor points (x, y) in pixels.
        strides: (A,) stride in pixels of each anchor.
        gt_boxes: (G, 4) XYXY ground-truth boxes in pixels.
        gt_classes: (G,) int64 class indices in [0, K).
        radius, top_candidates, iou_weight, outside_cost: see :func:`center_candidates`,
            :func:`dynamic_ks` and :func:`simota_cost` (YOLOX: 2.5, 10, 3.0, 1e5).

    Returns:
        :class:`SimOTAResult`. With no GT, or no anchor inside any GT's box or centre square,
        every anchor is background and ``num_fg`` is 0.
    """
    num_anchors = pred_boxes.shape[0]
    if cls_probs.dim() != 2 or cls_probs.shape[0] != num_anchors:
        raise ValueError(
            f"cls_probs must be (A, K) with A = {num_anchors} (the rows of pred_boxes), got "
            f"{tuple(cls_probs.shape)}."
        )
    obj_probs = obj_probs.reshape(-1)
    if obj_probs.shape[0] != num_anchors:
        raise ValueError(
            f"obj_probs must hold one objectness per anchor (A = {num_anchors}), got "
            f"{obj_probs.shape[0]} values."
        )
    _check_boxes("pred_boxes", pred_boxes)
    _check_boxes("gt_boxes", gt_boxes)
    if gt_classes.shape != gt_boxes.shape[:1]:
        raise ValueError(
            f"gt_classes must be (G,) with G = {gt_boxes.shape[0]} (the rows of gt_boxes), got "
            f"{tuple(gt_classes.shape)}."
        )
    num_classes = cls_probs.shape[1]
    for name, probs in (("cls_probs", cls_probs), ("obj_probs", obj_probs)):
        if probs.numel() and (probs.min() < 0 or probs.max() > 1):
            raise ValueError(
                f"{name} must be probabilities in [0, 1]; apply sigmoid to the logits first."
            )
    if gt_classes.numel() and (gt_classes.min() < 0 or gt_classes.max() >= num_classes):
        raise ValueError(
            f"gt_classes must be in [0, {num_classes}) (K = cls_probs.shape[1]), got values in "
            f"[{int(gt_classes.min())}, {int(gt_classes.max())}]."
        )

    dtype = torch.float32
    device = pred_boxes.device
    matched_gt = torch.full((num_anchors,), -1, dtype=torch.int64, device=device)
    iou_target = torch.zeros(num_anchors, dtype=dtype, device=device)
    cls_target = torch.zeros(num_anchors, num_classes, dtype=dtype, device=device)

    def result() -> SimOTAResult:
        fg = matched_gt >= 0
        return SimOTAResult(matched_gt, fg, iou_target, cls_target, fg.to(dtype), int(fg.sum()))

    if gt_boxes.shape[0] == 0 or num_anchors == 0:
        return result()
    candidate, in_box_and_center = center_candidates(
        anchor_centers.to(dtype), strides, gt_boxes.to(dtype), radius
    )
    if not bool(candidate.any()):
        return result()

    cand_idx = candidate.nonzero().squeeze(1)  # (C,)
    ious = pairwise_iou(Boxes(gt_boxes.to(dtype)), Boxes(pred_boxes[cand_idx].to(dtype)))
    joint = (cls_probs[cand_idx].to(dtype) * obj_probs[cand_idx, None].to(dtype)).sqrt()
    cost = simota_cost(joint, ious, gt_classes, in_box_and_center, iou_weight, outside_cost)
    cand_gt, cand_fg = dynamic_k_matching(cost, ious, top_candidates)

    fg_idx = cand_idx[cand_fg]
    fg_gt = cand_gt[cand_fg]
    fg_iou = ious[fg_gt, cand_fg.nonzero().squeeze(1)]
    matched_gt[fg_idx] = fg_gt
    iou_target[fg_idx] = fg_iou
    cls_target[fg_idx] = F.one_hot(gt_classes[fg_gt], num_classes).to(dtype) * fg_iou[:, None]
    return result()
