"""Atrous Spatial Pyramid Pooling (Detectron2 path: ``detectron2.layers.ASPP``).

DeepLabv3's context module: five parallel branches over the same feature map (a 1x1 conv,
three 3x3 convs with growing dilation, and an image-pooling branch), concatenated and projected
back to ``out_channels`` by a 1x1 conv.
"""

from copy import deepcopy
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from .batch_norm import get_norm
from .blocks import DepthwiseSeparableConv2d
from .wrappers import Conv2d

__all__ = ["ASPP"]

NormSpec = Union[str, Callable[[int], nn.Module], None]


class ASPP(nn.Module):
    """ASPP: (N, in_channels, H, W) -> (N, out_channels, H, W).

    Args:
        in_channels: channels of the input feature map.
        out_channels: channels of every branch and of the output.
        dilations: the three dilation rates of the 3x3 branches (e.g. (6, 12, 18) at output
            stride 16).
        norm: norm of every conv but the image-pooling one (as for :func:`get_norm`); a conv
            has a bias only when ``norm`` is "".
        activation: applied after every conv (copied per conv).
        pool_kernel_size: None pools the whole map (global average) in the image-pooling
            branch; (kh, kw) averages kh x kw windows with stride 1 instead. Set it to the
            training crop's feature size so training pools globally and inference on larger
            inputs keeps the same window; the input's height and width must then be multiples of
            kh and kw.
        dropout: dropout rate on the output (training only; DeepLab uses 0.1).
        use_depthwise_separable_conv: the three dilated branches are
            :class:`DepthwiseSeparableConv2d` (a dilated 3x3 depthwise conv, then a 1x1 conv,
            each with norm and activation) instead of full 3x3 convs.

    Submodules (Detectron2's parameter names): ``convs.0`` the 1x1 branch, ``convs.1-3`` the
    dilated branches, ``convs.4`` the image pooling (``convs.4.1`` its conv, with bias, no norm),
    ``project`` the 1x1 projection of the 5 * out_channels concatenation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int],
        *,
        norm: NormSpec,
        activation: Callable,
        pool_kernel_size: Optional[Tuple[int, int]] = None,
        dropout: float = 0.0,
        use_depthwise_separable_conv: bool = False,
    ):
        super().__init__()
        dilations = list(dilations)
        if len(dilations) != 3:
            raise ValueError(
                f"ASPP takes 3 dilations (one per 3x3 branch), got {len(dilations)}: {dilations}. "
                "In a config this is MODEL.SEM_SEG_HEAD.ASPP_DILATIONS, e.g. [6, 12, 18]."
            )
        if pool_kernel_size is not None:
            pool_kernel_size = tuple(int(k) for k in pool_kernel_size)
            if len(pool_kernel_size) != 2 or min(pool_kernel_size) < 1:
                raise ValueError(
                    f"ASPP pool_kernel_size must be None or (kh, kw) >= 1, got {pool_kernel_size}."
                )
        self.pool_kernel_size = pool_kernel_size
        self.dropout = dropout
        bias = norm == ""

        def conv_norm_act(in_ch: int, kernel_size: int, dilation: int = 1) -> Conv2d:
            conv = Conv2d(
                in_ch, out_channels, kernel_size=kernel_size, padding=dilation * (kernel_size // 2),
                dilation=dilation, bias=bias, norm=get_norm(norm, out_channels),
                activation=deepcopy(activation),
            )
            weight_init.c2_xavier_fill(conv)
            return conv

        branches = [conv_norm_act(in_channels, 1)]
        for dilation in dilations:
            if use_depthwise_separable_conv:
                branches.append(DepthwiseSeparableConv2d(
                    in_channels, out_channels, kernel_size=3, padding=dilation, dilation=dilation,
                    norm1=norm, activation1=deepcopy(activation),
                    norm2=norm, activation2=deepcopy(activation),
                ))
            else:
                branches.append(conv_norm_act(in_channels, 3, dilation))
        # The pooled map is 1x1 (global pooling) or nearly so: no norm on its conv.
        pool = (
            nn.AdaptiveAvgPool2d(1) if pool_kernel_size is None
            else nn.AvgPool2d(kernel_size=pool_kernel_size, stride=1)
        )
        pool_conv = Conv2d(in_channels, out_channels, 1, bias=True, activation=deepcopy(activation))
        weight_init.c2_xavier_fill(pool_conv)
        branches.append(nn.Sequential(pool, pool_conv))
        self.convs = nn.ModuleList(branches)
        self.project = conv_norm_act(5 * out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, in_channels, H, W) -> (N, out_channels, H, W)."""
        size = x.shape[-2:]
        if self.pool_kernel_size is not None and (
            size[0] % self.pool_kernel_size[0] or size[1] % self.pool_kernel_size[1]
        ):
            raise ValueError(
                f"ASPP input of size {tuple(size)} is not a multiple of its image-pooling kernel "
                f"{self.pool_kernel_size}. The kernel is the training crop (INPUT.CROP.SIZE) "
                "divided by the feature stride: feed inputs whose feature size is a multiple of "
                "it, or disable INPUT.CROP to pool globally."
            )
        outputs = [branch(x) for branch in self.convs]
        outputs[-1] = F.interpolate(outputs[-1], size=size, mode="bilinear", align_corners=False)
        out = self.project(torch.cat(outputs, dim=1))
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, training=self.training)
        return out
