"""The peer benchmarks' --device / --amp options: CUDA runs wait for the device around each
timed run, a missing GPU or AMP on the CPU is refused before any model is built, and the
benchmarks run at a small size on the CPU through their command line."""

import argparse

import pytest
import torch

from benchmarks import device_options, inference, train_step
from benchmarks.peer_timing import time_interleaved
from benchmarks.torchvision_peer import SEGTRON_MODES, segtron_candidates


def _args(*argv):
    parser = argparse.ArgumentParser()
    device_options.add_device_arguments(parser)
    return parser.parse_args(list(argv))


def test_synchronize_brackets_every_timed_run():
    events = []
    time_interleaved({"a": lambda: events.append("a"), "b": lambda: events.append("b")},
                     repeats=2, warmup=1, synchronize=lambda: events.append("sync"))
    # Warm-up runs are not timed; each timed run sits between two synchronisations.
    assert events == ["a", "b"] + ["sync", "a", "sync", "sync", "b", "sync"] * 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a CPU-only machine")
def test_cuda_without_a_gpu_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="--device cpu"):
        device_options.resolve_device(_args("--device", "cuda"))


def test_amp_on_the_cpu_is_refused():
    with pytest.raises(ValueError, match="--device cuda"):
        device_options.resolve_device(_args("--amp"))


def test_cpu_runs_plain_float32_without_waiting():
    device = device_options.resolve_device(_args())
    assert device == torch.device("cpu")
    assert device_options.synchronizer(device) is None
    assert device_options.grad_scaler(device, amp=False) is None
    with device_options.autocast(device, amp=False):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_winograd_row_only_on_the_cpu():
    runs = segtron_candidates(torch.nn.Module(), lambda name: name)
    assert set(runs) == set(SEGTRON_MODES)
    gpu_runs = segtron_candidates(torch.nn.Module(), lambda name: name, torch.device("cuda"))
    assert set(gpu_runs) == {n for n, (_, winograd) in SEGTRON_MODES.items() if not winograd}


def test_training_step_settings_follow_the_device():
    """Detectron2's per-GPU training batch on CUDA, the CPU setting elsewhere; flags win."""
    args = argparse.Namespace(batch=None, size=None)
    assert train_step.step_settings(args, torch.device("cuda")) == (8, 800, 1067)
    assert train_step.step_settings(args, torch.device("cpu")) == (2, 512, 683)
    args = argparse.Namespace(batch=1, size=(128, 160))
    assert train_step.step_settings(args, torch.device("cuda")) == (1, 128, 160)
    with pytest.raises(ValueError, match="--device cuda"):
        train_step.main(["--amp"])


def test_inference_benchmark_runs_small_on_the_cpu(capsys):
    """The inference script end to end at a tiny size: one timed round of every row."""
    torch_threads = torch.get_num_threads()
    try:
        inference.main(["--size", "64", "96", "--repeats", "1", "--warmup", "0",
                        "--threads", "1"])
    finally:
        torch.set_num_threads(torch_threads)
    out = capsys.readouterr().out
    assert "64x96, batch 1, float32" in out
    assert out.count("| segtron") == len(SEGTRON_MODES)
