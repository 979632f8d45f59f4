"""Deformable convolutions v1/v2 (Detectron2's ``DeformConv``/``ModulatedDeformConv``).

The modules and the functional forms ``deform_conv`` / ``modulated_deform_conv`` (Detectron2's
autograd Functions' ``apply``, same positional arguments) all run on
``torchvision.ops.deform_conv2d``, on CPU and GPU alike. The offset layout is Detectron2's (and
torchvision's): for deformable group g and kernel tap k = i * kernel_w + j, channel
``2 * (g * kh * kw + k)`` is the y offset and the next channel the x offset, in input pixels.
"""

from typing import Callable, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv", "deform_conv", "modulated_deform_conv"]

_IntOrPair = Union[int, Tuple[int, int]]


def _output_size(
    x: torch.Tensor, kernel: Tuple[int, int], stride, padding, dilation
) -> Tuple[int, int]:
    size = []
    for d in range(2):
        extent = dilation[d] * (kernel[d] - 1) + 1
        size.append((x.shape[2 + d] + 2 * padding[d] - extent) // stride[d] + 1)
    return size[0], size[1]


def _check_inputs(
    caller: str, x, offset, weight, mask, groups: int, deformable_groups: int
) -> None:
    """Shapes agree with groups / deformable_groups; else a ValueError naming ``caller``."""
    for what, tensor in (("input", x), ("offset", offset), ("weight", weight), ("mask", mask)):
        if tensor is not None and (not isinstance(tensor, torch.Tensor) or tensor.dim() != 4):
            got = f"{tensor.dim()}D" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ValueError(f"{caller}: {what} must be a 4D tensor, got {got}.")
    taps = weight.shape[2] * weight.shape[3]
    if groups < 1 or x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(
            f"{caller}: input has {x.shape[1]} channels and weight shape {tuple(weight.shape)}, "
            f"which does not fit groups={groups}: pass weight of shape (C_out, C_in / groups, "
            "kh, kw) with C_out divisible by groups."
        )
    if offset.shape[1] != 2 * deformable_groups * taps:
        raise ValueError(
            f"{caller}: offset must have 2 * deformable_groups * kh * kw = "
            f"{2 * deformable_groups * taps} channels, got shape {tuple(offset.shape)}"
        )
    if mask is not None and mask.shape[1] != deformable_groups * taps:
        raise ValueError(
            f"{caller}: mask must have deformable_groups * kh * kw = "
            f"{deformable_groups * taps} channels, got shape {tuple(mask.shape)}"
        )


def _deform_conv_core(
    caller: str,
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    mask: Optional[torch.Tensor],
    stride: _IntOrPair,
    padding: _IntOrPair,
    dilation: _IntOrPair,
    groups: int,
    deformable_groups: int,
) -> torch.Tensor:
    """Checked ``deform_conv2d`` (torchvision infers groups from the shapes checked here).

    An empty batch gives an empty output that keeps every input in the autograd graph.
    """
    _check_inputs(caller, x, offset, weight, mask, groups, deformable_groups)
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    if x.shape[0] == 0:
        out_h, out_w = _output_size(x, tuple(weight.shape[2:]), stride, padding, dilation)
        zero = x.sum() * 0 + offset.sum() * 0 + weight.sum() * 0
        for extra in (mask, bias):
            if extra is not None:
                zero = zero + extra.sum() * 0
        return x.new_zeros((0, weight.shape[0], out_h, out_w)) + zero
    return deform_conv2d(
        x,
        offset.to(x.dtype),
        weight,
        bias,
        stride=stride,
        padding=padding,
        dilation=dilation,
        mask=None if mask is None else mask.to(x.dtype),
    )


def deform_conv(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    stride: _IntOrPair = 1,
    padding: _IntOrPair = 0,
    dilation: _IntOrPair = 1,
    groups: int = 1,
    deformable_groups: int = 1,
    im2col_step: int = 64,
) -> torch.Tensor:
    """Functional deformable convolution v1 (Detectron2's ``deform_conv``), no bias.

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2 * deformable_groups * kh * kw, H', W'), the layout of :class:`DeformConv`.
        weight: (C_out, C_in / groups, kh, kw).
        stride, padding, dilation: int or (h, w) pair.
        groups, deformable_groups: as in :class:`DeformConv`.
        im2col_step: Detectron2's CUDA batching step; accepted for compatibility, no effect on
            the result (must be >= 1).

    Returns:
        (N, C_out, H', W'), equal to ``DeformConv(...)(input, offset)`` with this weight.
    """
    if int(im2col_step) < 1:
        raise ValueError(f"deform_conv: im2col_step={im2col_step}; pass a positive int.")
    return _deform_conv_core(
        "deform_conv", input, offset, weight, None, None, stride, padding, dilation, groups,
        deformable_groups,
    )


def modulated_deform_conv(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: _IntOrPair = 1,
    padding: _IntOrPair = 0,
    dilation: _IntOrPair = 1,
    groups: int = 1,
    deformable_groups: int = 1,
) -> torch.Tensor:
    """Functional modulated deformable convolution v2 (Detectron2's ``modulated_deform_conv``).

    Args:
        input: (N, C_in, H, W).
        offset: (N, 2 * deformable_groups * kh * kw, H', W').
        mask: (N, deformable_groups * kh * kw, H', W'), multiplies each sampled value.
        weight: (C_out, C_in / groups, kh, kw); bias: (C_out,) or None.
        stride, padding, dilation: int or (h, w) pair; groups, deformable_groups as in
            :class:`ModulatedDeformConv`.

    Returns:
        (N, C_out, H', W'), equal to ``ModulatedDeformConv(...)(input, offset, mask)``.
    """
    return _deform_conv_core(
        "modulated_deform_conv", input, offset, weight, bias, mask, stride, padding, dilation,
        groups, deformable_groups,
    )


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

    def _run(
        self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        out = _deform_conv_core(
            type(self).__name__, x, offset, self.weight, self.bias, mask, self.stride,
            self.padding, self.dilation, self.groups, self.deformable_groups,
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
