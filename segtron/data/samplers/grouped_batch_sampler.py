"""``GroupedBatchSampler``: batches whose elements all share a group id."""

from typing import Iterator, List, Sequence

import numpy as np
from torch.utils.data.sampler import BatchSampler, Sampler

__all__ = ["GroupedBatchSampler"]


class GroupedBatchSampler(BatchSampler):
    """Wrap ``sampler`` so that each yielded batch holds indices of one group only.

    Indices are buffered per group as they come from ``sampler``; a batch is yielded as soon
    as a group's buffer has ``batch_size`` indices. Order within a batch follows the sampler.

    Args:
        sampler: base sampler of dataset indices.
        group_ids: group id of every dataset element (e.g. 0 landscape, 1 portrait).
        batch_size: indices per batch.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int):
        if not isinstance(sampler, Sampler):
            raise ValueError(
                f"sampler should be an instance of torch.utils.data.Sampler, got {sampler!r}"
            )
        self.sampler = sampler
        self.group_ids = np.asarray(group_ids)
        if self.group_ids.ndim != 1:
            raise ValueError(f"group_ids must be 1D, got shape {self.group_ids.shape}.")
        self.batch_size = batch_size
        self.buffer_per_group = {int(k): [] for k in np.unique(self.group_ids)}

    def __iter__(self) -> Iterator[List[int]]:
        for idx in self.sampler:
            buffer = self.buffer_per_group[int(self.group_ids[idx])]
            buffer.append(idx)
            if len(buffer) == self.batch_size:
                yield list(buffer)
                buffer.clear()

    def __len__(self) -> int:
        raise NotImplementedError("len() of GroupedBatchSampler is not well-defined.")
