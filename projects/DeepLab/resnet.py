"""The DeepLab ResNet: a three-conv "deeplab" stem and a multi-grid res5
(``build_resnet_deeplab_backbone``, Detectron2's DeepLab-project backbone)."""

import torch
from fvcore.nn import weight_init
from torch.nn import functional as F

from segtron.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from segtron.modeling import BACKBONE_REGISTRY
from segtron.modeling.backbone.resnet import BasicStem, ResNet, resnet_stages_from_config

__all__ = ["DeepLabStem", "build_resnet_deeplab_backbone"]

# (RES4_DILATION, RES5_DILATION) this backbone accepts -> output stride. Unlike the core
# backbone it also takes (1, 4): res5 at stride 16 but dilated 4 (Detectron2's DeepLab rule).
_DEEPLAB_DILATIONS = {(1, 1): 32, (1, 2): 16, (1, 4): 16, (2, 4): 8}
_STEM_TYPES = ("basic", "deeplab")


class DeepLabStem(CNNBlockBase):
    """The DeepLab ResNet stem: three 3x3 convs (stride 2, 1, 1; out/2, out/2, out channels),
    each with norm and ReLU, then a 3x3 stride-2 max-pool.

    Args:
        in_channels: input channels (3 for images).
        out_channels: channels of the last conv (the first two have half).
        norm: norm of every conv (as for :func:`get_norm`); the convs have no bias.

    Submodules ``conv1``, ``conv2``, ``conv3``. ``forward(x (N, in, H, W)) -> (N, out, ~H/4,
    ~W/4)``; ``stride`` 4.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 128, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        half = out_channels // 2
        for name, (cin, cout, stride) in {
            "conv1": (in_channels, half, 2),
            "conv2": (half, half, 1),
            "conv3": (half, out_channels, 1),
        }.items():
            conv = Conv2d(
                cin, cout, kernel_size=3, stride=stride, padding=1, bias=False,
                norm=get_norm(norm, cout),
            )
            weight_init.c2_msra_fill(conv)
            self.add_module(name, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu_(conv(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


@BACKBONE_REGISTRY.register()
def build_resnet_deeplab_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """A ResNet from ``cfg.MODEL.RESNETS`` with DeepLab's stem and multi-grid res5.

    Reads what ``build_resnet_backbone`` reads, plus STEM_TYPE ("basic": the 7x7 stem;
    "deeplab": :class:`DeepLabStem`) and RES5_MULTI_GRID (res5 block i gets dilation
    RES5_DILATION * RES5_MULTI_GRID[i]; one entry per res5 block: 3 for ResNet-50/101/152, 2 for
    ResNet-18). (RES4_DILATION, RES5_DILATION) may be (1, 1), (1, 2), (1, 4) or (2, 4).
    Detectron2 builds depths 50/101/152 here; segtron also the basic-block 18/34.

    Args:
        cfg: a config with the DeepLab keys (``add_deeplab_config``).
        input_shape: ``input_shape.channels`` is the stem's input channels.

    Returns:
        a :class:`ResNet` whose outputs are MODEL.RESNETS.OUT_FEATURES.

    Raises:
        ValueError: naming the key, for an unknown STEM_TYPE, an unsupported dilation pair or a
            RES5_MULTI_GRID whose length is not res5's number of blocks.
    """
    r = cfg.MODEL.RESNETS
    if r.STEM_TYPE not in _STEM_TYPES:
        raise ValueError(
            f"MODEL.RESNETS.STEM_TYPE={r.STEM_TYPE!r} is not one of {list(_STEM_TYPES)}."
        )
    pair = (r.RES4_DILATION, r.RES5_DILATION)
    if pair not in _DEEPLAB_DILATIONS:
        allowed = ", ".join(f"{p} (output stride {s})" for p, s in _DEEPLAB_DILATIONS.items())
        raise ValueError(
            f"(MODEL.RESNETS.RES4_DILATION, MODEL.RESNETS.RES5_DILATION)={pair} is not supported "
            f"by build_resnet_deeplab_backbone; allowed: {allowed}."
        )
    stem_class = DeepLabStem if r.STEM_TYPE == "deeplab" else BasicStem
    stem = stem_class(
        in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM
    )
    multi_grid = [r.RES5_DILATION * int(m) for m in r.RES5_MULTI_GRID]
    stages = resnet_stages_from_config(
        cfg, {"res4": pair[0], "res5": pair[1]}, res5_dilation_per_block=multi_grid
    )
    return ResNet(
        stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )
