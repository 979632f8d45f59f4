"""DeepLabv3 and DeepLabv3+ semantic segmentation heads (registered in SEM_SEG_HEADS_REGISTRY).

- :class:`DeepLabV3Head`: ASPP on one feature map (res5 at output stride 16 or 8), then a 1x1
  predictor; logits upsampled by COMMON_STRIDE.
- :class:`DeepLabV3PlusHead`: ASPP on the coarsest feature, then a decoder that upsamples it to
  each finer feature in turn, concatenates a 1x1 projection of that feature and fuses them (two
  3x3 convs, or one 5x5 depthwise-separable conv); predictor at the finest feature's stride.

Both train with cross-entropy or DeepLab's hard-pixel-mining loss (MODEL.SEM_SEG_HEAD.LOSS_TYPE)
on logits upsampled to the input resolution. Parameter names are Detectron2's.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from segtron.config import configurable
from segtron.layers import ASPP, Conv2d, DepthwiseSeparableConv2d, ShapeSpec, get_norm
from segtron.modeling import SEM_SEG_HEADS_REGISTRY
from segtron.modeling.feature_names import check_in_features
from segtron.modeling.meta_arch.semantic_seg import require_training_targets

from .loss import DeepLabCE

__all__ = ["DeepLabV3Head", "DeepLabV3PlusHead"]

_LOSS_TYPES = ("cross_entropy", "hard_pixel_mining")
# DeepLab's hard pixel mining keeps the 20% of pixels with the largest loss.
_HARD_PIXEL_FRACTION = 0.2

NormSpec = Union[str, Callable[[int], nn.Module]]


def _pool_kernel_size(
    train_size: Optional[Sequence[int]], stride: int
) -> Optional[Tuple[int, int]]:
    """ASPP's image-pooling kernel: the training crop ``train_size`` (h, w) seen at the ASPP
    input's ``stride``; None (global pooling) without a crop. ValueError naming INPUT.CROP.SIZE
    when ``stride`` does not divide it."""
    if train_size is None:
        return None
    height, width = (int(v) for v in train_size)
    if height % stride or width % stride:
        raise ValueError(
            f"INPUT.CROP.SIZE={[height, width]} must be divisible by the stride {stride} of the "
            "ASPP input, whose image-pooling kernel is the crop size / stride: pick a crop size "
            f"that is a multiple of {stride}."
        )
    return height // stride, width // stride


def _train_size_from_config(cfg) -> Optional[List[int]]:
    """INPUT.CROP.SIZE when cropping is on (it must be "absolute"), else None."""
    if not cfg.INPUT.CROP.ENABLED:
        return None
    if cfg.INPUT.CROP.TYPE != "absolute":
        raise ValueError(
            f"The DeepLab heads need INPUT.CROP.TYPE 'absolute' (a fixed crop fixes ASPP's "
            f"pooling kernel), got {cfg.INPUT.CROP.TYPE!r}; or set INPUT.CROP.ENABLED False to "
            "pool globally."
        )
    return list(cfg.INPUT.CROP.SIZE)


def _check_common_stride(common_stride: int, stride: int, feature: str, head: str) -> None:
    if common_stride != stride:
        raise ValueError(
            f"{head}: MODEL.SEM_SEG_HEAD.COMMON_STRIDE={common_stride} but its predictions are "
            f"at the stride {stride} of '{feature}'; set COMMON_STRIDE to {stride} (the logits "
            "are upsampled by it to the input size)."
        )


class _DeepLabPredictionMixin:
    """The predictor, loss and output of both DeepLab heads (set up by ``_init_prediction``)."""

    def _init_prediction(
        self, in_channels: int, num_classes: int, common_stride: int, loss_type: str,
        loss_weight: float, ignore_value: int,
    ) -> None:
        if loss_type not in _LOSS_TYPES:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.LOSS_TYPE={loss_type!r} is not one of {list(_LOSS_TYPES)}."
            )
        self.num_classes = num_classes
        self.common_stride = common_stride
        self.loss_type = loss_type
        self.loss_weight = loss_weight
        self.ignore_value = ignore_value
        self.predictor = Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0)
        if loss_type == "cross_entropy":
            self.loss = nn.CrossEntropyLoss(reduction="mean", ignore_index=ignore_value)
        else:
            self.loss = DeepLabCE(
                ignore_label=ignore_value, top_k_percent_pixels=_HARD_PIXEL_FRACTION
            )

    def _upsample(self, logits: torch.Tensor) -> torch.Tensor:
        return F.interpolate(
            logits, scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )

    def _output(
        self, logits: torch.Tensor, targets: Optional[torch.Tensor]
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        if self.training:
            return None, self.losses(logits, require_training_targets(self, targets))
        return self._upsample(logits), {}

    def losses(self, predictions: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """{"loss_sem_seg": loss_weight x the loss of ``predictions`` (N, K, h, w), upsampled by
        ``common_stride`` (bilinear), against ``targets`` (N, H, W)}.

        When the input size is not a multiple of the output stride, the upsampled logits
        overhang the labels at the bottom / right; they are cropped to the labels, as
        ``sem_seg_postprocess`` crops them at inference (Detectron2 requires exact multiples).
        """
        logits = self._upsample(predictions.float())
        height, width = targets.shape[-2:]
        if logits.shape[-2] < height or logits.shape[-1] < width:
            raise ValueError(
                f"{type(self).__name__}: logits upsampled to {tuple(logits.shape[-2:])} do not "
                f"cover the labels' {(height, width)}: MODEL.SEM_SEG_HEAD.COMMON_STRIDE="
                f"{self.common_stride} is smaller than the stride of the head's output."
            )
        loss = self.loss(logits[..., :height, :width], targets)
        return {"loss_sem_seg": loss * self.loss_weight}


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3Head(_DeepLabPredictionMixin, nn.Module):
    """DeepLabv3: ASPP on one feature map, a 1x1 predictor, logits upsampled by common_stride.

    Args:
        input_shape: {name: ShapeSpec} of exactly one feature (e.g. res5).
        aspp_channels, aspp_dilations, aspp_dropout, use_depthwise_separable_conv: of the
            :class:`~segtron.layers.ASPP`.
        norm: norm of ASPP's convs.
        train_size: the (h, w) training crop, which fixes ASPP's pooling kernel (None: global
            pooling).
        num_classes, common_stride (the feature's stride), loss_type ("cross_entropy" or
            "hard_pixel_mining"), loss_weight, ignore_value: prediction and loss.

    ``forward(features, targets=None)``: (None, {"loss_sem_seg"}) in training; (logits (N, K,
    H, W), {}) in eval, H, W = the feature's size x common_stride. Submodules ``aspp``,
    ``predictor``.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        aspp_channels: int,
        aspp_dilations: Sequence[int],
        aspp_dropout: float,
        norm: NormSpec,
        num_classes: int,
        common_stride: int,
        train_size: Optional[Sequence[int]] = None,
        loss_type: str = "hard_pixel_mining",
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        use_depthwise_separable_conv: bool = False,
    ):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(
                "DeepLabV3Head takes one feature (MODEL.SEM_SEG_HEAD.IN_FEATURES, e.g. "
                f"['res5']), got {sorted(input_shape)}; DeepLabV3PlusHead takes several."
            )
        (name, shape), = input_shape.items()
        _check_common_stride(common_stride, shape.stride, name, "DeepLabV3Head")
        self.in_features = [name]
        self.aspp = ASPP(
            shape.channels, aspp_channels, aspp_dilations, norm=norm, activation=F.relu,
            pool_kernel_size=_pool_kernel_size(train_size, shape.stride), dropout=aspp_dropout,
            use_depthwise_separable_conv=use_depthwise_separable_conv,
        )
        self._init_prediction(
            aspp_channels, num_classes, common_stride, loss_type, loss_weight, ignore_value
        )

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        check_in_features(head.IN_FEATURES, input_shape, "MODEL.SEM_SEG_HEAD.IN_FEATURES")
        if head.CONVS_DIM != head.ASPP_CHANNELS:
            # Detectron2 sizes the predictor's input by CONVS_DIM although it is ASPP's output.
            raise ValueError(
                f"DeepLabV3Head: MODEL.SEM_SEG_HEAD.CONVS_DIM={head.CONVS_DIM} must equal "
                f"ASPP_CHANNELS={head.ASPP_CHANNELS} (the predictor reads ASPP's output)."
            )
        return {
            "input_shape": {k: input_shape[k] for k in head.IN_FEATURES},
            "aspp_channels": head.ASPP_CHANNELS,
            "aspp_dilations": head.ASPP_DILATIONS,
            "aspp_dropout": head.ASPP_DROPOUT,
            "norm": head.NORM,
            "num_classes": head.NUM_CLASSES,
            "common_stride": head.COMMON_STRIDE,
            "train_size": _train_size_from_config(cfg),
            "loss_type": head.LOSS_TYPE,
            "loss_weight": head.LOSS_WEIGHT,
            "ignore_value": head.IGNORE_VALUE,
            "use_depthwise_separable_conv": head.USE_DEPTHWISE_SEPARABLE_CONV,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, K, h, w) logits at the feature's stride."""
        return self.predictor(self.aspp(features[self.in_features[0]]))

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        return self._output(self.layers(features), targets)


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3PlusHead(_DeepLabPredictionMixin, nn.Module):
    """DeepLabv3+: ASPP on the coarsest feature, a decoder over the finer ones, a predictor.

    Args:
        input_shape: {name: ShapeSpec} of the features used, ordered here by stride; the
            coarsest feeds ASPP, each finer one a decoder stage (coarse to fine).
        project_channels: 1x1 projection width of each finer feature (len(features) - 1).
        aspp_dilations, aspp_dropout: of the ASPP.
        decoder_channels: output width of each stage, finest first; the last is ASPP's width.
        common_stride: the finest feature's stride (the logits are upsampled by it).
        norm: norm of every conv but the predictor and ASPP's pooling conv.
        train_size: the (h, w) training crop (fixes ASPP's pooling kernel); None: global pooling.
        loss_weight, loss_type, ignore_value: the loss.
        num_classes: None builds the decoder only (``forward`` returns its features).
        use_depthwise_separable_conv: ASPP's dilated branches and each fuse step are
            depthwise-separable (the fuse step: one 5x5 instead of two 3x3 convs).

    ``forward(features, targets=None)``: (None, {"loss_sem_seg"}) in training; (logits (N, K,
    H, W), {}) in eval. Submodules ``decoder.<feature>.project_conv`` (the ASPP for the
    coarsest), ``decoder.<feature>.fuse_conv`` and ``predictor``, Detectron2's names.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        project_channels: Sequence[int],
        aspp_dilations: Sequence[int],
        aspp_dropout: float,
        decoder_channels: Sequence[int],
        common_stride: int,
        norm: NormSpec,
        train_size: Optional[Sequence[int]] = None,
        loss_weight: float = 1.0,
        loss_type: str = "cross_entropy",
        ignore_value: int = -1,
        num_classes: Optional[int] = None,
        use_depthwise_separable_conv: bool = False,
    ):
        super().__init__()
        ordered = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in ordered]
        shapes = [shape for _, shape in ordered]
        if len(project_channels) != len(shapes) - 1:
            raise ValueError(
                f"DeepLabV3PlusHead: {len(shapes)} features {self.in_features} need "
                f"{len(shapes) - 1} projection widths (MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS), got "
                f"{list(project_channels)}."
            )
        if len(decoder_channels) != len(shapes):
            raise ValueError(
                f"DeepLabV3PlusHead: {len(shapes)} features need {len(shapes)} decoder widths, "
                f"got {list(decoder_channels)}."
            )
        self.decoder_only = num_classes is None
        bias = norm == ""
        self.decoder = nn.ModuleDict()
        for index, (name, shape) in enumerate(ordered):
            stage = nn.ModuleDict()
            if index == len(ordered) - 1:
                stage["project_conv"] = ASPP(
                    shape.channels, decoder_channels[-1], aspp_dilations, norm=norm,
                    activation=F.relu,
                    pool_kernel_size=_pool_kernel_size(train_size, shape.stride),
                    dropout=aspp_dropout,
                    use_depthwise_separable_conv=use_depthwise_separable_conv,
                )
            else:
                width = project_channels[index]
                stage["project_conv"] = Conv2d(
                    shape.channels, width, kernel_size=1, bias=bias,
                    norm=get_norm(norm, width), activation=F.relu,
                )
                weight_init.c2_xavier_fill(stage["project_conv"])
                stage["fuse_conv"] = self._fuse_conv(
                    width + decoder_channels[index + 1], decoder_channels[index], norm,
                    use_depthwise_separable_conv,
                )
            self.decoder[name] = stage
        if self.decoder_only:
            self.common_stride = common_stride
            return
        _check_common_stride(common_stride, shapes[0].stride, self.in_features[0],
                             "DeepLabV3PlusHead")
        self._init_prediction(
            decoder_channels[0], num_classes, common_stride, loss_type, loss_weight, ignore_value
        )

    @staticmethod
    def _fuse_conv(in_channels: int, out_channels: int, norm: NormSpec, separable: bool):
        """The fuse step: a 5x5 depthwise-separable conv, or two 3x3 convs (same receptive
        field), each conv with norm and ReLU."""
        if separable:
            return DepthwiseSeparableConv2d(
                in_channels, out_channels, kernel_size=5, padding=2,
                norm1=norm, activation1=F.relu, norm2=norm, activation2=F.relu,
            )
        convs = []
        for cin in (in_channels, out_channels):
            conv = Conv2d(
                cin, out_channels, kernel_size=3, padding=1, bias=norm == "",
                norm=get_norm(norm, out_channels), activation=F.relu,
            )
            weight_init.c2_xavier_fill(conv)
            convs.append(conv)
        return nn.Sequential(*convs)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        check_in_features(head.IN_FEATURES, input_shape, "MODEL.SEM_SEG_HEAD.IN_FEATURES")
        return {
            "input_shape": {k: input_shape[k] for k in head.IN_FEATURES},
            "project_channels": head.PROJECT_CHANNELS,
            "aspp_dilations": head.ASPP_DILATIONS,
            "aspp_dropout": head.ASPP_DROPOUT,
            "decoder_channels": [head.CONVS_DIM] * (len(head.IN_FEATURES) - 1)
            + [head.ASPP_CHANNELS],
            "common_stride": head.COMMON_STRIDE,
            "norm": head.NORM,
            "train_size": _train_size_from_config(cfg),
            "loss_weight": head.LOSS_WEIGHT,
            "loss_type": head.LOSS_TYPE,
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "use_depthwise_separable_conv": head.USE_DEPTHWISE_SEPARABLE_CONV,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The decoder's output (N, decoder_channels[0], h, w) at the finest feature's stride,
        then the predictor's logits (N, K, h, w) unless ``decoder_only``."""
        out = None
        for name in reversed(self.in_features):
            stage = self.decoder[name]
            projected = stage["project_conv"](features[name])
            if out is None:
                out = projected
                continue
            out = F.interpolate(
                out, size=projected.shape[-2:], mode="bilinear", align_corners=False
            )
            out = stage["fuse_conv"](torch.cat([projected, out], dim=1))
        return out if self.decoder_only else self.predictor(out)

    def forward(self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None):
        out = self.layers(features)
        if self.decoder_only:
            return out
        return self._output(out, targets)
