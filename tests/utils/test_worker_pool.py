"""segtron.utils.worker_pool: the hidden ``__main__`` and the spawned pool (the scripts that
need them are in tests/data/test_first_use_without_main_guard.py)."""

import sys

import pytest

from segtron.utils.worker_pool import can_start_workers, main_module_hidden, spawn_pool


def test_main_module_is_hidden_only_inside_the_block():
    main = sys.modules["__main__"]
    with main_module_hidden():
        hidden = sys.modules["__main__"]
        assert hidden is not main and not hasattr(hidden, "__file__")
        assert getattr(hidden, "__spec__", None) is None  # nothing for a worker to re-run
    assert sys.modules["__main__"] is main
    with pytest.raises(KeyError):
        with main_module_hidden():
            raise KeyError("the block fails")
    assert sys.modules["__main__"] is main


def test_spawn_pool_runs_module_functions_and_needs_a_worker():
    assert can_start_workers()  # pytest's process is no daemon
    with spawn_pool(1) as pool:
        assert pool.map(abs, [-1, 2, -3]) == [1, 2, 3]
    with pytest.raises(ValueError, match="at least 1 worker"):
        spawn_pool(0)
