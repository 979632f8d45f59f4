"""``L2Norm``: SSD's rescaled L2 normalisation of conv4_3 (Liu et al., Sec. 3.1, after ParseNet)."""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["L2Norm"]


class L2Norm(nn.Module):
    """Normalise every pixel's feature vector to unit L2 norm across channels, then multiply
    channel c by a learnable ``weight[c]``.

    conv4_3's activations are much larger than those of the coarser maps; normalising them and
    learning the scale keeps the head's inputs of comparable magnitude.

    Args:
        channels: C, the number of channels (and of scale values).
        init_scale: initial value of every scale (20 in SSD).
        eps: the norm is taken as at least ``eps`` (an all-zero vector stays zero).

    ``forward(x (N, C, H, W)) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, init_scale: float = 20.0, eps: float = 1e-12):
        super().__init__()
        if channels < 1:
            raise ValueError(f"L2Norm: channels must be >= 1, got {channels}.")
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.full((int(channels),), float(init_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.weight.numel():
            raise ValueError(
                f"L2Norm expects (N, {self.weight.numel()}, H, W) features, got "
                f"{tuple(x.shape)}."
            )
        return F.normalize(x, p=2.0, dim=1, eps=self.eps) * self.weight.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.weight.numel()}, eps={self.eps}"
