"""tools/benchmark.py: each --task on the tiny Mask R-CNN and a few 64-pixel shapes images, run
in-process (the model's calls counted), and the data task in two CPU processes through the
command line."""

import importlib.util
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
import torch

from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.shapes import prepare_shapes_split, register_shapes_instances
from tests.conftest import REPO_ROOT

TOOL = REPO_ROOT / "tools" / "benchmark.py"
TINY_CONFIG = str(REPO_ROOT / "configs" / "Shapes" / "tiny_mask_rcnn_R_50_FPN.yaml")
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.DEVICE", "cpu"]
SPEED = re.compile(r"\[benchmark\] (?P<what>[^:]+): (?P<n>\d+) iterations in (?P<s>[\d.]+) s: "
                   r"(?P<rate>[\d.]+) iterations/s \((?P<per>[\d.]+) s/iteration\)(?P<rest>.*)")


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def datasets(tmp_path):
    """(train, test) dataset names: 4 and 3 shapes images of 64 pixels."""
    names = [f"bench_{split}_{uuid.uuid4().hex[:8]}" for split in ("train", "val")]
    for name, split, count, seed in zip(names, ("train", "val"), (4, 3), (0, 1)):
        register_shapes_instances(name, str(tmp_path / "shapes"), split, count, seed,
                                  image_size=64)
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def run(tool, datasets, restore_logging, capsys):
    """run(task, max_iter, *overrides) -> (speed lines as dicts, stdout, wall seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    train, test = datasets

    def _run(task, max_iter, *overrides):
        start = time.perf_counter()
        tool.main(["--task", task, "--max-iter", str(max_iter), "--config-file", TINY_CONFIG,
                   *SMALL, "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)",
                   *overrides])
        wall = time.perf_counter() - start
        out = capsys.readouterr().out
        return [m.groupdict() for m in SPEED.finditer(out)], out, wall

    yield _run
    torch.set_num_threads(threads)


@pytest.fixture
def model_calls(tool, monkeypatch):
    """Every forward of the model the tool builds, as (training mode, grad enabled)."""
    calls = []
    build = tool.build_model

    def counting_build(cfg):
        model = build(cfg)
        model.register_forward_pre_hook(
            lambda module, inputs: calls.append((module.training, torch.is_grad_enabled())))
        return model

    monkeypatch.setattr(tool, "build_model", counting_build)
    return calls


def _check_speed(line, what, iterations, wall):
    assert line["what"] == what and int(line["n"]) == iterations
    seconds = float(line["s"])
    assert 0 < seconds <= wall
    # The printed seconds are rounded to 0.001 s, the rate to 0.01 and s/iteration to 0.0001.
    assert iterations / float(line["rate"]) == pytest.approx(seconds, rel=0.01, abs=0.0006)
    assert float(line["per"]) * iterations == pytest.approx(seconds, abs=0.0006 + iterations * 5e-5)


def test_train_times_training_steps(run, model_calls):
    lines, out, wall = run("train", 5)
    assert model_calls == [(True, True)] * 5
    # IterationTimer leaves the first 2 steps out of the timing.
    (line,) = lines
    _check_speed(line, "train", 3, wall)
    assert "iter: 4" in out and "total_loss" in out  # CommonMetricPrinter's line
    assert "Overall training speed: 3 iterations" in out


def test_eval_times_inference_after_warmup(run, model_calls):
    lines, out, wall = run("eval", 4)
    assert model_calls == [(False, False)] * (5 + 4)
    (line,) = lines
    _check_speed(line, "eval", 4, wall)
    assert "Total inference time" in out  # inference_on_dataset's report


def test_data_times_the_training_loader(run):
    lines, out, wall = run("data", 4)
    (line,) = lines
    _check_speed(line, "data", 4, wall)
    images = re.search(r", (\d+) images: ([\d.]+) images/s", line["rest"])
    assert int(images.group(1)) == 4 * 2  # SOLVER.IMS_PER_BATCH 2
    assert "first batch after" in line["rest"] and "RAM Usage:" in out


def test_data_advanced_times_each_stage(run):
    lines, out, wall = run("data_advanced", 3, "DATALOADER.NUM_WORKERS", "2")
    assert "[benchmark] dataset: 4 dataset dicts" in out
    assert [line["what"] for line in lines] == [
        "mapper", "loader with 0 worker(s)", "loader with 1 worker(s)", "loader with 2 worker(s)"]
    for line in lines:
        _check_speed(line, line["what"], 3, wall)


@pytest.mark.parametrize("argv,error", [
    (["--task", "eval", "--num-gpus", "2"], "--task eval measures one process"),
    (["--task", "data", "--max-iter", "0"], "--max-iter 0"),
    (["--task", "train", "--max-iter", "2"], "--max-iter 2"),
    (["--task", "train", "--eval-only"], "--eval-only"),
])
def test_bad_flags_are_refused_before_anything_runs(tool, argv, error):
    with pytest.raises(ValueError, match=re.escape(error)):
        tool.parse_args([*argv, "--config-file", TINY_CONFIG])


def test_unknown_task_and_default_iterations(tool, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(["--task", "speed"])
    assert "invalid choice" in capsys.readouterr().err
    # Detectron2's counts.
    assert tool.parse_args(["--task", "train"]).max_iter == 400
    assert tool.parse_args(["--task", "eval"]).max_iter == 300


def test_eval_without_test_dataset_names_the_key(run):
    with pytest.raises(ValueError, match="DATASETS.TEST"):
        run("eval", 1, "DATASETS.TEST", "()")


def test_data_in_two_processes_from_the_command_line(tmp_path):
    """Two gloo processes each draw batches of IMS_PER_BATCH / 2 = 1 image from shapes_train
    (a 4-image split prepared under a temporary SEGTRON_DATASETS)."""
    prepare_shapes_split(str(tmp_path / "shapes"), "train", 4, 0, image_size=64, num_workers=1)
    env = dict(os.environ, SEGTRON_DATASETS=str(tmp_path), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(TOOL), "--task", "data", "--num-gpus", "2", "--max-iter", "3",
         "--config-file", TINY_CONFIG, *SMALL, "DATASETS.TRAIN", "('shapes_train',)"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = {m["what"]: m for m in SPEED.finditer(result.stdout)}
    assert set(lines) == {"data (process 0)", "data (process 1)"}
    for line in lines.values():
        assert int(line["n"]) == 3 and ", 3 images:" in line["rest"]
