"""SSD's VGG-16 backbone (Liu et al., Fig. 2): ``SSDVGGBackbone`` and its registered builder
``build_ssd_vgg_backbone``.

VGG-16's 13 3x3 convs (conv1_1 .. conv5_3, ReLU after each) with SSD's changes: pool3 rounds
up (``ceil_mode``: 75 -> 38 at 300 px), conv4_3 is also output through :class:`L2Norm`, pool5
is 3x3 with stride 1, and the fully connected fc6 / fc7 become conv6 (3x3, dilation 6, 1024
channels) and conv7 (1x1, 1024). Extra layers follow, each a 1x1 conv that reduces the
channels and a 3x3 (or 4x4) conv that shrinks the map: conv8_2 .. conv11_2 for SSD300 (maps
38, 19, 10, 5, 3, 1 from conv4_3 to conv11_2 at 300x300), conv8_2 .. conv12_2 for SSD512
(64, 32, 16, 8, 4, 2, 1 at 512x512).
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from segtron.layers import Conv2d, ShapeSpec
from segtron.modeling import BACKBONE_REGISTRY
from segtron.modeling.backbone import Backbone

from .l2_norm import L2Norm

__all__ = ["SSDVGGBackbone", "build_ssd_vgg_backbone", "EXTRA_LAYER_SPECS", "VGG16_STAGES"]

logger = logging.getLogger(__name__)

VGG16_STAGES: Tuple[Tuple[int, int], ...] = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
"""(output channels, number of 3x3 convs) of VGG-16's five stages: conv{s}_1 .. conv{s}_n."""

EXTRA_LAYER_SPECS: Dict[str, Tuple[Tuple[str, int, int, int, int, int], ...]] = {
    # (name, channels of the 1x1 conv, output channels, kernel, stride, padding) of the
    # second conv; the layer's output is "<name>_2".
    "SSD300": (
        ("conv8", 256, 512, 3, 2, 1),
        ("conv9", 128, 256, 3, 2, 1),
        ("conv10", 128, 256, 3, 1, 0),
        ("conv11", 128, 256, 3, 1, 0),
    ),
    "SSD512": (
        ("conv8", 256, 512, 3, 2, 1),
        ("conv9", 128, 256, 3, 2, 1),
        ("conv10", 128, 256, 3, 2, 1),
        ("conv11", 128, 256, 3, 2, 1),
        ("conv12", 128, 256, 4, 1, 1),
    ),
}
"""The extra layers after conv7, per MODEL.SSD.EXTRA_LAYERS value."""

_FC_CHANNELS = 1024  # conv6 and conv7 (the converted fc6 / fc7)
_FC6_DILATION = 6


def _conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                      ceil: bool = False) -> int:
    """Output length of a convolution / pooling window along one axis of ``size`` pixels."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    return (-(-span // stride) if ceil else span // stride) + 1


class SSDVGGBackbone(Backbone):
    """VGG-16 with SSD's modifications and extra layers (module docstring).

    Parameters (state-dict names): ``conv{s}_{i}`` for VGG's convs, ``conv4_3_norm.weight``
    (L2Norm scales), ``conv6``, ``conv7``, and ``conv{n}_1`` / ``conv{n}_2`` for the extra
    layers. Every conv is followed by a ReLU.

    ``forward(x (N, C, H, W)) -> {name: (N, C_name, H_name, W_name)}`` for the requested
    ``out_features``, among "conv4_3" (after L2Norm), "conv7" and the extra layers'
    "conv{n}_2". ``output_shape()`` gives their channels and strides; the strides are those of
    the default-box grid at ``input_size`` (8, 16, 32, 64, 100, 300 for SSD300 at 300 px):
    the downsampling factor of the strided layers, or input size / map size where unpadded
    convolutions shrink the map further.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        extra_layers: str = "SSD300",
        out_features: Optional[Sequence[str]] = None,
        l2norm_scale: float = 20.0,
        input_size: int = 300,
        freeze_at: int = 0,
    ):
        """Args:
            in_channels: channels of the input images.
            extra_layers: "SSD300" or "SSD512" (:data:`EXTRA_LAYER_SPECS`).
            out_features: names of the outputs to return; default: all of them (conv4_3,
                conv7, then each extra layer's conv{n}_2).
            l2norm_scale: initial value of conv4_3's L2Norm scales.
            input_size: side of the square input (MODEL.SSD.IMAGE_SIZE); sets the strides
                ``output_shape`` reports and is checked to leave every map non-empty.
            freeze_at: the convs of VGG stages 1 .. freeze_at get ``requires_grad=False``
                (0: train all; torchvision's ``trainable_backbone_layers=4`` is 1).
        """
        super().__init__()
        if extra_layers not in EXTRA_LAYER_SPECS:
            raise ValueError(
                f"MODEL.SSD.EXTRA_LAYERS = {extra_layers!r} is not known; use one of "
                f"{sorted(EXTRA_LAYER_SPECS)}."
            )
        if not 0 <= freeze_at <= len(VGG16_STAGES):
            raise ValueError(
                f"MODEL.BACKBONE.FREEZE_AT = {freeze_at}: build_ssd_vgg_backbone freezes VGG "
                f"stages 1 .. FREEZE_AT, so it must be in [0, {len(VGG16_STAGES)}]."
            )
        self._stage_convs: List[List[str]] = []
        channels = in_channels
        for stage, (width, depth) in enumerate(VGG16_STAGES, start=1):
            names = []
            for i in range(1, depth + 1):
                name = f"conv{stage}_{i}"
                self.add_module(name, Conv2d(channels, width, 3, padding=1, activation=F.relu))
                names.append(name)
                channels = width
            self._stage_convs.append(names)
        # pool1, pool2, pool4: 2x2 / 2, floor; pool3 rounds up; pool5 keeps the size.
        self.pools = nn.ModuleList(
            [
                nn.MaxPool2d(2, 2),
                nn.MaxPool2d(2, 2),
                nn.MaxPool2d(2, 2, ceil_mode=True),
                nn.MaxPool2d(2, 2),
                nn.MaxPool2d(3, 1, padding=1),
            ]
        )
        self.conv4_3_norm = L2Norm(VGG16_STAGES[3][0], l2norm_scale)
        self.conv6 = Conv2d(
            channels, _FC_CHANNELS, 3, padding=_FC6_DILATION, dilation=_FC6_DILATION,
            activation=F.relu,
        )
        self.conv7 = Conv2d(_FC_CHANNELS, _FC_CHANNELS, 1, activation=F.relu)
        channels = _FC_CHANNELS
        self._extra_convs: List[Tuple[str, str]] = []
        for name, mid, out, kernel, stride, padding in EXTRA_LAYER_SPECS[extra_layers]:
            self.add_module(f"{name}_1", Conv2d(channels, mid, 1, activation=F.relu))
            self.add_module(
                f"{name}_2",
                Conv2d(mid, out, kernel, stride=stride, padding=padding, activation=F.relu),
            )
            self._extra_convs.append((f"{name}_1", f"{name}_2"))
            channels = out

        channels_of, strides_of = self._output_geometry(extra_layers, int(input_size))
        if out_features is None:
            out_features = list(channels_of)
        unknown = [f for f in out_features if f not in channels_of]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.SSD.IN_FEATURES = {list(out_features)}: build_ssd_vgg_backbone with "
                f"EXTRA_LAYERS {extra_layers!r} outputs {list(channels_of)}; name at least one "
                f"of those (unknown: {unknown})."
            )
        self._out_features = list(out_features)
        self._out_feature_channels = {f: channels_of[f] for f in self._out_features}
        self._out_feature_strides = {f: strides_of[f] for f in self._out_features}
        self._extra_layers = extra_layers
        self._init_weights()
        self._freeze(freeze_at)

    @staticmethod
    def _output_geometry(extra_layers: str, input_size: int) -> Tuple[Dict, Dict]:
        """Channels and strides of every possible output for a square input of
        ``input_size``; ValueError when a map would be empty."""
        # pool1 and pool2 round down, pool3 up; pool4 rounds down; every conv keeps the size.
        conv4_3_size = input_size
        for ceil in (False, False, True):
            conv4_3_size = _conv_output_size(conv4_3_size, 2, 2, 0, ceil=ceil)
        size = _conv_output_size(conv4_3_size, 2, 2, 0)
        sizes = {"conv4_3": conv4_3_size, "conv7": size}
        channels = {"conv4_3": VGG16_STAGES[3][0], "conv7": _FC_CHANNELS}
        nominal = {"conv4_3": 8, "conv7": 16}
        stride = 16
        for name, _, out, kernel, layer_stride, padding in EXTRA_LAYER_SPECS[extra_layers]:
            size = _conv_output_size(size, kernel, layer_stride, padding)
            stride *= layer_stride
            sizes[f"{name}_2"], channels[f"{name}_2"] = size, out
            nominal[f"{name}_2"] = stride
        empty = [name for name, s in sizes.items() if s < 1]
        if empty:
            raise ValueError(
                f"MODEL.SSD.IMAGE_SIZE = {input_size} is too small for MODEL.SSD.EXTRA_LAYERS "
                f"{extra_layers!r}: {empty} would be empty; use 300 for SSD300, 512 for SSD512."
            )
        strides = {
            name: max(nominal[name], int(round(input_size / sizes[name]))) for name in sizes
        }
        return channels, strides

    def _init_weights(self) -> None:
        # VGG's convs as torchvision's VGG (Kaiming normal, fan-out); conv6, conv7 and the
        # extra layers Xavier-uniform; biases zero.
        for name, module in self.named_children():
            if not isinstance(module, nn.Conv2d):
                continue
            if any(name in names for names in self._stage_convs):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def _freeze(self, freeze_at: int) -> None:
        for names in self._stage_convs[:freeze_at]:
            for name in names:
                getattr(self, name).requires_grad_(False)
        if freeze_at:
            logger.info("SSDVGGBackbone: VGG stages 1..%d frozen.", freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"SSDVGGBackbone expects an (N, C, H, W) batch, got {tuple(x.shape)}.")
        wanted = set(self._out_features)
        outputs: Dict[str, torch.Tensor] = {}
        for stage, names in enumerate(self._stage_convs):
            for name in names:
                x = getattr(self, name)(x)
            if stage == 3 and "conv4_3" in wanted:
                outputs["conv4_3"] = self.conv4_3_norm(x)
            x = self.pools[stage](x)
        x = self.conv7(self.conv6(x))
        outputs["conv7"] = x
        for first, second in self._extra_convs:
            if len(outputs.keys() & wanted) == len(wanted):
                break
            x = getattr(self, second)(getattr(self, first)(x))
            outputs[second] = x
        return {name: outputs[name] for name in self._out_features}


@BACKBONE_REGISTRY.register()
def build_ssd_vgg_backbone(cfg, input_shape: ShapeSpec) -> SSDVGGBackbone:
    """SSD's VGG-16 backbone from ``cfg``: MODEL.SSD.{EXTRA_LAYERS, IN_FEATURES (the outputs),
    L2NORM_SCALE, IMAGE_SIZE} and MODEL.BACKBONE.FREEZE_AT (VGG stages frozen).

    Args:
        cfg: a config with the SSD keys (``add_ssd_config``).
        input_shape: ``input_shape.channels`` is the number of image channels.

    Returns:
        an :class:`SSDVGGBackbone`.
    """
    ssd = cfg.MODEL.SSD
    return SSDVGGBackbone(
        in_channels=input_shape.channels,
        extra_layers=ssd.EXTRA_LAYERS,
        out_features=list(ssd.IN_FEATURES),
        l2norm_scale=ssd.L2NORM_SCALE,
        input_size=ssd.IMAGE_SIZE,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
