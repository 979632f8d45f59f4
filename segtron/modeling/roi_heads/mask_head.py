"""Mask heads: per-region features -> per-class mask logits, the Mask R-CNN loss and inference.

Detectron2 path: ``detectron2.modeling.roi_heads.mask_head``.

Shapes: R regions over all images, C input channels, K classes (1 when class-agnostic), M the
side of the predicted masks (28 for 14x14 pooled features).
"""

from typing import List

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, get_norm
from ...layers.execution import is_channels_last, mask_deconv_input
from ...structures import Instances
from ...utils.events import get_event_storage
from ..registries import ROI_MASK_HEAD_REGISTRY

__all__ = [
    "BaseMaskRCNNHead",
    "MaskRCNNConvUpsampleHead",
    "build_mask_head",
    "mask_rcnn_inference",
    "mask_rcnn_loss",
    "ROI_MASK_HEAD_REGISTRY",
]


def mask_rcnn_loss(
    pred_mask_logits: torch.Tensor, instances: List[Instances], vis_period: int = 0
) -> torch.Tensor:
    """Binary cross-entropy between predicted mask logits and the ground-truth masks cropped
    to each region.

    For every region the target is its gt mask cropped to ``proposal_boxes`` and resized to
    M x M (``gt_masks.crop_and_resize``: polygons rasterised inside the box, bitmasks
    ROIAligned and thresholded at 0.5); the prediction is the channel of its ``gt_classes``
    (or the single channel when class-agnostic). The loss is the mean over all R * M * M pixels.
    Records ``mask_rcnn/accuracy``, ``mask_rcnn/false_positive`` and
    ``mask_rcnn/false_negative`` (prediction = logit > 0) in the current ``EventStorage``.

    Args:
        pred_mask_logits: (R, K, M, M) or (R, 1, M, M) logits, R = total regions of
            ``instances`` in order.
        instances: one ``Instances`` per image with ``proposal_boxes``, ``gt_classes`` and
            ``gt_masks`` (PolygonMasks or BitMasks), usually the foreground proposals.
        vis_period: every ``vis_period`` iterations, put prediction | target images in the
            storage (0 = never).

    Returns:
        scalar loss; ``pred_mask_logits.sum() * 0`` when there are no regions.
    """
    class_agnostic = pred_mask_logits.size(1) == 1
    num_regions = pred_mask_logits.size(0)
    side = pred_mask_logits.size(2)
    if pred_mask_logits.size(3) != side:
        raise ValueError(
            f"mask_rcnn_loss: mask predictions must be square, got {tuple(pred_mask_logits.shape)}."
        )

    gt_classes = []
    gt_masks = []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        if not class_agnostic:
            gt_classes.append(per_image.gt_classes.to(dtype=torch.int64))
        crops = per_image.gt_masks.crop_and_resize(per_image.proposal_boxes.tensor, side)
        gt_masks.append(crops.to(device=pred_mask_logits.device))

    if len(gt_masks) == 0:
        return pred_mask_logits.sum() * 0

    gt_masks = cat(gt_masks, dim=0)
    if class_agnostic:
        pred_mask_logits = pred_mask_logits[:, 0]
    else:
        rows = torch.arange(num_regions, device=pred_mask_logits.device)
        pred_mask_logits = pred_mask_logits[rows, cat(gt_classes, dim=0)]

    if gt_masks.dtype == torch.bool:
        gt_masks_bool = gt_masks
    else:  # a custom mask type returning soft masks
        gt_masks_bool = gt_masks > 0.5
    gt_masks = gt_masks.to(dtype=torch.float32)

    wrong = (pred_mask_logits > 0.0) != gt_masks_bool
    num_pixels = wrong.numel()
    num_positive = gt_masks_bool.sum().item()
    storage = get_event_storage()
    storage.put_scalar("mask_rcnn/accuracy", 1 - wrong.sum().item() / max(num_pixels, 1.0))
    storage.put_scalar(
        "mask_rcnn/false_positive",
        (wrong & ~gt_masks_bool).sum().item() / max(gt_masks_bool.numel() - num_positive, 1.0),
    )
    storage.put_scalar(
        "mask_rcnn/false_negative",
        (wrong & gt_masks_bool).sum().item() / max(num_positive, 1.0),
    )
    if vis_period > 0 and storage.iter % vis_period == 0:
        side_by_side = torch.cat([pred_mask_logits.sigmoid(), gt_masks], dim=2)
        title = "Left: mask prediction;   Right: mask GT"
        for idx, image in enumerate(side_by_side):
            storage.put_image(f"{title} ({idx})", torch.stack([image] * 3, dim=0))

    return F.binary_cross_entropy_with_logits(pred_mask_logits, gt_masks, reduction="mean")


def mask_rcnn_inference(pred_mask_logits: torch.Tensor, pred_instances: List[Instances]) -> None:
    """Set ``pred_masks`` on each image's instances: the sigmoid of the predicted class's
    channel (the single channel when class-agnostic).

    Args:
        pred_mask_logits: (D, K, M, M) or (D, 1, M, M) logits, D = total detections of
            ``pred_instances`` in order.
        pred_instances: one ``Instances`` per image with ``pred_classes``; modified in place:
            ``pred_masks`` becomes a (Di, 1, M, M) float tensor of probabilities.
    """
    if pred_mask_logits.size(1) == 1:
        probs = pred_mask_logits.sigmoid()
    else:
        classes = cat([inst.pred_classes for inst in pred_instances])
        rows = torch.arange(pred_mask_logits.shape[0], device=classes.device)
        probs = pred_mask_logits[rows, classes][:, None].sigmoid()
    per_image = probs.split([len(inst) for inst in pred_instances], dim=0)
    for masks, inst in zip(per_image, pred_instances):
        inst.pred_masks = masks


class BaseMaskRCNNHead(nn.Module):
    """Base of Mask R-CNN heads: subclasses implement :meth:`layers` (features -> logits);
    ``forward`` adds the loss (training) or the inference (eval)."""

    @configurable
    def __init__(self, *, loss_weight: float = 1.0, vis_period: int = 0):
        """Args:
            loss_weight: multiplier of the mask loss.
            vis_period: period (iterations) of the training visualisations; 0 = off.
        """
        super().__init__()
        self.loss_weight = loss_weight
        self.vis_period = vis_period

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {"vis_period": cfg.VIS_PERIOD}

    def forward(self, x, instances: List[Instances]):
        """Args:
            x: per-region input features, e.g. (R, C, H, W), in the order of ``instances``.
            instances: training: the foreground proposals (with gt fields); eval: the
                detections (with ``pred_classes``), one ``Instances`` per image.

        Returns:
            training: ``{"loss_mask": loss * loss_weight}``; eval: ``instances`` with
            ``pred_masks`` set.
        """
        x = self.layers(x)
        if self.training:
            return {"loss_mask": mask_rcnn_loss(x, instances, self.vis_period) * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances

    def layers(self, x):
        """Per-region features -> (R, K, M, M) mask logits. Implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement layers(x).")


@ROI_MASK_HEAD_REGISTRY.register()
class MaskRCNNConvUpsampleHead(BaseMaskRCNNHead, nn.Sequential):
    """The Mask R-CNN head: ``mask_fcn1..n`` (3x3 conv + optional norm + ReLU), ``deconv``
    (2x2 stride-2 transposed conv) + ``deconv_relu``, and ``predictor`` (1x1 conv to K
    channels, or 1 when class-agnostic).

    ``layers(x (R, C, S, S)) -> (R, K, 2S, 2S)`` logits.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, conv_dims: List[int],
                 conv_norm: str = "", **kwargs):
        """Args:
            input_shape: shape of the per-region input features.
            num_classes: output channels of the predictor (1 = class-agnostic masks).
            conv_dims: channels of the n 3x3 convs followed by those of the deconv (so
                NUM_CONV + 1 values); must be non-empty.
            conv_norm: norm of the 3x3 convs (they have a bias only without one).
            kwargs: ``loss_weight``, ``vis_period`` of :class:`BaseMaskRCNNHead`.
        """
        super().__init__(**kwargs)
        if len(conv_dims) < 1:
            raise ValueError(
                "MaskRCNNConvUpsampleHead: conv_dims must hold at least the deconv's channels "
                "(MODEL.ROI_MASK_HEAD.CONV_DIM)."
            )
        self.conv_norm_relus = []
        channels = input_shape.channels
        for k, conv_dim in enumerate(conv_dims[:-1]):
            conv = Conv2d(
                channels, conv_dim, kernel_size=3, stride=1, padding=1, bias=not conv_norm,
                norm=get_norm(conv_norm, conv_dim), activation=nn.ReLU(),
            )
            self.add_module(f"mask_fcn{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            channels = conv_dim

        self.deconv = ConvTranspose2d(channels, conv_dims[-1], kernel_size=2, stride=2, padding=0)
        self.add_module("deconv_relu", nn.ReLU(inplace=True))  # on the deconv's own output
        self.predictor = Conv2d(conv_dims[-1], num_classes, kernel_size=1, stride=1, padding=0)

        for layer in self.conv_norm_relus + [self.deconv]:
            weight_init.c2_msra_fill(layer)
        nn.init.normal_(self.predictor.weight, std=0.001)
        if self.predictor.bias is not None:
            nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_MASK_HEAD
        ret.update(
            input_shape=input_shape,
            conv_dims=[head.CONV_DIM] * (head.NUM_CONV + 1),
            conv_norm=head.NORM,
            num_classes=1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
        )
        return ret

    def layers(self, x):
        """The convs, deconv and predictor on pooled features x (R, C, M, M); returns mask
        logits (R, K, 2M, 2M) (K = 1 when class-agnostic). The deconv gets the layout
        ``mask_deconv_input`` picks."""
        pooled_nhwc = is_channels_last(x)
        for layer in self:
            if layer is self.deconv:
                x = mask_deconv_input(x, pooled_nhwc)
            x = layer(x)
        return x


def build_mask_head(cfg, input_shape) -> nn.Module:
    """Build the mask head named by ``cfg.MODEL.ROI_MASK_HEAD.NAME`` from the registry.

    Args:
        cfg: a config.
        input_shape: ShapeSpec of the pooled features (or a dict of ShapeSpec per feature
            when the head pools by itself, ROI_MASK_HEAD.POOLER_TYPE empty).
    """
    return ROI_MASK_HEAD_REGISTRY.get(cfg.MODEL.ROI_MASK_HEAD.NAME)(cfg, input_shape)
