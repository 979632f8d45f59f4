"""Deformable convolutions v1/v2 (Detectron2's ``DeformConv``/``ModulatedDeformConv``).

Both run on ``torchvision.ops.deform_conv2d``. The offset layout is Detectron2's (and
torchvision's): for deformable group g and kernel tap k = i * kernel_w + j, channel
``2 * (g * kh * kw + k)`` is the y offset and the next channel the x offset, in input pixels.
"""

from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv"]

_IntOrPair = Union[int, Tuple[int, int]]


class _DeformConvBase(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrPair,
        stride: _IntOrPair,
        padding: _IntOrPair,
        dilation: _IntOrPair,
        groups: int,
        deformable_groups: int,
        with_bias: bool,
        norm: Optional[nn.Module],
        activation: Optional[Callable],
    ):
        super().__init__()
        name = type(self).__name__
        for what, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
            if channels % groups != 0:
                raise ValueError(f"{name}: {what}={channels} is not divisible by groups={groups}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation

        weight = torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(weight)
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        if with_bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)

    def _check_offset(self, offset: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        taps = self.kernel_size[0] * self.kernel_size[1]
        name = type(self).__name__
        if offset.shape[1] != 2 * self.deformable_groups * taps:
            raise ValueError(
                f"{name}: offset must have 2 * deformable_groups * kh * kw = "
                f"{2 * self.deformable_groups * taps} channels, got shape {tuple(offset.shape)}"
            )
        if mask is not None and mask.shape[1] != self.deformable_groups * taps:
            raise ValueError(
                f"{name}: mask must have deformable_groups * kh * kw = "
                f"{self.deformable_groups * taps} channels, got shape {tuple(mask.shape)}"
            )

    def _output_size(self, x: torch.Tensor) -> Tuple[int, int]:
        size = []
        for d in range(2):
            extent = self.dilation[d] * (self.kernel_size[d] - 1) + 1
            size.append((x.shape[2 + d] + 2 * self.padding[d] - extent) // self.stride[d] + 1)
        return size[0], size[1]

    def _run(
        self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        self._check_offset(offset, mask)
        if x.shape[0] == 0:
            out_h, out_w = self._output_size(x)
            # Zeros that keep x, offset, weight (and mask) in the graph for an empty batch.
            zero = x.sum() * 0 + offset.sum() * 0 + self.weight.sum() * 0
            if mask is not None:
                zero = zero + mask.sum() * 0
            out = x.new_zeros((0, self.out_channels, out_h, out_w)) + zero
        else:
            out = deform_conv2d(
                x,
                offset.to(x.dtype),
                self.weight,
                self.bias,
                stride=self.stride,
                padding=self.padding,
                dilation=self.dilation,
                mask=None if mask is None else mask.to(x.dtype),
            )
        if self.norm is not None:
            out = self.norm(out)
        if self.activation is not None:
            out = self.activation(out)
        return out

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}"
        )


class DeformConv(_DeformConvBase):
    """Deformable convolution v1: a conv whose kernel taps are displaced by learnt offsets.

    Args (as ``nn.Conv2d`` where shared): in_channels, out_channels, kernel_size, stride=1,
    padding=0, dilation=1, groups=1, deformable_groups=1 (offset groups over the input
    channels), bias=False (must be False, as in Detectron2), norm (module or None) and
    activation (callable or None) applied to the output in that order.

    Parameters: ``weight`` (out, in / groups, kh, kw).

    ``forward(x (N, C_in, H, W), offset (N, 2 * deformable_groups * kh * kw, H', W'))
    -> (N, C_out, H', W')``; zero offsets give a plain convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrPair,
        stride: _IntOrPair = 1,
        padding: _IntOrPair = 0,
        dilation: _IntOrPair = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable] = None,
    ):
        if bias:
            raise ValueError(
                "DeformConv has no bias (bias=True is not supported); use ModulatedDeformConv "
                "or add the bias in a following layer."
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            deformable_groups, False, norm, activation,
        )

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return self._run(x, offset, None)


class ModulatedDeformConv(_DeformConvBase):
    """Modulated deformable convolution (v2): offsets plus a per-tap modulation mask.

    Same arguments as :class:`DeformConv`, except ``bias`` defaults to True and is allowed.

    Parameters: ``weight`` (out, in / groups, kh, kw) and ``bias`` (out,) when ``bias=True``.

    ``forward(x (N, C_in, H, W), offset (N, 2 * dg * kh * kw, H', W'),
    mask (N, dg * kh * kw, H', W')) -> (N, C_out, H', W')``; ``mask`` multiplies each sampled
    value (typically a sigmoid output in [0, 1]).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _IntOrPair,
        stride: _IntOrPair = 1,
        padding: _IntOrPair = 0,
        dilation: _IntOrPair = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
        norm: Optional[nn.Module] = None,
        activation: Optional[Callable] = None,
    ):
        super().__init__(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
            deformable_groups, bias, norm, activation,
        )

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._run(x, offset, mask)
