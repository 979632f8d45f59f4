"""Matcher against torchvision's Matcher and a brute-force loop.

Label conventions: torchvision's ``Matcher(high, low)`` returns one tensor, the matched index,
with -1 (BELOW_LOW_THRESHOLD) and -2 (BETWEEN_THRESHOLDS). Ours returns (matches, labels) with
Detectron2's labels; for thresholds [low, high] and labels [0, -1, 1]: torchvision -1 <-> label
0, -2 <-> label -1, an index >= 0 <-> label 1 with that index.
"""

import pytest
import torch
from torchvision.models.detection._utils import Matcher as TVMatcher
from torchvision.ops import box_iou

from segtron.modeling.matcher import Matcher


def _random_boxes(n):
    xy = torch.rand(n, 2) * 100
    wh = 5 + torch.rand(n, 2) * 60
    return torch.cat([xy, xy + wh], dim=1)


def _to_torchvision_convention(matches, labels):
    out = matches.clone()
    out[labels == 0] = TVMatcher.BELOW_LOW_THRESHOLD
    out[labels == -1] = TVMatcher.BETWEEN_THRESHOLDS
    return out


@pytest.mark.parametrize("low_quality", [False, True])
@pytest.mark.parametrize("quantised", [False, True])
def test_matches_torchvision(low_quality, quantised):
    for trial in range(5):
        iou = box_iou(_random_boxes(4 + trial), _random_boxes(300))
        if quantised:  # many ties, including ties of a gt's best value
            iou = (iou * 10).floor() / 10
        ours = Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=low_quality)
        matches, labels = ours(iou)
        assert matches.dtype == torch.int64 and labels.dtype == torch.int8
        tv = TVMatcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou)
        assert torch.equal(_to_torchvision_convention(matches, labels), tv)


def _brute_force(quality, thresholds, labels, low_quality):
    """Detectron2's rule, one prediction at a time."""
    m, n = len(quality), len(quality[0])
    bounds = [float("-inf")] + thresholds + [float("inf")]
    out_matches, out_labels = [], []
    for j in range(n):
        column = [quality[i][j] for i in range(m)]
        best = max(column)
        out_matches.append(column.index(best))
        for k, label in enumerate(labels):
            if bounds[k] <= best < bounds[k + 1]:
                out_labels.append(label)
    if low_quality:
        for i in range(m):
            best_for_gt = max(quality[i])
            for j in range(n):
                if quality[i][j] == best_for_gt:
                    out_labels[j] = 1
    return out_matches, out_labels


def test_low_quality_ties_brute_force():
    quality = [
        [0.1, 0.2, 0.2, 0.0, 0.8, 0.5],  # gt 0: best 0.8 (pred 4; already positive)
        [0.1, 0.25, 0.0, 0.25, 0.1, 0.4],  # gt 1: best 0.4, pred 5 only
        [0.05, 0.0, 0.05, 0.05, 0.0, 0.0],  # gt 2: best 0.05, a three-way tie
    ]
    t = torch.tensor(quality)
    for low_quality in (False, True):
        matches, labels = Matcher([0.3, 0.7], [0, -1, 1], low_quality)(t)
        exp_matches, exp_labels = _brute_force(quality, [0.3, 0.7], [0, -1, 1], low_quality)
        assert matches.tolist() == exp_matches
        assert labels.tolist() == exp_labels
    assert labels.tolist() == [1, 0, 1, 1, 1, 1]


def test_random_against_brute_force_with_three_intervals():
    q = (torch.rand(5, 40) * 8).floor() / 8
    thresholds, lbls = [0.25, 0.5, 0.75], [0, -1, 1, 1]
    for low_quality in (False, True):
        matches, labels = Matcher(thresholds, lbls, low_quality)(q)
        exp_matches, exp_labels = _brute_force(q.tolist(), thresholds, lbls, low_quality)
        assert labels.tolist() == exp_labels
        best = q.max(dim=0).values
        assert torch.equal(q[matches, torch.arange(40)], best)  # an argmax (ties: any)
        assert matches.tolist() == exp_matches


def test_interval_bounds_are_closed_below():
    q = torch.tensor([[0.39, 0.4, 0.49, 0.5, 1.0]])
    _, labels = Matcher([0.4, 0.5], [0, -1, 1])(q)
    assert labels.tolist() == [0, -1, -1, 1, 1]


def test_empty_inputs():
    matches, labels = Matcher([0.5], [0, 1])(torch.zeros(0, 6))
    assert matches.tolist() == [0] * 6 and labels.tolist() == [0] * 6
    assert matches.dtype == torch.int64 and labels.dtype == torch.int8
    _, labels = Matcher([0.3, 0.7], [-1, -1, 1], True)(torch.zeros(0, 3))
    assert labels.tolist() == [-1, -1, -1]  # labels[0] when there is no ground truth
    matches, labels = Matcher([0.5], [0, 1], True)(torch.zeros(3, 0))
    assert matches.shape == (0,) and labels.shape == (0,)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="labels are needed"):
        Matcher([0.3, 0.7], [0, 1])
    with pytest.raises(ValueError, match="non-decreasing"):
        Matcher([0.7, 0.3], [0, -1, 1])
    with pytest.raises(ValueError, match="above 0"):
        Matcher([0.0, 0.5], [0, -1, 1])
    with pytest.raises(ValueError, match="-1, 0 or 1"):
        Matcher([0.5], [0, 2])
    with pytest.raises(ValueError, match=r"\(M ground truth, N predictions\)"):
        Matcher([0.5], [0, 1])(torch.zeros(3))
