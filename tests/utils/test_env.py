"""seed_all_rng reproducibility, TORCH_VERSION, and setup_environment's custom module hook."""

import logging
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from segtron.utils import env
from segtron.utils.env import TORCH_VERSION, seed_all_rng, setup_environment


@pytest.fixture(autouse=True)
def _restore_hash_seed(monkeypatch):
    """seed_all_rng sets PYTHONHASHSEED: undo it after each test (it is process-wide)."""
    monkeypatch.setenv("PYTHONHASHSEED", "0")
    monkeypatch.delenv("PYTHONHASHSEED")


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_seed_all_rng_reproducible():
    assert seed_all_rng(1234) == 1234
    first = _draws()
    seed_all_rng(1234)
    assert _draws() == first
    seed_all_rng(4321)
    assert _draws() != first


def test_seed_all_rng_large_seed_is_accepted():
    # Larger than numpy's 2**32 limit: still seeds everything reproducibly.
    seed_all_rng(2**40 + 5)
    first = _draws()
    seed_all_rng(2**40 + 5)
    assert _draws() == first


@pytest.mark.parametrize("seed", [2**32 + 7, 2**63 - 1])
def test_child_python_starts_after_a_large_seed(seed):
    """A seed past 2**32 (a DataLoader worker's) leaves a PYTHONHASHSEED a child Python accepts."""
    seed_all_rng(seed)
    assert os.environ["PYTHONHASHSEED"] == str(seed % 2**32)
    child = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, text=True)
    assert child.returncode == 0, child.stderr


@pytest.mark.parametrize("seed", [None, -1])
def test_seed_all_rng_generated_seed(seed, caplog):
    with caplog.at_level(logging.INFO, logger="segtron.utils.env"):
        used = seed_all_rng(seed)
    assert isinstance(used, int) and 0 <= used < 2**31
    assert str(used) in caplog.text
    first = _draws()
    seed_all_rng(used)  # the returned seed reproduces the run
    assert _draws() == first


def test_available_cpu_cores_is_the_affinity_mask(monkeypatch):
    assert env.available_cpu_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert env.available_cpu_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert env.available_cpu_cores() == 1


def test_torch_version():
    assert isinstance(TORCH_VERSION, tuple) and len(TORCH_VERSION) == 2
    assert all(isinstance(x, int) for x in TORCH_VERSION)
    assert ".".join(map(str, TORCH_VERSION)) == ".".join(torch.__version__.split(".")[:2])
    assert env._parse_torch_version("2.14.1+cu130") == (2, 14)
    assert env._parse_torch_version("2.6.0a0+git1234") == (2, 6)


@pytest.fixture
def fresh_env(monkeypatch):
    """Let setup_environment run again, with no env-module variables set."""
    monkeypatch.setattr(env, "_ENV_SETUP_DONE", False)
    for key in env._ENV_MODULE_VARS + env._DISABLE_CV2_VARS:
        monkeypatch.delenv(key, raising=False)


@pytest.mark.parametrize("var", ["SEGTRON_ENV_MODULE", "DETECTRON2_ENV_MODULE"])
def test_setup_environment_runs_custom_module_once(var, fresh_env, monkeypatch, tmp_path):
    marker = tmp_path / "calls.txt"
    module_file = tmp_path / "my_env.py"
    module_file.write_text(
        "def setup_environment():\n"
        f"    with open({str(marker)!r}, 'a') as f:\n"
        "        f.write('called\\n')\n"
    )
    monkeypatch.setenv(var, str(module_file))
    setup_environment()
    setup_environment()  # idempotent
    assert marker.read_text() == "called\n"


def test_setup_environment_dotted_module(fresh_env, monkeypatch, tmp_path):
    (tmp_path / "site_env_mod.py").write_text(
        "CALLS = []\ndef setup_environment():\n    CALLS.append(1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SEGTRON_ENV_MODULE", "site_env_mod")
    setup_environment()
    import site_env_mod

    assert site_env_mod.CALLS == [1]


def test_custom_module_without_setup_function(fresh_env, monkeypatch, tmp_path):
    module_file = tmp_path / "empty_env.py"
    module_file.write_text("X = 1\n")
    monkeypatch.setenv("DETECTRON2_ENV_MODULE", str(module_file))
    with pytest.raises(AttributeError, match="setup_environment"):
        setup_environment()


def test_setup_environment_without_custom_module(fresh_env):
    setup_environment()
    assert env._ENV_SETUP_DONE


def test_fixup_module_metadata(monkeypatch):
    class Thing:
        pass

    Thing.__module__ = "mypkg.sub.impl"
    env.fixup_module_metadata("mypkg.sub", {"Thing": Thing})
    assert Thing.__module__ == "mypkg.sub.impl"  # no-op outside doc builds
    monkeypatch.setattr(env, "DOC_BUILDING", True)
    env.fixup_module_metadata("mypkg.sub", {"Thing": Thing, "__all__": ["Thing"]})
    assert Thing.__module__ == "mypkg.sub"
