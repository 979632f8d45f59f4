"""Helpers for multi-process (torch.distributed) training that also work in a single process.

Without an initialised process group every function behaves as the only process of a world of
size 1: rank 0, ``all_gather(x) == [x]``, ``synchronize()`` returns at once, and so on.
Object collectives (``all_gather``, ``gather``) pickle arbitrary Python objects and run on a gloo
group, created once, when the default backend is NCCL.
"""

import functools
import logging
import os
import re
from datetime import timedelta
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "get_world_size",
    "get_rank",
    "get_local_rank",
    "get_local_size",
    "is_main_process",
    "synchronize",
    "all_gather",
    "gather",
    "shared_random_seed",
    "reduce_dict",
    "create_local_process_group",
    "get_local_process_group",
]

logger = logging.getLogger(__name__)

_LOCAL_PROCESS_GROUP = None
"""The process group of the processes on this machine; set by ``create_local_process_group``."""

_MISSING_LOCAL_PG_ERROR = (
    "Local process group is not yet created! Please use segtron's `launch()` "
    "(segtron.engine.launch) to start processes and initialize the pytorch process group, or "
    "start them with torchrun (which sets LOCAL_RANK / LOCAL_WORLD_SIZE). If you start "
    "processes in other ways, call comm.create_local_process_group(num_workers_per_machine) "
    "after calling torch.distributed.init_process_group()."
)


def _distributed() -> bool:
    """True when torch.distributed is built in and a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    """Number of processes in the default group (1 without torch.distributed)."""
    return dist.get_world_size() if _distributed() else 1


def get_rank() -> int:
    """Global rank of this process (0 without torch.distributed)."""
    return dist.get_rank() if _distributed() else 0


def _env_int(*names: str) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return None


def get_local_rank() -> int:
    """Rank of this process among the processes on its machine.

    Taken from the local process group when ``create_local_process_group`` was called, else
    from the ``LOCAL_RANK`` environment variable (set by torchrun), else 0 in a single process.
    Raises AssertionError with ``_MISSING_LOCAL_PG_ERROR`` in a multi-process world that has
    neither.
    """
    if not _distributed() or get_world_size() == 1:
        return _env_int("LOCAL_RANK") or 0
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_rank(group=_LOCAL_PROCESS_GROUP)
    local_rank = _env_int("LOCAL_RANK")
    if local_rank is None:
        raise AssertionError(_MISSING_LOCAL_PG_ERROR)
    return local_rank


def get_local_size() -> int:
    """Number of processes on this machine.

    Taken from the local process group when created, else from ``LOCAL_WORLD_SIZE`` (set by
    torchrun), else 1 in a single process. Raises AssertionError with
    ``_MISSING_LOCAL_PG_ERROR`` in a multi-process world that has neither.
    """
    if not _distributed() or get_world_size() == 1:
        return _env_int("LOCAL_WORLD_SIZE") or 1
    if _LOCAL_PROCESS_GROUP is not None:
        return dist.get_world_size(group=_LOCAL_PROCESS_GROUP)
    local_size = _env_int("LOCAL_WORLD_SIZE")
    if local_size is None:
        raise AssertionError(_MISSING_LOCAL_PG_ERROR)
    return local_size


def is_main_process() -> bool:
    """True on global rank 0 (always in a single process)."""
    return get_rank() == 0


def create_local_process_group(num_workers_per_machine: int) -> None:
    """Create the per-machine process group used by ``get_local_rank``/``get_local_size``.

    Must be called by every process after ``torch.distributed.init_process_group``, with the
    same ``num_workers_per_machine``; global ranks ``[m * n, (m + 1) * n)`` form machine ``m``.
    Calling it again with the same value is a no-op. Returns None.
    """
    global _LOCAL_PROCESS_GROUP
    if _LOCAL_PROCESS_GROUP is not None:
        return
    world_size = get_world_size()
    if num_workers_per_machine <= 0 or world_size % num_workers_per_machine != 0:
        raise ValueError(
            f"create_local_process_group: world size {world_size} is not a multiple of "
            f"num_workers_per_machine={num_workers_per_machine}; every machine must run the "
            "same number of processes."
        )
    if not _distributed():
        raise RuntimeError(
            "create_local_process_group needs torch.distributed: call "
            "torch.distributed.init_process_group() first."
        )
    my_machine = get_rank() // num_workers_per_machine
    # new_group is collective: every process creates every machine's group, in the same order.
    for machine in range(world_size // num_workers_per_machine):
        first = machine * num_workers_per_machine
        group = dist.new_group(list(range(first, first + num_workers_per_machine)))
        if machine == my_machine:
            _LOCAL_PROCESS_GROUP = group


def get_local_process_group():
    """Return the process group of the processes on this machine (e.g. for a per-machine
    SyncBN), made by ``create_local_process_group`` (``launch`` calls it).

    Raises AssertionError (Detectron2's type) with how to create it, when it was not created.
    """
    if _LOCAL_PROCESS_GROUP is None:
        raise AssertionError(_MISSING_LOCAL_PG_ERROR)
    return _LOCAL_PROCESS_GROUP


def synchronize(timeout: Optional[timedelta] = None) -> None:
    """Barrier across all processes; returns at once with a single process.

    On gloo (CPU processes) it is a ``monitored_barrier``: when a rank has not arrived within
    ``timeout`` (default: the process group's, i.e. ``--dist-timeout`` or
    ``DIST.TIMEOUT_MINUTES``), rank 0 logs and raises a RuntimeError naming the late rank(s),
    and the ranks that did arrive raise pointing to rank 0 (late itself, or its log names the
    late ranks). On NCCL it is a plain barrier on the GPU; a hang there ends at the group's
    timeout (torch's NCCL watchdog, ``TORCH_NCCL_ASYNC_ERROR_HANDLING``), and
    ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` reports which rank is missing from a collective.
    """
    if not _distributed() or dist.get_world_size() == 1:
        return
    if dist.get_backend() == dist.Backend.NCCL:
        # Tell NCCL which device this rank uses, so the barrier does not guess (and hang).
        dist.barrier(device_ids=[torch.cuda.current_device()])
    elif dist.get_backend() == dist.Backend.GLOO:
        _monitored_barrier(timeout or _group_timeout())
    else:
        dist.barrier()


def _group_timeout() -> timedelta:
    """The timeout the default process group was created with (torch's default for its
    backend when this torch does not tell)."""
    try:
        return dist.group.WORLD._get_backend(torch.device("cpu")).options._timeout
    except (AttributeError, RuntimeError):  # private API: absent or changed in this torch
        return dist.default_pg_timeout


def _late_ranks(message: str) -> List[int]:
    """The ranks a gloo ``monitored_barrier`` error names as not having arrived."""
    found = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", message)
    return [int(r) for r in found.group(1).replace(",", " ").split()] if found else []


def _monitored_barrier(timeout: timedelta) -> None:
    """``dist.monitored_barrier`` of all ranks; on failure, log and raise a RuntimeError that
    says which rank(s) did not arrive (rank 0) or where to find out (other ranks)."""
    try:
        dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
    except RuntimeError as err:
        late = _late_ranks(str(err))
        if late:
            what = (f"rank(s) {', '.join(map(str, late))} did not reach comm.synchronize() "
                    f"within {timeout}: each is stuck or far behind the others; its log "
                    "(log.txt.rank<r> in OUTPUT_DIR) shows the last thing it did")
        else:
            what = (f"rank {get_rank()} reached comm.synchronize() but did not hear from rank 0 "
                    f"within {timeout}: rank 0 is stuck or late itself, or its log names the "
                    "rank(s) that did not arrive")
        message = (f"{what}. Raise --dist-timeout or DIST.TIMEOUT_MINUTES if they are only slow. "
                   f"torch.distributed said: {err}")
        logger.error(message)
        raise RuntimeError(message) from err


def _get_global_gloo_group():
    """A group of all processes on the gloo backend, for pickled-object collectives.

    That is the default group unless its backend is NCCL; then a gloo group over all ranks is
    created on first use and reused (see ``_new_global_gloo_group``).
    """
    if dist.get_backend() == dist.Backend.NCCL:
        return _new_global_gloo_group()
    # Looked up each time rather than cached: a cached reference would keep the default group
    # alive after destroy_process_group(), until interpreter shutdown (where gloo may abort).
    return dist.group.WORLD


@functools.lru_cache(maxsize=None)
def _new_global_gloo_group():
    """Create (once per process) a gloo group of all ranks beside the NCCL default group."""
    return dist.new_group(backend="gloo")


def all_gather(data: Any, group=None) -> List[Any]:
    """Collect a picklable object from every process of ``group``.

    Args:
        data: any picklable object.
        group: a process group; defaults to all processes, on gloo.

    Returns:
        A list with one entry per rank of ``group``, in rank order (``[data]`` single-process).
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    size = dist.get_world_size(group=group)
    if size == 1:
        return [data]
    gathered: List[Any] = [None] * size
    dist.all_gather_object(gathered, data, group=group)
    return gathered


def gather(data: Any, dst: int = 0, group=None) -> List[Any]:
    """Collect a picklable object from every process of ``group`` on rank ``dst`` only.

    Args:
        data: any picklable object.
        dst: global rank of the receiving process.
        group: a process group; defaults to all processes, on gloo.

    Returns:
        On ``dst``, a list with one entry per rank of ``group``; on other ranks, ``[]``.
    """
    if get_world_size() == 1:
        return [data]
    if group is None:
        group = _get_global_gloo_group()
    size = dist.get_world_size(group=group)
    if size == 1:
        return [data]
    if dist.get_rank() == dst:
        gathered: List[Any] = [None] * size
        dist.gather_object(data, gathered, dst=dst, group=group)
        return gathered
    dist.gather_object(data, None, dst=dst, group=group)
    return []


def shared_random_seed() -> int:
    """A random int in [0, 2**31) that is the same on all processes (rank 0's draw).

    All processes must call it. It draws from numpy's global RNG.
    """
    seed = int(np.random.randint(2**31))
    return int(all_gather(seed)[0])


def reduce_dict(
    input_dict: Dict[str, torch.Tensor], average: bool = True
) -> Dict[str, torch.Tensor]:
    """Sum (or average) a dict of scalar tensors over all processes onto rank 0.

    Args:
        input_dict: name -> scalar tensor; every process must have the same keys.
        average: divide the sum by the world size.

    Returns:
        A dict with the same keys. Only rank 0 holds the reduced values; other ranks get
        unspecified partial results. Single-process: ``input_dict`` itself.
    """
    world_size = get_world_size()
    if world_size < 2:
        return input_dict
    names = sorted(input_dict)
    with torch.no_grad():
        values = torch.stack([input_dict[name] for name in names], dim=0)
        dist.reduce(values, dst=0)
        if average and dist.get_rank() == 0:
            values /= world_size
        return dict(zip(names, values))
