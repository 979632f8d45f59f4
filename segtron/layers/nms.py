"""Non-maximum suppression, as in ``detectron2.layers.nms``, on ``torchvision.ops``.

Rotated-box NMS (``nms_rotated``, ``batched_nms_rotated``) is not provided: torchvision has
no kernel for it.
"""

import torch
from torchvision.ops import boxes as _box_ops
from torchvision.ops import nms

__all__ = ["batched_nms", "batched_nms_topk", "nms"]


def _check_boxes(boxes: torch.Tensor, caller: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{caller}: boxes must have shape (N, 4), got {tuple(boxes.shape)}")


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS run independently within each group of ``idxs`` (e.g. class or feature level).

    Args:
        boxes: (N, 4) XYXY boxes; computed in float32 (fp16 lacks the range for the
            per-group coordinate offsets).
        scores: (N,) scores.
        idxs: (N,) int64 group of each box; boxes in different groups never suppress each
            other.
        iou_threshold: drop a box whose IoU with a higher-scoring kept box of the same group
            is > this.

    Returns:
        int64 tensor of the kept indices into ``boxes``, sorted by decreasing score.
    """
    _check_boxes(boxes, "batched_nms")
    return _box_ops.batched_nms(boxes.float(), scores, idxs, iou_threshold)


# torchvision.ops.batched_nms runs one NMS on class-offset boxes up to this many box
# coordinates and a per-class loop above it (torchvision 0.29). Only the loop makes each
# class's decisions independent of the other boxes: the offsets scale with the largest
# coordinate of all boxes, so a subset can round differently.
def _full_run_loops_per_class(boxes: torch.Tensor) -> bool:
    return boxes.numel() > (4000 if boxes.device.type == "cpu" else 100_000)


def _per_class_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """torchvision's per-class loop; ties are returned in index order (stable sort)."""
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for c in torch.unique(idxs):
        members = torch.where(idxs == c)[0]
        keep_mask[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.where(keep_mask)[0]
    return kept[scores[kept].sort(descending=True, stable=True)[1]]


def batched_nms_topk(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
    topk: int,
    initial_k: int = 1000,
) -> torch.Tensor:
    """``batched_nms(boxes, scores, idxs, iou_threshold)[:topk]``, computed on a score prefix.

    Exactness: greedy NMS decides each box only from higher-scoring boxes of its group, so NMS
    on the boxes scoring >= the K-th highest score decides them as the full run does; once
    that prefix keeps ``topk`` boxes, they are the full run's first ``topk``.

    K starts at ``max(4 * topk, initial_k)`` and grows 4x until the prefix keeps enough. The
    prefix takes every box tied with the score at the cut, in index order, so ties are
    processed as in the full run. Kept boxes of equal score come out in index order, where
    ``batched_nms`` leaves their order unspecified. Inputs of up to K boxes go straight to
    ``batched_nms``.

    Args:
        boxes: (N, 4) XYXY boxes.
        scores: (N,) scores.
        idxs: (N,) int64 group of each box.
        iou_threshold: as in :func:`batched_nms`.
        topk: how many kept boxes to return; < 0 returns all of them.
        initial_k: smallest prefix tried first.

    Returns:
        int64 tensor of at most ``topk`` kept indices into ``boxes``, by decreasing score.
    """
    _check_boxes(boxes, "batched_nms_topk")
    k = max(4 * topk, initial_k)
    n = scores.numel()
    if (
        topk < 0
        or n <= k
        or not _full_run_loops_per_class(boxes)
        or torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or bool(torch.isnan(scores).any())  # NaN sorts first in NMS but fails ``>= cut``
    ):
        keep = batched_nms(boxes, scores, idxs, iou_threshold)
        return keep if topk < 0 else keep[:topk]
    boxes = boxes.float()
    while k < n:
        cut = scores.topk(k, sorted=False).values.min()  # the k-th highest score
        members = torch.where(scores >= cut)[0]  # increasing index, ties at the cut included
        keep = _per_class_nms(boxes[members], scores[members], idxs[members], iou_threshold)
        if keep.numel() >= topk:
            return members[keep[:topk]]
        k *= 4
    return _per_class_nms(boxes, scores, idxs, iou_threshold)[:topk]
