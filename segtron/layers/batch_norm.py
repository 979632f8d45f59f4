"""Normalisation layers and ``get_norm``, as in ``detectron2.layers.batch_norm``.

- :class:`FrozenBatchNorm2d`: batch norm with fixed statistics and affine parameters (buffers).
- :class:`NaiveSyncBatchNorm`: batch norm whose batch statistics are averaged over all ranks.
- :class:`CycleBatchNormList`: N batch norms used in turn, one per input domain.
- :class:`LayerNorm`: channels-first layer norm for (N, C, H, W) feature maps.
- :func:`get_norm`: build any of them (or torch's) from a config string.
"""

import logging
from typing import Callable, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .wrappers import BatchNorm2d

__all__ = [
    "CycleBatchNormList",
    "FrozenBatchNorm2d",
    "LayerNorm",
    "NaiveSyncBatchNorm",
    "get_norm",
]

logger = logging.getLogger(__name__)


def _world_size() -> int:
    """Number of processes in the default group (1 when not running distributed)."""
    try:
        from segtron.utils.comm import get_world_size
    except ImportError:  # segtron.utils.comm not available: ask torch.distributed directly
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
        return 1
    return get_world_size()


class _AllReduceSum(torch.autograd.Function):
    """Sum a tensor over all ranks; the gradient is summed over all ranks as well."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM)
        return summed


def _differentiable_all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if _world_size() == 1:
        return tensor
    return _AllReduceSum.apply(tensor)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with frozen statistics and affine parameters.

    ``forward(x (N, C, H, W)) -> (N, C, H, W)`` computes ``x * scale + shift`` with
    ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``.
    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers (not parameters),
    so nothing is trained or updated, in train mode included. A fresh module is the identity
    (``running_var`` starts at ``1 - eps``).

    Checkpoints written before running statistics existed (no state-dict version, or
    version < 2) load with ``running_mean = 0`` and ``running_var = 1`` where missing; those of
    version < 3 stored ``running_var`` already including ``eps``, so ``eps`` is subtracted.
    """

    _version = 3

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def fold_into_conv(
        self, weight: torch.Tensor, bias: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of one conv computing ``self(conv(x, weight, bias))``.

        Takes a conv ``weight`` (C_out, C_in/groups, kh, kw) with C_out equal to this norm's
        channels and its ``bias`` (C_out) or None; returns ``(weight * scale, bias * scale +
        shift)`` per output channel. Saves one pass over the conv output; gradients still reach
        ``weight`` and ``bias`` through the products.
        """
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        folded_weight = weight * scale.reshape(-1, 1, 1, 1).to(weight.dtype)
        folded_bias = shift if bias is None else bias * scale + shift
        return folded_weight, folded_bias.to(weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            # Explicit affine map: cheaper backward than batch_norm, and no grads for buffers.
            scale = self.weight * (self.running_var + self.eps).rsqrt()
            shift = self.bias - self.running_mean * scale
            scale = scale.reshape(1, -1, 1, 1).to(x.dtype)
            shift = shift.reshape(1, -1, 1, 1).to(x.dtype)
            return x * scale + shift
        # Without autograd the fused inference kernel is faster.
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=False, eps=self.eps,
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            # Very old checkpoints have no running statistics: use the identity ones.
            if prefix + "running_mean" not in state_dict:
                state_dict[prefix + "running_mean"] = torch.zeros_like(self.running_mean)
            if prefix + "running_var" not in state_dict:
                state_dict[prefix + "running_var"] = torch.ones_like(self.running_var)
        if version is not None and version < 3:
            logger.info("FrozenBatchNorm %s is upgraded to version 3.", prefix.rstrip("."))
            # Before version 3 the stored running_var was used without adding eps.
            key = prefix + "running_var"
            if key in state_dict:
                state_dict[key] = state_dict[key] - self.eps
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __repr__(self) -> str:
        return f"FrozenBatchNorm2d(num_features={self.num_features}, eps={self.eps})"

    @classmethod
    def convert_frozen_batchnorm(cls, module: nn.Module) -> nn.Module:
        """Replace every ``BatchNorm2d``/``SyncBatchNorm`` in ``module`` by a FrozenBatchNorm2d.

        The statistics, affine parameters and eps are copied. Works recursively on children
        in place; returns the converted module (a new object if ``module`` itself is a batch
        norm, else ``module``).
        """
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, eps=module.eps)
            # Copies keep the source's device and dtype.
            if module.affine:
                frozen.weight = module.weight.detach().clone()
                frozen.bias = module.bias.detach().clone()
            if module.running_mean is not None:
                frozen.running_mean = module.running_mean.detach().clone()
                frozen.running_var = module.running_var.detach().clone()
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert_frozen_batchnorm(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module

    @classmethod
    def convert_frozenbatchnorm2d_to_batchnorm2d(cls, module: nn.Module) -> nn.Module:
        """Inverse of :meth:`convert_frozen_batchnorm`: FrozenBatchNorm2d -> ``nn.BatchNorm2d``.

        The statistics and affine parameters are copied; returns the converted module.
        """
        if isinstance(module, FrozenBatchNorm2d):
            bn = nn.BatchNorm2d(module.num_features, eps=module.eps)
            bn = bn.to(device=module.weight.device, dtype=module.weight.dtype)
            with torch.no_grad():
                bn.weight.copy_(module.weight)
                bn.bias.copy_(module.bias)
                bn.running_mean.copy_(module.running_mean)
                bn.running_var.copy_(module.running_var)
            return bn
        for name, child in module.named_children():
            new_child = cls.convert_frozenbatchnorm2d_to_batchnorm2d(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


class NaiveSyncBatchNorm(BatchNorm2d):
    """``BatchNorm2d`` whose training-time batch statistics are averaged over all ranks.

    Same constructor as ``nn.BatchNorm2d`` plus ``stats_mode``:

    - ``""`` (default): every rank's mean and mean-of-squares get equal weight, so every
      rank must have a non-empty batch of the same size for exact global statistics.
    - ``"N"``: ranks are weighted by their batch size N; ranks may have N = 0 (the running
      statistics are not updated when the total batch is empty).

    ``forward(x (N, C, H, W)) -> (N, C, H, W)``. With one process, or in eval mode, it is
    exactly ``nn.BatchNorm2d``. In distributed training the running variance is updated with
    the biased (population) batch variance. Works with any backend (gloo on CPU included),
    unlike ``torch.nn.SyncBatchNorm``.
    """

    def __init__(self, *args, stats_mode: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        if stats_mode not in ("", "N"):
            raise ValueError(
                f"NaiveSyncBatchNorm: stats_mode must be '' or 'N', got {stats_mode!r}"
            )
        self._stats_mode = stats_mode

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles (inference export): a plain ``nn.BatchNorm2d``
        with this norm's parameters and statistics, which is what it computes in eval mode."""
        reference = self.running_mean if self.running_mean is not None else self.weight
        kwargs = {} if reference is None else {"device": reference.device,
                                                "dtype": reference.dtype}
        plain = nn.BatchNorm2d(self.num_features, self.eps, self.momentum, self.affine,
                               self.track_running_stats, **kwargs)
        plain.load_state_dict(self.state_dict())
        return plain.train(self.training)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        world_size = _world_size()
        if world_size == 1 or not self.training:
            return super().forward(input)

        batch, channels = input.shape[0], input.shape[1]
        half_input = input.dtype == torch.float16
        if half_input:
            input = input.float()  # statistics in fp32: fp16 overflows on mean of squares
        mean = input.mean(dim=[0, 2, 3])
        mean_sq = (input * input).mean(dim=[0, 2, 3])

        if self._stats_mode == "":
            if batch == 0:
                raise ValueError(
                    "NaiveSyncBatchNorm(stats_mode='') got an empty batch; use stats_mode='N' "
                    "(norm name 'naiveSyncBN_N') when some ranks can have no samples."
                )
            stats = torch.cat([mean, mean_sq], dim=0)
            stats = _differentiable_all_reduce_sum(stats) * (1.0 / world_size)
            mean, mean_sq = torch.split(stats, channels)
            momentum = self.momentum
        else:
            if batch == 0:
                # Zero statistics that still depend on the (empty) input, for a gradient path.
                stats = torch.zeros(2 * channels + 1, device=input.device, dtype=mean.dtype)
                stats = stats + input.sum()
            else:
                one = torch.ones(1, device=input.device, dtype=mean.dtype)
                stats = torch.cat([mean, mean_sq, one], dim=0)
            stats = _differentiable_all_reduce_sum(stats * batch)
            total = stats[-1].detach()
            momentum = total.clamp(max=1) * self.momentum  # no running-stat update if total is 0
            mean, mean_sq, _ = torch.split(stats / total.clamp(min=1), channels)

        var = mean_sq - mean * mean
        inv_std = torch.rsqrt(var + self.eps)
        scale = self.weight * inv_std
        shift = self.bias - mean * scale
        with torch.no_grad():
            self.running_mean += momentum * (mean.detach() - self.running_mean)
            self.running_var += momentum * (var.detach() - self.running_var)
        out = input * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        if half_input:
            out = out.half()
        return out


class CycleBatchNormList(nn.ModuleList):
    """``length`` batch norms used in turn: call i uses ``self[i % length]``.

    Keeps separate test-time statistics per input domain (e.g. per feature level) when one
    layer is shared between domains; the caller must call it a multiple of ``length`` times
    per iteration. The inner norms are built as ``bn_class(**kwargs, affine=False)``; when
    ``affine`` (default True) one shared per-channel ``weight``/``bias`` is applied after.

    ``forward(x (N, C, H, W)) -> (N, C, H, W)``.
    """

    def __init__(self, length: int, bn_class: Callable[..., nn.Module] = nn.BatchNorm2d, **kwargs):
        self._affine = kwargs.pop("affine", True)
        super().__init__([bn_class(**kwargs, affine=False) for _ in range(length)])
        if self._affine:
            channels = self[0].num_features
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        self._pos = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self[self._pos](x)
        self._pos = (self._pos + 1) % len(self)
        if self._affine:
            return out * self.weight.reshape(1, -1, 1, 1) + self.bias.reshape(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return f"affine={self._affine}"


class LayerNorm(nn.Module):
    """Channels-first layer norm: normalise (N, C, H, W) over C at every (n, h, w).

    ``y = weight[c] * (x - mean_c) / sqrt(var_c + eps) + bias[c]`` with the biased variance
    over channels (as in ConvNeXt). Parameters ``weight`` and ``bias`` have shape (C,).
    """

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{self.normalized_shape[0]}, eps={self.eps}"


def _group_norm_32(channels: int) -> nn.Module:
    return nn.GroupNorm(32, channels)


def _naive_sync_bn_n(channels: int) -> nn.Module:
    return NaiveSyncBatchNorm(channels, stats_mode="N")


# Config name -> constructor taking the number of channels. "SyncBN" is torch's SyncBatchNorm,
# as in Detectron2 with torch > 1.5; "naiveSyncBN" also works with gloo (CPU).
_NORMS = {
    "BN": BatchNorm2d,
    "SyncBN": nn.SyncBatchNorm,
    "FrozenBN": FrozenBatchNorm2d,
    "GN": _group_norm_32,
    "nnSyncBN": nn.SyncBatchNorm,
    "naiveSyncBN": NaiveSyncBatchNorm,
    "naiveSyncBN_N": _naive_sync_bn_n,
    "LN": LayerNorm,
}


def get_norm(
    norm: Union[str, Callable[[int], nn.Module], None], out_channels: int
) -> Optional[nn.Module]:
    """Build a normalisation layer for ``out_channels`` channels.

    Args:
        norm: ``None`` or ``""`` (no norm: returns None); a name among "BN", "SyncBN",
            "FrozenBN", "GN" (32 groups), "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN";
            or a callable taking the channel count and returning a module.
        out_channels: number of channels C of the (N, C, H, W) input.

    Returns:
        the module, or None.
    """
    if norm is None:
        return None
    if isinstance(norm, str):
        if len(norm) == 0:
            return None
        if norm not in _NORMS:
            raise KeyError(
                f"Unknown norm {norm!r}; valid names are {sorted(_NORMS)} (or '' / None for no "
                "norm, or a callable taking the number of channels)."
            )
        norm = _NORMS[norm]
    if not callable(norm):
        raise TypeError(
            f"get_norm: norm must be a string, a callable or None, got {type(norm).__name__}"
        )
    return norm(out_channels)
