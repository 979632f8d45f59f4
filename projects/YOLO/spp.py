"""The SPP bottleneck at the end of CSPDarknet's dark5 (spatial pyramid pooling, He et al.
2014, as YOLOv3-SPP / YOLOX use it)."""

from typing import Sequence

import torch
from torch import nn

from .conv_block import ConvBNAct

__all__ = ["SPPBottleneck"]


class SPPBottleneck(nn.Module):
    """1x1 ``ConvBNAct`` to half the input channels; that map and its stride-1 max-pools with
    each kernel of ``pool_sizes`` ("same" padding) concatenated in that order; a 1x1
    ``ConvBNAct`` to ``out_channels``. Sub-modules ``conv1``, ``m`` (the pools), ``conv2``.

    ``forward(x (N, C_in, H, W)) -> (N, C_out, H, W)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, pool_sizes: Sequence[int] = (5, 9, 13),
        act: str = "silu",
    ):
        """Args:
            in_channels, out_channels: channels of the input and the output.
            pool_sizes: odd max-pool kernel sizes (YOLOX: 5, 9, 13).
            act: activation name.
        """
        super().__init__()
        hidden = in_channels // 2
        self.conv1 = ConvBNAct(in_channels, hidden, 1, act=act)
        self.m = nn.ModuleList(
            nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in pool_sizes
        )
        self.conv2 = ConvBNAct(hidden * (len(pool_sizes) + 1), out_channels, 1, act=act)

    def forward(self, x):
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))
