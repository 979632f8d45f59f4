"""SSD on a ResNet: ``SSDResNetBackbone`` and its registered builder
``build_ssd_resnet_backbone``.

The first maps come from segtron's own ResNet (:func:`resnet_stages_from_config`, any
MODEL.RESNETS depth and width); extra blocks follow, each a 1x1 conv to half its output
channels then a 3x3 conv, both with a norm and a ReLU. MODEL.SSD.RESNET_LAYOUT picks one of:

- ``"nvidia"`` (NVIDIA's SSD300 ResNet-50): the ResNet up to res4, whose first block keeps
  stride 1 (no dilation), so res4 has stride 8 (38x38 at 300 px); then five extras of
  512, 512, 256, 256, 256 channels, the first three 3x3 stride 2 padding 1, the last two 3x3
  stride 1 without padding: 19, 10, 5, 3, 1 at 300 px.
- ``"multi_level"`` (small inputs, thin networks): an unchanged ResNet's res3, res4, res5
  (strides 8, 16, 32), then 3x3 stride-2 extras (strides 64, 128, ...), each as wide as res5.

Outputs are named "res2" .. "res5" and "extra1", "extra2", ...; MODEL.SSD.IN_FEATURES picks
them, and as many extras are built as the highest "extraN" it names.
"""

import re
from typing import Dict, List, Sequence, Tuple

import torch
from fvcore.nn import weight_init
from torch.nn import functional as F

from segtron.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from segtron.modeling import BACKBONE_REGISTRY
from segtron.modeling.backbone import Backbone
from segtron.modeling.backbone.resnet import BasicStem, ResNet, resnet_stages_from_config

__all__ = [
    "SSDExtraBlock",
    "SSDResNetBackbone",
    "build_ssd_resnet_backbone",
    "NVIDIA_EXTRA_LAYERS",
    "RESNET_LAYOUTS",
]

RESNET_LAYOUTS = ("nvidia", "multi_level")
"""The values of MODEL.SSD.RESNET_LAYOUT."""

NVIDIA_EXTRA_LAYERS: Tuple[Tuple[int, int, int], ...] = (
    (512, 2, 1),
    (512, 2, 1),
    (256, 2, 1),
    (256, 1, 0),
    (256, 1, 0),
)
"""(output channels, stride, padding) of the 3x3 conv of each NVIDIA extra block."""


class SSDExtraBlock(CNNBlockBase):
    """``conv1``: 1x1 to ``out_channels // 2``; ``conv2``: 3x3 with ``stride`` and ``padding``
    to ``out_channels``. Each conv has ``norm`` (no bias when there is one) and a ReLU; weights
    are MSRA-initialised.

    ``forward(x (N, in, H, W)) -> (N, out, H', W')`` with H' = (H + 2p - 3) // stride + 1.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 2,
                 padding: int = 1, norm: str = "BN"):
        super().__init__(in_channels, out_channels, stride)
        mid = max(out_channels // 2, 1)
        bias = not norm
        self.conv1 = Conv2d(in_channels, mid, 1, bias=bias, norm=get_norm(norm, mid),
                            activation=F.relu)
        self.conv2 = Conv2d(mid, out_channels, 3, stride=stride, padding=padding, bias=bias,
                            norm=get_norm(norm, out_channels), activation=F.relu)
        self.padding = padding
        for conv in (self.conv1, self.conv2):
            weight_init.c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))

    def output_size(self, size: int) -> int:
        """Side of the output map for an input map of side ``size``."""
        return (size + 2 * self.padding - 3) // self.stride + 1


class SSDResNetBackbone(Backbone):
    """A segtron :class:`ResNet` (``bottom_up``) and extra blocks (``extra1``, ``extra2``, ...)
    fed from the ResNet's last stage.

    ``forward(x (N, C, S, S)) -> {name: (N, C_name, H_name, W_name)}`` for ``out_features``.
    ``output_shape()`` gives channels and strides; a stride is the product of the layer
    strides, or ``input_size`` / the map's side when unpadded convs shrink the map further
    (NVIDIA's last two extras at 300 px: 100 and 300), as in ``SSDVGGBackbone``.
    """

    def __init__(
        self,
        *,
        bottom_up: ResNet,
        extras: Sequence[SSDExtraBlock] = (),
        out_features: Sequence[str],
        input_size: int = 300,
    ):
        """Args:
            bottom_up: the ResNet; its last stage feeds the first extra block, so with extras
                it must output that stage.
            extras: blocks applied in turn, outputs "extra1", "extra2", ...
            out_features: names to return, among the ResNet's outputs and the extras'.
            input_size: side of the square input (MODEL.SSD.IMAGE_SIZE): sets the strides
                ``output_shape`` reports and is checked to leave every map non-empty.
        """
        super().__init__()
        self.bottom_up = bottom_up
        resnet_shapes = bottom_up.output_shape()
        last_stage = bottom_up.stage_names[-1] if bottom_up.stage_names else "stem"
        if extras and last_stage not in resnet_shapes:
            raise ValueError(
                f"SSDResNetBackbone: the extra blocks start from {last_stage!r}, which the "
                f"ResNet does not output (it outputs {sorted(resnet_shapes)})."
            )
        self._extra_input = last_stage
        self._extra_names: List[str] = []
        for i, block in enumerate(extras, start=1):
            self.add_module(f"extra{i}", block)
            self._extra_names.append(f"extra{i}")

        channels, strides = self._output_geometry(resnet_shapes, int(input_size))
        unknown = [f for f in out_features if f not in channels]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.SSD.IN_FEATURES = {list(out_features)}: this ResNet SSD backbone "
                f"outputs {list(channels)}; name at least one of those (unknown: {unknown})."
            )
        self._out_features = list(out_features)
        self._out_feature_channels = {f: channels[f] for f in self._out_features}
        self._out_feature_strides = {f: strides[f] for f in self._out_features}

    def _output_geometry(
        self, resnet_shapes: Dict[str, ShapeSpec], input_size: int
    ) -> Tuple[Dict[str, int], Dict[str, int]]:
        """Channels and strides of every output at ``input_size``; ValueError naming
        MODEL.SSD.IMAGE_SIZE when a map would be empty."""
        channels = {k: s.channels for k, s in resnet_shapes.items()}
        nominal = {k: s.stride for k, s in resnet_shapes.items()}
        # Every stride-2 layer of a ResNet (the 7x7 conv padded 3, 3x3 convs and max-pool
        # padded 1, unpadded 1x1 convs) maps a side s to ceil(s / 2); strides are powers of 2.
        sizes = {}
        for name, stride in nominal.items():
            size = input_size
            for _ in range(int(stride).bit_length() - 1):
                size = -(-size // 2)
            sizes[name] = size
        size, stride = sizes.get(self._extra_input), nominal.get(self._extra_input)
        for name in self._extra_names:
            block = getattr(self, name)
            size, stride = block.output_size(size), stride * block.stride
            sizes[name], channels[name], nominal[name] = size, block.out_channels, stride
        empty = [name for name, s in sizes.items() if s < 1]
        if empty:
            raise ValueError(
                f"MODEL.SSD.IMAGE_SIZE = {input_size} is too small for this backbone: {empty} "
                "would be empty. Raise MODEL.SSD.IMAGE_SIZE or name fewer extra maps in "
                "MODEL.SSD.IN_FEATURES."
            )
        strides = {k: max(nominal[k], int(round(input_size / sizes[k]))) for k in sizes}
        return channels, strides

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = dict(self.bottom_up(x))
        if self._extra_names:
            x = outputs[self._extra_input]
            for name in self._extra_names:
                x = getattr(self, name)(x)
                outputs[name] = x
        return {name: outputs[name] for name in self._out_features}


def _keep_resolution(block: CNNBlockBase) -> None:
    """Set every stride of ``block`` (its own and its convs', shortcut included) to 1, in
    place: the block then keeps its input's resolution with the same parameters."""
    for module in block.modules():
        stride = getattr(module, "stride", None)
        if module is not block and isinstance(stride, tuple) and any(s != 1 for s in stride):
            module.stride = (1,) * len(stride)
    block.stride = 1


def _extra_index(name: str) -> int:
    """N for a name "extraN" (N >= 1), else 0."""
    match = re.fullmatch(r"extra([1-9][0-9]*)", name)
    return int(match.group(1)) if match else 0


def _extra_specs(layout: str, count: int, res_channels: int,
                 channels: Sequence[int]) -> List[Tuple[int, int, int]]:
    """(out channels, stride, padding) of the ``count`` extra blocks of ``layout``."""
    if layout == "nvidia":
        if count > len(NVIDIA_EXTRA_LAYERS):
            raise ValueError(
                f"MODEL.SSD.IN_FEATURES names extra{count}, but the 'nvidia' layout "
                f"(MODEL.SSD.RESNET_LAYOUT) has {len(NVIDIA_EXTRA_LAYERS)} extra blocks; name "
                f"at most extra{len(NVIDIA_EXTRA_LAYERS)}, or use 'multi_level'."
            )
        specs = list(NVIDIA_EXTRA_LAYERS[:count])
    else:
        specs = [(res_channels, 2, 1)] * count
    if channels:
        if len(channels) != count or min(channels) < 2:
            raise ValueError(
                f"MODEL.SSD.RESNET_EXTRA_CHANNELS = {list(channels)}: give one width >= 2 per "
                f"extra block ({count}: MODEL.SSD.IN_FEATURES names up to extra{count}), or "
                "leave it empty for the layout's widths."
            )
        specs = [(int(c), stride, pad) for c, (_, stride, pad) in zip(channels, specs)]
    return specs


@BACKBONE_REGISTRY.register()
def build_ssd_resnet_backbone(cfg, input_shape: ShapeSpec) -> SSDResNetBackbone:
    """SSD's ResNet backbone from ``cfg``: the ResNet from MODEL.RESNETS (DEPTH, widths, NORM,
    STRIDE_IN_1X1, ...) and MODEL.BACKBONE.FREEZE_AT; the layout, extras and outputs from
    MODEL.SSD.{RESNET_LAYOUT, RESNET_EXTRA_NORM, RESNET_EXTRA_CHANNELS, IN_FEATURES,
    IMAGE_SIZE}. MODEL.RESNETS.OUT_FEATURES is not read (IN_FEATURES decides).

    Args:
        cfg: a config with the SSD keys (``add_ssd_config``).
        input_shape: ``input_shape.channels`` is the number of image channels.

    Returns:
        an :class:`SSDResNetBackbone`.
    """
    ssd, r = cfg.MODEL.SSD, cfg.MODEL.RESNETS
    layout = ssd.RESNET_LAYOUT
    if layout not in RESNET_LAYOUTS:
        raise ValueError(
            f"MODEL.SSD.RESNET_LAYOUT = {layout!r} is not known; use one of {list(RESNET_LAYOUTS)}."
        )
    if (r.RES4_DILATION, r.RES5_DILATION) != (1, 1):
        raise ValueError(
            f"MODEL.RESNETS.RES4_DILATION = {r.RES4_DILATION} and MODEL.RESNETS.RES5_DILATION = "
            f"{r.RES5_DILATION}: build_ssd_resnet_backbone needs undilated stages; set both to 1 "
            "(the 'nvidia' layout already keeps res4 at stride 8 without dilation)."
        )
    norm = ssd.RESNET_EXTRA_NORM
    if norm == "FrozenBN":
        raise ValueError(
            "MODEL.SSD.RESNET_EXTRA_NORM = 'FrozenBN': the extra blocks are trained from "
            "scratch, so their norm must learn; use e.g. 'BN', 'naiveSyncBN', 'GN' or '' (none)."
        )
    in_features = list(ssd.IN_FEATURES)
    if not in_features:
        raise ValueError(
            "MODEL.SSD.IN_FEATURES is empty; name the maps that get default boxes, e.g. "
            "['res4', 'extra1', ..., 'extra5'] ('nvidia') or ['res3', 'res4', 'res5', "
            "'extra1', ...] ('multi_level')."
        )
    stages = resnet_stages_from_config(cfg, {"res4": 1, "res5": 1})
    if layout == "nvidia":
        stages = stages[:3]
        _keep_resolution(stages[2][0])
    stage_names = [f"res{i + 2}" for i in range(len(stages))]
    bad = [f for f in in_features if not _extra_index(f) and f not in stage_names]
    if bad:
        raise ValueError(
            f"MODEL.SSD.IN_FEATURES = {in_features}: {bad} are not outputs of the "
            f"{layout!r} layout (MODEL.SSD.RESNET_LAYOUT); it offers {stage_names} and "
            "'extra1', 'extra2', ..."
        )
    count = max(_extra_index(f) for f in in_features)  # the extras to build
    resnet_out = [f for f in stage_names if f in in_features or (count and f == stage_names[-1])]
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS,
                     norm=r.NORM)
    bottom_up = ResNet(stem, stages, out_features=resnet_out,
                       freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)
    channels = bottom_up.output_shape()[resnet_out[-1]].channels
    extras = []
    for out, stride, padding in _extra_specs(layout, count, channels,
                                             list(ssd.RESNET_EXTRA_CHANNELS)):
        extras.append(SSDExtraBlock(channels, out, stride=stride, padding=padding, norm=norm))
        channels = out
    return SSDResNetBackbone(
        bottom_up=bottom_up, extras=extras, out_features=in_features,
        input_size=ssd.IMAGE_SIZE,
    )
