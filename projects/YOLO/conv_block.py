"""YOLOX's convolution unit: conv (no bias) -> BatchNorm (eps 1e-3, momentum 0.03) ->
activation, and its depthwise-separable variant.

``ConvBNAct`` keeps YOLOX's sub-module names (``conv``, ``bn``, ``act``) so checkpoints map
onto it by renaming prefixes only.
"""

from torch import nn

__all__ = [
    "BN_EPS",
    "BN_MOMENTUM",
    "ConvBNAct",
    "DepthwiseSeparableConv",
    "get_activation",
    "make_conv",
]

BN_EPS = 1e-3
"""BatchNorm epsilon of every YOLOX conv unit (PyTorch's default is 1e-5)."""
BN_MOMENTUM = 0.03
"""BatchNorm running-statistics momentum (PyTorch convention: weight of the new batch)."""

_ACTIVATIONS = {
    "silu": lambda: nn.SiLU(inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
    "lrelu": lambda: nn.LeakyReLU(0.1, inplace=True),
}


def get_activation(name: str) -> nn.Module:
    """A new activation module for MODEL.YOLOX.ACT ``name``: "silu", "relu" or "lrelu"
    (negative slope 0.1). Raises ValueError for any other name."""
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"MODEL.YOLOX.ACT = {name!r} is not a known activation; use one of "
            f"{sorted(_ACTIVATIONS)} ('silu' is YOLOX's)."
        )
    return _ACTIVATIONS[name]()


class ConvBNAct(nn.Module):
    """``conv(k x k, stride, padding (k - 1) // 2, groups, no bias) -> BatchNorm2d -> act``.

    ``forward(x (N, C_in, H, W)) -> (N, C_out, ceil(H / stride), ceil(W / stride))`` for odd
    ``kernel_size``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act: str = "silu",
    ):
        """Args:
            in_channels, out_channels: channels of the input and the output.
            kernel_size: odd side of the square kernel ("same" padding).
            stride: stride of the convolution.
            groups: convolution groups (``in_channels`` for a depthwise conv).
            act: activation name (:func:`get_activation`).
        """
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = get_activation(act)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """A depthwise ``ConvBNAct`` (k x k, ``groups = in_channels``, the stride) then a pointwise
    1x1 ``ConvBNAct`` to ``out_channels``; sub-modules ``dconv`` and ``pconv``.

    ``forward(x (N, C_in, H, W)) -> (N, C_out, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
        act: str = "silu",
    ):
        """Args: as :class:`ConvBNAct` (no ``groups``)."""
        super().__init__()
        self.dconv = ConvBNAct(
            in_channels, in_channels, kernel_size, stride=stride, groups=in_channels, act=act
        )
        self.pconv = ConvBNAct(in_channels, out_channels, 1, act=act)

    def forward(self, x):
        return self.pconv(self.dconv(x))


def make_conv(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
    depthwise: bool = False, act: str = "silu",
) -> nn.Module:
    """A :class:`DepthwiseSeparableConv` when ``depthwise`` (MODEL.YOLOX.DEPTHWISE), else a
    dense :class:`ConvBNAct`; same arguments and output shape either way."""
    cls = DepthwiseSeparableConv if depthwise else ConvBNAct
    return cls(in_channels, out_channels, kernel_size, stride=stride, act=act)
