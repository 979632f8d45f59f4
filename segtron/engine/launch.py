"""Starting one process per device for distributed training (Detectron2's ``launch``).

``launch(main_func, num_gpus_per_machine, ...)`` runs ``main_func(*args)``:

* world size 1: directly, in this process;
* world size > 1: in ``num_gpus_per_machine`` child processes started with the "spawn" method,
  each of which joins a ``torch.distributed`` process group (NCCL when the processes use GPUs,
  gloo otherwise, e.g. ``--num-gpus 2 MODEL.DEVICE cpu``), creates the per-machine group used by
  ``comm.get_local_rank()`` and, on GPUs, selects device ``local_rank``; CPU (gloo) processes
  share the machine's cores: each runs ``cores // processes`` threads unless
  ``OMP_NUM_THREADS`` is set;
* under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
  ``MASTER_PORT`` set): never spawns; this process joins the group described by the environment
  (``init_method="env://"``) and calls ``main_func`` itself.

An exception in any child makes ``launch`` raise in the parent, so the command exits non-zero.
"""

import logging
import os
import socket
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segtron.utils import comm
from segtron.utils.env import available_cpu_cores

__all__ = ["DEFAULT_TIMEOUT", "launch"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)
"""How long collectives (and joining the process group) wait before failing."""

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_BACKENDS = ("nccl", "gloo")


def _find_free_port() -> int:
    """Return a TCP port on this machine that was free a moment ago (the OS picks it).

    Another process could take it before it is used; that is acceptable for ``dist_url="auto"``
    on a single machine, where the port is only needed for a few seconds during start-up.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _resolve_dist_url(dist_url: Optional[str], num_machines: int) -> str:
    """The rendezvous URL to use: ``dist_url`` itself, or for ``"auto"`` / None a free port of
    127.0.0.1 (one machine only: the other machines could not know the port).

    Raises:
        ValueError: for ``"auto"`` / None with several machines, saying what to pass instead.
    """
    if dist_url not in (None, "auto"):
        return str(dist_url)
    if num_machines > 1:
        raise ValueError(
            f"dist_url={dist_url!r} picks a free port on this machine, which the other "
            f"{num_machines - 1} machine(s) cannot know. Pass the same "
            "--dist-url tcp://<IP of machine 0>:<port> on every machine."
        )
    return f"tcp://127.0.0.1:{_find_free_port()}"


def _started_by_torchrun() -> bool:
    """True when the environment variables that torchrun sets for each worker are all present."""
    return all(os.environ.get(name) not in (None, "") for name in _TORCHRUN_VARS)


def _resolve_backend(backend: Optional[str]) -> str:
    """``None`` -> "nccl" when CUDA is available, else "gloo"; checks an explicit choice."""
    if backend is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    name = str(backend).lower()
    if name not in _BACKENDS:
        raise ValueError(
            f"launch(backend={backend!r}): use 'nccl' (processes on GPUs), 'gloo' (processes on "
            "CPUs) or None to pick 'nccl' when CUDA is available and 'gloo' otherwise."
        )
    if name == "nccl" and not torch.cuda.is_available():
        raise RuntimeError(
            "launch(backend='nccl') needs CUDA, which is not available on this machine. Train on "
            "CPUs with the gloo backend instead (train_net.py does so with 'MODEL.DEVICE cpu')."
        )
    return name


def _check_gpu_count(backend: str, num_gpus_per_machine: int) -> None:
    if backend == "nccl" and num_gpus_per_machine > torch.cuda.device_count():
        raise RuntimeError(
            f"Asked for {num_gpus_per_machine} GPU processes per machine but this machine has "
            f"{torch.cuda.device_count()} visible GPU(s). Lower --num-gpus, or run the processes "
            "on CPUs with 'MODEL.DEVICE cpu' (gloo backend)."
        )


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: Optional[str] = None,
) -> None:
    """Run ``main_func(*args)`` in every process of a (possibly distributed) job.

    Args:
        main_func: the function to run; with several processes it must be picklable (a
            module-level function), since the children are started with "spawn".
        num_gpus_per_machine: processes to start on this machine (one per device; CPU
            processes when the backend is gloo).
        num_machines: machines taking part; world size = ``num_machines * num_gpus_per_machine``.
        machine_rank: rank of this machine, 0 .. num_machines - 1.
        dist_url: the rendezvous URL of the process group, e.g. ``tcp://10.0.0.1:50152``
            (the same on every machine), or ``"auto"`` (or None) to use a port of 127.0.0.1
            that is free when the job starts (``train_net.py``'s default), so that two jobs
            started at once on one machine do not collide; only with ``num_machines == 1``.
        args: positional arguments for ``main_func``.
        timeout: timeout of the process group's collectives.
        backend: "nccl", "gloo" or None (nccl when CUDA is available, else gloo). Pass "gloo"
            to run the processes on CPUs on a machine that has GPUs.

    Returns:
        None. Raises when ``main_func`` raises in any process (the parent re-raises a child's
        exception after the children have stopped).
    """
    if _started_by_torchrun():
        _run_under_torchrun(main_func, num_gpus_per_machine, args, timeout, backend)
        return

    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(
            f"launch: num_gpus_per_machine ({num_gpus_per_machine}) and num_machines "
            f"({num_machines}) must both be at least 1."
        )
    if not 0 <= machine_rank < num_machines:
        raise ValueError(
            f"launch: machine_rank {machine_rank} must be in [0, {num_machines}) for "
            f"num_machines={num_machines}; give each machine a distinct --machine-rank."
        )
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return

    dist_url = _resolve_dist_url(dist_url, num_machines)
    if num_machines > 1 and str(dist_url).startswith("file://"):
        logger.warning("file:// is not a reliable init method across machines; prefer tcp://.")

    backend = _resolve_backend(backend)
    _check_gpu_count(backend, num_gpus_per_machine)
    logger.info("Starting %d process(es) on machine %d/%d (world size %d, backend %s, %s).",
                num_gpus_per_machine, machine_rank, num_machines, world_size, backend, dist_url)
    # start_processes joins the children and raises ProcessRaisedException / ProcessExitedException
    # in the parent when one of them fails, after terminating the others.
    mp.start_processes(
        _distributed_worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, tuple(args),
              timeout, backend),
        daemon=False,
        start_method="spawn",
    )


def _distributed_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    world_size: int,
    num_gpus_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: Sequence[Any],
    timeout: timedelta,
    backend: str,
) -> None:
    """Body of each spawned process: join the group, set the device, run ``main_func``."""
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group(backend=backend, init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout)
    except Exception as err:
        raise RuntimeError(
            f"Process {global_rank} of {world_size} could not join the process group at "
            f"{dist_url} ({backend}): {err}. Check that --dist-url is reachable from every "
            "machine, the port is free (an orphan process from an earlier run may hold it), and "
            "every machine uses the same --num-machines / --num-gpus."
        ) from err
    if backend == "gloo":
        _share_cpu_threads(num_gpus_per_machine)
    _after_init(num_gpus_per_machine, local_rank, backend)
    main_func(*args)
    _finish()


def _share_cpu_threads(processes_per_machine: int) -> None:
    """Give each of the CPU processes on this machine an equal share of its cores.

    By default every process would use one thread per core, so N processes run N times more
    threads than cores and slow each other down. An explicit ``OMP_NUM_THREADS`` wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return
    cores = available_cpu_cores()
    threads = max(1, cores // max(1, processes_per_machine))
    torch.set_num_threads(threads)
    logger.debug("CPU process: %d intra-op thread(s) of %d core(s).", threads, cores)


def _run_under_torchrun(main_func: Callable[..., Any], num_gpus_per_machine: int,
                        args: Sequence[Any], timeout: timedelta,
                        backend: Optional[str]) -> None:
    """This process is one torchrun worker: join the group from the environment, run main."""
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE") or num_gpus_per_machine)
    if local_size != num_gpus_per_machine:
        logger.info(
            "Started by torchrun with %d process(es) per machine: torchrun's --nproc-per-node "
            "decides, num_gpus_per_machine=%d is not used.", local_size, num_gpus_per_machine)
    backend = _resolve_backend(backend)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
        created = True
    _after_init(local_size, local_rank, backend)
    logger.info("Running under torchrun: rank %d of %d (local rank %d, backend %s).",
                dist.get_rank(), world_size, local_rank, backend)
    main_func(*args)
    if created:
        _finish()


def _after_init(num_gpus_per_machine: int, local_rank: int, backend: str) -> None:
    comm.create_local_process_group(num_gpus_per_machine)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    # Every process has joined before anyone starts working (and, with NCCL, the device is set).
    comm.synchronize()


def _finish() -> None:
    """Leave the process group once ``main_func`` has returned normally."""
    if dist.is_initialized():
        comm.synchronize()
        dist.destroy_process_group()
    # The per-machine group died with the default one; forget it so that a later launch in
    # this process (torchrun-style runs, tests) creates a fresh one.
    comm._LOCAL_PROCESS_GROUP = None
