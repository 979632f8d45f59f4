"""The ``ROIHeads`` base class and proposal selection shared by every ROI head.

``ROIHeads`` matches proposals to ground truth and samples the ones a head trains on;
``StandardROIHeads`` / ``Res5ROIHeads`` (``roi_heads.py``) and ``CascadeROIHeads`` build on it.
All names are re-exported from ``segtron.modeling.roi_heads.roi_heads`` (Detectron2's path).
"""

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ...config import configurable
from ...layers import ShapeSpec, nonzero_tuple
from ...structures import (
    Boxes,
    ImageList,
    Instances,
    RotatedBoxes,
    pairwise_iou,
    pairwise_iou_rotated,
)
from ...utils.events import get_event_storage
from ..matcher import Matcher
from ..proposal_generator.proposal_utils import add_ground_truth_to_proposals
from ..registries import ROI_HEADS_REGISTRY
from ..sampling import subsample_labels


logger = logging.getLogger(__name__)

def _match_quality(gt_boxes: Boxes, proposal_boxes: Boxes) -> torch.Tensor:
    """(M, R) IoU of gt and proposal boxes: rotated IoU for ``RotatedBoxes``."""
    if isinstance(gt_boxes, RotatedBoxes):
        return pairwise_iou_rotated(gt_boxes, proposal_boxes)
    return pairwise_iou(gt_boxes, proposal_boxes)


def build_roi_heads(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the ROI heads named by ``cfg.MODEL.ROI_HEADS.NAME`` from the registry.

    Args:
        cfg: a config.
        input_shape: the backbone's output shapes, feature name -> ShapeSpec.
    """
    return ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)(cfg, input_shape)


def select_foreground_proposals(
    proposals: List[Instances], bg_label: int
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Keep the proposals labelled foreground (``gt_classes`` neither -1 nor ``bg_label``).

    Args:
        proposals: one ``Instances`` per image, with ``gt_classes``.
        bg_label: the background class index (the number of classes).

    Returns:
        the foreground proposals of each image, and each image's (Ri,) bool selection mask.
    """
    if not isinstance(proposals, (list, tuple)) or len(proposals) == 0:
        raise ValueError("select_foreground_proposals: expected a non-empty list of Instances.")
    if not proposals[0].has("gt_classes"):
        raise ValueError(
            "select_foreground_proposals: the proposals have no 'gt_classes'; run "
            "ROIHeads.label_and_sample_proposals on them first."
        )
    fg_proposals = []
    fg_masks = []
    for per_image in proposals:
        gt_classes = per_image.gt_classes
        mask = (gt_classes != -1) & (gt_classes != bg_label)
        fg_proposals.append(per_image[nonzero_tuple(mask)[0]])
        fg_masks.append(mask)
    return fg_proposals, fg_masks


def select_proposals_with_visible_keypoints(proposals: List[Instances]) -> List[Instances]:
    """Keep the proposals whose matched ``gt_keypoints`` have at least one visible keypoint
    (v >= 1) inside the proposal box (edges included).

    Images with no proposals are passed through. Records the mean number kept per image as
    ``keypoint_head/num_fg_samples``.

    Args:
        proposals: one ``Instances`` per image with ``proposal_boxes`` and ``gt_keypoints``.

    Returns:
        the kept proposals of each image.
    """
    kept = []
    num_kept = []
    for per_image in proposals:
        if len(per_image) == 0:
            kept.append(per_image)
            continue
        kpts = per_image.gt_keypoints.tensor  # (R, K, 3)
        visible = kpts[:, :, 2] >= 1
        xs, ys = kpts[:, :, 0], kpts[:, :, 1]
        box = per_image.proposal_boxes.tensor.unsqueeze(dim=1)  # (R, 1, 4)
        inside = (xs >= box[:, :, 0]) & (xs <= box[:, :, 2])
        inside &= (ys >= box[:, :, 1]) & (ys <= box[:, :, 3])
        index = nonzero_tuple((inside & visible).any(dim=1))[0]
        num_kept.append(index.numel())
        kept.append(per_image[index])

    if num_kept:  # no proposals in any image: nothing to average
        get_event_storage().put_scalar("keypoint_head/num_fg_samples", np.mean(num_kept))
    return kept


class ROIHeads(nn.Module):
    """Base class of ROI heads: matching and sampling of training proposals.

    Subclasses implement ``forward(images, features, proposals, targets=None) ->
    (instances, losses)``.
    """

    @configurable
    def __init__(
        self,
        *,
        num_classes: int,
        batch_size_per_image: int,
        positive_fraction: float,
        proposal_matcher: Matcher,
        proposal_append_gt: bool = True,
    ):
        """Args:
            num_classes: K, foreground classes (the background label is K).
            batch_size_per_image: proposals sampled per image for training (512).
            positive_fraction: largest fraction of foreground among them (0.25).
            proposal_matcher: assigns proposals to ground truth (IoU 0.5, labels [0, 1]).
            proposal_append_gt: add the gt boxes to the proposals before sampling.
        """
        super().__init__()
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.num_classes = num_classes
        self.proposal_matcher = proposal_matcher
        self.proposal_append_gt = proposal_append_gt

    @classmethod
    def from_config(cls, cfg):
        heads = cfg.MODEL.ROI_HEADS
        return {
            "batch_size_per_image": heads.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": heads.POSITIVE_FRACTION,
            "num_classes": heads.NUM_CLASSES,
            "proposal_append_gt": heads.PROPOSAL_APPEND_GT,
            "proposal_matcher": Matcher(
                heads.IOU_THRESHOLDS, heads.IOU_LABELS, allow_low_quality_matches=False
            ),
        }

    def _sample_proposals(
        self, matched_idxs: torch.Tensor, matched_labels: torch.Tensor, gt_classes: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Label the proposals of one image and sample them.

        Args:
            matched_idxs: (N,) index of each proposal's best gt.
            matched_labels: (N,) matcher label of each proposal (0 bg, 1 fg, -1 ignore).
            gt_classes: (M,) classes of the gt.

        Returns:
            sampled indices into the N proposals (foreground first, then background) and
            their labels: a class in [0, K) or K for background.
        """
        if gt_classes.numel() > 0:
            labels = gt_classes[matched_idxs]
            labels[matched_labels == 0] = self.num_classes
            labels[matched_labels == -1] = -1
        else:
            labels = torch.zeros_like(matched_idxs) + self.num_classes
        fg_idxs, bg_idxs = subsample_labels(
            labels, self.batch_size_per_image, self.positive_fraction, self.num_classes
        )
        sampled = torch.cat([fg_idxs, bg_idxs], dim=0)
        return sampled, labels[sampled]

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """Match the proposals to the ground truth, label them and sample the training set.

        Args:
            proposals: one ``Instances`` per image with ``proposal_boxes`` and
                ``objectness_logits``.
            targets: one ``Instances`` per image with ``gt_boxes``, ``gt_classes`` and any
                other ``gt_*`` fields (``gt_masks``, ``gt_keypoints``, ...).

        Returns:
            one ``Instances`` per image holding at most ``batch_size_per_image`` proposals
            (foreground first), with ``gt_classes`` (K = background) and, copied from the
            matched gt, every ``gt_*`` field of the targets. For an image without gt,
            ``gt_boxes`` are zeros and no other ``gt_*`` field is set. Records
            ``roi_head/num_fg_samples`` and ``roi_head/num_bg_samples`` (means per image).
        """
        if self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals([t.gt_boxes for t in targets], proposals)

        sampled_proposals = []
        num_fg = []
        num_bg = []
        for props, gts in zip(proposals, targets):
            has_gt = len(gts) > 0
            iou = _match_quality(gts.gt_boxes, props.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matcher(iou)
            sampled_idxs, gt_classes = self._sample_proposals(
                matched_idxs, matched_labels, gts.gt_classes
            )
            props = props[sampled_idxs]
            props.gt_classes = gt_classes
            if has_gt:
                sampled_targets = matched_idxs[sampled_idxs]
                for name, value in gts.get_fields().items():
                    if name.startswith("gt_") and not props.has(name):
                        props.set(name, value[sampled_targets])
            else:
                empty_gt = gts.gt_boxes.tensor
                zeros = empty_gt.new_zeros((len(sampled_idxs), empty_gt.shape[1]))
                props.gt_boxes = type(gts.gt_boxes)(zeros)

            num_bg.append((gt_classes == self.num_classes).sum().item())
            num_fg.append(gt_classes.numel() - num_bg[-1])
            sampled_proposals.append(props)

        storage = get_event_storage()
        storage.put_scalar("roi_head/num_fg_samples", np.mean(num_fg))
        storage.put_scalar("roi_head/num_bg_samples", np.mean(num_bg))
        return sampled_proposals

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """Args:
            images: the batched images (unused by the built-in heads).
            features: feature name -> (N, C, H, W) map.
            proposals: one ``Instances`` per image with ``proposal_boxes`` and
                ``objectness_logits``.
            targets: training only: one ``Instances`` per image with ``gt_boxes``,
                ``gt_classes`` and optionally ``gt_masks``, ``gt_keypoints``.

        Returns:
            (detections: one ``Instances`` per image in eval -- may be [] in training,
            losses: name -> scalar in training, {} in eval).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward().")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
