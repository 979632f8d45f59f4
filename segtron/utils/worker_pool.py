"""Process pools for preparing data, safe to start from any script.

Data is often prepared on first use, e.g. by a script that calls ``DatasetCatalog.get(...)`` at
top level, without an ``if __name__ == "__main__"`` guard. Workers started with "spawn" (or
"forkserver", Python 3.14's default on Linux) re-run the parent's main script unless told there
is none: such a script would then prepare the data again in every worker, which fails, and the
pool replaces the worker, forever. ``spawn_pool`` hides ``__main__`` while its workers start, so
they import only the modules their work needs.

Workers are spawned rather than forked: a fork of a process whose OpenCV or OpenMP thread pools
are running can inherit a held lock and hang in its first OpenCV call.
"""

import contextlib
import multiprocessing as mp
import sys
import types
from multiprocessing.pool import Pool
from typing import Callable, Iterator, Optional

__all__ = ["can_start_workers", "main_module_hidden", "spawn_pool"]


@contextlib.contextmanager
def main_module_hidden() -> Iterator[None]:
    """Replace ``sys.modules["__main__"]`` by an empty module while the block runs: processes
    spawned inside it do not re-run the parent's main script (file, ``python -``,
    ``python -m``). Their work must be a function of an importable module."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is None:
            del sys.modules["__main__"]
        else:
            sys.modules["__main__"] = main


def can_start_workers() -> bool:
    """False in a daemon process (e.g. a DataLoader worker), which may not have children."""
    return not mp.current_process().daemon


def spawn_pool(num_workers: int, initializer: Optional[Callable[[], None]] = None) -> Pool:
    """A ``multiprocessing`` pool of ``num_workers`` processes started with "spawn" under
    ``main_module_hidden``; use it as a context manager (``with spawn_pool(4) as pool:``)."""
    if num_workers < 1:
        raise ValueError(f"spawn_pool(num_workers={num_workers}): start at least 1 worker, or "
                         "do the work in this process.")
    with main_module_hidden():
        return mp.get_context("spawn").Pool(num_workers, initializer=initializer)
