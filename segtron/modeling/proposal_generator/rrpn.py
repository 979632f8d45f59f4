"""Rotated Region Proposal Network (RRPN).

Detectron2 path: ``detectron2.modeling.proposal_generator.rrpn``.

The RPN of :mod:`.rpn` on rotated anchors (``RotatedAnchorGenerator``, 5 numbers per box):
anchors are matched to the rotated ground truth by rotated IoU, deltas are coded by
``Box2BoxTransformRotated`` and proposals are ``RotatedBoxes`` selected with rotated NMS. Paper:
Ma et al., "Arbitrary-Oriented Scene Text Detection via Rotation Proposals" (2018).
"""

import logging
from typing import List, Sequence, Tuple

import torch

from ...config import configurable
from ...layers import batched_nms_rotated
from ...structures import Instances, RotatedBoxes, pairwise_iou_rotated
from ..box_regression import Box2BoxTransformRotated
from ..registries import PROPOSAL_GENERATOR_REGISTRY
from .proposal_utils import select_top_per_level
from .rpn import RPN

__all__ = ["RRPN", "find_top_rrpn_proposals"]

logger = logging.getLogger(__name__)


def find_top_rrpn_proposals(
    proposals: Sequence[torch.Tensor],
    pred_objectness_logits: Sequence[torch.Tensor],
    image_sizes: Sequence[Tuple[int, int]],
    nms_thresh: float,
    pre_nms_topk: int,
    post_nms_topk: int,
    min_box_size: float,
    training: bool,
) -> List[Instances]:
    """Select the final rotated proposals of each image (``find_top_rpn_proposals`` for
    rotated boxes).

    Steps: per level keep the ``pre_nms_topk`` highest logits of each image; concatenate the
    levels; per image drop non-finite candidates, clip the nearly horizontal boxes
    (``RotatedBoxes.clip``), drop boxes with a side ``<= min_box_size``, run rotated NMS within
    each level and keep the first ``post_nms_topk``.

    Args:
        proposals: L tensors (N, Ai, 5) of decoded rotated boxes, one per level.
        pred_objectness_logits: L tensors (N, Ai).
        image_sizes: N (height, width).
        nms_thresh: IoU above which NMS drops a lower-scoring box of the same level.
        pre_nms_topk: candidates kept per level and image before NMS.
        post_nms_topk: proposals kept per image after NMS.
        min_box_size: smallest side (pixels) a kept proposal exceeds.
        training: unused (non-finite candidates are dropped in training too, as in
            Detectron2's RRPN); kept for the signature of ``find_top_rpn_proposals``.

    Returns:
        N ``Instances`` with ``proposal_boxes`` (``RotatedBoxes``) and ``objectness_logits``,
        by decreasing logit.
    """
    all_scores, all_boxes, all_levels = select_top_per_level(
        proposals, pred_objectness_logits, len(image_sizes), pre_nms_topk, box_dim=5,
        caller="find_top_rrpn_proposals",
    )
    return nms_top_rotated_candidates(
        all_scores, all_boxes, all_levels, image_sizes, nms_thresh, post_nms_topk, min_box_size
    )


def nms_top_rotated_candidates(
    all_scores: torch.Tensor,
    all_boxes: torch.Tensor,
    all_levels: torch.Tensor,
    image_sizes: List[Tuple[int, int]],
    nms_thresh: float,
    post_nms_topk: int,
    min_box_size: float,
) -> List[Instances]:
    """The per-image steps of :func:`find_top_rrpn_proposals` (filter, clip, rotated NMS) on
    ``select_top_per_level``'s scores (N, R), boxes (N, R, 5) and levels (R,); same result."""
    results = []
    for n, image_size in enumerate(image_sizes):
        boxes = RotatedBoxes(all_boxes[n])
        scores = all_scores[n]
        levels = all_levels
        finite = torch.isfinite(boxes.tensor).all(dim=1) & torch.isfinite(scores)
        if not bool(finite.all()):
            boxes, scores, levels = boxes[finite], scores[finite], levels[finite]
        boxes.clip(image_size)
        big_enough = boxes.nonempty(threshold=min_box_size)
        if not bool(big_enough.all()):
            boxes, scores, levels = boxes[big_enough], scores[big_enough], levels[big_enough]
        keep = batched_nms_rotated(boxes.tensor, scores, levels, nms_thresh)[:post_nms_topk]
        result = Instances(image_size)
        result.proposal_boxes = boxes[keep]
        result.objectness_logits = scores[keep]
        results.append(result)
    return results


@PROPOSAL_GENERATOR_REGISTRY.register()
class RRPN(RPN):
    """Rotated RPN: ``RPN`` with rotated anchors, rotated IoU matching, rotated box coding
    and rotated NMS. Same call: ``forward(images, features, gt_instances=None) ->
    (proposals, losses)``, with ``RotatedBoxes`` as ``gt_boxes`` and ``proposal_boxes``.
    ``from_config`` builds the box coding from MODEL.RPN.BBOX_REG_WEIGHTS (5 numbers).
    """

    _box2box_transform_class = Box2BoxTransformRotated

    @configurable
    def __init__(self, **kwargs):
        """Args: as :class:`RPN`; ``anchor_generator`` must produce ``RotatedBoxes`` (e.g.
        ``RotatedAnchorGenerator``) and ``box2box_transform`` code 5 numbers."""
        super().__init__(**kwargs)
        if self.anchor_boundary_thresh >= 0:
            raise ValueError(
                "RRPN: anchor_boundary_thresh (MODEL.RPN.BOUNDARY_THRESH) is a legacy option not "
                "implemented for rotated anchors; set it to -1."
            )
        if self.box_reg_loss_type != "smooth_l1":
            raise ValueError(
                f"RRPN: box_reg_loss_type (MODEL.RPN.BBOX_REG_LOSS_TYPE) "
                f"{self.box_reg_loss_type!r} is for axis-aligned boxes; use 'smooth_l1'."
            )

    def _anchor_iou(self, gt_boxes: RotatedBoxes, anchors: RotatedBoxes) -> torch.Tensor:
        """(M, R) rotated IoU; ``RPN.label_and_sample_anchors`` labels the anchors with it (no
        boundary check: RRPN requires BOUNDARY_THRESH < 0)."""
        if not isinstance(gt_boxes, RotatedBoxes):
            raise ValueError(
                f"RRPN: gt_boxes must be RotatedBoxes, got {type(gt_boxes).__name__}; load "
                "rotated annotations (bbox_mode XYWHA_ABS) with "
                "annotations_to_instances_rotated."
            )
        return pairwise_iou_rotated(gt_boxes, anchors)

    def proposals_from_candidates(
        self,
        candidates: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Filtering, clipping and rotated NMS of ``top_candidates``' output: N ``Instances``
        with ``proposal_boxes`` (``RotatedBoxes``) and ``objectness_logits``; see
        :func:`find_top_rrpn_proposals`."""
        scores, boxes, levels = candidates
        with torch.no_grad():
            return nms_top_rotated_candidates(
                scores, boxes, levels, image_sizes, self.nms_thresh,
                self.post_nms_topk[self.training], self.min_box_size,
            )
