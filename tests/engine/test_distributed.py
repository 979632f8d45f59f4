"""Metrics and validation losses reduced over two real processes (gloo, CPU)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segtron.engine import SimpleTrainer, ValidationLoss
from segtron.utils import comm
from segtron.utils.events import EventStorage


WORLD_SIZE = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ConstantLoss(torch.nn.Module):
    """Returns ``loss_a = x.sum()`` of the batch and ``loss_b = 1``."""

    def forward(self, batch):
        return {"loss_a": batch.sum(), "loss_b": torch.tensor(1.0)}


def _worker(rank: int, port: int) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    os.environ.pop("LOCAL_RANK", None)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        with EventStorage() as storage:
            # Losses: mean over processes; data_time: the slowest; recorded on rank 0 only.
            losses = {"loss_x": torch.tensor(1.0 + 2 * rank), "loss_y": torch.tensor(0.5)}
            SimpleTrainer.write_metrics(losses, data_time=0.1 * (rank + 1), cur_iter=3)
            if rank == 0:
                assert storage.latest()["total_loss"] == (pytest.approx(2.5), 3)
                assert storage.latest()["loss_x"] == (pytest.approx(2.0), 3)
                assert storage.latest()["data_time"] == (pytest.approx(0.2), 3)
            else:
                assert "total_loss" not in storage.latest()
            assert storage.latest()["rank_data_time"][0] == pytest.approx(0.1 * (rank + 1))

            # A NaN on one process stops every process (no hang at the next collective).
            bad = {"loss_x": torch.tensor(float("nan") if rank == 1 else 1.0)}
            try:
                SimpleTrainer.write_metrics(bad, data_time=0.0, cur_iter=7)
            except FloatingPointError as e:
                assert "iteration=7" in str(e)
            else:
                raise AssertionError(f"rank {rank}: no FloatingPointError")

            # Validation losses: the mean over all batches of all processes (3 + 1 batches).
            batches = [torch.full((2,), float(v)) for v in ([1, 2, 3] if rank == 0 else [10])]
            model = _ConstantLoss().train()
            results = ValidationLoss(1, model, batches).compute_losses()
            assert results["val_loss_a"] == pytest.approx((2 + 4 + 6 + 20) / 4)
            assert results["val_total_loss"] == pytest.approx(8.0 + 1.0)
        comm.synchronize()
    finally:
        dist.destroy_process_group()


def test_metrics_and_validation_losses_across_two_processes():
    # fork: the children reuse the imported modules (spawn re-imports torch: ~10 s more).
    mp.start_processes(
        _worker, args=(_free_port(),), nprocs=WORLD_SIZE, join=True, start_method="fork"
    )
