"""segtron.utils.run_analysis on fake OUTPUT_DIRs: metrics.json read back (a truncated last
line skipped with a warning), curves, final results, training time, config differences and
the curves picture."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

from segtron.utils import run_analysis
from segtron.utils.run_analysis import (
    config_differences,
    final_results,
    is_evaluation_key,
    last_iteration,
    load_config,
    load_metrics,
    plot_runs,
    run_names,
    smooth,
    training_curves,
    training_time,
)
from tests.utils.fake_runs import EVAL_ITERS, LOSS_NAMES, MAX_ITER, PERIOD, make_fake_run


@pytest.fixture
def log(caplog, monkeypatch):
    """caplog for segtron loggers, whatever an earlier setup_logger did to propagation."""
    for name in ("segtron", "segtron.utils"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.WARNING, logger=run_analysis.__name__)
    return caplog


@pytest.fixture
def two_runs(tmp_path):
    """Two runs differing in SOLVER.BASE_LR and MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE; the first
    crashed mid-write (truncated last line) and has a log with its training time."""
    a = make_fake_run(tmp_path / "baseline", truncated_last_line=True, log_time="0:01:40")
    b = make_fake_run(tmp_path / "lr0.02", base_lr=0.02, batch_size_per_image=256, ap_offset=3)
    return a, b


# ------------------------------------------------------------------------------- load_metrics


def test_load_metrics_skips_truncated_last_line_with_warning(two_runs, log):
    records = load_metrics(two_runs[0])
    num_train_lines = MAX_ITER // PERIOD
    assert len(records) == num_train_lines + 1  # + the after-training evaluation line
    assert all(isinstance(r, dict) and "iteration" in r for r in records)
    assert "truncated" in log.text and "metrics.json" in log.text and "line 12" in log.text
    log.clear()
    load_metrics(two_runs[1])  # intact: no warning
    assert log.text == ""


def test_load_metrics_accepts_the_file_path(two_runs):
    assert load_metrics(str(two_runs[1] / "metrics.json")) == load_metrics(two_runs[1])


def test_load_metrics_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_metrics(tmp_path / "nothing_here")
    assert str(tmp_path / "nothing_here" / "metrics.json") in str(e.value)
    assert "OUTPUT_DIR" in str(e.value)


def test_load_metrics_recovers_record_after_partial_line(tmp_path, log):
    # A run killed mid-write and resumed: its first new record is glued to the partial one.
    (tmp_path / "metrics.json").write_text(
        '{"iteration": 19, "total_loss": 2.0}\n'
        '{"iteration": 39, "total_lo{"iteration": 39, "total_loss": 1.5}\n'
        "\n"
        '{"iteration": 59, "total_loss": 1.0}\n'
        "[1, 2]\n"
        '{"iteration": 79, "total_loss": 0.5}\n'
    )
    records = load_metrics(tmp_path)
    assert [r["iteration"] for r in records] == [19, 39, 59, 79]
    assert records[1]["total_loss"] == 1.5
    assert "line 5 is not a JSON object" in log.text


# ------------------------------------------------------------------------ curves and results


def test_training_curves(two_runs):
    curves = training_curves(load_metrics(two_runs[0]))
    iters, values = curves["total_loss"]
    assert iters.tolist() == list(range(PERIOD - 1, MAX_ITER, PERIOD))
    assert values.dtype == np.float64 and len(values) == len(iters)
    for name in (*LOSS_NAMES, "lr", "time", "data_time", "val_total_loss", "bbox/AP"):
        assert name in curves, name
    assert "iteration" not in curves
    assert curves["bbox/AP"][0].tolist() == list(EVAL_ITERS)  # only where it was evaluated
    assert curves["bbox/AP"][1].tolist() == [15.0, 30.0]
    assert curves["lr"][1][-1] == pytest.approx(0.01)


def test_training_curves_sorts_and_lets_later_records_win():
    records = [{"iteration": 39, "total_loss": 3.0}, {"iteration": 19, "total_loss": 4.0},
               {"iteration": 39, "total_loss": 2.0, "flag": True, "name": "x"},  # resumed
               {"total_loss": 9.0}]  # no iteration: ignored
    curves = training_curves(records)
    assert set(curves) == {"total_loss"}  # bools and strings are not scalars
    assert curves["total_loss"][0].tolist() == [19, 39]
    assert curves["total_loss"][1].tolist() == [4.0, 2.0]


@pytest.mark.parametrize("key, expected", [
    ("bbox/AP", True), ("segm/AP-circle", True), ("shapes_val/segm/AP50", True),
    ("keypoints/AP", True), ("sem_seg/mIoU", True), ("box_proposals/AR@100", True),
    ("rpn/num_pos_anchors", False), ("fast_rcnn/cls_accuracy", False), ("loss_cls", False),
    ("bbox", False),
])
def test_is_evaluation_key(key, expected):
    assert is_evaluation_key(key) is expected


def test_final_results(two_runs):
    final = final_results(load_metrics(two_runs[0]))
    assert final["bbox/AP"] == 30.0 and final["segm/AP"] == 25.0
    assert final["bbox/AP50"] == 50.0 and final["segm/APl"] == 33.0
    assert final["segm/AP-circle"] == 40.0
    assert final["val_total_loss"] == pytest.approx(0.9)  # the last one, not the first (1.05)
    assert final["val_loss_cls"] == pytest.approx(0.5)
    for training_key in ("total_loss", "loss_cls", "lr", "rpn/num_pos_anchors",
                         "fast_rcnn/cls_accuracy"):
        assert training_key not in final
    assert final_results(load_metrics(two_runs[1]))["bbox/AP"] == 33.0
    assert final_results([{"iteration": 19, "total_loss": 1.0}]) == {}


def test_last_iteration(two_runs):
    assert last_iteration(load_metrics(two_runs[0])) == MAX_ITER - 1  # the eval line aside
    assert last_iteration([]) is None


def test_training_time_from_log_else_estimated(two_runs, tmp_path):
    assert training_time(two_runs[0]) == (100.0, "log")
    seconds, source = training_time(two_runs[1])  # no log.txt: step times x iterations
    assert source == "estimate" and seconds == pytest.approx(MAX_ITER * 0.5)
    # A resumed run logs one total per session; "1 day, ..." for long ones.
    run = make_fake_run(tmp_path / "resumed")
    (run / "log.txt").write_text(
        "[11/22 00:41:19] segtron.engine.hooks INFO: Total training time: 1 day, 2:00:05 (x)\n"
        "[11/23 00:41:19] segtron.engine.hooks INFO: Total training time: 0:10:00 (x)\n")
    assert training_time(run) == (26 * 3600 + 5 + 600, "log")
    assert training_time(tmp_path / "empty") == (None, "")


# ------------------------------------------------------------------------------------ configs


def test_config_differences(two_runs, tmp_path):
    differences = config_differences(two_runs)
    assert differences == {"MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": [512, 256],
                           "SOLVER.BASE_LR": [0.01, 0.02]}  # OUTPUT_DIR differs too: ignored
    assert config_differences(two_runs[:1]) == {}
    flat = load_config(two_runs[0])
    assert flat["SOLVER.BASE_LR"] == 0.01 and flat["MODEL.DEVICE"] in ("cpu", "cuda")
    assert isinstance(flat["INPUT.MIN_SIZE_TRAIN"], list)


def test_config_differences_key_missing_in_one_run(two_runs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    text = (two_runs[0] / "config.yaml").read_text().replace("VERSION: 2\n", "")
    (other / "config.yaml").write_text(text + "EXTRA:\n  KEY: 1\n")
    assert config_differences([two_runs[0], other]) == {"EXTRA.KEY": [None, 1],
                                                        "VERSION": [2, None]}


def test_config_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        config_differences([tmp_path])
    (tmp_path / "config.yaml").write_text("- just\n- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path)


def test_run_names(tmp_path):
    assert run_names([tmp_path / "run1", str(tmp_path / "run2") + "/"]) == ["run1", "run2"]
    assert run_names([tmp_path / "a" / "out", tmp_path / "b" / "out"]) == ["a/out", "b/out"]


def test_smooth_is_centred():
    values = np.array([1.0, 4.0, 5.0, 6.0, 9.0])
    # window 3: the point and its neighbours; at the ends, the line through the two points.
    assert smooth(values, 3).tolist() == pytest.approx([1.0, 10 / 3, 5.0, 20 / 3, 9.0])
    assert smooth(values, 1).tolist() == values.tolist()
    # A straight line stays where it is everywhere, the ends included (no lag, no bend).
    line = np.arange(50, dtype=float) * -0.3 + 7
    for window in (2, 5, 20, 100):
        assert np.allclose(smooth(line, window), line)
    # A noisy falling curve: the smoothed last points stay near the trend, where a plain mean
    # over the cut-short window would sit above it.
    rng = np.random.default_rng(0)
    trend = np.linspace(2.0, 0.5, 400)
    noisy = trend + rng.normal(0, 0.05, 400)
    smoothed = smooth(noisy, 80)
    assert abs(smoothed[-1] - trend[-1]) < 0.04
    assert noisy[-41:].mean() - trend[-1] > 0.06  # the cut-short mean, ~20 points behind
    assert smooth(np.array([1.0, np.nan, 3.0]), 3).tolist() == [1.0, 2.0, 3.0]


# ----------------------------------------------------------------------------------- plotting


def _open_png(path):
    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_plot_runs_writes_a_readable_png(two_runs, tmp_path):
    path = plot_runs(two_runs, tmp_path / "plots" / "curves.png")
    pixels = _open_png(path)
    height, width = pixels.shape[:2]
    # 7 panels (total, 3 losses, lr, bbox/AP, segm/AP) in 3 columns of about 5 x 3.6 inches.
    assert 1200 <= width <= 2000 and 900 <= height <= 1500, (width, height)
    assert pixels.std() > 10  # drawn on, not blank
    # Both runs' colours (matplotlib's tab10 blue and orange) are in the picture.
    for rgb in ((31, 119, 180), (255, 127, 14)):
        assert np.all(pixels == rgb, axis=-1).sum() > 100, rgb


def test_plot_runs_without_evaluation_has_fewer_panels(tmp_path):
    run = tmp_path / "noeval"
    run.mkdir()
    lines = [{"iteration": i, "total_loss": 1.0 / (i + 1), "loss_cls": 0.5, "lr": 0.01}
             for i in range(19, 400, 20)]
    (run / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    pixels = _open_png(plot_runs([run], tmp_path / "one.png", smoothing=5))
    assert pixels.shape[0] < 900  # one row: total loss, loss_cls, lr


def test_plot_panels_include_f1max_when_evaluated(tmp_path):
    with_f1 = training_curves(load_metrics(make_fake_run(tmp_path / "f1", with_f1max=True)))
    without = training_curves(load_metrics(make_fake_run(tmp_path / "plain")))
    titles = [title for title, _, _ in run_analysis._panels([without, with_f1])]
    assert titles[-4:] == ["bbox/AP", "segm/AP", "bbox/F1max", "segm/F1max"]
    assert "bbox/F1max" not in [title for title, _, _ in run_analysis._panels([without])]
    pixels = _open_png(plot_runs([tmp_path / "plain", tmp_path / "f1"], tmp_path / "f1.png"))
    assert pixels.std() > 10


def test_plot_runs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        plot_runs([tmp_path / "missing"], tmp_path / "x.png")
    (tmp_path / "metrics.json").write_text('{"iteration": 1, "time": 0.1}\n')
    with pytest.raises(ValueError, match="Nothing to plot"):
        plot_runs([tmp_path], tmp_path / "x.png")
