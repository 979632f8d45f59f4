"""ROI heads: the per-region second stage of an R-CNN (proposal sampling, box / mask / keypoint
heads).

Detectron2 path: ``detectron2.modeling.roi_heads.roi_heads``.

``ROIHeads`` holds the training-time matching and sampling of proposals; ``StandardROIHeads``
runs an independent pooler and head per task (FPN models); ``Res5ROIHeads`` shares a ResNet
res5 stage between the box and mask heads (C4 models).
"""

import inspect
import logging
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ...config import configurable
from ...layers import ShapeSpec
from ...structures import Boxes, ImageList, Instances
from ..backbone.resnet import BottleneckBlock, ResNet
from ..feature_names import check_in_features
from ..poolers import ROIPooler
from ..registries import ROI_HEADS_REGISTRY
from .box_head import build_box_head
from .fast_rcnn import FastRCNNOutputLayers
from .keypoint_head import build_keypoint_head
from .mask_head import build_mask_head

from .roi_heads_base import (  # noqa: F401  (re-exported at Detectron2's path)
    ROIHeads,
    _require,
    build_roi_heads,
    select_foreground_proposals,
    select_proposals_with_visible_keypoints,
)
__all__ = [
    "ROI_HEADS_REGISTRY",
    "ROIHeads",
    "Res5ROIHeads",
    "StandardROIHeads",
    "build_roi_heads",
    "select_foreground_proposals",
    "select_proposals_with_visible_keypoints",
]

logger = logging.getLogger(__name__)


@ROI_HEADS_REGISTRY.register()
class Res5ROIHeads(ROIHeads):
    """ROI heads of C4 models: regions pooled from one feature map (res4) go through a ResNet
    res5 stage (``res5.0..2``) shared by the box predictor (on the spatial mean of its output)
    and the mask head (on its output, for foreground / detected regions).
    """

    # A constant for TorchScript: without masks the mask branch is not compiled.
    mask_on: torch.jit.Final[bool]

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        pooler: ROIPooler,
        res5: nn.Module,
        box_predictor: nn.Module,
        mask_head: Optional[nn.Module] = None,
        **kwargs,
    ):
        """Args:
            in_features: the single feature map to pool from (e.g. ["res4"]).
            pooler: pools the regions from it.
            res5: a module (or list of blocks, made an ``nn.Sequential``) computing per-region
                features for the box predictor and the mask head.
            box_predictor: a :class:`FastRCNNOutputLayers`-like predictor.
            mask_head: a mask head, or None without masks.
            kwargs: arguments of :class:`ROIHeads`.
        """
        super().__init__(**kwargs)
        self.in_features = in_features
        self.pooler = pooler
        if isinstance(res5, (list, tuple)):
            res5 = nn.Sequential(*res5)
        self.res5 = res5
        self.box_predictor = box_predictor
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg)
        in_features = ret["in_features"] = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        box = cfg.MODEL.ROI_BOX_HEAD
        _require(
            len(in_features) == 1,
            f"Res5ROIHeads pools from one feature map, but MODEL.ROI_HEADS.IN_FEATURES="
            f"{in_features}; use e.g. ['res4'] (or StandardROIHeads for several).",
        )
        _require(
            not cfg.MODEL.KEYPOINT_ON,
            "Res5ROIHeads has no keypoint head; set MODEL.KEYPOINT_ON False or use "
            "MODEL.ROI_HEADS.NAME StandardROIHeads.",
        )
        check_in_features(in_features, input_shape, "MODEL.ROI_HEADS.IN_FEATURES")
        ret["pooler"] = ROIPooler(
            output_size=box.POOLER_RESOLUTION,
            scales=(1.0 / input_shape[in_features[0]].stride,),
            sampling_ratio=box.POOLER_SAMPLING_RATIO,
            pooler_type=box.POOLER_TYPE,
        )
        ret["res5"], out_channels = cls._build_res5_block(cfg)
        ret["box_predictor"] = FastRCNNOutputLayers(cfg, ShapeSpec(channels=out_channels))
        if cfg.MODEL.MASK_ON:
            size = box.POOLER_RESOLUTION
            shape = ShapeSpec(channels=out_channels, width=size, height=size)
            ret["mask_head"] = build_mask_head(cfg, shape)
        return ret

    @classmethod
    def _build_res5_block(cls, cfg) -> Tuple[nn.Sequential, int]:
        """The res5 stage from MODEL.RESNETS: 3 bottleneck blocks, the first with stride 2, with
        out channels RES2_OUT_CHANNELS * 8 and bottleneck width NUM_GROUPS * WIDTH_PER_GROUP * 8.

        Returns:
            (the stage as ``nn.Sequential``, its output channels).
        """
        resnets = cfg.MODEL.RESNETS
        factor = 2 ** 3  # res5 has 8x the channels of res2
        out_channels = resnets.RES2_OUT_CHANNELS * factor
        _require(
            not resnets.DEFORM_ON_PER_STAGE[-1],
            "Res5ROIHeads does not support deformable convs in res5; set "
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE[3] False.",
        )
        if resnets.RES5_DILATION != 1:
            # Detectron2's C4 head builds res5 the same way whatever the dilation; keep its
            # numbers, and say so.
            logger.warning(
                "MODEL.RESNETS.RES5_DILATION=%s is ignored by Res5ROIHeads: its res5 stage "
                "always has stride 2 and no dilation, as in Detectron2.",
                resnets.RES5_DILATION,
            )
        blocks = ResNet.make_stage(
            BottleneckBlock, 3, stride_per_block=[2, 1, 1], in_channels=out_channels // 2,
            bottleneck_channels=resnets.NUM_GROUPS * resnets.WIDTH_PER_GROUP * factor,
            out_channels=out_channels, num_groups=resnets.NUM_GROUPS, norm=resnets.NORM,
            stride_in_1x1=resnets.STRIDE_IN_1X1,
        )
        return nn.Sequential(*blocks), out_channels

    def _shared_roi_transform(self, features: List[torch.Tensor], boxes: List[Boxes]):
        """Pool the boxes and run res5: (R, C_out, S/2, S/2)."""
        return self.res5(self.pooler(features, boxes))

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """See :meth:`ROIHeads.forward`. Training returns ``([], losses)``."""
        del images
        if self.training:
            _require(bool(targets), "Res5ROIHeads: 'targets' are required in training.")
            proposals = self.label_and_sample_proposals(proposals, targets)
        del targets

        box_features = self._shared_roi_transform(
            [features[f] for f in self.in_features], [p.proposal_boxes for p in proposals]
        )
        predictions = self.box_predictor(box_features.mean(dim=[2, 3]))

        if self.training:
            del features
            losses = self.box_predictor.losses(predictions, proposals)
            if self.mask_on:
                proposals, fg_masks = select_foreground_proposals(proposals, self.num_classes)
                # res5 features are shared: take the foreground rows instead of recomputing.
                mask_features = box_features[torch.cat(fg_masks, dim=0)]
                del box_features
                losses.update(self.mask_head(mask_features, proposals))
            return [], losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """Eval only: add ``pred_masks`` to detections that have ``pred_boxes`` and
        ``pred_classes`` (unchanged without a mask head)."""
        if not torch.jit.is_scripting():
            _check_given_boxes(self, instances)
        if not self.mask_on:
            return instances
        x = self._shared_roi_transform(
            [features[f] for f in self.in_features], [inst.pred_boxes for inst in instances]
        )
        return self.mask_head(x, instances)


def _check_given_boxes(module: nn.Module, instances: List[Instances]) -> None:
    if module.training:
        raise RuntimeError(
            f"{type(module).__name__}.forward_with_given_boxes is for inference; call .eval()."
        )
    if instances and not (instances[0].has("pred_boxes") and instances[0].has("pred_classes")):
        raise ValueError(
            "forward_with_given_boxes: the instances need 'pred_boxes' and 'pred_classes' "
            f"fields, got {sorted(instances[0].get_fields())}."
        )


@ROI_HEADS_REGISTRY.register()
class StandardROIHeads(ROIHeads):
    """ROI heads where each task (box, mask, keypoint) has its own pooler and head, used by
    FPN (and C5) models. Masks and keypoints are trained on the foreground proposals and
    predicted on the final detections.
    """

    # Constants for TorchScript: the scripted code keeps only the enabled branches.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(
        self,
        *,
        box_in_features: List[str],
        box_pooler: ROIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        mask_in_features: Optional[List[str]] = None,
        mask_pooler: Optional[ROIPooler] = None,
        mask_head: Optional[nn.Module] = None,
        keypoint_in_features: Optional[List[str]] = None,
        keypoint_pooler: Optional[ROIPooler] = None,
        keypoint_head: Optional[nn.Module] = None,
        train_on_pred_boxes: bool = False,
        **kwargs,
    ):
        """Args:
            box_in_features: feature maps the box pooler reads (e.g. p2..p5).
            box_pooler, box_head, box_predictor: pooled features -> box features ->
                (scores, deltas) (a :class:`FastRCNNOutputLayers`-like predictor).
            mask_in_features: feature maps for the mask branch; None = no masks.
            mask_pooler: the mask pooler, or None to give the head the feature dict itself.
            mask_head: the mask head.
            keypoint_in_features, keypoint_pooler, keypoint_head: the same for keypoints.
            train_on_pred_boxes: train the mask / keypoint heads on the box head's refined
                boxes (of the gt class) instead of the proposals.
            kwargs: arguments of :class:`ROIHeads`.
        """
        super().__init__(**kwargs)
        self.in_features = self.box_in_features = box_in_features
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor

        self.mask_on = mask_in_features is not None
        if self.mask_on:
            _require(mask_head is not None, "StandardROIHeads: mask_in_features needs a mask_head.")
            self.mask_in_features = mask_in_features
            self.mask_pooler = mask_pooler
            self.mask_head = mask_head

        self.keypoint_on = keypoint_in_features is not None
        if self.keypoint_on:
            _require(
                keypoint_head is not None,
                "StandardROIHeads: keypoint_in_features needs a keypoint_head.",
            )
            self.keypoint_in_features = keypoint_in_features
            self.keypoint_pooler = keypoint_pooler
            self.keypoint_head = keypoint_head

        self.train_on_pred_boxes = train_on_pred_boxes

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg)
        ret["train_on_pred_boxes"] = cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES
        # Subclasses may override these as plain methods (old style) and call them themselves.
        if inspect.ismethod(cls._init_box_head):
            ret.update(cls._init_box_head(cfg, input_shape))
        if inspect.ismethod(cls._init_mask_head):
            ret.update(cls._init_mask_head(cfg, input_shape))
        if inspect.ismethod(cls._init_keypoint_head):
            ret.update(cls._init_keypoint_head(cfg, input_shape))
        return ret

    @staticmethod
    def _pooler_and_shape(in_features, input_shape, head_cfg):
        """(ROIPooler or None, input shape of the head) for one task from its POOLER_* keys;
        without POOLER_TYPE the head gets the dict of feature shapes and pools by itself.
        The pooled shape has the channels of the first feature."""
        resolution = head_cfg.POOLER_RESOLUTION
        if not head_cfg.POOLER_TYPE:
            return None, {f: input_shape[f] for f in in_features}
        pooler = ROIPooler(
            output_size=resolution,
            scales=tuple(1.0 / input_shape[f].stride for f in in_features),
            sampling_ratio=head_cfg.POOLER_SAMPLING_RATIO,
            pooler_type=head_cfg.POOLER_TYPE,
        )
        channels = input_shape[in_features[0]].channels
        shape = ShapeSpec(channels=channels, height=resolution, width=resolution)
        return pooler, shape

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        check_in_features(in_features, input_shape, "MODEL.ROI_HEADS.IN_FEATURES")
        _require(
            bool(cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE),
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE is empty; set it, e.g. to 'ROIAlignV2'.",
        )
        channels = sorted({input_shape[f].channels for f in in_features})
        _require(
            len(channels) == 1,
            f"MODEL.ROI_HEADS.IN_FEATURES={in_features} have different channel counts "
            f"{channels}; the box head is shared across them and needs one.",
        )
        pooler, shape = cls._pooler_and_shape(in_features, input_shape, cfg.MODEL.ROI_BOX_HEAD)
        box_head = build_box_head(cfg, shape)
        return {
            "box_in_features": in_features,
            "box_pooler": pooler,
            "box_head": box_head,
            "box_predictor": FastRCNNOutputLayers(cfg, box_head.output_shape),
        }

    @classmethod
    def _init_mask_head(cls, cfg, input_shape):
        if not cfg.MODEL.MASK_ON:
            return {}
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        check_in_features(in_features, input_shape, "MODEL.ROI_HEADS.IN_FEATURES")
        pooler, shape = cls._pooler_and_shape(in_features, input_shape, cfg.MODEL.ROI_MASK_HEAD)
        return {
            "mask_in_features": in_features,
            "mask_pooler": pooler,
            "mask_head": build_mask_head(cfg, shape),
        }

    @classmethod
    def _init_keypoint_head(cls, cfg, input_shape):
        if not cfg.MODEL.KEYPOINT_ON:
            return {}
        in_features = list(cfg.MODEL.ROI_HEADS.IN_FEATURES)
        check_in_features(in_features, input_shape, "MODEL.ROI_HEADS.IN_FEATURES")
        pooler, shape = cls._pooler_and_shape(
            in_features, input_shape, cfg.MODEL.ROI_KEYPOINT_HEAD
        )
        return {
            "keypoint_in_features": in_features,
            "keypoint_pooler": pooler,
            "keypoint_head": build_keypoint_head(cfg, shape),
        }

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """See :meth:`ROIHeads.forward`. Training returns the sampled proposals and the losses
        ``loss_cls``, ``loss_box_reg`` (+ ``loss_mask``, ``loss_keypoint`` when enabled)."""
        del images
        if self.training:
            _require(bool(targets), "StandardROIHeads: 'targets' are required in training.")
            proposals = self.label_and_sample_proposals(proposals, targets)
        del targets

        if self.training:
            losses = self._forward_box(features, proposals)
            # With train_on_pred_boxes, _forward_box replaced the proposal boxes by refined ones.
            losses.update(self._forward_mask(features, proposals))
            losses.update(self._forward_keypoint(features, proposals))
            return proposals, losses
        pred_instances = self._forward_box(features, proposals)
        # Masks and keypoints are predicted on the final (top-scoring) detections only.
        return self.forward_with_given_boxes(features, pred_instances), {}

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """Eval only: add ``pred_masks`` / ``pred_keypoints`` (when enabled) to detections
        that have ``pred_boxes`` and ``pred_classes``.

        Returns:
            the same ``Instances`` objects, with the new fields.
        """
        if not torch.jit.is_scripting():
            _check_given_boxes(self, instances)
        instances = self._forward_mask(features, instances)
        return self._forward_keypoint(features, instances)

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """Training: the box losses (and, with ``train_on_pred_boxes``, the proposals' boxes
        replaced by the predicted boxes of their gt class). Eval: the detections (one
        ``Instances`` per image, from ``box_predictor.inference``)."""
        feature_list = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(feature_list, [p.proposal_boxes for p in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        del box_features

        if self.training:
            losses = self.box_predictor.losses(predictions, proposals)
            if self.train_on_pred_boxes:
                with torch.no_grad():
                    refined = self.box_predictor.predict_boxes_for_gt_classes(
                        predictions, proposals
                    )
                    for props, boxes in zip(proposals, refined):
                        props.proposal_boxes = Boxes(boxes)
            return losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals)
        return pred_instances

    def _forward_mask(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Training: ``{"loss_mask": ...}`` on the foreground proposals. Eval: ``instances``
        with ``pred_masks``. Without a mask head: {} / ``instances`` unchanged."""
        if not self.mask_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
        if self.mask_pooler is not None:
            boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
            x = self.mask_pooler([features[f] for f in self.mask_in_features], boxes)
        else:
            x = {f: features[f] for f in self.mask_in_features}
        return self.mask_head(x, instances)

    def _forward_keypoint(self, features: Dict[str, torch.Tensor], instances: List[Instances]):
        """Training: ``{"loss_keypoint": ...}`` on the foreground proposals with a visible
        keypoint inside. Eval: ``instances`` with ``pred_keypoints`` and
        ``pred_keypoint_heatmaps``. Without a keypoint head: {} / ``instances`` unchanged."""
        if not self.keypoint_on:
            return {} if self.training else instances
        if self.training:
            instances, _ = select_foreground_proposals(instances, self.num_classes)
            instances = select_proposals_with_visible_keypoints(instances)
        if self.keypoint_pooler is not None:
            boxes = [x.proposal_boxes if self.training else x.pred_boxes for x in instances]
            x = self.keypoint_pooler([features[f] for f in self.keypoint_in_features], boxes)
        else:
            x = {f: features[f] for f in self.keypoint_in_features}
        return self.keypoint_head(x, instances)
