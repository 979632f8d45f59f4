"""Turning dense RPN predictions into per-image proposals, and mixing ground truth into them.

Detectron2 path: ``detectron2.modeling.proposal_generator.proposal_utils``.

The selection order in :func:`find_top_rpn_proposals` is part of the output format (proposals
must come out in Detectron2's order), so it is spelled out step by step in its docstring.
"""

import logging
import math
from typing import List, Sequence, Tuple, Union

import torch

from ...layers import batched_nms, cat
from ...structures import Boxes, Instances

__all__ = [
    "find_top_rpn_proposals",
    "add_ground_truth_to_proposals",
    "nms_top_candidates",
    "select_top_per_level",
]

logger = logging.getLogger(__name__)

# Objectness logit given to ground-truth boxes appended to proposals: the logit of a
# probability of 1 - 1e-10 (about 23.03), computed in Python double precision as Detectron2 does.
_GT_PROB = 1.0 - 1e-10
_GT_LOGIT = math.log(_GT_PROB / (1.0 - _GT_PROB))


def select_top_per_level(
    proposals: List[torch.Tensor],
    pred_objectness_logits: List[torch.Tensor],
    num_images: int,
    pre_nms_topk: int,
    box_dim: int,
    caller: str,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1 and 2 of :func:`find_top_rpn_proposals` (shared with the rotated RRPN).

    Args:
        proposals: L tensors (N, Ai, box_dim) of decoded boxes, one per level.
        pred_objectness_logits: L tensors (N, Ai).
        num_images: N.
        pre_nms_topk: candidates kept per level and image.
        box_dim: numbers per box (4 for XYXY, 5 for rotated boxes).
        caller: function name for error messages.

    Returns:
        scores (N, R), boxes (N, R, box_dim) and level ids (R,) int64 of the R kept
        candidates, level 0 first, each level's by decreasing logit.
    """
    if not torch.jit.is_scripting():
        _check_levels(proposals, pred_objectness_logits, num_images, box_dim, caller)
    device = proposals[0].device
    batch_idx = torch.arange(num_images, device=device)

    level_scores: List[torch.Tensor] = []
    level_boxes: List[torch.Tensor] = []
    level_ids: List[torch.Tensor] = []
    for level in range(len(proposals)):
        boxes_i, logits_i = proposals[level], pred_objectness_logits[level]
        sorted_logits, order = logits_i.sort(descending=True, dim=1)
        # Two branches with the same lines: num_keep is a tensor in one and an int in the
        # other, which TorchScript cannot give one variable.
        if not torch.jit.is_scripting() and torch.jit.is_tracing():
            # Traced: the candidate count follows the (traced) number of anchors of the level.
            num_keep = torch.clamp(torch.as_tensor(logits_i.shape[1]), max=int(pre_nms_topk))
            top_logits, top_idx = sorted_logits[:, :num_keep], order[:, :num_keep]
            ids = torch.full((num_keep,), level, dtype=torch.int64, device=device)
        else:
            num_keep = min(int(pre_nms_topk), logits_i.shape[1])
            top_logits, top_idx = sorted_logits[:, :num_keep], order[:, :num_keep]
            ids = torch.full((num_keep,), level, dtype=torch.int64, device=device)
        level_scores.append(top_logits)
        level_boxes.append(boxes_i[batch_idx[:, None], top_idx])  # (N, num_keep, box_dim)
        level_ids.append(ids)
    return cat(level_scores, dim=1), cat(level_boxes, dim=1), cat(level_ids, dim=0)


def _check_levels(
    proposals: List[torch.Tensor],
    pred_objectness_logits: List[torch.Tensor],
    num_images: int,
    box_dim: int,
    caller: str,
) -> None:
    """ValueError naming ``caller`` unless there are as many levels of proposals as of logits
    (at least one), shaped (N, Ai, box_dim) and (N, Ai) with N = ``num_images``."""
    if len(proposals) != len(pred_objectness_logits):
        raise ValueError(
            f"{caller}: got {len(proposals)} levels of proposals but "
            f"{len(pred_objectness_logits)} levels of objectness logits; pass one of each per "
            "feature level."
        )
    if len(proposals) == 0:
        raise ValueError(f"{caller}: no feature levels given.")
    for level, (boxes_i, logits_i) in enumerate(zip(proposals, pred_objectness_logits)):
        if boxes_i.dim() != 3 or boxes_i.shape[-1] != box_dim or logits_i.dim() != 2:
            raise ValueError(
                f"{caller}: level {level} has proposals {tuple(boxes_i.shape)} and "
                f"logits {tuple(logits_i.shape)}; expected (N, Ai, {box_dim}) and (N, Ai)."
            )
        if boxes_i.shape[:2] != logits_i.shape or boxes_i.shape[0] != num_images:
            raise ValueError(
                f"{caller}: level {level} has proposals {tuple(boxes_i.shape)} and "
                f"logits {tuple(logits_i.shape)} for {num_images} image sizes; the first two "
                "dims must agree and equal (num_images, Ai)."
            )


def find_top_rpn_proposals(
    proposals: List[torch.Tensor],
    pred_objectness_logits: List[torch.Tensor],
    image_sizes: List[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> List[Instances]:
    """Select the final proposals of each image from the decoded proposals of all levels.

    Steps, in this order (the order determines the output order):

    1. Per level ``i``: sort the (N, Ai) logits in descending order along dim 1 and keep the
       first ``min(pre_nms_topk, Ai)`` of each image, with their boxes.
    2. Concatenate the kept candidates of all levels (level 0 first) and remember the level of
       each candidate.
    3. Per image: drop candidates whose box or logit is not finite (in ``training`` this raises
       ``FloatingPointError`` instead); clip boxes to the image; drop boxes with a width or
       height ``<= min_box_size``; run NMS at ``nms_thresh`` separately within each level
       (``batched_nms`` with the level as group); keep the first ``post_nms_topk`` survivors,
       which are sorted by decreasing logit.

    Args:
        proposals: L tensors, one per level; tensor i is (N, Ai, 4) XYXY boxes in input-image
            pixels, Ai = Hi * Wi * A in the anchor order.
        pred_objectness_logits: L tensors; tensor i is (N, Ai), the logit of each box above.
        image_sizes: N (height, width) pairs, the unpadded size of each image.
        nms_thresh: IoU above which NMS suppresses a lower-scoring box of the same level.
        pre_nms_topk: candidates kept per level and image before NMS.
        post_nms_topk: proposals kept per image after NMS (over all levels together).
        min_box_size: boxes with a side ``<= min_box_size`` pixels (after clipping) are dropped.
        training: whether non-finite predictions are an error (training) or silently dropped.

    Returns:
        N ``Instances`` (image_size = ``image_sizes[i]``) with fields ``proposal_boxes``
        (``Boxes``, at most ``post_nms_topk``) and ``objectness_logits`` (raw logits), sorted
        by decreasing logit.
    """
    all_scores, all_boxes, all_levels = select_top_per_level(
        proposals, pred_objectness_logits, len(image_sizes), pre_nms_topk, box_dim=4,
        caller="find_top_rpn_proposals",
    )
    return nms_top_candidates(
        all_scores, all_boxes, all_levels, image_sizes, nms_thresh, post_nms_topk,
        min_box_size, training,
    )


def nms_top_candidates(
    all_scores: torch.Tensor,
    all_boxes: torch.Tensor,
    all_levels: torch.Tensor,
    image_sizes: List[Tuple[int, int]],
    nms_thresh: float,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> List[Instances]:
    """Step 3 of :func:`find_top_rpn_proposals`, on what :func:`select_top_per_level` returns.

    This is the part whose output size depends on the data (filtering and NMS); the steps
    before it have static shapes for a given input size, so they can be captured in a CUDA
    graph and this part run after it.

    Args:
        all_scores: (N, R) logits of the candidates of each image.
        all_boxes: (N, R, 4) their XYXY boxes.
        all_levels: (R,) int64 level of each candidate.
        image_sizes, nms_thresh, post_nms_topk, min_box_size, training: as in
            :func:`find_top_rpn_proposals`.

    Returns:
        N ``Instances``, as :func:`find_top_rpn_proposals`.
    """
    results: List[Instances] = []
    for n, image_size in enumerate(image_sizes):
        boxes = Boxes(all_boxes[n])
        scores = all_scores[n]
        levels = all_levels

        finite = torch.isfinite(boxes.tensor).all(dim=1) & torch.isfinite(scores)
        if training and not bool(finite.all()):
            raise FloatingPointError(
                "Predicted boxes or scores contain Inf/NaN. Training has diverged. Lower the "
                "learning rate (SOLVER.BASE_LR) or lengthen the warmup (SOLVER.WARMUP_ITERS)."
            )
        # Clipping a non-finite box can make it finite, so ``finite`` is taken before the
        # clip (in place, on this function's candidates); dropping the non-finite and the
        # too-small boxes together keeps Detectron2's set of boxes (filter, clip, filter) with
        # one host sync instead of two.
        boxes.clip(image_size, check_finite=False)
        valid = finite & boxes.nonempty(threshold=min_box_size)
        # Traced graphs always filter: a branch taken on the tracing input would be frozen.
        if torch.jit.is_tracing() or not bool(valid.all()):
            boxes, scores, levels = boxes[valid], scores[valid], levels[valid]

        keep = batched_nms(boxes.tensor, scores, levels, nms_thresh)
        keep = keep[:post_nms_topk]  # already sorted by decreasing score

        result = Instances(image_size)
        result.proposal_boxes = boxes[keep]
        result.objectness_logits = scores[keep]
        results.append(result)
    return results


def add_ground_truth_to_proposals(
    gt: Union[Sequence[Instances], Sequence[Boxes]], proposals: Sequence[Instances]
) -> List[Instances]:
    """Append each image's ground-truth boxes to its proposals (used when training ROI heads).

    Args:
        gt: N elements, one per image: ``Instances`` with a ``gt_boxes`` field (and any field
            the proposals carry besides ``proposal_boxes`` / ``objectness_logits``), or plain
            ``Boxes``.
        proposals: N ``Instances`` with ``proposal_boxes`` and ``objectness_logits``.

    Returns:
        N ``Instances``: the proposals of image i followed by its ground-truth boxes as extra
        proposals with ``objectness_logits`` = log((1 - 1e-10) / 1e-10) (probability ~1). Only
        the proposals' fields are kept.
    """
    if gt is None:
        raise ValueError("add_ground_truth_to_proposals: gt is None; pass the gt of each image.")
    if len(proposals) != len(gt):
        raise ValueError(
            f"add_ground_truth_to_proposals: {len(proposals)} proposal sets but {len(gt)} "
            "ground-truth sets; proposals and gt should have the same length as the number of "
            "images!"
        )
    if len(proposals) == 0:
        return list(proposals)
    return [
        add_ground_truth_to_proposals_single_image(gt_i, proposals_i)
        for gt_i, proposals_i in zip(gt, proposals)
    ]


def add_ground_truth_to_proposals_single_image(
    gt: Union[Instances, Boxes], proposals: Instances
) -> Instances:
    """:func:`add_ground_truth_to_proposals` for one image (same arguments, one element each)."""
    if isinstance(gt, Boxes):
        gt = Instances(proposals.image_size, gt_boxes=gt)
    if not gt.has("gt_boxes"):
        raise ValueError(
            "add_ground_truth_to_proposals: the ground-truth Instances has no 'gt_boxes' field "
            f"(fields: {sorted(gt.get_fields())})."
        )
    gt_boxes = gt.gt_boxes
    device = proposals.objectness_logits.device
    gt_logits = torch.full(
        (len(gt_boxes),), _GT_LOGIT, dtype=proposals.objectness_logits.dtype, device=device
    )

    gt_fields = dict(gt.get_fields())
    gt_fields["proposal_boxes"] = gt_boxes
    gt_fields["objectness_logits"] = gt_logits
    as_proposals = Instances(proposals.image_size)
    for name in proposals.get_fields():
        if name not in gt_fields:
            raise ValueError(
                f"add_ground_truth_to_proposals: the proposals have a field {name!r} that the "
                f"ground truth lacks (gt fields: {sorted(gt.get_fields())}); add it to the gt "
                "Instances or remove it from the proposals."
            )
        as_proposals.set(name, gt_fields[name])
    return Instances.cat([proposals, as_proposals])
