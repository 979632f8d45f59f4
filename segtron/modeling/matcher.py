"""Matching predictions to ground truth by a quality matrix (Detectron2 path:
``detectron2.modeling.matcher``)."""

from typing import List, Sequence, Tuple

import torch

__all__ = ["Matcher"]


class Matcher:
    """Assign each prediction (anchor, proposal) to its best ground-truth element and label it
    by how good that best match is.

    With thresholds ``[t1, ..., tk]`` (extended to ``[-inf, t1, ..., tk, +inf]``) and labels
    ``[l0, ..., lk]``, a prediction whose best quality ``q`` satisfies ``t_i <= q < t_{i+1}`` gets
    label ``l_i``. Labels are 1 (positive), 0 (negative) or -1 (ignore). E.g. RPN uses
    thresholds [0.3, 0.7] and labels [0, -1, 1]; the ROI heads [0.5] and [0, 1].

    With ``allow_low_quality_matches`` every ground-truth element also claims the predictions
    whose quality with it equals its highest quality (ties included): their label becomes 1
    while their match index stays the argmax over ground truth. As in Detectron2 this includes
    a ground-truth element whose best quality is 0 (every prediction with quality 0 with it).
    """

    def __init__(
        self,
        thresholds: Sequence[float],
        labels: Sequence[int],
        allow_low_quality_matches: bool = False,
    ):
        """Args:
            thresholds: increasing quality thresholds, all > 0 (e.g. IoU values).
            labels: one label in {-1, 0, 1} per interval, i.e. ``len(thresholds) + 1`` labels.
            allow_low_quality_matches: label each ground truth's best predictions as positive
                even when below the top threshold (Faster R-CNN RPN).
        """
        thresholds = [float(t) for t in thresholds]
        if len(thresholds) == 0 or thresholds[0] <= 0:
            raise ValueError(
                f"Matcher: thresholds must be a non-empty list starting above 0, got {thresholds}."
            )
        if any(lo > hi for lo, hi in zip(thresholds[:-1], thresholds[1:])):
            raise ValueError(f"Matcher: thresholds must be non-decreasing, got {thresholds}.")
        labels = [int(label) for label in labels]
        if any(label not in (-1, 0, 1) for label in labels):
            raise ValueError(f"Matcher: labels must each be -1, 0 or 1, got {labels}.")
        if len(labels) != len(thresholds) + 1:
            raise ValueError(
                f"Matcher: {len(thresholds)} thresholds make {len(thresholds) + 1} intervals, so "
                f"{len(thresholds) + 1} labels are needed; got {len(labels)} ({labels})."
            )
        self.thresholds: List[float] = [float("-inf")] + thresholds + [float("inf")]
        self.labels: List[int] = labels
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, match_quality_matrix: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Args:
            match_quality_matrix: (M, N) quality (e.g. IoU, >= 0) of M ground-truth elements
                against N predictions.

        Returns:
            matches: (N,) int64, index in [0, M) of each prediction's best ground truth (the
                first one on ties, as ``torch.max``); 0 when M == 0.
            match_labels: (N,) int8 labels as above; all ``labels[0]`` when M == 0 (no ground
                truth counts as quality 0, usually background).
        """
        if match_quality_matrix.dim() != 2:
            raise ValueError(
                "Matcher: match_quality_matrix must be (M ground truth, N predictions), got shape "
                f"{tuple(match_quality_matrix.shape)}."
            )
        num_preds = match_quality_matrix.shape[1]
        if match_quality_matrix.numel() == 0:
            matches = match_quality_matrix.new_zeros((num_preds,), dtype=torch.int64)
            match_labels = match_quality_matrix.new_full(
                (num_preds,), self.labels[0], dtype=torch.int8
            )
            return matches, match_labels

        best_quality, matches = match_quality_matrix.max(dim=0)
        match_labels = torch.ones_like(matches, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            in_interval = (best_quality >= low) & (best_quality < high)
            match_labels.masked_fill_(in_interval, label)

        if self.allow_low_quality_matches:
            self.set_low_quality_matches_(match_labels, match_quality_matrix)
        return matches, match_labels

    def set_low_quality_matches_(
        self, match_labels: torch.Tensor, match_quality_matrix: torch.Tensor
    ) -> None:
        """Set, in place, the label of every prediction that is some ground truth's best match
        (ties included) to 1. ``match_labels`` (N,), ``match_quality_matrix`` (M, N), M > 0."""
        best_per_gt = match_quality_matrix.max(dim=1).values  # (M,)
        is_best = (match_quality_matrix == best_per_gt[:, None]).any(dim=0)  # (N,)
        match_labels.masked_fill_(is_best, 1)
