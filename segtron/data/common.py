"""Dataset wrappers used by the loaders (``detectron2.data.common``).

- ``DatasetFromList``: a list of dataset dicts, optionally pickled into one shared byte buffer.
- ``MapDataset``: applies a mapper lazily; retries another index when the mapper returns None.
- ``ToIterableDataset``: turns a map-style dataset + sampler into an iterable sharded over
  DataLoader workers.
- ``AspectRatioGroupedDataset``: batches landscape and portrait images separately.
"""

import copy
import itertools
import logging
import pickle
import random
from typing import Any, Callable, Iterable, Iterator, List

import numpy as np
import torch.utils.data as data
from torch.utils.data.sampler import Sampler

__all__ = ["DatasetFromList", "MapDataset", "ToIterableDataset", "AspectRatioGroupedDataset"]

logger = logging.getLogger(__name__)


class _MapIterableDataset(data.IterableDataset):
    """``MapDataset`` over an iterable dataset: maps each element, skipping None results."""

    def __init__(self, dataset: Iterable, map_func: Callable):
        self._dataset = dataset
        self._map_func = map_func

    def __len__(self) -> int:
        return len(self._dataset)

    def __iter__(self) -> Iterator:
        for item in self._dataset:
            mapped = self._map_func(item)
            if mapped is not None:
                yield mapped


class MapDataset(data.Dataset):
    """Apply ``map_func`` to each element of ``dataset`` when it is read.

    If ``map_func`` returns None for an element (e.g. every annotation was cropped away), a
    different, randomly chosen index is tried instead, and that index is not retried until it
    succeeds again; a warning is logged from the third consecutive failure on. Wrapping an
    ``IterableDataset`` gives an iterable dataset that skips the None results.

    Args:
        dataset: a map-style (or iterable) dataset, e.g. ``DatasetFromList``.
        map_func: callable element -> mapped element or None.
    """

    def __new__(cls, dataset, map_func):
        if isinstance(dataset, data.IterableDataset):
            return _MapIterableDataset(dataset, map_func)
        return super().__new__(cls)

    def __init__(self, dataset, map_func: Callable):
        self._dataset = dataset
        self._map_func = map_func
        self._rng = random.Random(42)
        self._fallback_candidates = set(range(len(dataset)))

    def __getnewargs__(self):
        # __new__ takes arguments, so unpickling (e.g. spawned DataLoader workers) must get them.
        return (self._dataset, self._map_func)

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, idx: int):
        index = int(idx)
        failures = 0
        while True:
            mapped = self._map_func(self._dataset[index])
            if mapped is not None:
                self._fallback_candidates.add(index)
                return mapped
            failures += 1
            self._fallback_candidates.discard(index)
            if failures >= 3:
                logger.warning(
                    "Mapping dataset element %d returned None (%d consecutive failures, started at "
                    "index %d); trying another random element.",
                    index,
                    failures,
                    int(idx),
                )
            if not self._fallback_candidates:
                raise RuntimeError(
                    f"The mapper returned None for every element tried ({failures} attempts from "
                    f"index {int(idx)}); no element of the dataset can be mapped. Check the "
                    "mapper and the augmentations (e.g. a crop that removes all instances)."
                )
            index = self._rng.choice(sorted(self._fallback_candidates))


class DatasetFromList(data.Dataset):
    """A map-style dataset over a Python list (typically of dataset dicts).

    With ``serialize=True`` every element is pickled into one contiguous numpy uint8 buffer plus
    an offsets array. Reading an element unpickles a fresh copy, and DataLoader workers forked
    from the main process share the two arrays instead of touching (and so copying) the pages of
    millions of small Python objects through reference counting.

    Args:
        lst: the elements.
        copy: without serialization, return a deep copy of the element on each read (so mappers
            may modify it in place).
        serialize: store the elements pickled as described above.
    """

    def __init__(self, lst: List[Any], copy: bool = True, serialize: bool = True):
        self._copy = copy
        self._serialize = serialize
        if not serialize:
            self._lst = lst
            return
        logger.info("Serializing %d elements to one byte buffer ...", len(lst))
        blobs = [
            np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8)
            for x in lst
        ]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._lst = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
        logger.info("Serialized dataset takes %.2f MiB", len(self._lst) / 1024**2)

    def __len__(self) -> int:
        return len(self._ends) if self._serialize else len(self._lst)

    def __getitem__(self, idx: int):
        if self._serialize:
            idx = int(idx)
            if idx < 0:  # negative indexing: normalise so the start offset is right
                idx += len(self)
            end = int(self._ends[idx])
            start = int(self._ends[idx - 1]) if idx > 0 else 0
            return pickle.loads(memoryview(self._lst[start:end]))
        if self._copy:
            return copy.deepcopy(self._lst[idx])
        return self._lst[idx]


def _worker_shard(iterable: Iterable, chunk_size: int = 1) -> Iterator:
    """Inside a DataLoader worker, keep only this worker's share of ``iterable``.

    The stream is cut into consecutive chunks of ``chunk_size``; worker ``i`` of ``n`` yields
    chunks ``i, i + n, i + 2n, ...``. With ``chunk_size`` equal to the batch size, and the
    DataLoader reading workers round-robin, the batches come out in the iterable's order.
    """
    info = data.get_worker_info()
    if info is None or info.num_workers == 1:
        yield from iterable
        return
    iterator = iter(iterable)
    chunk_index = 0
    while True:
        chunk = list(itertools.islice(iterator, chunk_size))
        if not chunk:
            return
        if chunk_index % info.num_workers == info.id:
            yield from chunk
        chunk_index += 1


class ToIterableDataset(data.IterableDataset):
    """Iterate ``dataset[i]`` for the indices produced by ``sampler``.

    Args:
        dataset: a map-style dataset.
        sampler: yields indices of ``dataset`` (it may be infinite, e.g. ``TrainingSampler``).
            It should already be sharded across processes (ranks).
        shard_sampler: shard the indices across DataLoader workers so each index is loaded by
            one worker only. Set False if the sampler itself is worker-aware.
        shard_chunk_size: consecutive indices given to the same worker.
    """

    def __init__(
        self,
        dataset: data.Dataset,
        sampler: Sampler,
        shard_sampler: bool = True,
        shard_chunk_size: int = 1,
    ):
        if isinstance(dataset, data.IterableDataset):
            raise TypeError("ToIterableDataset wraps a map-style dataset, got an IterableDataset.")
        if not isinstance(sampler, Sampler):
            raise TypeError(f"sampler must be a torch Sampler, got {type(sampler).__name__}.")
        self.dataset = dataset
        self.sampler = sampler
        self.shard_sampler = shard_sampler
        self.shard_chunk_size = shard_chunk_size

    def __iter__(self) -> Iterator:
        indices = (
            _worker_shard(self.sampler, self.shard_chunk_size)
            if self.shard_sampler
            else iter(self.sampler)
        )
        for idx in indices:
            yield self.dataset[idx]

    def __len__(self) -> int:
        return len(self.sampler)


class AspectRatioGroupedDataset(data.IterableDataset):
    """Batch dataset dicts so that each batch holds only landscape (w > h) or only portrait
    (w <= h) images, which keeps padding small when the batch is stacked.

    Args:
        dataset: iterable of dicts with "width" and "height" (e.g. a DataLoader with batch size
            1 over mapped dicts).
        batch_size: number of dicts per yielded batch (a list).
    """

    def __init__(self, dataset: Iterable, batch_size: int):
        self.dataset = dataset
        self.batch_size = batch_size
        self._buckets = [[], []]  # 0: landscape, 1: portrait; partial batches carry over

    def __iter__(self) -> Iterator[List[dict]]:
        for d in self.dataset:
            bucket = self._buckets[0 if d["width"] > d["height"] else 1]
            bucket.append(d)
            if len(bucket) == self.batch_size:
                batch = list(bucket)
                bucket.clear()
                yield batch
