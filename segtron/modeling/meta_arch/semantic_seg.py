"""Semantic segmentation: a backbone plus a dense per-pixel classification head.

Detectron2 path: ``detectron2.modeling.meta_arch.semantic_seg``.

:class:`SemanticSegmentor` takes Detectron2's batched inputs (``"image"``, and ``"sem_seg"``,
an (H, W) int64 label map, in training) and returns ``{"loss_sem_seg": ...}`` in training or
``[{"sem_seg": (C, height, width) float logits}, ...]`` in inference. Heads come from
``SEM_SEG_HEADS_REGISTRY`` by MODEL.SEM_SEG_HEAD.NAME; :class:`SemSegFPNHead` is Panoptic FPN's
(Kirillov et al. 2019): every FPN level is brought to stride COMMON_STRIDE by 3x3 conv + norm
+ ReLU (+ 2x bilinear upsampling) stages, the levels are summed and a 1x1 conv predicts the
classes.
"""

import logging
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import Conv2d, ShapeSpec, get_norm
from ...structures import ImageList
from ..backbone import Backbone, build_backbone
from ..feature_names import check_in_features
from ..postprocessing import sem_seg_postprocess
from ..registries import META_ARCH_REGISTRY, SEM_SEG_HEADS_REGISTRY
from .model_inputs import (
    device_property,
    input_config,
    normalize_and_batch,
    output_size,
    register_pixel_stats,
    winograd_conv_property,
)

__all__ = [
    "SemanticSegmentor", "SEM_SEG_HEADS_REGISTRY", "SemSegFPNHead", "build_sem_seg_head",
    "require_training_targets",
]

logger = logging.getLogger(__name__)


def build_sem_seg_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """Build the head named by MODEL.SEM_SEG_HEAD.NAME from ``SEM_SEG_HEADS_REGISTRY``.

    Args:
        cfg: the config.
        input_shape: the backbone's outputs, name -> ``ShapeSpec``.

    Returns:
        a module called as ``head(features: dict name -> (N, C, Hi, Wi), targets: (N, H, W)
        int64 or None) -> (logits (N, K, H, W) or None in training, losses dict)``, with an
        ``ignore_value`` attribute (the label excluded from the loss).
    """
    return SEM_SEG_HEADS_REGISTRY.get(cfg.MODEL.SEM_SEG_HEAD.NAME)(cfg, input_shape)


def batch_sem_seg_targets(
    batched_inputs: List[Dict], images: ImageList, backbone: Backbone, head: nn.Module,
    device: torch.device,
) -> torch.Tensor:
    """The inputs' "sem_seg" label maps (H, W) padded like the images (bottom / right, with
    ``head.ignore_value``) into one (N, H', W') int64 batch on ``device``.

    Raises ValueError naming the input's file when a label map's size differs from its
    image's, or when it holds a label outside ``[0, head.num_classes)`` (when the head has
    ``num_classes``) that is not ``head.ignore_value``.
    """
    num_classes = getattr(head, "num_classes", None)
    targets = []
    for i, (item, size) in enumerate(zip(batched_inputs, images.image_sizes)):
        target = item["sem_seg"]
        where = f"batched input {i} ({item.get('file_name', 'no file_name')})"
        if tuple(target.shape[-2:]) != tuple(size):
            raise ValueError(
                f"The 'sem_seg' of {where} is {tuple(target.shape[-2:])} but its image is "
                f"{tuple(size)}: the label map must be transformed with the image (DatasetMapper "
                "does this) and its PNG must have the image's size."
            )
        if num_classes is not None:
            labels = torch.unique(target)
            bad = labels[(labels != head.ignore_value) & ((labels < 0) | (labels >= num_classes))]
            if bad.numel():
                raise ValueError(
                    f"The 'sem_seg' of {where} holds labels {bad.tolist()}, outside the "
                    f"{num_classes} classes 0..{num_classes - 1} (MODEL.SEM_SEG_HEAD.NUM_CLASSES) "
                    f"and not the ignore value {head.ignore_value} "
                    "(MODEL.SEM_SEG_HEAD.IGNORE_VALUE). Fix the label PNG or the config."
                )
        targets.append(target.to(device))
    return ImageList.from_tensors(
        targets,
        backbone.size_divisibility,
        head.ignore_value,
        backbone.padding_constraints,
    ).tensor.long()


def require_training_targets(head: nn.Module, targets: Optional[torch.Tensor]) -> torch.Tensor:
    """Return ``targets``; raise ValueError naming ``head``'s class when they are None (a
    semantic head in training mode needs the (N, H, W) int64 "sem_seg" labels)."""
    if targets is None:
        raise ValueError(
            f"{type(head).__name__} needs targets (the 'sem_seg' labels, (N, H, W) int64) in "
            "training; pass them, or call .eval() on the head (or its model) for inference."
        )
    return targets


@META_ARCH_REGISTRY.register()
class SemanticSegmentor(nn.Module):
    """Backbone -> semantic segmentation head -> per-pixel class logits.

    Training: ``forward -> {"loss_sem_seg": ...}`` (the head's losses). Inference:
    ``[{"sem_seg": (K, height, width) logits}, ...]`` resized to each input's "height" x
    "width" (default: the network input size).
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        sem_seg_head: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        channels_last: bool = False,
        winograd_conv: bool = False,
    ):
        """Args:
            backbone: maps the normalised (N, C, H, W) batch to named feature maps.
            sem_seg_head: ``(features, targets) -> (logits or None, losses)``, with an
                ``ignore_value`` attribute, e.g. :class:`SemSegFPNHead`.
            pixel_mean, pixel_std: per-channel normalisation ``(x - mean) / std``.
            channels_last: NHWC batches for the backbone (MODEL.CHANNELS_LAST).
            winograd_conv: CPU Winograd / GEMM convolutions outside the bottom-up network
                (MODEL.WINOGRAD_CONV); a settable attribute.
        """
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.channels_last = bool(channels_last)
        self.winograd_conv = winograd_conv
        register_pixel_stats(self, pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        """Backbone from MODEL.BACKBONE, head from MODEL.SEM_SEG_HEAD; MODEL.PIXEL_MEAN / STD,
        MODEL.CHANNELS_LAST, MODEL.WINOGRAD_CONV."""
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "sem_seg_head": build_sem_seg_head(cfg, backbone.output_shape()),
            **input_config(cfg),
        }

    winograd_conv = winograd_conv_property
    device = device_property

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise the inputs' images and pad them into one batch."""
        return normalize_and_batch(self, batched_inputs, self.backbone)

    def forward(self, batched_inputs: List[Dict]):
        """Args:
            batched_inputs: one dict per image: "image" (C, H, W); "sem_seg" (H, W) int64
                labels in training (IGNORE_VALUE where unlabeled); optionally "height" /
                "width" for the output size.

        Returns:
            in training, the head's losses; in eval, ``[{"sem_seg": (K, height, width)}]``.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        targets = None
        if "sem_seg" in batched_inputs[0]:
            targets = batch_sem_seg_targets(
                batched_inputs, images, self.backbone, self.sem_seg_head, self.device
            )
        elif self.training:
            raise ValueError(
                "SemanticSegmentor needs ground truth in training: each batched input needs a "
                "'sem_seg' label map (the DatasetMapper reads it from the dataset dict's "
                "'sem_seg_file_name'); call model.eval() for inference."
            )
        results, losses = self.sem_seg_head(features, targets)
        if self.training:
            return losses
        processed = []
        for result, item, image_size in zip(results, batched_inputs, images.image_sizes):
            height, width = output_size(item, image_size)
            processed.append({"sem_seg": sem_seg_postprocess(result, image_size, height, width)})
        return processed


@SEM_SEG_HEADS_REGISTRY.register()
class SemSegFPNHead(nn.Module):
    """Panoptic FPN's semantic segmentation head.

    For each input level of stride s, ``max(1, log2(s / common_stride))`` stages of 3x3 conv
    (+ norm) + ReLU, each followed by 2x bilinear upsampling while s > common_stride; the
    levels' outputs (all at stride ``common_stride``) are summed and a 1x1 ``predictor``
    gives the class logits. Parameter names are Detectron2's: ``<level>.<i>.weight``,
    ``<level>.<i>.norm.*`` (i = 0, 2, 4, ... with upsampling between), ``predictor.*``.

    ``forward(features, targets=None)``: in training ``(None, {"loss_sem_seg": ...})`` with
    the cross-entropy (mean over labelled pixels) of the logits upsampled by ``common_stride``
    (bilinear); in eval ``((N, K, H, W) logits upsampled by common_stride, {})``.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: int,
        common_stride: int,
        loss_weight: float = 1.0,
        norm: Optional[Union[str, Callable]] = None,
        ignore_value: int = -1,
    ):
        """Args:
            input_shape: the levels to use, name -> ``ShapeSpec`` (stride, channels); used
                from the finest to the coarsest.
            num_classes: K, the number of classes predicted.
            conv_dims: channels of every hidden conv.
            common_stride: the stride every level is brought to (a power of 2, at most the
                finest level's stride).
            loss_weight: multiplies the loss.
            norm: norm of the hidden convs ("GN", "BN", ... or None / ""): convs have a bias
                only without one.
            ignore_value: label excluded from the loss (pixels of padding and unlabeled
                pixels).
        """
        super().__init__()
        levels = sorted(input_shape.items(), key=lambda item: item[1].stride)
        if not levels:
            raise ValueError(
                "SemSegFPNHead: no input levels; set MODEL.SEM_SEG_HEAD.IN_FEATURES to FPN "
                "outputs such as ['p2', 'p3', 'p4', 'p5']."
            )
        if int(num_classes) < 1:
            raise ValueError(
                f"SemSegFPNHead: num_classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES) = {num_classes}; "
                "it must be >= 1."
            )
        finest = levels[0][1].stride
        if common_stride > finest or common_stride & (common_stride - 1):
            raise ValueError(
                f"SemSegFPNHead: common_stride (MODEL.SEM_SEG_HEAD.COMMON_STRIDE) = "
                f"{common_stride} must be a power of 2 no larger than the finest input "
                f"stride ({finest}, of '{levels[0][0]}')."
            )
        self.in_features = [name for name, _ in levels]
        self.num_classes = int(num_classes)
        self.ignore_value = ignore_value
        self.common_stride = common_stride
        self.loss_weight = loss_weight
        self.scale_heads = []
        for name, shape in levels:
            stages = max(1, int(math.log2(shape.stride) - math.log2(common_stride)))
            ops: List[nn.Module] = []
            for k in range(stages):
                conv = Conv2d(
                    shape.channels if k == 0 else conv_dims,
                    conv_dims,
                    kernel_size=3,
                    stride=1,
                    padding=1,
                    bias=not norm,
                    norm=get_norm(norm, conv_dims),
                    activation=F.relu,
                )
                weight_init.c2_msra_fill(conv)
                ops.append(conv)
                if shape.stride != common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*ops))
            self.add_module(name, self.scale_heads[-1])
        self.predictor = Conv2d(conv_dims, num_classes, kernel_size=1, stride=1, padding=0)
        weight_init.c2_msra_fill(self.predictor)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """MODEL.SEM_SEG_HEAD.{IN_FEATURES, IGNORE_VALUE, NUM_CLASSES, CONVS_DIM,
        COMMON_STRIDE, NORM, LOSS_WEIGHT}; ``input_shape`` is the backbone's outputs."""
        head = cfg.MODEL.SEM_SEG_HEAD
        check_in_features(head.IN_FEATURES, input_shape, "MODEL.SEM_SEG_HEAD.IN_FEATURES")
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "conv_dims": head.CONVS_DIM,
            "common_stride": head.COMMON_STRIDE,
            "norm": head.NORM,
            "loss_weight": head.LOSS_WEIGHT,
        }

    def forward(
        self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """Args:
            features: name -> (N, C, Hi, Wi); must hold every level of ``in_features``.
            targets: (N, H, W) int64 labels at the input resolution (training only).

        Returns:
            (logits (N, K, H, W) at the input resolution, {}) in eval; (None, losses) in
            training.
        """
        logits = self.layers(features)
        if self.training:
            return None, self.losses(logits, require_training_targets(self, targets))
        logits = F.interpolate(
            logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )
        return logits, {}

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, K, H / common_stride, W / common_stride) logits: the levels' stage outputs
        summed, then ``predictor``."""
        summed = None
        for name, head in zip(self.in_features, self.scale_heads):
            out = head(features[name])
            summed = out if summed is None else summed + out
        return self.predictor(summed)

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{"loss_sem_seg": mean cross-entropy over the pixels not labelled ``ignore_value``,
        of ``predictions`` upsampled by ``common_stride`` (bilinear), times loss_weight}."""
        predictions = F.interpolate(
            predictions.float(), scale_factor=self.common_stride, mode="bilinear",
            align_corners=False,
        )
        loss = F.cross_entropy(
            predictions, targets, reduction="mean", ignore_index=self.ignore_value
        )
        return {"loss_sem_seg": loss * self.loss_weight}
