"""tools/compare_runs.py as a script on fake OUTPUT_DIRs: the metrics table, the differing
config keys, the curves PNG, one run, and errors. (It imports no torch: ~1-2 s per run.)"""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT
from tests.utils.fake_runs import make_fake_run


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
