"""DeepLabCE: cross-entropy over the hardest pixels (DeepLab's "hard pixel mining")."""

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DeepLabCE"]


class DeepLabCE(nn.Module):
    """Per-pixel cross-entropy averaged over the ``top_k_percent_pixels`` largest losses.

    Args:
        ignore_label: label whose pixels have zero loss (they still count in the pixel total,
            as in DeepLab).
        top_k_percent_pixels: fraction in (0, 1] of all pixels kept: ``k = int(fraction *
            pixels)`` (at least 1). 1.0 is the plain mean over all pixels (ignored ones count as
            0).
        weight: optional per-class weights (C,) of the cross-entropy.

    ``forward(logits (N, C, H, W), labels (N, H, W) int64) -> scalar``.
    """

    def __init__(
        self,
        ignore_label: int = -1,
        top_k_percent_pixels: float = 1.0,
        weight: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        if not 0.0 < top_k_percent_pixels <= 1.0:
            raise ValueError(
                f"DeepLabCE top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}."
            )
        self.ignore_label = ignore_label
        self.top_k_percent_pixels = top_k_percent_pixels
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss (scalar) of ``logits`` (N, C, H, W) against ``labels`` (N, H, W)."""
        losses = F.cross_entropy(
            logits, labels, weight=self.weight, ignore_index=self.ignore_label, reduction="none"
        ).reshape(-1)
        if self.top_k_percent_pixels == 1.0:
            return losses.mean()
        k = max(1, int(self.top_k_percent_pixels * losses.numel()))
        return losses.topk(k).values.mean()
