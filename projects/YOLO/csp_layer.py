"""The CSP layer of CSPDarknet and YOLOX's PAFPN (Cross Stage Partial block, Wang et al. 2020):
two 1x1 branches of half the output channels, one through n bottlenecks, concatenated and
fused by a 1x1 conv.
"""

import torch
from torch import nn

from .conv_block import ConvBNAct, make_conv

__all__ = ["Bottleneck", "CSPLayer"]


class Bottleneck(nn.Module):
    """1x1 ``ConvBNAct`` to ``int(out_channels x expansion)`` channels, then a 3x3 conv
    (:func:`make_conv`, depthwise-separable on request) to ``out_channels``; the input is
    added to the result when ``shortcut`` and the channel counts agree.

    ``forward(x (N, C_in, H, W)) -> (N, C_out, H, W)``. Sub-modules ``conv1``, ``conv2``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, shortcut: bool = True,
        expansion: float = 0.5, depthwise: bool = False, act: str = "silu",
    ):
        """Args:
            in_channels, out_channels: channels of the input and the output.
            shortcut: add the identity (only used when ``in_channels == out_channels``).
            expansion: hidden channels as a fraction of ``out_channels``.
            depthwise: depthwise-separable 3x3 conv.
            act: activation name.
        """
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvBNAct(in_channels, hidden, 1, act=act)
        self.conv2 = make_conv(hidden, out_channels, 3, depthwise=depthwise, act=act)
        self.use_add = bool(shortcut) and in_channels == out_channels

    def forward(self, x):
        y = self.conv2(self.conv1(x))
        return x + y if self.use_add else y


class CSPLayer(nn.Module):
    """CSP block: ``conv3(cat(m(conv1(x)), conv2(x)))``.

    ``conv1`` and ``conv2`` are 1x1 ``ConvBNAct`` to ``hidden = int(out_channels x
    expansion)`` channels; ``m`` is ``num_blocks`` :class:`Bottleneck` (hidden -> hidden,
    expansion 1.0); ``conv3`` is a 1x1 ``ConvBNAct`` from 2 x hidden to ``out_channels``.
    The bottleneck branch comes first in the concatenation.

    ``forward(x (N, C_in, H, W)) -> (N, C_out, H, W)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, num_blocks: int = 1, shortcut: bool = True,
        expansion: float = 0.5, depthwise: bool = False, act: str = "silu",
    ):
        """Args:
            in_channels, out_channels: channels of the input and the output.
            num_blocks: number of bottlenecks (>= 1 in YOLOX's models; 0 gives none).
            shortcut: residual connections inside the bottlenecks (False in dark5 and the
                PAFPN).
            expansion: hidden channels as a fraction of ``out_channels``.
            depthwise: depthwise-separable 3x3 convs in the bottlenecks.
            act: activation name.
        """
        super().__init__()
        hidden = int(out_channels * expansion)
        self.conv1 = ConvBNAct(in_channels, hidden, 1, act=act)
        self.conv2 = ConvBNAct(in_channels, hidden, 1, act=act)
        self.conv3 = ConvBNAct(2 * hidden, out_channels, 1, act=act)
        self.m = nn.Sequential(
            *[
                Bottleneck(hidden, hidden, shortcut, 1.0, depthwise=depthwise, act=act)
                for _ in range(num_blocks)
            ]
        )

    def forward(self, x):
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), dim=1))
