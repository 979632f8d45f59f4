"""Non-maximum suppression, as in ``detectron2.layers.nms``.

Axis-aligned NMS runs on ``torchvision.ops``. Rotated-box NMS (``nms_rotated``,
``batched_nms_rotated``) is pure PyTorch and gives exactly the sequential greedy result. Boxes
are taken by decreasing score in blocks. Within a block, overlaps are computed only for pairs
whose bounding rectangles can reach the threshold (``rotated_boxes.candidate_pairs``), giving
a sparse "may suppress" graph that is resolved in rounds, all boxes at once: a box with a kept
suppressor is dropped; a box whose suppressors are all decided and none kept is kept (each
round settles at least the block's first undecided box; chains are short in practice). The
block's kept boxes then drop the lower-scoring boxes they overlap, so no IoU is computed for
a box that is already dropped.
"""

from typing import Optional, Tuple

import torch
from torchvision.ops import boxes as _box_ops
from torchvision.ops import nms

from .rotated_boxes import candidate_pairs, paired_iou_rotated

__all__ = ["batched_nms", "batched_nms_rotated", "batched_nms_topk", "nms", "nms_rotated"]


def _check_boxes(boxes: torch.Tensor, caller: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        if not torch.jit.is_scripting():
            raise ValueError(f"{caller}: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
        raise ValueError(caller + ": boxes must have shape (N, 4)")


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


# -- rotated boxes --------------------------------------------------------------------------------

_UNDECIDED, _KEPT, _DROPPED = 0, 1, 2
# Boxes resolved together (the IoUs within a block are all computed).
_NMS_BLOCK = 512


def _check_rotated_inputs(boxes, scores, caller: str) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(
            f"{caller}: boxes must be an (N, 5) tensor of (cx, cy, w, h, angle_degrees) rows, "
            f"got {shape}; pass RotatedBoxes.tensor for RotatedBoxes."
        )
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{caller}: scores must have shape ({boxes.shape[0]},), one per box, got "
            f"{tuple(scores.shape)}."
        )


def _count_into(num: int, targets: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    """(num,) int32: for each node, how many edges into it have their flag set."""
    counts = torch.zeros(num, dtype=torch.int32, device=targets.device)
    return counts.index_add_(0, targets, flags.to(torch.int32))


def _resolve_greedy(num: int, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Greedy decisions on a suppression graph.

    Args:
        num: number of boxes, in decreasing score order.
        src, dst: (E,) edges, ``src < dst``: box ``src`` would suppress box ``dst``.

    Returns:
        (num,) bool: kept boxes.
    """
    state = torch.zeros(num, dtype=torch.int8, device=src.device)
    while bool((state == _UNDECIDED).any()):
        # Drop every undecided box that a kept box suppresses.
        kept_in = _count_into(num, dst, state[src] == _KEPT)
        state[(state == _UNDECIDED) & (kept_in > 0)] = _DROPPED
        # Keep every undecided box with no undecided or kept suppressor left.
        live_in = _count_into(num, dst, state[src] != _DROPPED)
        state[(state == _UNDECIDED) & (live_in == 0)] = _KEPT
        # Only edges into undecided boxes from boxes not dropped can still matter.
        live = (state[dst] == _UNDECIDED) & (state[src] != _DROPPED)
        src, dst = src[live], dst[live]
    return state == _KEPT


def _suppression_edges(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    iou_threshold: float,
    groups: Optional[Tuple[torch.Tensor, torch.Tensor]],
    upper_triangle: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs (i, j) with IoU(boxes1[i], boxes2[j]) > iou_threshold (and equal groups)."""
    first, second = candidate_pairs(
        boxes1, boxes2, upper_triangle=upper_triangle, groups=groups, min_iou=iou_threshold
    )
    overlapping = paired_iou_rotated(boxes1[first], boxes2[second]) > iou_threshold
    return first[overlapping], second[overlapping]


def _nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, groups: Optional[torch.Tensor]
) -> torch.Tensor:
    """Greedy NMS in blocks: the next ``_NMS_BLOCK`` undecided boxes by score are resolved
    among themselves (every higher-ranked box is decided and has already suppressed what it
    suppresses), then the kept ones drop the lower-ranked boxes they overlap. The IoU of a pair
    is computed only while its higher-ranked box may still be kept."""
    order = torch.argsort(scores, descending=True, stable=True)
    ranked = boxes[order]
    ranked_groups = groups[order] if groups is not None else None
    undecided = torch.ones(ranked.shape[0], dtype=torch.bool, device=boxes.device)
    kept = torch.zeros_like(undecided)
    while True:
        pending = torch.nonzero(undecided).squeeze(1)
        if pending.numel() == 0:
            break
        block, rest = pending[:_NMS_BLOCK], pending[_NMS_BLOCK:]
        block_groups = None if groups is None else (ranked_groups[block],) * 2
        src, dst = _suppression_edges(ranked[block], ranked[block], iou_threshold, block_groups,
                                      upper_triangle=True)
        winners = block[_resolve_greedy(block.numel(), src, dst)]
        undecided[block] = False
        kept[winners] = True
        if rest.numel() and winners.numel():
            cross_groups = None if groups is None else (ranked_groups[winners],
                                                        ranked_groups[rest])
            _, losers = _suppression_edges(ranked[winners], ranked[rest], iou_threshold,
                                           cross_groups, upper_triangle=False)
            undecided[rest[losers]] = False
    return order[kept]


@torch.no_grad()
def nms_rotated(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression of rotated boxes.

    Args:
        boxes: (N, 5) rows (cx, cy, w, h, angle): centre and size in pixels, angle in degrees
            counter-clockwise.
        scores: (N,) scores.
        iou_threshold: a box is dropped when a kept higher-scoring box overlaps it with
            IoU > this (Detectron2's documented rule; its CPU kernel uses >=).

    Returns:
        int64 tensor of the kept indices into ``boxes``, by decreasing score (ties in index
        order). Boxes with zero size or non-finite numbers overlap nothing, so they are kept.
    """
    _check_rotated_inputs(boxes, scores, "nms_rotated")
    return _nms(boxes, scores, iou_threshold, None)


@torch.no_grad()
def batched_nms_rotated(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """:func:`nms_rotated` run independently within each group of ``idxs`` (e.g. class or
    feature level): boxes of different groups never suppress each other.

    Args:
        boxes: (N, 5) rotated boxes (cx, cy, w, h, angle_degrees).
        scores: (N,) scores.
        idxs: (N,) int64 group of each box.
        iou_threshold: as in :func:`nms_rotated`.

    Returns:
        int64 tensor of the kept indices into ``boxes``, by decreasing score (ties in index
        order).
    """
    _check_rotated_inputs(boxes, scores, "batched_nms_rotated")
    if idxs.shape != scores.shape:
        raise ValueError(
            f"batched_nms_rotated: idxs must have shape ({boxes.shape[0]},), one group per box, "
            f"got {tuple(idxs.shape)}."
        )
    return _nms(boxes, scores, iou_threshold, idxs)
