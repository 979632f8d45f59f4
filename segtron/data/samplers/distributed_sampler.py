"""Samplers that shard indices across distributed processes (``detectron2.data.samplers``).

Training samplers are infinite streams of indices: every rank computes the same stream from a
seed shared by all ranks (``comm.shared_random_seed()``) and keeps positions
``rank, rank + world_size, ...`` of it, so the ranks together walk the stream once, without
overlap. ``InferenceSampler`` is finite: each rank gets one contiguous slice.
"""

import itertools
import logging
import math
import operator
from collections import defaultdict
from typing import Dict, Iterator, List, Optional

import torch
from torch.utils.data.sampler import Sampler

from segtron.utils import comm

__all__ = [
    "TrainingSampler",
    "RandomSubsetTrainingSampler",
    "RepeatFactorTrainingSampler",
    "InferenceSampler",
]

logger = logging.getLogger(__name__)


def _resolve_seed(seed: Optional[int]) -> int:
    return int(comm.shared_random_seed() if seed is None else seed)


class TrainingSampler(Sampler):
    """Infinite stream of indices in ``[0, size)`` for training, sharded across ranks.

    The full stream is the concatenation of epochs: random permutations of ``range(size)``
    (or ``range(size)`` itself without shuffling) drawn from one generator seeded with ``seed``.
    Rank ``r`` of ``W`` yields stream positions ``r, r + W, r + 2W, ...``.

    Args:
        size: dataset length (> 0).
        shuffle: shuffle each epoch.
        seed: seed of the shuffle; must be the same on all ranks. None takes
            ``comm.shared_random_seed()`` (a seed agreed by all ranks).
    """

    def __init__(self, size: int, shuffle: bool = True, seed: Optional[int] = None):
        size = operator.index(size)  # any integer type; TypeError otherwise
        if size <= 0:
            raise ValueError(
                f"TrainingSampler needs a positive dataset size, got {size}; is the training "
                "dataset empty?"
            )
        self._size = size
        self._shuffle = shuffle
        self._seed = _resolve_seed(seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                yield from torch.randperm(self._size, generator=g).tolist()
            else:
                yield from range(self._size)


class RandomSubsetTrainingSampler(TrainingSampler):
    """``TrainingSampler`` over a fixed random subset of ``int(size * subset_ratio)`` indices.

    Useful to study how results scale with the amount of data. The subset is drawn once with
    ``seed_subset`` (identical on every rank); epochs over it are shuffled with
    ``seed_shuffle``.

    Args:
        size: dataset length.
        subset_ratio: fraction of the dataset to use, in (0, 1].
        shuffle: shuffle each epoch of the subset.
        seed_shuffle / seed_subset: seeds; None takes ``comm.shared_random_seed()``.
    """

    def __init__(
        self,
        size: int,
        subset_ratio: float,
        shuffle: bool = True,
        seed_shuffle: Optional[int] = None,
        seed_subset: Optional[int] = None,
    ):
        super().__init__(size=size, shuffle=shuffle, seed=seed_shuffle)
        if not 0.0 < subset_ratio <= 1.0:
            raise ValueError(f"subset_ratio must be in (0, 1], got {subset_ratio}.")
        self._size_subset = int(size * subset_ratio)
        if self._size_subset <= 0:
            raise ValueError(
                f"subset_ratio {subset_ratio} of {size} elements selects no element; raise it."
            )
        self._seed_subset = _resolve_seed(seed_subset)
        g = torch.Generator()
        g.manual_seed(self._seed_subset)
        self._indexes_subset = torch.randperm(self._size, generator=g)[: self._size_subset]
        logger.info("Using RandomSubsetTrainingSampler ...")
        logger.info(
            "Randomly sampled %d elements from the original %d", self._size_subset, self._size
        )

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            if self._shuffle:
                order = torch.randperm(self._size_subset, generator=g)
                yield from self._indexes_subset[order].tolist()
            else:
                yield from self._indexes_subset.tolist()


class RepeatFactorTrainingSampler(Sampler):
    """``TrainingSampler`` where element ``i`` appears about ``repeat_factors[i]`` times per epoch.

    Each epoch, element ``i`` with factor ``r = k + f`` (integer part k, fraction f) is
    repeated ``k`` times plus once more with probability ``f`` (stochastic rounding), so the
    expected count is ``r``; the epoch's indices are then shuffled. Used with
    :meth:`repeat_factors_from_category_frequency` for LVIS-style rare-class oversampling.

    Args:
        repeat_factors: float tensor (N,), one factor (>= 0, usually >= 1) per element.
        shuffle: shuffle each epoch.
        seed: as in ``TrainingSampler``.
    """

    def __init__(
        self, repeat_factors: torch.Tensor, *, shuffle: bool = True, seed: Optional[int] = None
    ):
        repeat_factors = torch.as_tensor(repeat_factors, dtype=torch.float32)
        if repeat_factors.ndim != 1 or len(repeat_factors) == 0:
            raise ValueError(
                "repeat_factors must be a non-empty 1D tensor, got shape "
                f"{tuple(repeat_factors.shape)}."
            )
        self._shuffle = shuffle
        self._seed = _resolve_seed(seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._int_part = torch.trunc(repeat_factors)
        self._frac_part = repeat_factors - self._int_part

    @staticmethod
    def repeat_factors_from_category_frequency(
        dataset_dicts: List[Dict], repeat_thresh: float, sqrt: bool = True
    ) -> torch.Tensor:
        """Per-image repeat factors from category frequency (LVIS paper, Gupta et al. 2019).

        With ``f(c)`` the fraction of images containing category ``c`` and ``t`` the threshold,
        the category factor is ``r(c) = max(1, sqrt(t / f(c)))`` (``max(1, t / f(c))`` when
        ``sqrt`` is False); an image's factor is the max over its categories (1 without
        annotations).

        Args:
            dataset_dicts: dataset dicts with "annotations" (each with "category_id").
            repeat_thresh: ``t``; categories in more than this fraction of images are not
                oversampled.
            sqrt: use the square root as above.

        Returns:
            float32 tensor (N,), one factor per dataset dict.
        """
        image_cats = [{a["category_id"] for a in d.get("annotations", [])} for d in dataset_dicts]
        images_with = defaultdict(int)
        for cats in image_cats:
            for c in cats:
                images_with[c] += 1
        n = len(dataset_dicts)
        category_rep = {}
        for c, count in images_with.items():
            ratio = repeat_thresh / (count / n)
            category_rep[c] = max(1.0, math.sqrt(ratio) if sqrt else ratio)
        for c in sorted(category_rep):
            logger.debug(
                "Category %s: image frequency %.4f, repeat factor %.3f",
                c,
                images_with[c] / n,
                category_rep[c],
            )
        factors = [max((category_rep[c] for c in cats), default=1.0) for cats in image_cats]
        return torch.tensor(factors, dtype=torch.float32)

    def _get_epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        """One epoch's indices (before shuffling), with stochastically rounded repeats."""
        rands = torch.rand(len(self._frac_part), generator=generator)
        repeats = self._int_part + (rands < self._frac_part).float()
        return torch.repeat_interleave(torch.arange(len(repeats)), repeats.long())

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            indices = self._get_epoch_indices(g)
            if self._shuffle:
                indices = indices[torch.randperm(len(indices), generator=g)]
            yield from indices.tolist()


class InferenceSampler(Sampler):
    """Finite sampler for inference: rank ``r`` of ``W`` gets one contiguous slice of
    ``range(size)``; slices cover every index exactly once and differ in length by at most 1
    (the first ``size % W`` ranks get one more).

    Args:
        size: dataset length.
    """

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"InferenceSampler size must be >= 0, got {size}.")
        self._size = size
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()
        self._local_indices = self._get_local_indices(size, self._world_size, self._rank)

    @staticmethod
    def _get_local_indices(total_size: int, world_size: int, rank: int) -> range:
        base, extra = divmod(total_size, world_size)
        begin = rank * base + min(rank, extra)
        end = begin + base + (1 if rank < extra else 0)
        return range(begin, end)

    def __iter__(self) -> Iterator[int]:
        yield from self._local_indices

    def __len__(self) -> int:
        return len(self._local_indices)
