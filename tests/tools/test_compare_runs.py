"""tools/compare_runs.py as a script on fake OUTPUT_DIRs: the metrics table, the differing
config keys, the curves PNG, one run, the Markdown table, and errors. (It imports no torch:
~1-2 s per run.) With --cost it is run in-process, on fake runs holding a tiny RetinaNet's
config.yaml and model_final.pth."""

import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.utils.fake_runs import make_fake_run
from tests.utils.test_model_cost import register_tiny_shapes, unregister, write_tiny_detector_run


def _run(*args, cwd=REPO_ROOT):
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tools", "compare_runs.py"),
                           *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    return proc


@pytest.fixture
def runs(tmp_path):
    a = make_fake_run(tmp_path / "baseline", truncated_last_line=True, log_time="0:01:40")
    b = make_fake_run(tmp_path / "lr0.02", base_lr=0.02, batch_size_per_image=256, ap_offset=3)
    return a, b


def test_two_runs_table_differences_and_plot(runs, tmp_path):
    plot = tmp_path / "curves.png"
    proc = _run(*runs, "--plot", plot, cwd=tmp_path)  # from elsewhere than the repo root
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    table, _, differences = out.partition("config key")
    for header in ("run", "iters", "train time", "val loss", "bbox/AP", "bbox/AP50", "segm/APl"):
        assert header in table
    rows = {line.split()[0]: line.split() for line in table.splitlines()
            if line.startswith(("baseline", "lr0.02"))}
    assert set(rows) == {"baseline", "lr0.02"}
    assert rows["baseline"][1:5] == ["200", "0:01:40", "0.9000", "30.00"]  # iters, time, val, AP
    assert rows["lr0.02"][2] == "~0:01:40" and rows["lr0.02"][4] == "33.00"  # estimated time
    assert "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE" in differences
    assert "SOLVER.BASE_LR" in differences
    assert "OUTPUT_DIR" not in differences
    assert "truncated" in proc.stderr  # the crashed run's last line, reported once
    assert proc.stderr.count("truncated") == 1
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 1000 and im.size[1] > 800
        assert np.asarray(im.convert("L")).std() > 10


def test_one_run_with_chosen_metrics(runs, tmp_path):
    plot = tmp_path / "one.png"
    proc = _run(runs[1], "--metrics", "segm/AP", "segm/AP-circle", "keypoints/AP", "--plot", plot)
    assert proc.returncode == 0, proc.stderr
    header = proc.stdout.splitlines()[0].split()
    assert header[-3:] == ["segm/AP", "segm/AP-circle", "keypoints/AP"]
    row = next(line.split() for line in proc.stdout.splitlines() if line.startswith("lr0.02"))
    assert row[-3:] == ["28.00", "43.00", "-"]
    assert "config key" not in proc.stdout  # nothing to compare with
    assert "no run has the metric 'keypoints/AP'" in proc.stderr
    assert plot.is_file()


def test_errors_name_the_directory(tmp_path):
    proc = _run(tmp_path / "missing")
    assert proc.returncode == 2 and "missing" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = _run(tmp_path / "empty")
    assert proc.returncode == 1
    assert str(tmp_path / "empty" / "metrics.json") in proc.stderr


def test_markdown_table(runs, tmp_path):
    markdown = tmp_path / "tables" / "runs.md"
    proc = _run(*runs, "--markdown", markdown)
    assert proc.returncode == 0, proc.stderr
    lines = markdown.read_text().splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header[:5] == ["run", "iters", "train time", "val loss", "bbox/AP"]
    assert re.fullmatch(r"\|(:?-+:?\|)+", lines[1])  # the header separator
    rows = {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:4])}
    assert rows["baseline"][1:5] == ["200", "0:01:40", "0.9000", "30.00"]
    assert rows["lr0.02"][4] == "33.00"
    assert lines[4] == "" and lines[5].startswith("~ train time estimated")  # a paragraph
    assert str(markdown) in proc.stdout
    assert "params (M)" not in proc.stdout  # no cost columns without --cost


def test_f1max_columns_by_default_and_in_markdown(tmp_path):
    a = make_fake_run(tmp_path / "base", log_time="0:01:40", with_f1max=True)
    b = make_fake_run(tmp_path / "better", log_time="0:01:40", with_f1max=True, ap_offset=2)
    markdown = tmp_path / "f1.md"
    proc = _run(a, b, "--markdown", markdown)
    assert proc.returncode == 0, proc.stderr
    expected = [f"{task}/{name}" for task in ("bbox", "segm")
                for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "F1max")]
    assert proc.stdout.splitlines()[0].split()[-len(expected):] == expected
    lines = markdown.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[4:] == expected
    rows = {cells[0]: cells for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:4])}
    assert rows["better"][header.index("bbox/F1max")] == "47.00"
    assert rows["better"][header.index("segm/F1max")] == "42.00"
    assert rows["base"][header.index("bbox/F1max")] == "45.00"
    # The threshold of the operating point is there on request.
    proc = _run(a, "--metrics", "bbox/F1max", "bbox/thresh@F1max")
    assert proc.stdout.splitlines()[2].split()[-2:] == ["45.00", "0.50"]


# ------------------------------------------------------------------------- inference cost


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compare_runs",
                                                  REPO_ROOT / "tools" / "compare_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def detector_runs(tmp_path):
    """Two fake runs with a tiny RetinaNet each (the second with a 32-channel FPN, more
    parameters and GFLOPs), tested on a 3-image shapes split; and their saved models."""
    dataset = register_tiny_shapes(tmp_path / "shapes")
    threads = torch.get_num_threads()  # --threads changes it for the process
    dirs, models = [], []
    for name, opts, ap_offset in (("fpn16", (), 0), ("fpn32", ("MODEL.FPN.OUT_CHANNELS", "32"), 3)):
        directory = make_fake_run(tmp_path / name, ap_offset=ap_offset, log_time="0:01:40")
        models.append(write_tiny_detector_run(directory, dataset, opts))  # its config.yaml
        dirs.append(directory)
    yield dirs, models
    torch.set_num_threads(threads)
    unregister(dataset)


def _cost_cells(table_line: str):
    """The last three cells (params, GFLOPs, ms) of a row of the simple table."""
    return table_line.split()[-3:]


def test_cost_columns_markdown_and_cost_plot(tool, detector_runs, tmp_path, capsys):
    dirs, models = detector_runs
    markdown, plot = tmp_path / "ablation.md", tmp_path / "ablation.png"
    assert tool.main([*map(str, dirs), "--cost-images", "2", "--cost-repeats", "1",
                      "--threads", "1", "--markdown", str(markdown),
                      "--cost-plot", str(plot)]) == 0  # --cost-plot implies --cost
    out = capsys.readouterr().out
    table = out.partition("config key")[0].splitlines()
    assert table[0].split()[-6:] == ["segm/APl", "params", "(M)", "GFLOPs", "CPU", "ms/img"]
    rows = {line.split()[0]: line for line in table if line.startswith("fpn")}
    for name, model in zip(("fpn16", "fpn32"), models):
        params, gflops, ms = _cost_cells(rows[name])
        assert params == f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}"
        assert float(gflops) > 0 and float(ms) > 0
    assert float(_cost_cells(rows["fpn32"])[1]) > float(_cost_cells(rows["fpn16"])[1])
    assert torch.get_num_threads() == 1

    lines = markdown.read_text().splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")][-3:] == [
        "params (M)", "GFLOPs", "CPU ms/img"]
    md_rows = {line.split("|")[1].strip(): line for line in lines[2:4]}
    for name in ("fpn16", "fpn32"):  # the same numbers as printed
        assert [c.strip() for c in md_rows[name].strip("|").split("|")][-3:] == \
            _cost_cells(rows[name])

    assert "bbox/AP against CPU time written to" in out
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size == (700, 500)
        assert np.asarray(im.convert("L")).std() > 10


def test_cost_errors_name_the_file(tool, tmp_path, capsys):
    run = make_fake_run(tmp_path / "nockpt")
    assert tool.main([str(run), "--cost"]) == 1
    err = capsys.readouterr().err
    assert f"No checkpoint in {run}" in err and "model_final.pth" in err
    (run / "config.yaml").unlink()
    assert tool.main([str(run), "--cost"]) == 1
    assert f"No config at {run / 'config.yaml'}" in capsys.readouterr().err
    # Nothing to plot: checked before the (slow) measuring.
    assert tool.main([str(run), "--metrics", "keypoints/AP", "--cost-plot",
                      str(tmp_path / "p.png")]) == 1
    assert "no metric to plot" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()
