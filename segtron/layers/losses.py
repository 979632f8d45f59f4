"""Box-regression and classification losses with Detectron2/fvcore semantics.

All take element-wise inputs and a ``reduction`` of "none" (default), "mean" or "sum"; "mean"
of an empty input is 0 (with a gradient path) instead of NaN.
"""

import math

import torch
from torch.nn import functional as F

__all__ = ["ciou_loss", "diou_loss", "giou_loss", "sigmoid_focal_loss", "smooth_l1_loss"]


def _reduce(loss: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"{name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def smooth_l1_loss(
    input: torch.Tensor, target: torch.Tensor, beta: float, reduction: str = "none"
) -> torch.Tensor:
    """Smooth L1 (Huber-like) loss, element-wise.

    With ``n = |input - target|``: ``0.5 * n**2 / beta`` where ``n < beta``, else
    ``n - 0.5 * beta``. ``beta < 1e-5`` means plain L1 (``n``), which also avoids 0/0.
    ``input`` and ``target`` have the same shape; returns that shape, or a scalar if reduced.
    """
    diff = torch.abs(input - target)
    if beta < 1e-5:
        loss = diff
    else:
        loss = torch.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta)
    return _reduce(loss, reduction, "smooth_l1_loss")


def _check_boxes(boxes: torch.Tensor, what: str, name: str) -> None:
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name}: {what} must have shape (..., 4) XYXY, got {tuple(boxes.shape)}")
    if not bool((boxes[..., 2] >= boxes[..., 0]).all()):
        raise ValueError(f"{name}: bad box in {what}: x0 larger than x1 (boxes must be XYXY)")
    if not bool((boxes[..., 3] >= boxes[..., 1]).all()):
        raise ValueError(f"{name}: bad box in {what}: y0 larger than y1 (boxes must be XYXY)")


def _intersection_union(boxes1: torch.Tensor, boxes2: torch.Tensor):
    """Areas of intersection and union of matching XYXY boxes, shape (...)."""
    ax0, ay0, ax1, ay1 = boxes1.unbind(dim=-1)
    bx0, by0, bx1, by1 = boxes2.unbind(dim=-1)
    iw = torch.min(ax1, bx1) - torch.max(ax0, bx0)
    ih = torch.min(ay1, by1) - torch.max(ay0, by0)
    overlap = (iw > 0) & (ih > 0)
    inter = torch.where(overlap, iw * ih, torch.zeros_like(iw))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter, union


def _enclosing(boxes1: torch.Tensor, boxes2: torch.Tensor):
    """Width and height of the smallest box enclosing each pair."""
    ax0, ay0, ax1, ay1 = boxes1.unbind(dim=-1)
    bx0, by0, bx1, by1 = boxes2.unbind(dim=-1)
    return torch.max(ax1, bx1) - torch.min(ax0, bx0), torch.max(ay1, by1) - torch.min(ay0, by0)


def giou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """Generalised IoU loss ``1 - GIoU`` of matching XYXY boxes (Rezatofighi et al. 2019).

    ``GIoU = IoU - (area_C - union) / area_C`` with C the smallest enclosing box;
    ``IoU = inter / (union + eps)`` and ``area_C + eps`` in the second denominator.
    boxes1, boxes2: (..., 4) with x1 >= x0 and y1 >= y0. Returns (...) or a scalar; in [0, 2].
    """
    _check_boxes(boxes1, "boxes1", "giou_loss")
    _check_boxes(boxes2, "boxes2", "giou_loss")
    inter, union = _intersection_union(boxes1, boxes2)
    iou = inter / (union + eps)
    cw, ch = _enclosing(boxes1, boxes2)
    area_c = cw * ch
    giou = iou - (area_c - union) / (area_c + eps)
    return _reduce(1 - giou, reduction, "giou_loss")


def _centre_distance_terms(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float):
    """(IoU, squared centre distance / (squared enclosing diagonal + eps)) per pair."""
    inter, union = _intersection_union(boxes1, boxes2)
    iou = inter / (union + eps)
    cw, ch = _enclosing(boxes1, boxes2)
    diag_sq = cw**2 + ch**2 + eps
    ax0, ay0, ax1, ay1 = boxes1.unbind(dim=-1)
    bx0, by0, bx1, by1 = boxes2.unbind(dim=-1)
    dist_sq = ((ax0 + ax1) / 2 - (bx0 + bx1) / 2) ** 2 + ((ay0 + ay1) / 2 - (by0 + by1) / 2) ** 2
    return iou, dist_sq / diag_sq


def diou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """Distance-IoU loss ``1 - IoU + d**2 / c**2`` (Zheng et al. 2019).

    d: distance between the box centres; c: diagonal of the smallest enclosing box (eps added
    to c**2 and to the union). boxes1, boxes2: (..., 4) XYXY. Returns (...) or a scalar.
    """
    _check_boxes(boxes1, "boxes1", "diou_loss")
    _check_boxes(boxes2, "boxes2", "diou_loss")
    iou, dist_term = _centre_distance_terms(boxes1, boxes2, eps)
    return _reduce(1 - iou + dist_term, reduction, "diou_loss")


def ciou_loss(
    boxes1: torch.Tensor, boxes2: torch.Tensor, reduction: str = "none", eps: float = 1e-7
) -> torch.Tensor:
    """Complete-IoU loss ``1 - IoU + d**2 / c**2 + alpha * v`` (Zheng et al. 2019).

    ``v = 4 / pi**2 * (atan(w2 / h2) - atan(w1 / h1))**2`` measures aspect-ratio mismatch
    (boxes2 is the target) and ``alpha = v / (1 - IoU + v + eps)`` is treated as a constant
    (no gradient). boxes1, boxes2: (..., 4) XYXY. Returns (...) or a scalar.
    """
    _check_boxes(boxes1, "boxes1", "ciou_loss")
    _check_boxes(boxes2, "boxes2", "ciou_loss")
    iou, dist_term = _centre_distance_terms(boxes1, boxes2, eps)
    ax0, ay0, ax1, ay1 = boxes1.unbind(dim=-1)
    bx0, by0, bx1, by1 = boxes2.unbind(dim=-1)
    v = (4 / (math.pi**2)) * torch.pow(
        torch.atan((bx1 - bx0) / (by1 - by0)) - torch.atan((ax1 - ax0) / (ay1 - ay0)), 2
    )
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return _reduce(1 - iou + dist_term + alpha * v, reduction, "ciou_loss")


def sigmoid_focal_loss(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2,
    reduction: str = "none",
) -> torch.Tensor:
    """Focal loss on sigmoid logits (Lin et al., RetinaNet), element-wise.

    ``loss = alpha_t * (1 - p_t)**gamma * BCE(inputs, targets)`` with ``p = sigmoid(inputs)``,
    ``p_t = p * t + (1 - p) * (1 - t)`` and ``alpha_t = alpha * t + (1 - alpha) * (1 - t)``;
    a negative ``alpha`` disables the alpha weighting. ``inputs`` are float logits and
    ``targets`` same-shaped binary labels (any dtype); computed in float32 or wider.
    Returns the same shape, or a scalar if reduced.
    """
    inputs = inputs.float() if inputs.dtype not in (torch.float32, torch.float64) else inputs
    targets = targets.to(inputs.dtype)
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction, "sigmoid_focal_loss")
