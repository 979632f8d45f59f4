"""ROI heads for rotated boxes: the rotated Fast R-CNN predictor and ``RROIHeads``.

Detectron2 path: ``detectron2.modeling.roi_heads.rotated_fast_rcnn``.

``StandardROIHeads`` with rotated proposals (from RRPN), features pooled by
"ROIAlignRotated", deltas coded by ``Box2BoxTransformRotated`` (5 numbers per box and class)
and detections post-processed with rotated NMS. Boxes only: no mask or keypoint heads.
"""

import logging
from typing import List, Sequence, Tuple

import torch

from ...config import configurable
from ...layers import batched_nms_rotated
from ...structures import Instances, RotatedBoxes
from ..box_regression import Box2BoxTransformRotated
from ..feature_names import check_in_features
from ..registries import ROI_HEADS_REGISTRY
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers
from .roi_heads import StandardROIHeads, _require

__all__ = [
    "RROIHeads",
    "RotatedFastRCNNOutputLayers",
    "fast_rcnn_inference_rotated",
    "fast_rcnn_inference_single_image_rotated",
]

logger = logging.getLogger(__name__)


def fast_rcnn_inference_single_image_rotated(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Instances, torch.Tensor]:
    """Detections of one image from per-region rotated boxes and class probabilities.

    Steps: drop regions with a non-finite box or score; drop the background column; clip the
    nearly horizontal boxes (``RotatedBoxes.clip``); keep (region, class) pairs with score >
    ``score_thresh`` in row-major order; rotated NMS within each class; keep the first
    ``topk_per_image`` (all when negative).

    Args:
        boxes: (R, K*5) class-specific or (R, 5) class-agnostic decoded rotated boxes.
        scores: (R, K+1) probabilities, background last.
        image_shape: (height, width).
        score_thresh, nms_thresh, topk_per_image: as above.

    Returns:
        ``Instances`` with ``pred_boxes`` (``RotatedBoxes``), ``scores`` and ``pred_classes``
        by decreasing score, and the (D,) region index of each detection.
    """
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not bool(finite.all()):
        boxes, scores = boxes[finite], scores[finite]
    scores = scores[:, :-1]
    num_reg_classes = boxes.shape[1] // 5
    flat = RotatedBoxes(boxes.reshape(-1, 5).clone())  # clip works in place
    flat.clip(image_shape)
    boxes = flat.tensor.view(-1, num_reg_classes, 5)

    keep_mask = scores > score_thresh  # (R, K)
    kept_pairs = keep_mask.nonzero()  # (P, 2): (region, class), row-major
    boxes = boxes[kept_pairs[:, 0], 0] if num_reg_classes == 1 else boxes[keep_mask]
    scores = scores[keep_mask]
    keep = batched_nms_rotated(boxes, scores, kept_pairs[:, 1], nms_thresh)
    if topk_per_image >= 0:
        keep = keep[:topk_per_image]
    boxes, scores, kept_pairs = boxes[keep], scores[keep], kept_pairs[keep]

    result = Instances(image_shape)
    result.pred_boxes = RotatedBoxes(boxes)
    result.scores = scores
    result.pred_classes = kept_pairs[:, 1]
    return result, kept_pairs[:, 0]


def fast_rcnn_inference_rotated(
    boxes: Sequence[torch.Tensor],
    scores: Sequence[torch.Tensor],
    image_shapes: Sequence[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """:func:`fast_rcnn_inference_single_image_rotated` for each image.

    Returns:
        one ``Instances`` per image and one (Di,) tensor of region indices per image.
    """
    results = [
        fast_rcnn_inference_single_image_rotated(
            boxes_i, scores_i, shape_i, score_thresh, nms_thresh, topk_per_image
        )
        for boxes_i, scores_i, shape_i in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


class RotatedFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` for rotated boxes: ``bbox_pred`` predicts K*5 (or 5) deltas
    (dx, dy, dw, dh, da) and inference uses rotated NMS. The box loss is smooth L1 on the
    deltas. ``from_config`` builds the box coding from MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS (5
    numbers)."""

    _box2box_transform_class = Box2BoxTransformRotated

    @configurable
    def __init__(self, input_shape, **kwargs):
        """Args: as :class:`FastRCNNOutputLayers`, with a ``Box2BoxTransformRotated``."""
        super().__init__(input_shape, **kwargs)
        if self.box_reg_loss_type != "smooth_l1":
            raise ValueError(
                f"RotatedFastRCNNOutputLayers: box_reg_loss_type "
                f"(MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE) {self.box_reg_loss_type!r} is for "
                "axis-aligned boxes; use 'smooth_l1'."
            )

    def inference(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[List[Instances], List[torch.Tensor]]:
        """Detections for ``proposals`` (with rotated ``proposal_boxes``):
        :func:`fast_rcnn_inference_rotated` with this layer's test settings."""
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [p.image_size for p in proposals]
        return fast_rcnn_inference_rotated(
            boxes, scores, image_shapes, self.test_score_thresh, self.test_nms_thresh,
            self.test_topk_per_image,
        )


@ROI_HEADS_REGISTRY.register()
class RROIHeads(StandardROIHeads):
    """``StandardROIHeads`` for rotated proposals and ground truth (``RotatedBoxes``): rotated
    IoU matching, "ROIAlignRotated" pooling and a :class:`RotatedFastRCNNOutputLayers`
    predictor. Box detection only."""

    @configurable
    def __init__(self, **kwargs):
        """Args: as :class:`StandardROIHeads`, without mask / keypoint heads and without
        ``train_on_pred_boxes``."""
        super().__init__(**kwargs)
        _require(
            not self.mask_on and not self.keypoint_on,
            "RROIHeads predicts boxes only; set MODEL.MASK_ON and MODEL.KEYPOINT_ON False.",
        )
        _require(
            not self.train_on_pred_boxes,
            "RROIHeads does not implement MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES; set it False.",
        )

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        check_in_features(in_features, input_shape, "MODEL.ROI_HEADS.IN_FEATURES")
        box_cfg = cfg.MODEL.ROI_BOX_HEAD
        _require(
            box_cfg.POOLER_TYPE == "ROIAlignRotated",
            f"RROIHeads pools rotated boxes: MODEL.ROI_BOX_HEAD.POOLER_TYPE must be "
            f"'ROIAlignRotated', got {box_cfg.POOLER_TYPE!r}.",
        )
        channels = sorted({input_shape[f].channels for f in in_features})
        _require(
            len(channels) == 1,
            f"MODEL.ROI_HEADS.IN_FEATURES={in_features} have different channel counts "
            f"{channels}; the box head is shared across them and needs one.",
        )
        pooler, shape = cls._pooler_and_shape(in_features, input_shape, box_cfg)
        box_head = build_box_head(cfg, shape)
        return {
            "box_in_features": in_features,
            "box_pooler": pooler,
            "box_head": box_head,
            "box_predictor": RotatedFastRCNNOutputLayers(cfg, box_head.output_shape),
        }

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        _require(not cfg.MODEL.MASK_ON, "RROIHeads has no mask head; set MODEL.MASK_ON False.")
        return {}

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        _require(
            not cfg.MODEL.KEYPOINT_ON,
            "RROIHeads has no keypoint head; set MODEL.KEYPOINT_ON False.",
        )
        return {}

    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """:meth:`ROIHeads.label_and_sample_proposals` for ``RotatedBoxes`` (rotated IoU);
        ``targets`` must hold rotated ``gt_boxes``."""
        for t in targets:
            if not isinstance(t.gt_boxes, RotatedBoxes):
                raise ValueError(
                    f"RROIHeads: gt_boxes must be RotatedBoxes, got {type(t.gt_boxes).__name__}."
                )
        return super().label_and_sample_proposals(proposals, targets)
