"""Blocks of the RegNet / AnyNet backbones (pycls design), with Detectron2's submodule names.

Stems (:class:`SimpleStem`, :class:`ResStem`), residual blocks (:class:`ResBottleneckBlock`,
:class:`ResBasicBlock`), :class:`VanillaBlock`, their residual branches and the
squeeze-and-excitation module :class:`SE`, plus :class:`AnyStage` (a run of blocks ``b1``,
``b2``, ...). Every block takes ``(w_in, w_out, stride, norm, activation_class, params)``.
Re-exported by ``regnet.py``, Detectron2's path for them.
"""

import math
from typing import Callable

import torch
from torch import nn

from ...layers import CNNBlockBase, get_norm

__all__ = [
    "ResStem",
    "SimpleStem",
    "SE",
    "VanillaBlock",
    "BasicTransform",
    "ResBasicBlock",
    "BottleneckTransform",
    "ResBottleneckBlock",
    "AnyStage",
    "conv2d",
    "init_weights",
]


def conv2d(w_in: int, w_out: int, k: int, *, stride: int = 1, groups: int = 1,
           bias: bool = False) -> nn.Conv2d:
    """A k x k ``nn.Conv2d`` (k odd) with "same" padding, w_in -> w_out channels."""
    if k % 2 != 1:
        raise ValueError(f"regnet.conv2d: kernel size must be odd (got {k}) so that padding "
                         "(k - 1) // 2 keeps the output aligned; use an odd kernel.")
    return nn.Conv2d(w_in, w_out, k, stride=stride, padding=(k - 1) // 2, groups=groups,
                     bias=bias)


def _norm(norm, channels: int) -> nn.Module:
    """``get_norm(norm, channels)``, or ``nn.Identity`` when ``norm`` is "" or None."""
    layer = get_norm(norm, channels)
    return nn.Identity() if layer is None else layer


def init_weights(m: nn.Module) -> None:
    """pycls' ResNet-style init: conv ~ N(0, sqrt(2 / fan_out)), BN = identity, linear ~ N(0,
    0.01) with zero bias. Meant for ``module.apply``."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
        nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, mean=0.0, std=0.01)
        nn.init.zeros_(m.bias)


class ResStem(CNNBlockBase):
    """ResNet stem: 7x7 stride-2 conv, norm, activation, 3x3 stride-2 max-pool (stride 4).

    Args: ``w_in``/``w_out`` channels, ``norm`` (see :func:`get_norm`), ``activation_class``
    (a no-argument callable returning an activation module). Submodules ``conv``, ``bn``,
    ``af``, ``pool``. ``forward((N, w_in, H, W)) -> (N, w_out, H / 4, W / 4)``.
    """

    def __init__(self, w_in: int, w_out: int, norm, activation_class: Callable[[], nn.Module]):
        super().__init__(w_in, w_out, 4)
        self.conv = conv2d(w_in, w_out, 7, stride=2)
        self.bn = _norm(norm, w_out)
        self.af = activation_class()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.af(self.bn(self.conv(x))))


class SimpleStem(CNNBlockBase):
    """RegNet stem: 3x3 stride-2 conv, norm, activation (stride 2).

    Args: as :class:`ResStem`. Submodules ``conv``, ``bn``, ``af``.
    ``forward((N, w_in, H, W)) -> (N, w_out, H / 2, W / 2)``.
    """

    def __init__(self, w_in: int, w_out: int, norm, activation_class: Callable[[], nn.Module]):
        super().__init__(w_in, w_out, 2)
        self.conv = conv2d(w_in, w_out, 3, stride=2)
        self.bn = _norm(norm, w_out)
        self.af = activation_class()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.af(self.bn(self.conv(x)))


class SE(nn.Module):
    """Squeeze-and-excitation: global average pool, 1x1 conv (w_in -> w_se), activation, 1x1
    conv (w_se -> w_in), sigmoid; the result rescales the input channel-wise.

    Submodules ``avg_pool`` and ``f_ex`` (a Sequential: 0 and 2 are the convs, with bias).
    """

    def __init__(self, w_in: int, w_se: int, activation_class: Callable[[], nn.Module]):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.f_ex = nn.Sequential(
            conv2d(w_in, w_se, 1, bias=True),
            activation_class(),
            conv2d(w_se, w_in, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.f_ex(self.avg_pool(x))


class VanillaBlock(CNNBlockBase):
    """Two [3x3 conv, norm, activation] layers, no shortcut; the first conv has the stride.

    Args: ``w_in``, ``w_out``, ``stride``, ``norm``, ``activation_class`` and an unused dict of
    block parameters (the common block signature, see :class:`AnyNet`). Submodules ``a``,
    ``a_bn``, ``a_af``, ``b``, ``b_bn``, ``b_af``.
    """

    def __init__(self, w_in, w_out, stride, norm, activation_class, _params=None):
        super().__init__(w_in, w_out, stride)
        self.a = conv2d(w_in, w_out, 3, stride=stride)
        self.a_bn = _norm(norm, w_out)
        self.a_af = activation_class()
        self.b = conv2d(w_out, w_out, 3)
        self.b_bn = _norm(norm, w_out)
        self.b_af = activation_class()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_af(self.a_bn(self.a(x)))
        return self.b_af(self.b_bn(self.b(x)))


class BasicTransform(nn.Module):
    """Residual branch of :class:`ResBasicBlock`: 3x3 conv, norm, activation, 3x3 conv, norm.

    Submodules ``a``, ``a_bn``, ``a_af``, ``b``, ``b_bn``; the first conv has the stride.
    """

    def __init__(self, w_in, w_out, stride, norm, activation_class, _params=None):
        super().__init__()
        self.a = conv2d(w_in, w_out, 3, stride=stride)
        self.a_bn = _norm(norm, w_out)
        self.a_af = activation_class()
        self.b = conv2d(w_out, w_out, 3)
        self.b_bn = _norm(norm, w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b_bn(self.b(self.a_af(self.a_bn(self.a(x)))))


class BottleneckTransform(nn.Module):
    """Residual branch of :class:`ResBottleneckBlock`: 1x1, grouped 3x3 [+ SE], 1x1.

    ``params`` holds ``bot_mul`` (bottleneck width = round(w_out * bot_mul)), ``group_w``
    (channels per group of the 3x3 conv) and ``se_r`` (SE width = round(w_in * se_r); 0 = no
    SE). Submodules ``a``, ``a_bn``, ``a_af``, ``b``, ``b_bn``, ``b_af``, ``se`` (or None),
    ``c``, ``c_bn``; the 3x3 conv has the stride.
    """

    def __init__(self, w_in, w_out, stride, norm, activation_class, params):
        super().__init__()
        w_b = int(round(w_out * params["bot_mul"]))
        w_se = int(round(w_in * params["se_r"]))
        groups = w_b // params["group_w"]
        self.a = conv2d(w_in, w_b, 1)
        self.a_bn = _norm(norm, w_b)
        self.a_af = activation_class()
        self.b = conv2d(w_b, w_b, 3, stride=stride, groups=groups)
        self.b_bn = _norm(norm, w_b)
        self.b_af = activation_class()
        self.se = SE(w_b, w_se, activation_class) if w_se else None
        self.c = conv2d(w_b, w_out, 1)
        self.c_bn = _norm(norm, w_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a_af(self.a_bn(self.a(x)))
        x = self.b_af(self.b_bn(self.b(x)))
        if self.se is not None:
            x = self.se(x)
        return self.c_bn(self.c(x))


class _ResidualBlock(CNNBlockBase):
    """``af(shortcut(x) + f(x))``; the shortcut is a 1x1 strided conv + norm (``proj``,
    ``bn``) when the shape changes, else the identity (``proj`` and ``bn`` are None)."""

    transform_class: type = nn.Module

    def __init__(self, w_in, w_out, stride, norm, activation_class, params):
        super().__init__(w_in, w_out, stride)
        self.proj, self.bn = None, None
        if w_in != w_out or stride != 1:
            self.proj = conv2d(w_in, w_out, 1, stride=stride)
            self.bn = _norm(norm, w_out)
        self.f = self.transform_class(w_in, w_out, stride, norm, activation_class, params)
        self.af = activation_class()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.bn(self.proj(x)) if self.proj is not None else x
        return self.af(shortcut + self.f(x))


class ResBasicBlock(_ResidualBlock):
    """Residual basic block, ``af(shortcut(x) + f(x))`` with f a :class:`BasicTransform`.

    Args: ``w_in``, ``w_out``, ``stride``, ``norm``, ``activation_class``, ``params`` (unused).
    """

    transform_class = BasicTransform


class ResBottleneckBlock(_ResidualBlock):
    """Residual bottleneck block (the RegNet block), ``af(shortcut(x) + f(x))`` with f a
    :class:`BottleneckTransform`.

    Args: ``w_in``, ``w_out``, ``stride``, ``norm``, ``activation_class``, ``params`` (dict with
    ``bot_mul``, ``group_w``, ``se_r``).
    """

    transform_class = BottleneckTransform


class AnyStage(nn.Module):
    """``d`` blocks named ``b1`` ... ``bd``; only the first changes width (w_in -> w_out) and
    applies the stride."""

    def __init__(self, w_in, w_out, stride, d, block_class, norm, activation_class, params):
        super().__init__()
        for i in range(d):
            self.add_module(f"b{i + 1}",
                            block_class(w_in, w_out, stride, norm, activation_class, params))
            stride, w_in = 1, w_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.children():
            x = block(x)
        return x
