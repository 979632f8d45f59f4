"""Cascade R-CNN ROI heads: a sequence of box heads, each refining the previous one's boxes and
trained at a higher IoU threshold (Cai & Vasconcelos, 2018).

Detectron2 path: ``detectron2.modeling.roi_heads.cascade_rcnn``.
"""

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.autograd.function import Function

from ...config import configurable
from ...layers import ShapeSpec
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ...utils.events import get_event_storage
from ..box_regression import Box2BoxTransform
from ..feature_names import check_in_features
from ..matcher import Matcher
from ..poolers import ROIPooler
from ..registries import ROI_HEADS_REGISTRY
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference
from .roi_heads import StandardROIHeads

__all__ = ["CascadeROIHeads"]


class _ScaleGradient(Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx, input, scale):
        ctx.scale = scale
        return input

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * ctx.scale, None


@ROI_HEADS_REGISTRY.register()
class CascadeROIHeads(StandardROIHeads):
    """:class:`StandardROIHeads` with S box stages (``box_head.{k}``, ``box_predictor.{k}``).

    Stage 0 runs on the proposals; stage k > 0 on the boxes stage k-1 predicted (clipped, and
    in training without empty boxes, then re-matched to the gt with stage k's matcher). The
    pooled features' gradient is scaled by 1/S in every stage. Inference averages the class
    probabilities of all stages for the last stage's boxes, then runs
    :func:`fast_rcnn_inference` with the last predictor's test settings. Training losses are
    named ``loss_cls_stage{k}`` and ``loss_box_reg_stage{k}``.
    """

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler: ROIPooler,
        box_heads: List[nn.Module],
        box_predictors: List[nn.Module],
        proposal_matchers: List[Matcher],
        **kwargs,
    ):
        """Args:
            box_in_features, box_pooler: as in :class:`StandardROIHeads` (shared by stages).
            box_heads: one box head per stage.
            box_predictors: one box predictor per stage (class-agnostic regression, each with
                its own box coding weights).
            proposal_matchers: one matcher per stage (increasing IoU thresholds); the first
                also samples the training proposals.
            kwargs: other arguments of :class:`StandardROIHeads` (mask / keypoint heads...),
                not ``proposal_matcher``.
        """
        if "proposal_matcher" in kwargs:
            raise ValueError(
                "CascadeROIHeads takes proposal_matchers (one per stage), not proposal_matcher."
            )
        num_stages = len(box_heads)
        if not (len(box_predictors) == num_stages and len(proposal_matchers) == num_stages):
            raise ValueError(
                f"CascadeROIHeads: got {num_stages} box heads, {len(box_predictors)} box "
                f"predictors and {len(proposal_matchers)} matchers; give one of each per stage."
            )
        kwargs["proposal_matcher"] = proposal_matchers[0]
        super().__init__(
            box_in_features=box_in_features,
            box_pooler=box_pooler,
            box_head=nn.ModuleList(box_heads),
            box_predictor=nn.ModuleList(box_predictors),
            **kwargs,
        )
        self.num_cascade_stages = num_stages
        self.proposal_matchers = proposal_matchers

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.pop("proposal_matcher")
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        check_in_features(in_features, input_shape, "MODEL.ROI_HEADS.IN_FEATURES")
        box = cfg.MODEL.ROI_BOX_HEAD
        cascade = cfg.MODEL.ROI_BOX_CASCADE_HEAD
        reg_weights = list(cascade.BBOX_REG_WEIGHTS)
        ious = list(cascade.IOUS)
        if len(reg_weights) != len(ious):
            raise ValueError(
                f"MODEL.ROI_BOX_CASCADE_HEAD has {len(ious)} IOUS but {len(reg_weights)} "
                "BBOX_REG_WEIGHTS; give one of each per stage."
            )
        if not box.CLS_AGNOSTIC_BBOX_REG:
            raise ValueError(
                "CascadeROIHeads supports class-agnostic box regression only; set "
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True."
            )
        if ious[0] != cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]:
            raise ValueError(
                f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0]={ious[0]} must equal "
                f"MODEL.ROI_HEADS.IOU_THRESHOLDS[0]={cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]} "
                "(the first stage trains on the sampled proposals)."
            )
        channels = sorted({input_shape[f].channels for f in in_features})
        if len(channels) != 1:
            raise ValueError(
                f"MODEL.ROI_HEADS.IN_FEATURES={in_features} have different channel counts "
                f"{channels}; the box heads are shared across them and need one."
            )
        resolution = box.POOLER_RESOLUTION
        pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=box.POOLER_SAMPLING_RATIO,
            pooler_type=box.POOLER_TYPE,
        )
        pooled_shape = ShapeSpec(channels=channels[0], height=resolution, width=resolution)

        box_heads, box_predictors, matchers = [], [], []
        for iou, weights in zip(ious, reg_weights):
            head = build_box_head(cfg, pooled_shape)
            box_heads.append(head)
            box_predictors.append(
                FastRCNNOutputLayers(
                    cfg, head.output_shape, box2box_transform=Box2BoxTransform(weights=weights)
                )
            )
            matchers.append(Matcher([iou], [0, 1], allow_low_quality_matches=False))
        return {
            "box_in_features": in_features,
            "box_pooler": pooler,
            "box_heads": box_heads,
            "box_predictors": box_predictors,
            "proposal_matchers": matchers,
        }

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """See :meth:`ROIHeads.forward`. Training returns the sampled proposals and the
        per-stage box losses (+ ``loss_mask`` / ``loss_keypoint`` when enabled)."""
        del images
        if self.training:
            if not targets:
                raise ValueError("CascadeROIHeads: 'targets' are required in training.")
            proposals = self.label_and_sample_proposals(proposals, targets)
            losses = self._forward_box(features, proposals, targets)
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def _forward_box(
        self,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """Run the stages. Training: the per-stage losses. Eval: the detections."""
        feature_list = [features[f] for f in self.box_in_features]
        image_sizes = [p.image_size for p in proposals]
        # Per stage, for the losses: the predictions and the proposals they were made on.
        stage_predictions: List[Tuple[torch.Tensor, torch.Tensor]] = []
        stage_proposals: List[List[Instances]] = []
        prev_boxes: List[torch.Tensor] = []
        scores: List[torch.Tensor] = []  # eval: per image, the sum of the stages' probabilities
        # (TorchScript indexes module lists only with literals: iterate over the stages' pairs.)
        for k, (box_head, predictor) in enumerate(zip(self.box_head, self.box_predictor)):
            if k > 0:
                proposals = self._create_proposals_from_boxes(prev_boxes, image_sizes)
                if self.training:
                    proposals = self._match_and_label_boxes(proposals, k, targets)
            predictions = predictor(box_head(self._pool_for_stage(feature_list, proposals)))
            prev_boxes = predictor.predict_boxes(predictions, proposals)
            if self.training:
                stage_predictions.append(predictions)
                stage_proposals.append(proposals)
            else:
                probs = predictor.predict_probs(predictions, proposals)
                scores = probs if k == 0 else [s + p for s, p in zip(scores, probs)]

        if self.training:
            return self._stage_losses(stage_predictions, stage_proposals)

        # The last stage's boxes, scored with the stages' mean class probabilities.
        scores = [per_image * (1.0 / self.num_cascade_stages) for per_image in scores]
        last = self.box_predictor[-1]
        pred_instances, _ = fast_rcnn_inference(
            prev_boxes, scores, image_sizes, last.test_score_thresh, last.test_nms_thresh,
            last.test_topk_per_image,
        )
        return pred_instances

    @torch.jit.unused
    def _stage_losses(
        self,
        stage_predictions: List[Tuple[torch.Tensor, torch.Tensor]],
        stage_proposals: List[List[Instances]],
    ) -> Dict[str, torch.Tensor]:
        """Training: each stage's predictor losses, named ``{loss}_stage{k}``."""
        losses = {}
        storage = get_event_storage()
        stages = zip(self.box_predictor, stage_predictions, stage_proposals)
        for k, (predictor, predictions, proposals) in enumerate(stages):
            with storage.name_scope(f"stage{k}"):
                stage_losses = predictor.losses(predictions, proposals)
            losses.update({f"{name}_stage{k}": v for name, v in stage_losses.items()})
        return losses

    @torch.no_grad()
    def _match_and_label_boxes(
        self, proposals: List[Instances], stage: int, targets: List[Instances]
    ) -> List[Instances]:
        """Match a later stage's boxes to the gt with that stage's matcher (no sampling).

        Sets ``gt_classes`` (K for background) and ``gt_boxes`` (zeros for an image without
        gt) on each proposal; records ``stage{k}/roi_head/num_fg_samples`` and
        ``num_bg_samples`` (means per image).
        """
        num_fg, num_bg = [], []
        for props, gts in zip(proposals, targets):
            iou = pairwise_iou(gts.gt_boxes, props.proposal_boxes)
            matched_idxs, labels = self.proposal_matchers[stage](iou)
            if len(gts) > 0:
                gt_classes = gts.gt_classes[matched_idxs]
                gt_classes[labels == 0] = self.num_classes
                gt_boxes = gts.gt_boxes[matched_idxs]
            else:
                gt_classes = torch.zeros_like(matched_idxs) + self.num_classes
                gt_boxes = Boxes(gts.gt_boxes.tensor.new_zeros((len(props), 4)))
            props.gt_classes = gt_classes
            props.gt_boxes = gt_boxes
            num_fg.append((labels == 1).sum().item())
            num_bg.append(labels.numel() - num_fg[-1])

        storage = get_event_storage()
        storage.put_scalar(f"stage{stage}/roi_head/num_fg_samples", sum(num_fg) / len(num_fg))
        storage.put_scalar(f"stage{stage}/roi_head/num_bg_samples", sum(num_bg) / len(num_bg))
        return proposals

    def _pool_for_stage(
        self, features: List[torch.Tensor], proposals: List[Instances]
    ) -> torch.Tensor:
        """Pool the proposals' boxes for one stage's box head: (R, C, S, S)."""
        box_features = self.box_pooler(features, [p.proposal_boxes for p in proposals])
        if self.training:
            # Every stage back-propagates into the shared features: scale each stage's share.
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        return box_features

    @torch.jit.unused
    def _run_stage(self, features: List[torch.Tensor], proposals: List[Instances], stage: int):
        """Detectron2's per-stage call, kept for code that calls it: pool, then stage
        ``stage``'s box head and predictor; returns (scores, deltas). ``_forward_box`` runs the
        same steps inline (TorchScript cannot index the stage lists with a variable), so
        overriding this method does not change the model's forward."""
        box_features = self._pool_for_stage(features, proposals)
        return self.box_predictor[stage](self.box_head[stage](box_features))

    def _create_proposals_from_boxes(
        self, boxes: List[torch.Tensor], image_sizes: List[Tuple[int, int]]
    ) -> List[Instances]:
        """Detached boxes -> proposals: clipped to the image, and in training without empty
        boxes."""
        proposals: List[Instances] = []
        for boxes_per_image, size in zip(boxes, image_sizes):
            boxes_per_image = Boxes(boxes_per_image.detach().clone())
            boxes_per_image.clip(size)
            if self.training:
                boxes_per_image = boxes_per_image[boxes_per_image.nonempty()]
            prop = Instances(size)
            prop.proposal_boxes = boxes_per_image
            proposals.append(prop)
        return proposals
