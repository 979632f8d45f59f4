"""YOLOX's neck, a path-aggregation FPN (PANet, Liu et al. 2018) built of CSP layers
(``YOLOPAFPN``), and ``build_yolox_pafpn_backbone``: CSPDarknet + this neck as one segtron
backbone, as ``build_resnet_fpn_backbone`` is ResNet + FPN.

With C3, C4, C5 the bottom-up maps (strides 8, 16, 32; channels c3, c4, c5; YOLOX: 256, 512,
1024 x width), every conv a conv + BN + activation unit:

- top-down: ``lateral_conv0`` (1x1, c5 -> c4) on C5 gives F5; F5 upsampled 2x (nearest),
  concatenated with C4, through ``C3_p4`` (CSP, no shortcut) -> c4; ``reduce_conv1`` (1x1,
  c4 -> c3) gives F4; F4 upsampled, concatenated with C3, through ``C3_p3`` -> c3 = **p3**;
- bottom-up: ``bu_conv2`` (3x3 stride 2) on p3, concatenated with F4, through ``C3_n3`` -> c4
  = **p4**; ``bu_conv1`` (3x3 stride 2) on p4, concatenated with F5, through ``C3_n4`` -> c5 =
  **p5**.

The new map comes first in every concatenation; the CSP layers have round(3 x depth)
bottlenecks. Sub-module names are YOLOX's.
"""

import math
from typing import Dict, Optional, Sequence

import torch
from torch.nn import functional as F

from segtron.layers import ShapeSpec
from segtron.modeling import BACKBONE_REGISTRY
from segtron.modeling.backbone import Backbone
from segtron.modeling.feature_names import check_in_features

from .conv_block import ConvBNAct, make_conv
from .csp_layer import CSPLayer
from .darknet import build_cspdarknet_backbone

__all__ = ["YOLOPAFPN", "build_yolox_pafpn_backbone"]


class YOLOPAFPN(Backbone):
    """``bottom_up`` followed by YOLOX's PAFPN (module docstring).

    ``forward(x (N, C, H, W)) -> {"p3": (N, c3, H/8, W/8), "p4": (N, c4, H/16, W/16),
    "p5": (N, c5, H/32, W/32)}`` for inputs of strides 8, 16, 32 (the names are "p" + log2 of
    the stride; the channels those of the three inputs). ``size_divisibility`` is that of
    ``bottom_up`` and at least the coarsest stride.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str] = ("dark3", "dark4", "dark5"),
        depth: float = 0.33,
        *,
        depthwise: bool = False,
        act: str = "silu",
    ):
        """Args:
            bottom_up: a backbone with the three ``in_features`` outputs (a
                :class:`~.darknet.CSPDarknet`).
            in_features: the three bottom-up outputs to fuse, finest first; each stride must
                be twice the previous one (MODEL.YOLOX.IN_FEATURES).
            depth: depth multiplier: the CSP layers have round(3 x depth) bottlenecks.
            depthwise: depthwise-separable 3x3 convs (downsampling convs and bottlenecks).
            act: activation name.
        """
        super().__init__()
        shapes = check_in_features(
            in_features, bottom_up.output_shape(), "MODEL.YOLOX.IN_FEATURES"
        )
        strides = [s.stride for s in shapes]
        if len(shapes) != 3 or strides[1] != 2 * strides[0] or strides[2] != 2 * strides[1]:
            raise ValueError(
                f"MODEL.YOLOX.IN_FEATURES = {list(in_features)} (strides {strides}): the YOLOX "
                "PAFPN fuses exactly three maps whose strides double, e.g. dark3, dark4, dark5 "
                "(8, 16, 32)."
            )
        if not depth > 0:
            raise ValueError(f"MODEL.YOLOX.DEPTH = {depth!r}: the depth multiplier must be > 0.")
        self.bottom_up = bottom_up
        self.in_features = list(in_features)
        c3, c4, c5 = (s.channels for s in shapes)
        n = round(3 * depth)
        kw = {"depthwise": depthwise, "act": act}

        self.lateral_conv0 = ConvBNAct(c5, c4, 1, act=act)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, shortcut=False, **kw)
        self.reduce_conv1 = ConvBNAct(c4, c3, 1, act=act)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, shortcut=False, **kw)
        self.bu_conv2 = make_conv(c3, c3, 3, 2, **kw)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, shortcut=False, **kw)
        self.bu_conv1 = make_conv(c4, c4, 3, 2, **kw)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, shortcut=False, **kw)

        self._out_features = [f"p{int(math.log2(s))}" for s in strides]
        self._out_feature_channels = dict(zip(self._out_features, (c3, c4, c5)))
        self._out_feature_strides = dict(zip(self._out_features, strides))

    @property
    def size_divisibility(self) -> int:
        return max(self.bottom_up.size_divisibility, max(self._out_feature_strides.values()))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        c3, c4, c5 = (features[name] for name in self.in_features)

        f5 = self.lateral_conv0(c5)
        up = F.interpolate(f5, scale_factor=2.0, mode="nearest")
        f4 = self.reduce_conv1(self.C3_p4(torch.cat((up, c4), dim=1)))
        up = F.interpolate(f4, scale_factor=2.0, mode="nearest")
        p3 = self.C3_p3(torch.cat((up, c3), dim=1))

        p4 = self.C3_n3(torch.cat((self.bu_conv2(p3), f4), dim=1))
        p5 = self.C3_n4(torch.cat((self.bu_conv1(p4), f5), dim=1))
        return dict(zip(self._out_features, (p3, p4, p5)))


@BACKBONE_REGISTRY.register()
def build_yolox_pafpn_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> YOLOPAFPN:
    """:func:`~.darknet.build_cspdarknet_backbone` (its outputs MODEL.YOLOX.IN_FEATURES) +
    :class:`YOLOPAFPN` with MODEL.YOLOX.DEPTH, DEPTHWISE, ACT. Outputs "p3", "p4", "p5"
    (strides 8, 16, 32; channels 256, 512, 1024 x MODEL.YOLOX.WIDTH)."""
    yolox = cfg.MODEL.YOLOX
    return YOLOPAFPN(
        build_cspdarknet_backbone(cfg, input_shape),
        list(yolox.IN_FEATURES),
        yolox.DEPTH,
        depthwise=yolox.DEPTHWISE,
        act=yolox.ACT,
    )
