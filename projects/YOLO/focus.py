"""The Focus stem of CSPDarknet (YOLOv5 / YOLOX): space-to-depth, then a conv."""

import torch
from torch import nn

from .conv_block import ConvBNAct

__all__ = ["Focus", "space_to_depth"]


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 4C, H / 2, W / 2): the four pixels of every 2x2 block, as four
    channel groups in YOLOX's order (row parity, column parity) = (0, 0), (1, 0), (0, 1),
    (1, 1), i.e. top-left, bottom-left, top-right, bottom-right. H and W must be even."""
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(
            f"Focus needs an even input height and width, got {tuple(x.shape[-2:])}; pad the "
            "images to a multiple of 32 (the YOLOX backbones' size_divisibility)."
        )
    return torch.cat(
        (x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]), dim=1
    )


class Focus(nn.Module):
    """:func:`space_to_depth` then a ``ConvBNAct`` (sub-module ``conv``) from 4 x
    ``in_channels`` to ``out_channels``.

    ``forward(x (N, C_in, H, W)) -> (N, C_out, H / 2, W / 2)`` (stride 2 overall).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
        act: str = "silu",
    ):
        """Args:
            in_channels: image channels (3).
            out_channels: channels of the stem output.
            kernel_size: the conv's kernel (YOLOX's CSPDarknet: 3).
            stride: the conv's stride (1: the space-to-depth already halves the size).
            act: activation name.
        """
        super().__init__()
        self.conv = ConvBNAct(4 * in_channels, out_channels, kernel_size, stride=stride, act=act)

    def forward(self, x):
        return self.conv(space_to_depth(x))
