"""Keypoint heads: per-region features -> per-keypoint heatmap logits, the Keypoint R-CNN loss
and inference.

Detectron2 path: ``detectron2.modeling.roi_heads.keypoint_head``.

Shapes: R regions over all images, K keypoints per instance, S the side of the heatmaps (56 for
14x14 pooled features: x2 by the transposed conv, x2 by bilinear upsampling).
"""

from typing import List, Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import Conv2d, ConvTranspose2d, ShapeSpec, cat, interpolate
from ...structures import Instances, heatmaps_to_keypoints
from ...utils.events import get_event_storage
from ..registries import ROI_KEYPOINT_HEAD_REGISTRY

__all__ = [
    "BaseKeypointRCNNHead",
    "KRCNNConvDeconvUpsampleHead",
    "build_keypoint_head",
    "keypoint_rcnn_inference",
    "keypoint_rcnn_loss",
    "ROI_KEYPOINT_HEAD_REGISTRY",
]

_TOTAL_SKIPPED = 0
"""Batches without any visible keypoint so far (logged as ``kpts_num_skipped_batches``)."""


def build_keypoint_head(cfg, input_shape) -> nn.Module:
    """Build the keypoint head named by ``cfg.MODEL.ROI_KEYPOINT_HEAD.NAME`` from the registry.

    Args:
        cfg: a config.
        input_shape: ShapeSpec of the pooled features (a dict of ShapeSpec per feature when
            the head pools by itself, ROI_KEYPOINT_HEAD.POOLER_TYPE empty).
    """
    return ROI_KEYPOINT_HEAD_REGISTRY.get(cfg.MODEL.ROI_KEYPOINT_HEAD.NAME)(cfg, input_shape)


def keypoint_rcnn_loss(
    pred_keypoint_logits: torch.Tensor,
    instances: List[Instances],
    normalizer: Optional[float],
) -> torch.Tensor:
    """Cross-entropy over the S*S heatmap cells of every visible keypoint.

    Each gt keypoint visible and inside its region's ``proposal_boxes`` is encoded as one cell
    index of an S x S grid over the box (``Keypoints.to_heatmap``); the loss is the softmax
    cross-entropy of that keypoint's S*S logits against the cell, summed over visible
    keypoints and divided by ``normalizer`` (the number of visible keypoints when None).

    Args:
        pred_keypoint_logits: (R, K, S, S) logits, R = total regions of ``instances`` in order.
        instances: one ``Instances`` per image with ``proposal_boxes`` and ``gt_keypoints``.
        normalizer: the divisor, or None for the number of visible keypoints.

    Returns:
        scalar loss; ``pred_keypoint_logits.sum() * 0`` when no keypoint is visible (the
        skipped batch is counted in the storage as ``kpts_num_skipped_batches``).
    """
    side = pred_keypoint_logits.shape[2]
    targets = []
    valid = []
    for per_image in instances:
        if len(per_image) == 0:
            continue
        cells, visible = per_image.gt_keypoints.to_heatmap(per_image.proposal_boxes.tensor, side)
        targets.append(cells.view(-1))
        valid.append(visible.view(-1))

    if len(targets):
        targets = cat(targets, dim=0)
        valid = torch.nonzero(cat(valid, dim=0)).squeeze(1)

    if len(targets) == 0 or valid.numel() == 0:
        global _TOTAL_SKIPPED
        _TOTAL_SKIPPED += 1
        get_event_storage().put_scalar(
            "kpts_num_skipped_batches", _TOTAL_SKIPPED, smoothing_hint=False
        )
        return pred_keypoint_logits.sum() * 0

    num_regions, num_kpts, height, width = pred_keypoint_logits.shape
    flat_logits = pred_keypoint_logits.view(num_regions * num_kpts, height * width)
    loss = F.cross_entropy(flat_logits[valid], targets[valid], reduction="sum")
    if normalizer is None:
        normalizer = valid.numel()
    return loss / normalizer


def keypoint_rcnn_inference(
    pred_keypoint_logits: torch.Tensor, pred_instances: List[Instances]
) -> None:
    """Decode the heatmaps into keypoints inside each detected box (``heatmaps_to_keypoints``).

    Args:
        pred_keypoint_logits: (D, K, S, S) logits, D = total detections of ``pred_instances``.
        pred_instances: one ``Instances`` per image with ``pred_boxes``; modified in place:
            ``pred_keypoints`` (Di, K, 3) float of (x, y, score) in image pixels and
            ``pred_keypoint_heatmaps`` (Di, K, S, S) the raw logits.
    """
    boxes = cat([inst.pred_boxes.tensor for inst in pred_instances], dim=0)
    logits = pred_keypoint_logits.detach()
    decoded = heatmaps_to_keypoints(logits, boxes.detach())  # (D, K, 4): x, y, logit, score
    counts = [len(inst) for inst in pred_instances]
    keypoints = decoded[:, :, [0, 1, 3]].split(counts, dim=0)
    heatmaps = logits.split(counts, dim=0)
    for kpts, maps, inst in zip(keypoints, heatmaps, pred_instances):
        inst.pred_keypoints = kpts
        inst.pred_keypoint_heatmaps = maps


class BaseKeypointRCNNHead(nn.Module):
    """Base of Keypoint R-CNN heads: subclasses implement :meth:`layers` (features -> heatmap
    logits); ``forward`` adds the loss (training) or the inference (eval)."""

    @configurable
    def __init__(
        self, *, num_keypoints: int, loss_weight: float = 1.0,
        loss_normalizer: Union[float, str] = 1.0,
    ):
        """Args:
            num_keypoints: K, keypoints per instance.
            loss_weight: multiplier of the keypoint loss.
            loss_normalizer: "visible" to divide the loss by the batch's visible keypoints, or
                a float: the loss is divided by ``num_images * loss_normalizer``.
        """
        super().__init__()
        if not (loss_normalizer == "visible" or isinstance(loss_normalizer, (int, float))):
            raise ValueError(
                f"BaseKeypointRCNNHead: loss_normalizer must be 'visible' or a number, got "
                f"{loss_normalizer!r}."
            )
        self.num_keypoints = num_keypoints
        self.loss_weight = loss_weight
        self.loss_normalizer = loss_normalizer

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_KEYPOINT_HEAD
        ret = {"loss_weight": head.LOSS_WEIGHT, "num_keypoints": head.NUM_KEYPOINTS}
        if head.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS:
            ret["loss_normalizer"] = "visible"
        else:
            # The expected number of keypoints of a full batch per image: sampled foreground
            # regions times keypoints.
            ret["loss_normalizer"] = (
                ret["num_keypoints"]
                * cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
                * cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION
            )
        return ret

    def forward(self, x, instances: List[Instances]):
        """Args:
            x: per-region input features, e.g. (R, C, H, W), in the order of ``instances``.
            instances: training: the foreground proposals with visible keypoints; eval: the
                detections (with ``pred_boxes``), one ``Instances`` per image.

        Returns:
            training: ``{"loss_keypoint": loss * loss_weight}``; eval: ``instances`` with
            ``pred_keypoints`` and ``pred_keypoint_heatmaps`` set.
        """
        x = self.layers(x)
        if self.training:
            if self.loss_normalizer == "visible":
                normalizer = None
            else:
                normalizer = len(instances) * self.loss_normalizer
            loss = keypoint_rcnn_loss(x, instances, normalizer=normalizer)
            return {"loss_keypoint": loss * self.loss_weight}
        keypoint_rcnn_inference(x, instances)
        return instances

    def layers(self, x):
        """Per-region features -> (R, K, S, S) heatmap logits. Implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement layers(x).")


@ROI_KEYPOINT_HEAD_REGISTRY.register()
class KRCNNConvDeconvUpsampleHead(BaseKeypointRCNNHead, nn.Sequential):
    """The Keypoint R-CNN head: ``conv_fcn1..n`` (3x3 conv + ReLU ``conv_fcn_relu<i>``),
    ``score_lowres`` (4x4 stride-2 transposed conv to K channels), then bilinear x2
    upsampling (``up_scale``).

    ``layers(x (R, C, S, S)) -> (R, K, 4S, 4S)`` logits. All weights: Kaiming normal
    (fan_out, ReLU); biases 0.
    """

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_keypoints: int, conv_dims: List[int],
                 **kwargs):
        """Args:
            input_shape: shape of the per-region input features.
            num_keypoints: K.
            conv_dims: channels of each 3x3 conv (e.g. 8 x 512).
            kwargs: ``loss_weight``, ``loss_normalizer`` of :class:`BaseKeypointRCNNHead`.
        """
        super().__init__(num_keypoints=num_keypoints, **kwargs)
        self.up_scale = 2.0
        channels = input_shape.channels
        for idx, conv_dim in enumerate(conv_dims, 1):
            self.add_module(f"conv_fcn{idx}", Conv2d(channels, conv_dim, 3, stride=1, padding=1))
            self.add_module(f"conv_fcn_relu{idx}", nn.ReLU())
            channels = conv_dim
        kernel = 4
        self.score_lowres = ConvTranspose2d(
            channels, num_keypoints, kernel, stride=2, padding=kernel // 2 - 1
        )
        for name, param in self.named_parameters():
            if "bias" in name:
                nn.init.constant_(param, 0)
            elif "weight" in name:
                # The Caffe2 "MSRAFill" of the original implementation.
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["input_shape"] = input_shape
        ret["conv_dims"] = list(cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS)
        return ret

    def layers(self, x):
        for layer in self:
            x = layer(x)
        return interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)
