"""subsample_labels: counts, what is never sampled, and reproducibility."""

import torch

from segtron.modeling.sampling import subsample_labels


def _labels(num_pos, num_neg, num_ignore, bg_label=0, num_classes=3):
    pos = torch.randint(1, num_classes + 1, (num_pos,))
    if bg_label != 0:
        pos = pos - 1  # classes 0..num_classes-1, background num_classes
    parts = [pos, torch.full((num_neg,), bg_label), torch.full((num_ignore,), -1)]
    return torch.cat(parts)[torch.randperm(num_pos + num_neg + num_ignore)]


def _check(labels, pos_idx, neg_idx, bg_label):
    assert pos_idx.dtype == torch.int64 and neg_idx.dtype == torch.int64
    both = torch.cat([pos_idx, neg_idx])
    assert len(set(both.tolist())) == len(both)  # no duplicates, no overlap
    assert bool((labels[pos_idx] != -1).all() and (labels[pos_idx] != bg_label).all())
    assert bool((labels[neg_idx] == bg_label).all())


def test_counts_with_enough_of_both():
    labels = _labels(100, 300, 50)
    pos, neg = subsample_labels(labels, 64, 0.25, 0)
    assert (len(pos), len(neg)) == (16, 48)
    _check(labels, pos, neg, 0)


def test_few_positives_fill_with_negatives():
    labels = _labels(5, 300, 50)
    pos, neg = subsample_labels(labels, 64, 0.5, 0)
    assert (len(pos), len(neg)) == (5, 59)
    assert sorted(pos.tolist()) == torch.nonzero(labels > 0).flatten().tolist()
    _check(labels, pos, neg, 0)


def test_few_negatives_and_never_ignored():
    labels = _labels(100, 10, 500)
    pos, neg = subsample_labels(labels, 256, 0.25, 0)
    assert (len(pos), len(neg)) == (64, 10)  # positives stay capped at the fraction
    _check(labels, pos, neg, 0)
    only_ignored = torch.full((20,), -1)
    pos, neg = subsample_labels(only_ignored, 8, 0.5, 0)
    assert len(pos) == 0 and len(neg) == 0


def test_background_label_is_num_classes():
    labels = _labels(40, 40, 10, bg_label=80, num_classes=80)
    labels = torch.cat([labels, torch.tensor([0])])  # class 0 is a positive when bg is 80
    pos, neg = subsample_labels(labels, 512, 0.25, 80)
    assert (len(pos), len(neg)) == (41, 40)
    _check(labels, pos, neg, 80)


def test_reproducible_under_seed_and_rng_order():
    labels = _labels(100, 300, 50)
    torch.manual_seed(123)
    first = subsample_labels(labels, 64, 0.25, 0)
    torch.manual_seed(123)
    second = subsample_labels(labels, 64, 0.25, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    torch.manual_seed(124)
    third = subsample_labels(labels, 64, 0.25, 0)
    assert not torch.equal(first[1], third[1])
    # Detectron2's documented RNG use: one randperm over the positives, then one over the
    # negatives, from the global generator, each truncated.
    positives = torch.nonzero((labels != -1) & (labels != 0)).flatten()
    negatives = torch.nonzero(labels == 0).flatten()
    torch.manual_seed(123)
    expected_pos = positives[torch.randperm(len(positives))[:16]]
    expected_neg = negatives[torch.randperm(len(negatives))[:48]]
    assert torch.equal(first[0], expected_pos) and torch.equal(first[1], expected_neg)
