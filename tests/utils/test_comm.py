"""segtron.utils.comm in a single process and in a real 2-process gloo group on CPU."""

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segtron.utils import comm


# ---------------------------------------------------------------------------------------------
# Single process (torch.distributed not initialised).


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for key in ("LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)


def test_single_process_defaults(no_torchrun_env):
    assert not dist.is_initialized()
    assert comm.get_world_size() == 1
    assert comm.get_rank() == 0
    assert comm.get_local_rank() == 0
    assert comm.get_local_size() == 1
    assert comm.is_main_process()
    comm.synchronize()  # returns at once


def test_single_process_local_rank_from_torchrun_env(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert comm.get_local_rank() == 3
    assert comm.get_local_size() == 4


def test_single_process_collectives():
    payload = {"a": [1, 2], "b": "text"}
    assert comm.all_gather(payload) == [payload]
    assert comm.gather(payload) == [payload]
    seed = comm.shared_random_seed()
    assert isinstance(seed, int) and 0 <= seed < 2**31
    losses = {"loss_a": torch.tensor(1.0), "loss_b": torch.tensor(2.0)}
    assert comm.reduce_dict(losses) is losses


def test_create_local_process_group_needs_distributed():
    with pytest.raises(RuntimeError, match="init_process_group"):
        comm.create_local_process_group(1)
    with pytest.raises(ValueError, match="num_workers_per_machine"):
        comm.create_local_process_group(0)


def test_missing_local_pg_error_says_how_to_fix():
    assert "create_local_process_group" in comm._MISSING_LOCAL_PG_ERROR
    assert comm._LOCAL_PROCESS_GROUP is None
    with pytest.raises(AssertionError, match="create_local_process_group"):
        comm.get_local_process_group()


def test_gloo_group_is_created_once_on_nccl(monkeypatch):
    created = []
    monkeypatch.setattr(comm.dist, "get_backend", lambda *a, **k: dist.Backend.NCCL)
    monkeypatch.setattr(comm.dist, "new_group", lambda **kw: created.append(kw) or object())
    comm._new_global_gloo_group.cache_clear()
    try:
        first = comm._get_global_gloo_group()
        assert comm._get_global_gloo_group() is first
        assert created == [{"backend": "gloo"}]
    finally:
        comm._new_global_gloo_group.cache_clear()


# ---------------------------------------------------------------------------------------------
# Two real processes on gloo.

WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_process_worker(rank: int, port: int) -> None:
    """Runs in each spawned process; any failed assert fails the test through mp.spawn."""
    os.environ.pop("LOCAL_RANK", None)
    os.environ.pop("LOCAL_WORLD_SIZE", None)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        assert comm.get_world_size() == WORLD_SIZE
        assert comm.get_rank() == rank
        assert comm.is_main_process() == (rank == 0)

        # Local rank: unknown without a local group or torchrun's env, then from the env ...
        try:
            comm.get_local_rank()
        except AssertionError as e:
            assert "create_local_process_group" in str(e)
        else:
            raise AssertionError("get_local_rank() should fail without local group or LOCAL_RANK")
        os.environ["LOCAL_RANK"] = str(rank)
        os.environ["LOCAL_WORLD_SIZE"] = str(WORLD_SIZE)
        assert comm.get_local_rank() == rank and comm.get_local_size() == WORLD_SIZE
        del os.environ["LOCAL_RANK"], os.environ["LOCAL_WORLD_SIZE"]
        # ... and from the local process group (all processes on one machine).
        comm.create_local_process_group(WORLD_SIZE)
        assert comm._LOCAL_PROCESS_GROUP is not None
        assert comm.get_local_process_group() is comm._LOCAL_PROCESS_GROUP
        assert comm.get_local_rank() == rank and comm.get_local_size() == WORLD_SIZE

        # Arbitrary picklable objects, in rank order.
        payload = {"rank": rank, "items": list(range(rank + 1)), "name": f"r{rank}"}
        gathered = comm.all_gather(payload)
        assert gathered == [
            {"rank": 0, "items": [0], "name": "r0"},
            {"rank": 1, "items": [0, 1], "name": "r1"},
        ]
        assert comm.all_gather(rank * 10, group=comm._LOCAL_PROCESS_GROUP) == [0, 10]

        for dst in (0, 1):
            result = comm.gather(("from", rank), dst=dst)
            if rank == dst:
                assert result == [("from", 0), ("from", 1)]
            else:
                assert result == []

        # Different numpy states, one shared seed.
        import numpy as np

        np.random.seed(100 + rank)
        seed = comm.shared_random_seed()
        assert len(set(comm.all_gather(seed))) == 1

        losses = {"loss_b": torch.tensor(float(rank + 1)), "loss_a": torch.tensor(10.0 * rank)}
        averaged = comm.reduce_dict(losses, average=True)
        summed = comm.reduce_dict(losses, average=False)
        assert sorted(averaged) == ["loss_a", "loss_b"]
        if rank == 0:
            assert averaged["loss_b"].item() == pytest.approx(1.5)
            assert averaged["loss_a"].item() == pytest.approx(5.0)
            assert summed["loss_b"].item() == pytest.approx(3.0)
            assert summed["loss_a"].item() == pytest.approx(10.0)

        comm.synchronize()
    finally:
        # Drop every reference to a process group before destroying them: one still alive at
        # interpreter shutdown can make gloo abort the process.
        comm._LOCAL_PROCESS_GROUP = None
        dist.destroy_process_group()


def test_two_process_gloo():
    mp.spawn(_two_process_worker, args=(_free_port(),), nprocs=WORLD_SIZE, join=True)


def _late_rank_worker(rank: int, port: int, rank0_done) -> None:
    """Rank 1 does not come to the barrier until rank 0 has given up on it."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD_SIZE, timeout=timedelta(minutes=3))
    try:
        assert comm._group_timeout() == timedelta(minutes=3)  # synchronize()'s default
        if rank == 1:
            assert rank0_done.wait(timeout=60), "rank 0 never gave up on rank 1"
            return
        try:
            comm.synchronize(timeout=timedelta(seconds=2))
        except RuntimeError as e:
            assert "rank(s) 1 did not reach comm.synchronize() within 0:00:02" in str(e), e
            assert "--dist-timeout" in str(e)
        else:
            raise AssertionError("synchronize() returned although rank 1 never arrived")
        finally:
            rank0_done.set()
    finally:
        dist.destroy_process_group()


def test_synchronize_names_the_rank_that_does_not_arrive():
    """gloo: a barrier that times out says which rank is late, not just that it timed out."""
    rank0_done = mp.get_context("spawn").Event()
    mp.spawn(_late_rank_worker, args=(_free_port(), rank0_done), nprocs=WORLD_SIZE, join=True)


def test_late_ranks_are_read_from_the_monitored_barrier_error():
    message = "[Rank 0]: Ranks 1, 3 failed to pass monitoredBarrier in 2000 ms"
    assert comm._late_ranks(message) == [1, 3]
    assert comm._late_ranks("Rank 2 successfully reached monitoredBarrier, but ...") == []

