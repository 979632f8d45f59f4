"""SSD's training objective (Liu et al., Eq. 1-3 and "Hard negative mining"):
:func:`hard_negative_mask` and :func:`ssd_losses`."""

from typing import Dict

import torch
from torch.nn import functional as F

from segtron.layers import smooth_l1_loss

__all__ = ["hard_negative_mask", "ssd_losses"]


def hard_negative_mask(
    background_loss: torch.Tensor, positive: torch.Tensor, neg_pos_ratio: float
) -> torch.Tensor:
    """The negatives kept by hard negative mining, per image.

    In each image, the priors that are not positive are ranked by their classification loss
    (for the background class), highest first, and those ranked below ``neg_pos_ratio * P``
    are kept, P being the image's number of positives (so ``ceil(ratio * P)`` of them, or all
    negatives when there are fewer; none in an image without positives). Equal losses are
    ranked in an unspecified order.

    Args:
        background_loss: (N, R) loss of each prior (only non-positive entries are read).
        positive: (N, R) bool, the positive priors.
        neg_pos_ratio: negatives per positive (MODEL.SSD.NEG_POS_RATIO).

    Returns:
        (N, R) bool mask of the kept negatives (never overlapping ``positive``).
    """
    if background_loss.shape != positive.shape or background_loss.dim() != 2:
        raise ValueError(
            "hard_negative_mask: background_loss and positive must both be (N, R); got "
            f"{tuple(background_loss.shape)} and {tuple(positive.shape)}."
        )
    num_images, num_priors = positive.shape
    ranked = background_loss.detach().masked_fill(positive, float("-inf"))
    order = ranked.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(num_priors, device=order.device).expand(num_images, -1)
    )
    quota = neg_pos_ratio * positive.sum(dim=1, keepdim=True)
    return (rank < quota) & ~positive


def ssd_losses(
    pred_logits: torch.Tensor,
    pred_deltas: torch.Tensor,
    gt_labels: torch.Tensor,
    target_deltas: torch.Tensor,
    neg_pos_ratio: float = 3.0,
    smooth_l1_beta: float = 1.0,
) -> Dict[str, torch.Tensor]:
    """SSD's two losses, both divided by the number of positives in the batch (at least 1).

    Args:
        pred_logits: (N, R, K + 1) class logits of every prior; column 0 is background.
        pred_deltas: (N, R, 4) predicted box deltas.
        gt_labels: (N, R) int64 targets: 0 for background, c + 1 for object class c.
        target_deltas: (N, R, 4) deltas of each prior's matched box (read on positives only).
        neg_pos_ratio: hard negative mining's negatives per positive.
        smooth_l1_beta: beta of the smooth-L1 box loss.

    Returns:
        {"loss_cls": softmax cross-entropy summed over the positives and the negatives kept by
        :func:`hard_negative_mask`, "loss_box_reg": smooth-L1 summed over the 4 deltas of every
        positive}.
    """
    num_images, num_priors, num_scores = pred_logits.shape
    if gt_labels.shape != (num_images, num_priors) or pred_deltas.shape != target_deltas.shape:
        raise ValueError(
            f"ssd_losses: got logits {tuple(pred_logits.shape)}, labels "
            f"{tuple(gt_labels.shape)}, deltas {tuple(pred_deltas.shape)} and targets "
            f"{tuple(target_deltas.shape)}; expected (N, R, K + 1), (N, R), (N, R, 4), (N, R, 4)."
        )
    per_prior = F.cross_entropy(
        pred_logits.reshape(-1, num_scores), gt_labels.reshape(-1), reduction="none"
    ).view(num_images, num_priors)
    positive = gt_labels > 0
    negative = hard_negative_mask(per_prior, positive, neg_pos_ratio)
    normalizer = max(int(positive.sum().item()), 1)
    loss_cls = per_prior[positive | negative].sum()
    loss_box_reg = smooth_l1_loss(
        pred_deltas[positive], target_deltas[positive], beta=smooth_l1_beta, reduction="sum"
    )
    return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}
