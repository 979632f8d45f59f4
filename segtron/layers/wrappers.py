"""Thin wrappers around torch ops and modules, as in ``detectron2.layers.wrappers``.

They add what Detectron2 code expects on top of torch: ``Conv2d`` with a built-in ``norm`` and
``activation`` (so checkpoints carry ``<conv>.norm.*`` keys), losses that accept empty inputs,
and small helpers used across the model code.
"""

import functools
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .execution import (
    POINTWISE,
    WINOGRAD,
    conv_plan,
    enable_winograd_conv,
    is_channels_last,
)
from .winograd import pointwise_conv_nchw, winograd_conv3x3

__all__ = [
    "BatchNorm2d",
    "is_channels_last",
    "Conv2d",
    "enable_winograd_conv",
    "ConvTranspose2d",
    "Linear",
    "cat",
    "check_if_dynamo_compiling",
    "cross_entropy",
    "disable_torch_compiler",
    "empty_input_loss_func_wrapper",
    "interpolate",
    "move_device_like",
    "nonzero_tuple",
    "shapes_to_tensor",
]

# Plain aliases: these torch modules/functions already handle empty (N=0) batches.
ConvTranspose2d = nn.ConvTranspose2d
BatchNorm2d = nn.BatchNorm2d
Linear = nn.Linear
interpolate = F.interpolate


def check_if_dynamo_compiling() -> bool:
    """Return True while ``torch.compile`` (TorchDynamo) is tracing the caller, else False."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return False


def disable_torch_compiler(func: Callable) -> Callable:
    """Decorator: run ``func`` eagerly even inside a ``torch.compile``-d model.

    Returns ``func`` unchanged when this torch has no ``torch.compiler.disable``.
    """
    compiler = getattr(torch, "compiler", None)
    if compiler is None or not hasattr(compiler, "disable"):
        return func

    @compiler.disable
    @functools.wraps(func)
    def eager_only(*args, **kwargs):
        return func(*args, **kwargs)

    return eager_only


def shapes_to_tensor(x: List[int], device: Optional[torch.device] = None) -> torch.Tensor:
    """Turn a list of sizes (ints, or 0-dim tensors while tracing) into a 1-D int64 tensor.

    While tracing, the sizes are stacked rather than copied so the trace stays dynamic.
    """
    if not torch.jit.is_scripting() and torch.jit.is_tracing():
        if not all(isinstance(t, torch.Tensor) for t in x):
            raise TypeError(
                "shapes_to_tensor: while tracing every size must be a tensor (use tensor.shape "
                f"entries); got types {[type(t).__name__ for t in x]}"
            )
        out = torch.stack(list(x))
        if device is not None and out.device != torch.device(device):
            out = out.to(device=device)
        return out
    return torch.as_tensor(x, device=device)


def cat(tensors: List[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat`` that returns the input itself (no copy) when given a single tensor.

    Args:
        tensors: a list or tuple of tensors with matching shapes except along ``dim``.
        dim: the dimension to concatenate along.
    """
    if not torch.jit.is_scripting() and not isinstance(tensors, (list, tuple)):
        raise TypeError(f"cat() expects a list or tuple of tensors, got {type(tensors).__name__}")
    if len(tensors) == 1:
        return tensors[0]
    return torch.cat(tensors, dim)


def nonzero_tuple(x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Indices of the non-zero elements of ``x``, one int64 tensor per dimension.

    Same as ``x.nonzero(as_tuple=True)``; a 0-dim ``x`` is treated as a 1-element vector.
    """
    if x.dim() == 0:
        x = x.unsqueeze(0)
    return x.nonzero(as_tuple=True)


def move_device_like(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Return ``src`` moved to the device of ``dst`` (no copy if it is already there)."""
    return src.to(dst.device)


def empty_input_loss_func_wrapper(loss_func: Callable) -> Callable:
    """Wrap a ``loss_func(input, target, reduction=...)`` so an empty target gives a 0 loss.

    With ``reduction="mean"`` and ``target.numel() == 0`` the wrapped function returns
    ``input.sum() * 0.0``: a scalar zero that still has a gradient path to ``input`` (torch's
    own losses return NaN there). Every other call goes to ``loss_func`` unchanged.
    """

    @functools.wraps(loss_func)
    def wrapped(input: torch.Tensor, target: torch.Tensor, *, reduction: str = "mean", **kwargs):
        if target.numel() == 0 and reduction == "mean":
            return input.sum() * 0.0
        return loss_func(input, target, reduction=reduction, **kwargs)

    return wrapped


cross_entropy = empty_input_loss_func_wrapper(F.cross_entropy)
cross_entropy.__doc__ = (
    "``F.cross_entropy(input (N, K) logits, target (N,) int64 labels, reduction='mean', ...)``"
    " that returns a 0 with a gradient, instead of NaN, for an empty batch with 'mean'."
)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional normalisation and activation.

    Takes every ``nn.Conv2d`` argument plus two keyword-only extras:

    - ``norm``: a module (e.g. from :func:`get_norm`) or None, applied to the conv output. It is
      a sub-module named ``norm`` so its state-dict keys are ``<conv>.norm.*`` as in Detectron2.
      A norm with a ``fold_into_conv(weight, bias)`` method (``FrozenBatchNorm2d``) may be
      folded into the convolution instead of being applied to its output (the same function up
      to float rounding, one pass less); when is decided by ``layers.execution.conv_plan``.
    - ``activation``: a callable (e.g. ``F.relu``) or None, applied after ``norm``.

    Attribute ``winograd`` (default False; set by :func:`enable_winograd_conv`): on CPU,
    3x3 stride-1 convs with enough channels run NNPACK's Winograd kernels and 1x1 stride-1 convs
    one matrix product, both writing NCHW outputs, in inference and training (the choice is
    ``conv_plan``'s, the kernels are in ``layers/winograd.py``); elsewhere the flag changes
    nothing. A ReLU activation is applied
    in place on the conv's output.

    ``forward(x (N, C_in, H, W)) -> (N, C_out, H', W')``. Empty batches (N=0) work in eval
    and training, forward and backward, except with a ``torch.nn.SyncBatchNorm`` norm in
    training, which cannot synchronise an empty batch and raises ``ValueError``.
    """

    def __init__(self, *args, **kwargs):
        norm = kwargs.pop("norm", None)
        activation = kwargs.pop("activation", None)
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation
        self.winograd = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._forward_eager(x)
        # TorchScript (inference export): convolution, norm, activation, as plain eager
        # inference computes them.
        x = self._conv_forward(x, self.weight, self.bias)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The forward outside TorchScript (folded norms, Winograd kernels, checks)."""
        if x.numel() == 0 and self.training and isinstance(self.norm, nn.SyncBatchNorm):
            raise ValueError(
                "Conv2d: torch.nn.SyncBatchNorm does not support empty inputs in training "
                f"(input shape {tuple(x.shape)}). Use norm='naiveSyncBN_N' (NaiveSyncBatchNorm "
                "with stats_mode='N') for batches that can be empty on some ranks."
            )
        plan = conv_plan(self, x)  # kernel and norm folding: layers/execution.py
        weight, bias = self.weight, self.bias
        if plan.fold_norm:
            # A per-channel affine norm (FrozenBatchNorm2d) folded into the conv's weight and
            # bias: one pass over the output instead of two.
            weight, bias = self.norm.fold_into_conv(weight, bias)
        if plan.kernel == POINTWISE:
            x = pointwise_conv_nchw(x, weight, bias)
        elif plan.kernel == WINOGRAD:
            x = winograd_conv3x3(x, weight, bias, self.padding)
        else:
            x = self._conv_forward(x, weight, bias)
        if self.norm is not None and not plan.fold_norm:
            x = self.norm(x)
        # In-place activation is safe on a fresh conv output that no backward needs: always
        # without autograd, and with it when only the conv (which keeps its input, not its
        # output) produced it.
        inplace = plan.fold_norm or self.norm is None or not torch.is_grad_enabled()
        if self.activation is not None:
            if inplace and _is_relu(self.activation):
                x = x.relu_()  # the conv's own fresh output: no copy of a large map
            else:
                x = self.activation(x)
        return x


def _is_relu(activation: Callable) -> bool:
    return activation in (F.relu, F.relu_, torch.relu, torch.relu_) or (
        type(activation) is nn.ReLU
    )
