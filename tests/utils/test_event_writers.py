"""Event writers: JSON lines, the console line, TensorBoard event files."""

import json
import logging
import os
import re

import pytest
import torch

from segtron.utils.events import (
    CommonMetricPrinter,
    EventStorage,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
)


@pytest.fixture
def events_log(caplog, monkeypatch):
    """caplog at INFO for segtron.utils.events, whatever setup_logger did to propagation."""
    for name in ("segtron", "segtron.utils", "segtron.utils.events"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.INFO, logger="segtron.utils.events")
    return caplog


def test_base_writer_needs_write():
    with pytest.raises(NotImplementedError, match="write"):
        EventWriter().write()
    EventWriter().close()


def test_json_writer_lines(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path), window_size=3)
    with EventStorage() as storage:
        for it in range(4):
            storage.iter = it
            storage.put_scalar("loss", float(it))  # smoothed: median of the last 3
            storage.put_scalar("lr", 0.1 * (it + 1), smoothing_hint=False)
            if it == 1:
                storage.put_scalar("bbox/AP", 40.0, smoothing_hint=False)
                writer.write()
        writer.write()
        writer.write()  # nothing new: no line
    writer.close()

    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"iteration": 1, "loss": 0.5, "lr": 0.2, "bbox/AP": 40.0},
        {"iteration": 3, "loss": 2.0, "lr": 0.4},
    ]

    # Appends to an existing file.
    writer = JSONWriter(str(path))
    with EventStorage(10) as storage:
        storage.put_scalar("loss", 1.0)
        writer.write()
    writer.close()
    assert json.loads(path.read_text().splitlines()[-1]) == {"iteration": 10, "loss": 1.0}


def test_json_writer_writes_one_line_per_iteration_when_values_lag(tmp_path):
    path = tmp_path / "metrics.json"
    writer = JSONWriter(str(path))
    with EventStorage(5) as storage:
        storage.put_scalar("total_loss", 1.0, cur_iter=4)
        storage.put_scalar("time", 0.2)
        writer.write()
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [{"iteration": 4, "total_loss": 1.0}, {"iteration": 5, "time": 0.2}]


def test_json_writer_discard_from_drops_later_rows_and_a_cut_line(tmp_path, events_log):
    """What a run killed mid-write leaves (rows past the resume point, a half line) goes; the
    file is replaced, not edited in place, and new rows follow on their own lines."""
    path = tmp_path / "metrics.json"
    rows = [json.dumps({"iteration": it, "loss": float(it)}) for it in (1, 3, 5, 7)]
    path.write_text("\n".join(rows) + '\n{"iteration": 9, "lo')
    writer = JSONWriter(str(path))
    inode = path.stat().st_ino
    writer.discard_from(6)
    assert path.stat().st_ino != inode  # a new file renamed into place
    assert "dropped 1 row(s) of iterations >= 6 and 1 line(s) cut short" in events_log.text
    with EventStorage(6) as storage:
        storage.iter = 7
        storage.put_scalar("loss", 70.0)
        writer.write()
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["iteration"], r["loss"]) for r in records] == [(1, 1), (3, 3), (5, 5), (7, 70)]
    assert os.listdir(tmp_path) == ["metrics.json"]  # no temporary file left


def test_json_writer_discard_from_leaves_a_clean_file_alone(tmp_path, events_log):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 1}\n{"iteration": 3}\n')
    writer = JSONWriter(str(path))
    inode = path.stat().st_ino
    writer.discard_from(4)
    writer.close()
    assert path.stat().st_ino == inode and "dropped" not in events_log.text
    assert path.read_text() == '{"iteration": 1}\n{"iteration": 3}\n'


def _fill(storage, iterations, with_time=True):
    for it in iterations:
        storage.iter = it
        storage.put_scalars(total_loss=1.0 + it, loss_cls=0.5, data_time=0.01)
        storage.put_scalar("lr", 0.0025, smoothing_hint=False)
        if with_time:
            storage.put_scalar("time", 0.5)


def test_common_metric_printer_line(events_log):
    printer = CommonMetricPrinter(max_iter=100, window_size=20)
    with EventStorage() as storage:
        _fill(storage, range(20))
        printer.write()
        line = events_log.records[-1].getMessage()
        eta_seconds = storage.history("eta_seconds").latest()
    assert eta_seconds == pytest.approx(0.5 * 80)
    assert line.startswith(" eta: 0:00:40  iter: 19  ")
    # Losses are medians over the window: total_loss values 1..20 -> median 10.5.
    assert "  total_loss: 10.5  loss_cls: 0.5  " in line, line
    assert "time: 0.5000  last_time: 0.5000  data_time: 0.0100  last_data_time: 0.0100" in line
    assert "lr: 0.0025" in line
    if not torch.cuda.is_available():
        assert "max_mem" not in line


def test_common_metric_printer_without_time_and_after_training(events_log):
    printer = CommonMetricPrinter(max_iter=10)
    with EventStorage() as storage:
        _fill(storage, [0], with_time=False)
        printer.write()
        first = events_log.records[-1].getMessage()
        _fill(storage, [1, 2], with_time=False)
        printer.write()
        second = events_log.records[-1].getMessage()
        storage.iter = 10  # the extra write after training: nothing printed
        count = len(events_log.records)
        printer.write()
        assert len(events_log.records) == count
    assert first.startswith(" iter: 0  ") and "last_time" not in first
    assert re.match(r" eta: \d+:\d\d:\d\d  iter: 2  ", second), second  # from the write rate

    with EventStorage() as storage:  # no max_iter, no lr
        storage.put_scalar("loss_box", 0.25)
        CommonMetricPrinter().write()
    # Where CUDA is available the line ends with the peak GPU memory, e.g. "  max_mem: 0M".
    max_mem = r"  max_mem: \d+M" if torch.cuda.is_available() else ""
    line = events_log.records[-1].getMessage().strip()
    assert re.fullmatch(r"iter: 0  loss_box: 0\.25  lr: N/A" + max_mem, line), line


def test_tensorboard_writer_writes_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = TensorboardXWriter(str(tmp_path), window_size=1)
    assert os.listdir(tmp_path) == []  # nothing created until the first write
    with EventStorage() as storage:
        for it in range(3):
            storage.iter = it
            storage.put_scalar("total_loss", 3.0 - it)
        storage.put_image("vis", torch.rand(3, 8, 8))
        storage.put_histogram("weights", torch.randn(100), bins=10)
        writer.write()
        assert storage.vis_data == []  # images are dropped once written
    writer.close()

    files = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
    assert len(files) == 1
    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("total_loss")] == [(2, 1.0)]
    assert acc.Tags()["images"] == ["vis"]
    assert acc.Tags()["histograms"] == ["weights"]


def _tensorboard_run(log_dir, iterations, value_of, discard_from=None):
    writer = TensorboardXWriter(str(log_dir), window_size=1)
    if discard_from is not None:
        writer.discard_from(discard_from)
    with EventStorage(iterations[0]) as storage:
        for it in iterations:
            storage.iter = it
            storage.put_scalar("total_loss", value_of(it))
            writer.write()
    writer.close()


def test_tensorboard_writer_discard_from_hides_the_killed_runs_later_events(tmp_path):
    """A run killed at iteration 9 after a checkpoint at 5, resumed from 5: TensorBoard shows
    iterations 0-4 of the first run and 5-7 of the second, each once."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _tensorboard_run(tmp_path, list(range(10)), lambda it: 100.0 + it)
    time.sleep(1.1)  # event file names carry the second they were opened in
    _tensorboard_run(tmp_path, [5, 6, 7], lambda it: 200.0 + it, discard_from=5)
    assert len([f for f in os.listdir(tmp_path) if f.startswith("events.out")]) == 2
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("total_loss")] == (
        [(it, 100.0 + it) for it in range(5)] + [(it, 200.0 + it) for it in (5, 6, 7)])


def test_tensorboard_writer_without_discard_keeps_both_runs(tmp_path):
    """The same two runs without discard_from: TensorBoard shows the old 5-9 as well (what
    the purge above prevents)."""
    import time

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _tensorboard_run(tmp_path, list(range(10)), lambda it: 100.0 + it)
    time.sleep(1.1)
    _tensorboard_run(tmp_path, [5, 6, 7], lambda it: 200.0 + it)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("total_loss")]
    assert steps.count(5) == 2 and 9 in steps
