"""CSPDarknet-53, YOLOX's backbone: ``CSPDarknet`` and its registered builder
``build_cspdarknet_backbone``.

Stages (channels for a width multiplier w, b = int(64 w); depth multiplier d,
n = max(round(3 d), 1)):

- ``stem``: :class:`~.focus.Focus` (space-to-depth, 3x3 conv) to b channels, stride 2;
- ``dark2``: 3x3 stride-2 conv to 2b, CSP layer with n bottlenecks; stride 4;
- ``dark3``: 3x3 stride-2 conv to 4b, CSP layer with 3n bottlenecks; stride 8;
- ``dark4``: 3x3 stride-2 conv to 8b, CSP layer with 3n bottlenecks; stride 16;
- ``dark5``: 3x3 stride-2 conv to 16b, SPP bottleneck (5 / 9 / 13 max-pools), CSP layer with
  n bottlenecks and no shortcuts; stride 32.

The strided convs and the bottlenecks' 3x3 convs are depthwise-separable when
``depthwise`` (YOLOX-nano). Every conv is conv + BatchNorm (eps 1e-3, momentum 0.03) + the
activation (:mod:`.conv_block`).
"""

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from segtron.layers import FrozenBatchNorm2d, ShapeSpec
from segtron.modeling import BACKBONE_REGISTRY
from segtron.modeling.backbone import Backbone

from .conv_block import make_conv
from .csp_layer import CSPLayer
from .focus import Focus
from .spp import SPPBottleneck

__all__ = ["CSPDarknet", "build_cspdarknet_backbone", "check_multipliers"]

STAGE_NAMES = ("stem", "dark2", "dark3", "dark4", "dark5")
"""CSPDarknet's stages, in order; stage i (from 0) has stride 2 ** (i + 1)."""


def check_multipliers(depth: float, width: float) -> None:
    """ValueError naming MODEL.YOLOX.DEPTH / WIDTH unless both are > 0 and the width leaves
    every layer at least one channel (int(64 x WIDTH) >= 1)."""
    if not depth > 0:
        raise ValueError(
            f"MODEL.YOLOX.DEPTH = {depth!r}: the depth multiplier must be > 0 (YOLOX-s 0.33, "
            "m 0.67, l 1.0)."
        )
    if not width > 0 or int(64 * width) < 1:
        raise ValueError(
            f"MODEL.YOLOX.WIDTH = {width!r}: the width multiplier must be >= 1/64 so that "
            "int(64 x WIDTH) >= 1 (YOLOX-nano 0.25, tiny 0.375, s 0.5, m 0.75, l 1.0)."
        )


class CSPDarknet(Backbone):
    """CSPDarknet-53 with YOLOX's multipliers (module docstring).

    ``forward(x (N, C, H, W)) -> {name: (N, C_name, H / s_name, W / s_name)}`` for the
    requested ``out_features`` among "stem", "dark2" .. "dark5" (strides 2, 4, 8, 16, 32;
    channels b, 2b, 4b, 8b, 16b with b = int(64 x width)). H and W must be multiples of 32
    (``size_divisibility``). Sub-modules ``stem``, ``dark2`` .. ``dark5`` (``nn.Sequential``:
    [conv, CSP] or, in dark5, [conv, SPP, CSP]), YOLOX's layout.
    """

    def __init__(
        self,
        depth: float = 0.33,
        width: float = 0.5,
        *,
        in_channels: int = 3,
        out_features: Sequence[str] = ("dark3", "dark4", "dark5"),
        depthwise: bool = False,
        act: str = "silu",
        freeze_at: int = 0,
    ):
        """Args:
            depth, width: YOLOX's depth and width multipliers (MODEL.YOLOX.DEPTH / WIDTH).
            in_channels: image channels.
            out_features: stage names to return.
            depthwise: depthwise-separable strided and bottleneck convs (YOLOX-nano).
            act: activation name ("silu").
            freeze_at: stages 1 .. freeze_at (1: stem, 2: + dark2, ..., 5: all) get
                ``requires_grad=False`` and frozen BatchNorm (MODEL.BACKBONE.FREEZE_AT; YOLOX
                trains everything: 0).
        """
        super().__init__()
        check_multipliers(depth, width)
        unknown = [name for name in out_features if name not in STAGE_NAMES]
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.YOLOX.IN_FEATURES = {list(out_features)}: CSPDarknet outputs "
                f"{list(STAGE_NAMES)}; {unknown or 'none'} requested is not one of them."
            )
        if not 0 <= freeze_at <= len(STAGE_NAMES):
            raise ValueError(
                f"MODEL.BACKBONE.FREEZE_AT = {freeze_at}: CSPDarknet freezes stages 1 .. "
                f"FREEZE_AT of {list(STAGE_NAMES)}, so it must be in [0, {len(STAGE_NAMES)}] "
                "(0 for YOLOX, trained from scratch)."
            )
        base = int(64 * width)
        blocks = max(round(3 * depth), 1)
        kw = {"depthwise": depthwise, "act": act}

        self.stem = Focus(in_channels, base, kernel_size=3, act=act)
        self.dark2 = nn.Sequential(
            make_conv(base, 2 * base, 3, 2, **kw), CSPLayer(2 * base, 2 * base, blocks, **kw)
        )
        self.dark3 = nn.Sequential(
            make_conv(2 * base, 4 * base, 3, 2, **kw),
            CSPLayer(4 * base, 4 * base, 3 * blocks, **kw),
        )
        self.dark4 = nn.Sequential(
            make_conv(4 * base, 8 * base, 3, 2, **kw),
            CSPLayer(8 * base, 8 * base, 3 * blocks, **kw),
        )
        self.dark5 = nn.Sequential(
            make_conv(8 * base, 16 * base, 3, 2, **kw),
            SPPBottleneck(16 * base, 16 * base, act=act),
            CSPLayer(16 * base, 16 * base, blocks, shortcut=False, **kw),
        )

        channels = (base, 2 * base, 4 * base, 8 * base, 16 * base)
        self._out_features = [name for name in STAGE_NAMES if name in out_features]
        self._out_feature_channels = dict(zip(STAGE_NAMES, channels))
        self._out_feature_strides = {name: 2 ** (i + 1) for i, name in enumerate(STAGE_NAMES)}
        self._last_stage = max(STAGE_NAMES.index(name) for name in self._out_features)
        for name in STAGE_NAMES[:freeze_at]:
            stage = getattr(self, name)
            for p in stage.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(stage)

    @property
    def size_divisibility(self) -> int:
        """32: dark5's stride (the Focus stem also needs even sizes)."""
        return 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        outputs = {}
        for name in STAGE_NAMES[: self._last_stage + 1]:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_cspdarknet_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> CSPDarknet:
    """CSPDarknet from MODEL.YOLOX.DEPTH, WIDTH, DEPTHWISE, ACT, IN_FEATURES (its outputs) and
    MODEL.BACKBONE.FREEZE_AT; ``input_shape.channels`` (default 3) image channels."""
    yolox = cfg.MODEL.YOLOX
    return CSPDarknet(
        yolox.DEPTH,
        yolox.WIDTH,
        in_channels=input_shape.channels if input_shape and input_shape.channels else 3,
        out_features=list(yolox.IN_FEATURES),
        depthwise=yolox.DEPTHWISE,
        act=yolox.ACT,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
    )
