"""The building blocks of a ResNet: stem, basic block, bottleneck and deformable bottleneck.

Detectron2 path: ``detectron2.modeling.backbone.resnet`` (re-exported there). Every conv that
has a norm carries it as a ``norm`` sub-module, so parameter names are Detectron2's
(``conv1.norm.running_var``, ...). Each block is a ``CNNBlockBase`` with ``in_channels``,
``out_channels`` and ``stride``; ``forward(x (N, in, H, W)) -> (N, out, H / stride, W / stride)``.
"""

from typing import Optional

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from ...layers import CNNBlockBase, Conv2d, DeformConv, ModulatedDeformConv, get_norm

__all__ = ["BasicBlock", "BottleneckBlock", "DeformBottleneckBlock", "BasicStem"]


def _shortcut(in_channels: int, out_channels: int, stride: int, norm) -> Optional[Conv2d]:
    """1x1 projection (conv + norm) when channels change, else None (identity shortcut)."""
    if in_channels == out_channels:
        return None
    return Conv2d(
        in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
        norm=get_norm(norm, out_channels),
    )


def _msra_init(*layers: Optional[nn.Module]) -> None:
    """``c2_msra_fill`` (kaiming normal, fan_out, zero bias) on every layer that exists."""
    for layer in layers:
        if layer is not None:
            weight_init.c2_msra_fill(layer)


class BasicBlock(CNNBlockBase):
    """The two-3x3-conv residual block of ResNet-18/34.

    Args:
        in_channels, out_channels: channels of the input and of the output.
        stride: stride of the first conv (and of the projection shortcut).
        norm: norm of every conv (a :func:`get_norm` name or callable).
        dilation: dilation (and padding) of both 3x3 convs. segtron only: Detectron2 and
            torchvision refuse dilated basic blocks; here both convs of a dilated stage sit on
            the finer grid, so both are dilated (as in dilated residual networks).

    Submodules ``conv1``, ``conv2`` and, when ``in_channels != out_channels``, ``shortcut``.
    ``forward(x (N, in, H, W)) -> (N, out, H / stride, W / stride)`` computes
    ``relu(conv2(relu(conv1(x))) + shortcut(x))``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, norm="BN",
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        self.conv1 = Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=dilation,
            dilation=dilation, bias=False, norm=get_norm(norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels, out_channels, kernel_size=3, stride=1, padding=dilation,
            dilation=dilation, bias=False, norm=get_norm(norm, out_channels),
        )
        _msra_init(self.conv1, self.conv2, self.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """The 1x1 -> 3x3 -> 1x1 residual block of ResNet-50/101/152 and ResNeXt.

    Args:
        in_channels, out_channels: channels of the input and of the output.
        bottleneck_channels: channels of the inner 3x3 conv.
        stride: downsampling of the block; it sits on ``conv1`` when ``stride_in_1x1``
            (MSRA/Caffe2 weights) and on ``conv2`` otherwise (torchvision style).
        num_groups: groups of the 3x3 conv (ResNeXt cardinality).
        norm: norm of every conv.
        stride_in_1x1: see ``stride``.
        dilation: dilation (and padding) of the 3x3 conv.

    Submodules ``conv1``, ``conv2``, ``conv3`` and, when ``in_channels != out_channels``,
    ``shortcut`` (1x1 conv + norm). ``forward(x (N, in, H, W)) -> (N, out, H / s, W / s)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3,
            padding=dilation, bias=False, groups=num_groups, dilation=dilation,
            norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, kernel_size=1, bias=False,
            norm=get_norm(norm, out_channels),
        )
        _msra_init(self.conv1, self.conv2, self.conv3, self.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class DeformBottleneckBlock(CNNBlockBase):
    """A :class:`BottleneckBlock` whose 3x3 conv is deformable (v1) or modulated deformable (v2).

    Same arguments as :class:`BottleneckBlock`, plus:

    - ``deform_modulated``: use :class:`ModulatedDeformConv` (offsets and a sigmoid mask) instead
      of :class:`DeformConv` (offsets only).
    - ``deform_num_groups``: deformable groups (each with its own offsets).

    Extra submodule ``conv2_offset``: a 3x3 :class:`Conv2d` (with bias, same stride/dilation as
    ``conv2``) producing ``18 * deform_num_groups`` channels (``27 * deform_num_groups`` when
    modulated: y/x offsets then mask logits), zero-initialised so a fresh block samples the
    regular grid (with mask 0.5 when modulated).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        num_groups: int = 1,
        norm="BN",
        stride_in_1x1: bool = False,
        dilation: int = 1,
        deform_modulated: bool = False,
        deform_num_groups: int = 1,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.shortcut = _shortcut(in_channels, out_channels, stride, norm)
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False,
            norm=get_norm(norm, bottleneck_channels),
        )
        per_group = 27 if deform_modulated else 18
        self.conv2_offset = Conv2d(
            bottleneck_channels, per_group * deform_num_groups, kernel_size=3,
            stride=stride_3x3, padding=dilation, dilation=dilation,
        )
        conv_class = ModulatedDeformConv if deform_modulated else DeformConv
        self.conv2 = conv_class(
            bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3,
            padding=dilation, bias=False, groups=num_groups, dilation=dilation,
            deformable_groups=deform_num_groups, norm=get_norm(norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels, out_channels, kernel_size=1, bias=False,
            norm=get_norm(norm, out_channels),
        )
        _msra_init(self.conv1, self.conv2, self.conv3, self.shortcut)
        nn.init.zeros_(self.conv2_offset.weight)
        nn.init.zeros_(self.conv2_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        offset = self.conv2_offset(out)
        if self.deform_modulated:
            # Channels: [offsets (2/3), mask logits (1/3)], each third 9 * deform_num_groups.
            third = offset.shape[1] // 3
            mask = offset[:, 2 * third:].sigmoid()
            out = self.conv2(out, offset[:, : 2 * third], mask)
        else:
            out = self.conv2(out, offset)
        out = F.relu_(out)
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BasicStem(CNNBlockBase):
    """The ResNet stem: 7x7 stride-2 conv (no bias) + norm + ReLU, then 3x3 stride-2 max-pool.

    Args:
        in_channels: input channels (3 for images).
        out_channels: channels of the conv.
        norm: norm of the conv.

    Submodule ``conv1``. ``forward(x (N, in, H, W)) -> (N, out, ~H / 4, ~W / 4)``; ``stride`` 4.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 64, norm="BN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(
            in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False,
            norm=get_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
