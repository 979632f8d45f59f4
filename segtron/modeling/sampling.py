"""Sampling a fixed-size, class-balanced subset of labelled predictions (Detectron2 path:
``detectron2.modeling.sampling``)."""

from typing import Tuple

import torch

from ..layers import nonzero_tuple

__all__ = ["subsample_labels"]


def subsample_labels(
    labels: torch.Tensor, num_samples: int, positive_fraction: float, bg_label: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Randomly choose up to ``num_samples`` predictions, at most a ``positive_fraction`` of
    them positive, filling the rest with negatives.

    Args:
        labels: (N,) integer labels: -1 means ignore (never sampled), ``bg_label`` means
            negative, any other value positive.
        num_samples: total number of samples wanted (e.g. 256 anchors, 512 proposals).
        positive_fraction: fraction of ``num_samples`` that may be positive
            (``int(num_samples * positive_fraction)``); fewer positives leave room for more
            negatives.
        bg_label: the label of negatives (0 for RPN, the number of classes for ROI heads).

    Returns:
        pos_idx, neg_idx: 1-D int64 indices into ``labels`` of the sampled positives and
        negatives, each in random order. Uses ``torch.randperm`` on ``labels``' device with the
        global generator (positives first, then negatives), so ``torch.manual_seed`` makes it
        reproducible.
    """
    positive = nonzero_tuple((labels != -1) & (labels != bg_label))[0]
    negative = nonzero_tuple(labels == bg_label)[0]

    num_pos = min(positive.numel(), int(num_samples * positive_fraction))
    num_neg = min(negative.numel(), num_samples - num_pos)

    pos_perm = torch.randperm(positive.numel(), device=positive.device)[:num_pos]
    neg_perm = torch.randperm(negative.numel(), device=negative.device)[:num_neg]
    return positive[pos_perm], negative[neg_perm]
