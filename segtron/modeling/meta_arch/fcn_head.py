"""The classic fully convolutional (FCN) semantic segmentation head on one backbone feature.

segtron only (Detectron2 has no FCN head); the layout is the head of torchvision's
``fcn_resnet50`` (Long et al. 2015, as used on a dilated output-stride-8 ResNet): one 3x3 conv
+ norm + ReLU, dropout, a 1x1 conv to the classes, and bilinear upsampling of the logits by the
feature's stride. Used with :class:`SemanticSegmentor` by MODEL.SEM_SEG_HEAD.NAME "FCNHead" and
a backbone with one output, typically ``res5`` of a ResNet with MODEL.RESNETS.RES4_DILATION 2
and RES5_DILATION 4 (stride 8), see configs/*-SemanticSegmentation/fcn_R_50_DC8.yaml.
"""

from typing import Callable, Dict, Optional, Tuple, Union

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import Conv2d, ShapeSpec, get_norm
from ..feature_names import check_in_features
from ..registries import SEM_SEG_HEADS_REGISTRY
from .semantic_seg import require_training_targets

__all__ = ["FCNHead"]

_IN_FEATURES_KEY = "MODEL.SEM_SEG_HEAD.IN_FEATURES"


@SEM_SEG_HEADS_REGISTRY.register()
class FCNHead(nn.Module):
    """FCN head: ``conv`` (3x3, C -> conv_dims, + norm + ReLU) -> ``dropout`` -> ``predictor``
    (1x1, conv_dims -> K) on one feature map of stride s, logits upsampled by s (bilinear,
    align_corners=False).

    Parameter names: ``conv.weight`` (+ ``conv.norm.*`` with a norm, ``conv.bias`` without),
    ``predictor.weight``, ``predictor.bias``. They map one to one onto torchvision's
    ``FCNHead`` (``classifier.0`` -> ``conv``, ``classifier.1`` -> ``conv.norm``, ``classifier.4``
    -> ``predictor``).

    Init: ``conv`` MSRA (kaiming normal, fan_out, ReLU gain; zero bias); ``predictor`` normal
    with std 0.01 and zero bias, so a fresh head predicts near-uniform classes (loss ~ ln K).

    ``forward(features, targets=None)``: in training ``(None, {"loss_sem_seg": ...})``, the
    cross-entropy averaged over the pixels not labelled ``ignore_value`` (0 when there are
    none) times ``loss_weight``; in eval ``((N, K, s * h, s * w) logits, {})`` for an (h, w)
    feature map: the padded input size when its sides are multiples of s, else a few pixels
    more on the bottom / right (which ``sem_seg_postprocess`` crops away).
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        conv_dims: Optional[int] = None,
        norm: Optional[Union[str, Callable]] = "BN",
        dropout: float = 0.1,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
    ):
        """Args:
            input_shape: exactly one feature, name -> ``ShapeSpec`` (channels C, stride s in
                input pixels).
            num_classes: K, the number of classes predicted.
            conv_dims: channels of the hidden 3x3 conv; None means C // 4 (torchvision's
                width, 512 on a ResNet-50 res5). From a config: MODEL.SEM_SEG_HEAD.CONVS_DIM.
            norm: norm after the hidden conv ("BN", "SyncBN", "GN", ... or None / "" for none,
                in which case the conv has a bias).
            dropout: probability of the dropout before the predictor (torchvision's 0.1); 0
                disables it. No config key: configs get 0.1.
            loss_weight: multiplies the loss.
            ignore_value: label excluded from the loss (unlabelled and padding pixels).
        """
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(
                f"FCNHead reads exactly one feature map, got {sorted(input_shape)}; set "
                f"{_IN_FEATURES_KEY} to one backbone output, e.g. ['res5']."
            )
        (name, shape), = input_shape.items()
        if not shape.channels or not shape.stride:
            raise ValueError(
                f"FCNHead: feature '{name}' needs known channels and stride, got {shape}."
            )
        if int(num_classes) < 1:
            raise ValueError(
                f"FCNHead: num_classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES) = {num_classes}; it "
                "must be >= 1."
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"FCNHead: dropout = {dropout}; it must be in [0, 1).")
        if conv_dims is None:
            conv_dims = shape.channels // 4
        if int(conv_dims) < 1:
            raise ValueError(
                f"FCNHead: conv_dims (MODEL.SEM_SEG_HEAD.CONVS_DIM) = {conv_dims}; it must be "
                ">= 1."
            )
        self.in_features = [name]
        self.stride = int(shape.stride)
        self.num_classes = int(num_classes)
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.conv = Conv2d(
            shape.channels, conv_dims, kernel_size=3, stride=1, padding=1, bias=not norm,
            norm=get_norm(norm, conv_dims), activation=F.relu,
        )
        self.dropout = nn.Dropout(p=float(dropout))
        self.predictor = Conv2d(conv_dims, self.num_classes, kernel_size=1)
        weight_init.c2_msra_fill(self.conv)
        nn.init.normal_(self.predictor.weight, std=0.01)
        nn.init.zeros_(self.predictor.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """MODEL.SEM_SEG_HEAD.{IN_FEATURES (exactly one name), NUM_CLASSES, CONVS_DIM, NORM,
        LOSS_WEIGHT, IGNORE_VALUE}; ``input_shape`` is the backbone's outputs. COMMON_STRIDE is
        not read: the logits are upsampled by the feature's own stride."""
        head = cfg.MODEL.SEM_SEG_HEAD
        check_in_features(head.IN_FEATURES, input_shape, _IN_FEATURES_KEY)
        if len(head.IN_FEATURES) != 1:
            raise ValueError(
                f"{_IN_FEATURES_KEY}={list(head.IN_FEATURES)}: FCNHead reads exactly one "
                "feature map; name one backbone output, e.g. ['res5']."
            )
        name = head.IN_FEATURES[0]
        return {
            "input_shape": {name: input_shape[name]},
            "num_classes": head.NUM_CLASSES,
            "conv_dims": head.CONVS_DIM,
            "norm": head.NORM,
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
        }

    def forward(
        self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """Args:
            features: name -> (N, C, h, w); must hold ``in_features[0]``.
            targets: (N, H, W) int64 labels at the (padded) input resolution, H <= s * h and
                W <= s * w (training only).

        Returns:
            eval: ((N, K, s * h, s * w) float logits, {}); training: (None, losses).
        """
        logits = self.layers(features)
        if self.training:
            return None, self.losses(logits, require_training_targets(self, targets))
        return self._upsample(logits), {}

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, K, h, w) logits at the feature's resolution: conv, dropout, predictor."""
        x = self.conv(features[self.in_features[0]])
        return self.predictor(self.dropout(x))

    def _upsample(self, logits: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) -> (N, K, s * h, s * w), bilinear, align_corners=False."""
        return F.interpolate(
            logits, scale_factor=self.stride, mode="bilinear", align_corners=False
        )

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{"loss_sem_seg": loss_weight * cross-entropy of ``predictions`` (N, K, h, w)
        upsampled by the stride (in float32) and cropped to the targets' (H, W), summed over
        the pixels not labelled ``ignore_value`` and divided by their number (at least 1, so
        a batch with no labelled pixel gives 0, not NaN)}.

        Raises ValueError when the targets are larger than the upsampled logits.
        """
        logits = self._upsample(predictions.float())
        height, width = targets.shape[-2:]
        if height > logits.shape[-2] or width > logits.shape[-1]:
            raise ValueError(
                f"FCNHead: targets of size {(height, width)} exceed the logits' "
                f"{tuple(logits.shape[-2:])} (feature {tuple(predictions.shape[-2:])} x stride "
                f"{self.stride}); the feature '{self.in_features[0]}' is not at stride "
                f"{self.stride} of the input."
            )
        logits = logits[..., :height, :width]
        total = F.cross_entropy(logits, targets, reduction="sum", ignore_index=self.ignore_value)
        labelled = (targets != self.ignore_value).sum().clamp(min=1)
        return {"loss_sem_seg": total / labelled * self.loss_weight}
