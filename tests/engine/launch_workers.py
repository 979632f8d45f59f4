"""Functions run by ``launch`` in the launch tests; module-level so "spawn" children can import
them (a spawned process unpickles the function by its module and name)."""

import json
import os

import torch
import torch.distributed as dist

from segtron.utils import comm


def describe_process(out_dir: str, fail_on_rank: int = -1) -> None:
    """Write what this process sees of the job to ``<out_dir>/rank<r>.json``, after an
    all_reduce of ``rank + 1``; then raise on rank ``fail_on_rank``."""
    rank = comm.get_rank()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    info = {
        "pid": os.getpid(),
        "rank": rank,
        "world_size": comm.get_world_size(),
        "local_rank": comm.get_local_rank(),
        "local_size": comm.get_local_size(),
        "backend": str(dist.get_backend()),
        "all_reduce": value.item(),
        "gathered": comm.all_gather(rank),
        "threads": torch.get_num_threads(),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(info, f)
    if rank == fail_on_rank:
        raise ValueError(f"deliberate failure on rank {rank}")
