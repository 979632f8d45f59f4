"""setup_logger files/console/ranks/abbreviations, rate-limited logging, and the table helpers."""

import logging
import sys
import uuid

import pytest

from segtron.utils import logger as logger_mod
from segtron.utils.logger import (
    create_small_table,
    create_table_with_header,
    log_every_n,
    log_every_n_seconds,
    log_first_n,
    setup_logger,
)


@pytest.fixture
def restore_loggers():
    """Snapshot the named loggers' handlers/level/propagate and restore them after the test."""
    saved = {}

    def track(name):
        log = logging.getLogger(name)
        if name not in saved:
            saved[name] = (list(log.handlers), log.level, log.propagate)
        return name

    yield track
    for name, (handlers, level, propagate) in saved.items():
        log = logging.getLogger(name)
        for handler in list(log.handlers):
            if handler not in handlers:
                log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def _unique(prefix="segtron_test"):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _read(path):
    with open(path) as f:
        return f.read()


def test_file_handler_directory_output(tmp_path, restore_loggers, capsys):
    name = restore_loggers(_unique())
    log = setup_logger(str(tmp_path / "out"), name=name)
    assert log.level == logging.DEBUG and log.propagate is False
    logging.getLogger(name + ".child").debug("debug line")
    log.info("info line")
    text = _read(tmp_path / "out" / "log.txt")
    # The file gets DEBUG and above with full logger names and the level.
    assert f"{name}.child DEBUG: debug line" in text
    assert f"{name} INFO: info line" in text
    # The console (rank 0) gets INFO and above only.
    out = capsys.readouterr().out
    assert "info line" in out and "debug line" not in out


@pytest.mark.parametrize("filename", ["train.log", "metrics.txt"])
def test_file_handler_explicit_file(tmp_path, restore_loggers, filename):
    name = restore_loggers(_unique())
    target = tmp_path / "nested" / "dir" / filename
    setup_logger(str(target), name=name, configure_stdout=False)
    logging.getLogger(name).warning("to the file")
    assert "to the file" in _read(target)


def test_rank_files_and_no_console_on_other_ranks(tmp_path, restore_loggers, capsys):
    name = restore_loggers(_unique())
    log = setup_logger(str(tmp_path), distributed_rank=2, name=name)
    log.info("from rank two")
    assert "from rank two" in _read(tmp_path / "log.txt.rank2")
    assert not (tmp_path / "log.txt").exists()
    assert "from rank two" not in capsys.readouterr().out
    assert not any(h.stream is sys.stdout for h in log.handlers)

    other = restore_loggers(_unique())
    setup_logger(str(tmp_path / "run.log"), distributed_rank=1, name=other).info("rank one")
    assert "rank one" in _read(tmp_path / "run.log.rank1")


def test_repeated_setup_does_not_duplicate(tmp_path, restore_loggers, capsys):
    name = restore_loggers(_unique())
    setup_logger(str(tmp_path), name=name)
    setup_logger(str(tmp_path), name=name)
    setup_logger(name=name)  # console only: must not add a second console handler
    log = logging.getLogger(name)
    assert len(log.handlers) == 2
    log.info("exactly once")
    assert _read(tmp_path / "log.txt").count("exactly once") == 1
    assert capsys.readouterr().out.count("exactly once") == 1


def test_log_file_opened_once(tmp_path, restore_loggers):
    first, second = restore_loggers(_unique()), restore_loggers(_unique())
    a = setup_logger(str(tmp_path), name=first, configure_stdout=False)
    b = setup_logger(str(tmp_path), name=second, configure_stdout=False)
    (ha,), (hb,) = a.handlers, b.handlers
    assert ha.stream is hb.stream  # one cached stream per file
    a.info("line from a")
    b.info("line from b")
    lines = _read(tmp_path / "log.txt").splitlines()
    assert len(lines) == 2


def test_abbreviated_names(restore_loggers, capsys):
    for root, abbrev in [("segtron", "st"), ("detectron2", "d2")]:
        restore_loggers(root)
        setup_logger(name=root, color=True)
        logging.getLogger(root + ".engine.train_loop").info("hello %s", root)
        out = capsys.readouterr().out
        assert f"{abbrev}.engine.train_loop]: hello {root}" in out
        assert f"{root}.engine" not in out

    custom = restore_loggers(_unique())
    setup_logger(name=custom, abbrev_name="cx")
    logging.getLogger(custom + ".sub").info("custom")
    assert "cx.sub]: custom" in capsys.readouterr().out

    # abbrev_name="" drops the root package from console names.
    bare = restore_loggers(_unique())
    setup_logger(name=bare, abbrev_name="")
    logging.getLogger(bare + ".modeling.rpn").info("bare")
    assert " modeling.rpn]: bare" in capsys.readouterr().out


def test_console_level_tags_and_plain_mode(tmp_path, restore_loggers, capsys):
    name = restore_loggers(_unique())
    setup_logger(str(tmp_path), name=name, color=True)
    logging.getLogger(name).warning("careful")
    out = capsys.readouterr().out
    assert "WARNING" in out and "careful" in out
    # Colour codes never reach the file.
    assert "\x1b[" not in _read(tmp_path / "log.txt")

    plain = restore_loggers(_unique())
    setup_logger(name=plain, color=False)
    logging.getLogger(plain).error("broken")
    out = capsys.readouterr().out
    assert f"{plain} ERROR: broken" in out and "\x1b[" not in out


def test_enable_propagation(restore_loggers, caplog):
    name = restore_loggers(_unique())
    setup_logger(name=name, enable_propagation=True, configure_stdout=False)
    with caplog.at_level(logging.INFO):
        logging.getLogger(name).info("propagated")
    assert "propagated" in caplog.text


def _call_first_n(n, **kwargs):
    log_first_n(logging.INFO, "first-n message", n, **kwargs)


def test_log_first_n(caplog):
    caplog.set_level(logging.DEBUG)
    for _ in range(5):
        _call_first_n(2, name="segtron_test_first_n")
    assert caplog.text.count("first-n message") == 2
    # The logger defaults to the caller's module.
    assert {r.name for r in caplog.records} == {"segtron_test_first_n"}

    caplog.clear()
    text = _unique("message_key")
    log_first_n(logging.INFO, text, key="message")
    log_first_n(logging.INFO, text, key="message")  # a different call site, same message
    assert caplog.text.count(text) == 1
    log_first_n(logging.INFO, "default logger name")
    assert caplog.records[-1].name == __name__

    with pytest.raises(ValueError, match="key"):
        log_first_n(logging.INFO, "x", key="line")


def test_log_every_n(caplog):
    caplog.set_level(logging.DEBUG)
    for i in range(7):
        log_every_n(logging.INFO, f"every-3 #{i}", 3)
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["every-3 #0", "every-3 #3", "every-3 #6"]


def test_log_every_n_seconds(caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    clock = [1000.0]
    monkeypatch.setattr(logger_mod.time, "time", lambda: clock[0])

    def call(i):
        log_every_n_seconds(logging.INFO, f"tick {i}", 5)

    for i, now in enumerate([1000.0, 1002.0, 1004.9, 1005.0, 1007.0, 1011.0]):
        clock[0] = now
        call(i)
    assert [r.getMessage() for r in caplog.records] == ["tick 0", "tick 3", "tick 5"]


def test_create_small_table():
    table = create_small_table({"AP": 37.91234, "AP50": 58.0, "name": "x"})
    lines = table.splitlines()
    assert len(lines) == 3  # header, separator, one row
    assert "37.912" in lines[2] and "58.000" in lines[2] and "37.9123" not in table
    assert lines[0].startswith("|") and "AP50" in lines[0]


def test_create_table_with_header():
    per_class = {f"class{i}": float(i) + 0.5 for i in range(5)}
    table = create_table_with_header(per_class, headers=["category", "AP"])
    lines = table.splitlines()
    # 6 columns = 3 (category, AP) pairs per row; 5 pairs -> 2 rows.
    assert lines[0].count("category") == 3 and lines[0].count("AP") == 3
    assert len(lines) == 4
    assert "class0" in lines[2] and "0.500" in lines[2] and "class4" in lines[3]

    small = create_table_with_header({"a": 1.0})
    assert small.splitlines()[0].count("category") == 1

    with pytest.raises(ValueError, match="multiple"):
        create_table_with_header(per_class, headers=["a", "b", "c", "d"])


def test_log_buffer_size_constants(monkeypatch):
    assert logger_mod.D2_LOG_BUFFER_SIZE_KEY == "D2_LOG_BUFFER_SIZE"
    monkeypatch.delenv("SEGTRON_LOG_BUFFER_SIZE", raising=False)
    monkeypatch.delenv(logger_mod.D2_LOG_BUFFER_SIZE_KEY, raising=False)
    assert logger_mod._log_buffer_size("s3://bucket/log.txt") == logger_mod.DEFAULT_LOG_BUFFER_SIZE
    assert logger_mod._log_buffer_size("/tmp/log.txt") == -1  # local files: Python's default
    monkeypatch.setenv(logger_mod.D2_LOG_BUFFER_SIZE_KEY, "4096")
    assert logger_mod._log_buffer_size("s3://bucket/log.txt") == 4096


def test_log_api_usage_accepts_an_identifier():
    assert logger_mod._log_api_usage("modeling.meta_arch.GeneralizedRCNN") is None
