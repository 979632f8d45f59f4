"""SSD's matching of default boxes to ground truth (Liu et al., Sec. 2.2, "Matching strategy"):
:func:`match_priors`."""

import torch

__all__ = ["match_priors"]


def match_priors(iou: torch.Tensor, threshold: float) -> torch.Tensor:
    """Assign each default box (prior) to at most one ground-truth box.

    Two rules, the second overriding the first:

    1. a prior takes the ground truth it overlaps most when that IoU is >= ``threshold``;
    2. every ground truth takes its best-overlapping prior (the first one on a tie), whatever
       the IoU, so each ground truth has at least one positive. When several ground truths
       share the same best prior, the one listed last gets it.

    Args:
        iou: (M, R) IoU of M ground-truth boxes with R priors.
        threshold: the IoU a prior needs under rule 1 (MODEL.SSD.IOU_THRESHOLD).

    Returns:
        int64 tensor (R,): the matched ground-truth index, or -1 (background). All -1 when
        M == 0.
    """
    if iou.dim() != 2:
        raise ValueError(f"match_priors expects an (M, R) IoU matrix, got {tuple(iou.shape)}.")
    num_gt, num_priors = iou.shape
    if num_gt == 0:
        return torch.full((num_priors,), -1, dtype=torch.int64, device=iou.device)
    if num_priors == 0:
        return torch.empty((0,), dtype=torch.int64, device=iou.device)
    best_iou, best_gt = iou.max(dim=0)
    matches = torch.where(best_iou >= threshold, best_gt, torch.full_like(best_gt, -1))
    best_prior = iou.argmax(dim=1)  # (M,)
    # Rule 2: the highest ground-truth index claiming a prior owns it (a deterministic
    # "last one wins"); -1 where nobody claims it.
    owner = torch.full_like(matches, -1).scatter_reduce(
        0, best_prior, torch.arange(num_gt, device=iou.device), reduce="amax"
    )
    return torch.where(owner >= 0, owner, matches)
