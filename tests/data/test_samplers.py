"""Tests for segtron.data.samplers; ranks are simulated by monkeypatching segtron.utils.comm."""

import itertools
from collections import Counter

import pytest
import torch

from segtron.data.samplers import (
    GroupedBatchSampler,
    InferenceSampler,
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from segtron.utils import comm


@pytest.fixture
def as_rank(monkeypatch):
    """Call as_rank(rank, world_size) to make comm report that process position."""

    def set_rank(rank: int, world_size: int):
        monkeypatch.setattr(comm, "get_rank", lambda: rank)
        monkeypatch.setattr(comm, "get_world_size", lambda: world_size)

    return set_rank


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_training_sampler_reproducible_and_shuffled():
    a = _take(TrainingSampler(10, seed=3), 30)
    assert a == _take(TrainingSampler(10, seed=3), 30)
    assert a != _take(TrainingSampler(10, seed=4), 30)
    for epoch in range(3):  # each epoch is a permutation, and epochs differ
        assert sorted(a[epoch * 10 : (epoch + 1) * 10]) == list(range(10))
    assert a[:10] != a[10:20]
    assert _take(TrainingSampler(4, shuffle=False, seed=0), 9) == [0, 1, 2, 3, 0, 1, 2, 3, 0]
    with pytest.raises(ValueError, match="empty"):
        TrainingSampler(0, seed=0)


def test_training_sampler_default_seed_is_shared(monkeypatch):
    monkeypatch.setattr(comm, "shared_random_seed", lambda: 1234)
    assert _take(TrainingSampler(7), 14) == _take(TrainingSampler(7, seed=1234), 14)


def test_training_sampler_ranks_disjoint_and_covering(as_rank):
    size, world, epochs = 12, 3, 2
    full = _take(TrainingSampler(size, seed=7), size * epochs)  # the single-process stream
    per_rank = []
    for rank in range(world):
        as_rank(rank, world)
        per_rank.append(_take(TrainingSampler(size, seed=7), size * epochs // world))
    for rank in range(world):  # rank r takes stream positions r, r + W, ...
        assert per_rank[rank] == full[rank::world]
    for epoch in range(epochs):
        chunk = size // world
        shards = [set(r[epoch * chunk : (epoch + 1) * chunk]) for r in per_rank]
        assert all(not (x & y) for x, y in itertools.combinations(shards, 2))
        assert set().union(*shards) == set(range(size))


@pytest.mark.parametrize("size,world", [(10, 2), (11, 2), (10, 3), (2, 4), (0, 2)])
def test_inference_sampler_covers_every_index_once(as_rank, size, world):
    shards = []
    for rank in range(world):
        as_rank(rank, world)
        sampler = InferenceSampler(size)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    assert sorted(itertools.chain(*shards)) == list(range(size))
    assert list(itertools.chain(*shards)) == list(range(size))  # contiguous, in rank order
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1


def test_repeat_factors_from_category_frequency():
    # 4 images; category 0 in all of them, category 1 in one, category 2 in two.
    dicts = [
        {"annotations": [{"category_id": 0}, {"category_id": 1}]},
        {"annotations": [{"category_id": 0}, {"category_id": 2}, {"category_id": 2}]},
        {"annotations": [{"category_id": 0}, {"category_id": 2}]},
        {"annotations": [{"category_id": 0}]},
        {"annotations": []},
    ]
    # f(0) = 4/5, f(1) = 1/5, f(2) = 2/5; t = 0.8.
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.8)
    assert factors.dtype == torch.float32
    expected = [max(1.0, (0.8 / 0.2) ** 0.5), max(1.0, (0.8 / 0.4) ** 0.5), 2 ** 0.5, 1.0, 1.0]
    torch.testing.assert_close(factors, torch.tensor(expected))
    no_sqrt = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        dicts, 0.8, sqrt=False
    )
    torch.testing.assert_close(no_sqrt, torch.tensor([4.0, 2.0, 2.0, 1.0, 1.0]))
    low = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.1)
    torch.testing.assert_close(low, torch.ones(5))


def test_repeat_factor_sampler_stochastic_rounding():
    factors = torch.tensor([1.0, 2.0, 0.5, 1.25])
    sampler = RepeatFactorTrainingSampler(factors, seed=0)
    epochs = 200
    g = torch.Generator()
    g.manual_seed(0)
    counts = Counter()
    for _ in range(epochs):
        epoch = sampler._get_epoch_indices(g).tolist()
        c = Counter(epoch)
        assert c[0] == 1 and c[1] == 2 and c[2] in (0, 1) and c[3] in (1, 2)
        counts.update(epoch)
    assert abs(counts[2] / epochs - 0.5) < 0.1
    assert abs(counts[3] / epochs - 1.25) < 0.1
    stream = _take(sampler, 50)
    assert stream == _take(RepeatFactorTrainingSampler(factors, seed=0), 50)
    assert set(stream) <= {0, 1, 2, 3}


def test_repeat_factor_sampler_ranks(as_rank):
    factors = torch.tensor([1.0, 3.0, 1.5, 2.0])
    full = _take(RepeatFactorTrainingSampler(factors, seed=5), 40)
    for rank in range(2):
        as_rank(rank, 2)
        assert _take(RepeatFactorTrainingSampler(factors, seed=5), 20) == full[rank::2]


def test_random_subset_training_sampler():
    sampler = RandomSubsetTrainingSampler(20, 0.25, seed_shuffle=1, seed_subset=2)
    stream = _take(sampler, 25)
    subset = set(stream[:5])
    assert len(subset) == 5 and subset <= set(range(20))
    assert set(stream) == subset  # only the subset is ever sampled
    assert stream == _take(RandomSubsetTrainingSampler(20, 0.25, seed_shuffle=1, seed_subset=2), 25)
    with pytest.raises(ValueError):
        RandomSubsetTrainingSampler(20, 1.5, seed_shuffle=1, seed_subset=2)


def test_grouped_batch_sampler():
    group_ids = [0, 1, 0, 1, 1, 0, 0]
    sampler = torch.utils.data.SequentialSampler(range(7))
    batches = list(iter(GroupedBatchSampler(sampler, group_ids, 2)))  # len() is undefined
    assert batches == [[0, 2], [1, 3], [5, 6]]
