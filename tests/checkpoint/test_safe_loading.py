"""Checkpoints and pickles load without running code from them; unreadable files and full
disks fail naming the file; ``--resume`` falls back past a broken newest checkpoint."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from segtron.checkpoint import DetectionCheckpointer
from segtron.utils.safe_unpickling import (
    UNSAFE_UNPICKLING_ENV,
    UnreadableFileError,
    UnsafePickleError,
    load_pickle,
)

from .tiny_models import TINY, TinyResNet, assert_same_weights, randomize


class _MakesDirectoryWhenUnpickled:
    """Unpickling this calls ``os.mkdir(marker)``: a harmless stand-in for ``os.system``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def source():
    return randomize(TinyResNet(**TINY))


@pytest.fixture(autouse=True)
def _no_opt_in(monkeypatch):
    monkeypatch.delenv(UNSAFE_UNPICKLING_ENV, raising=False)


def _hostile_files(tmp_path, source):
    marker = tmp_path / "code_ran"
    payload = {"model": source.state_dict(), "x": _MakesDirectoryWhenUnpickled(marker)}
    torch.save(payload, tmp_path / "hostile.pth")
    with open(tmp_path / "hostile.pkl", "wb") as f:
        payload = {"model": {k: v.numpy() for k, v in source.state_dict().items()},
                   "__author__": "Detectron2 Model Zoo", "x": _MakesDirectoryWhenUnpickled(marker)}
        pickle.dump(payload, f)
    return marker


@pytest.mark.parametrize("name", ["hostile.pth", "hostile.pkl"])
def test_hostile_checkpoint_is_refused_naming_file_and_global(tmp_path, source, name):
    marker = _hostile_files(tmp_path, source)
    with pytest.raises(UnsafePickleError) as info:
        DetectionCheckpointer(TinyResNet(**TINY)).load(str(tmp_path / name))
    assert not marker.exists()
    message = str(info.value)
    assert str(tmp_path / name) in message
    assert "mkdir" in info.value.global_name and "mkdir" in message
    assert UNSAFE_UNPICKLING_ENV in message  # says how to opt in


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_full_unpickling_is_an_explicit_opt_in(tmp_path, source, monkeypatch, how):
    marker = _hostile_files(tmp_path, source)
    if how == "argument":
        checkpointer = DetectionCheckpointer(TinyResNet(**TINY), allow_unsafe_unpickling=True)
    else:
        monkeypatch.setenv(UNSAFE_UNPICKLING_ENV, "1")
        checkpointer = DetectionCheckpointer(TinyResNet(**TINY))
    checkpointer.load(str(tmp_path / "hostile.pth"))
    assert_same_weights(checkpointer.model, source.state_dict())
    assert marker.exists()  # what the opt-in allows


def test_explicit_false_overrides_the_environment(tmp_path, source, monkeypatch):
    marker = _hostile_files(tmp_path, source)
    monkeypatch.setenv(UNSAFE_UNPICKLING_ENV, "1")
    checkpointer = DetectionCheckpointer(TinyResNet(**TINY), allow_unsafe_unpickling=False)
    with pytest.raises(UnsafePickleError):
        checkpointer.load(str(tmp_path / "hostile.pth"))
    assert not marker.exists()


def test_python2_style_numpy_pickle_loads(tmp_path):
    """Protocol 2 numpy pickles name ``_codecs.encode``; legacy Caffe2 files look like this."""
    blobs = {"conv1_w": np.arange(6, dtype=np.float32).reshape(2, 3), "lr": np.float64(0.5)}
    path = tmp_path / "legacy.pkl"
    with open(path, "wb") as f:
        pickle.dump(blobs, f, protocol=2)
    with open(path, "rb") as f:
        loaded = load_pickle(f, str(path))
    np.testing.assert_array_equal(loaded["conv1_w"], blobs["conv1_w"])
    assert loaded["lr"] == 0.5


def test_hostile_pickle_with_python2_module_names_is_refused(tmp_path):
    """``__builtin__.eval`` (a Python 2 name) maps to ``builtins.eval``: still refused."""
    path = tmp_path / "py2.pkl"
    path.write_bytes(b"c__builtin__\neval\n(S'1+1'\ntR.")
    with open(path, "rb") as f:
        with pytest.raises(UnsafePickleError, match="__builtin__.eval"):
            load_pickle(f, str(path))


_NOISE = random.Random(0).randbytes(2048)


@pytest.mark.parametrize("name, content", [
    ("random.pth", _NOISE),
    ("empty.pth", b""),
    ("random.pkl", b"\x80\x04not a pickle at all" + _NOISE[:64]),
    ("page.pth", b"<html><body>404 Not Found</body></html>"),
], ids=["random_pth", "empty_pth", "random_pkl", "html_pth"])
def test_unreadable_file_names_the_file_in_one_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableFileError) as info:
        DetectionCheckpointer(TinyResNet(**TINY)).load(str(path))
    assert str(path) in str(info.value) and f"({len(content)} bytes)" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one traceback


def _two_checkpoints(tmp_path, source):
    saver = DetectionCheckpointer(source, str(tmp_path))
    saver.save("model_0000009", iteration=9)
    first = {k: v.clone() for k, v in source.state_dict().items()}
    os.utime(tmp_path / "model_0000009.pth", (1_000_000, 1_000_000))
    with torch.no_grad():
        source.stem.conv1.weight.add_(1.0)
    saver.save("model_0000019", iteration=19)
    return first


def test_resume_falls_back_past_a_truncated_newest_checkpoint(tmp_path, source, ckpt_log):
    first = _two_checkpoints(tmp_path, source)
    newest = tmp_path / "model_0000019.pth"
    newest.write_bytes(newest.read_bytes()[:300])
    target = TinyResNet(**TINY)
    extra = DetectionCheckpointer(target, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    assert_same_weights(target, first)
    assert str(newest) in ckpt_log.text
    assert "Resumed from " + str(tmp_path / "model_0000009.pth") in ckpt_log.text


def test_resume_when_last_checkpoint_names_a_missing_file(tmp_path, source, ckpt_log):
    _two_checkpoints(tmp_path, source)
    (tmp_path / "last_checkpoint").write_text("model_0000029.pth")
    target = TinyResNet(**TINY)
    extra = DetectionCheckpointer(target, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 19  # the newest file that exists
    assert "model_0000029.pth" in ckpt_log.text and "does not exist" in ckpt_log.text
    assert "MODEL.WEIGHTS" not in ckpt_log.text


def test_resume_with_no_readable_checkpoint_lists_each_and_the_fix(tmp_path, source):
    _two_checkpoints(tmp_path, source)
    for name in ("model_0000009.pth", "model_0000019.pth"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(FileNotFoundError) as info:
        DetectionCheckpointer(TinyResNet(**TINY), str(tmp_path)).resume_or_load("x.pth")
    message = str(info.value)
    assert "model_0000009.pth" in message and "model_0000019.pth" in message
    assert "last_checkpoint" in message and "without --resume" in message


def test_full_disk_while_saving_names_the_file_and_the_fix(tmp_path, source, monkeypatch):
    saver = DetectionCheckpointer(source, str(tmp_path))
    saver.save("model_0000001", iteration=1)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as info:
        saver.save("model_0000002", iteration=2)
    message = str(info.value)
    assert str(tmp_path / "model_0000002.pth") in message
    assert "MiB free" in message and "OUTPUT_DIR" in message and "--resume" in message
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"


def test_resume_false_loads_the_given_file_not_the_newest(tmp_path, source):
    first = _two_checkpoints(tmp_path, source)
    target = TinyResNet(**TINY)
    extra = DetectionCheckpointer(target, str(tmp_path)).resume_or_load(
        str(tmp_path / "model_0000009.pth"), resume=False)
    assert extra["iteration"] == 9
    assert_same_weights(target, first)


def test_hostile_proposal_file_is_refused(tmp_path):
    """``DATASETS.PROPOSAL_FILES_*`` pickles go through the same allowlist."""
    from segtron.data.build import load_proposals_into_dataset

    marker = tmp_path / "code_ran"
    path = tmp_path / "proposals.pkl"
    with open(path, "wb") as f:
        pickle.dump({"ids": [1], "boxes": [np.zeros((1, 4), np.float32)],
                     "objectness_logits": [np.zeros(1, np.float32)],
                     "x": _MakesDirectoryWhenUnpickled(marker)}, f)
    with pytest.raises(UnsafePickleError, match="proposals.pkl"):
        load_proposals_into_dataset([{"image_id": 1}], str(path))
    assert not marker.exists()
