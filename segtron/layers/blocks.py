"""Building blocks for CNN backbones (Detectron2 path: ``detectron2.layers.blocks``).

- :class:`CNNBlockBase`: base class of a block with known input/output channels and stride, that
  can be frozen for fine-tuning.
- :class:`DepthwiseSeparableConv2d`: a depthwise conv followed by a 1x1 pointwise conv.
"""

from typing import Callable, Optional, Union

from fvcore.nn import weight_init
from torch import nn

from .batch_norm import FrozenBatchNorm2d, get_norm
from .wrappers import Conv2d

__all__ = ["CNNBlockBase", "DepthwiseSeparableConv2d"]


class CNNBlockBase(nn.Module):
    """A CNN block that maps (N, in_channels, H, W) to (N, out_channels, H / stride, W / stride).

    Subclasses build their layers in ``__init__`` and define ``forward``. The three constructor
    arguments are stored as attributes of the same names, which backbones use to compute the
    channels and strides of their outputs.

    Args:
        in_channels: number of input channels.
        out_channels: number of output channels.
        stride: ratio of the input's spatial size to the output's.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def freeze(self) -> "CNNBlockBase":
        """Make this block untrainable, in place, and return it.

        Every parameter gets ``requires_grad = False`` and every ``BatchNorm2d``/``SyncBatchNorm``
        inside is replaced by a :class:`FrozenBatchNorm2d` with the same statistics, so neither
        gradients nor running-statistic updates change the block any more.
        """
        for param in self.parameters():
            param.requires_grad_(False)
        FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        return self


NormSpec = Union[str, Callable[[int], nn.Module], None]


class DepthwiseSeparableConv2d(nn.Module):
    """A k x k depthwise conv then a 1x1 pointwise conv, each with an optional norm/activation.

    Args:
        in_channels, out_channels: channels of the input and of the output.
        kernel_size, padding, dilation: of the depthwise conv (stride 1).
        norm1, activation1: norm (as for :func:`get_norm`) and activation of the depthwise conv.
        norm2, activation2: the same for the pointwise conv.

    A conv has a bias only when it has no norm. Submodules ``depthwise`` and ``pointwise``
    (both :class:`Conv2d`), initialised with ``c2_msra_fill``.

    ``forward(x (N, in_channels, H, W)) -> (N, out_channels, H', W')``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        dilation: int = 1,
        *,
        norm1: NormSpec = None,
        activation1: Optional[Callable] = None,
        norm2: NormSpec = None,
        activation2: Optional[Callable] = None,
    ):
        super().__init__()
        self.depthwise = Conv2d(
            in_channels, in_channels, kernel_size=kernel_size, padding=padding,
            dilation=dilation, groups=in_channels, bias=not norm1,
            norm=get_norm(norm1, in_channels), activation=activation1,
        )
        self.pointwise = Conv2d(
            in_channels, out_channels, kernel_size=1, bias=not norm2,
            norm=get_norm(norm2, out_channels), activation=activation2,
        )
        weight_init.c2_msra_fill(self.depthwise)
        weight_init.c2_msra_fill(self.pointwise)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))
