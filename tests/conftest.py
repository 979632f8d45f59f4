"""Shared pytest fixtures.

The Detectron2 compatibility data lives outside the repository, in ``../shared/compat`` beside the
clone (or wherever ``$SEGTRON_COMPAT_DIR`` points). Tests read it from there at run time; a
missing directory is an error, never a skip, so CI cannot pass without the parity checks.
"""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """Run segtron's once-per-process set-up; under pytest-xdist, give each worker an equal share
    of the CPU cores for torch's intra-op threads (and for the Python processes tests start,
    through OMP_NUM_THREADS).

    Left at torch's default, every worker runs one OpenMP thread per core: with 2 workers on 2
    cores that is 4 spinning threads on 2 cores, and the suite took 6:40 instead of 4:10 here.
    An OMP_NUM_THREADS already set is kept.
    """
    # What importing and setting up segtron does to os.environ (OpenCV's OPENCV_OPENCL_RUNTIME;
    # torch's inductor sets TORCHINDUCTOR_CACHE_DIR on import) happens before the first test,
    # as in a training script, not inside whichever test first triggers it.
    import segtron.modeling  # noqa: F401
    from segtron.utils.env import available_cpu_cores, setup_environment

    setup_environment()
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, available_cpu_cores() // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _compat_dir() -> Path:
    path = Path(os.environ.get("SEGTRON_COMPAT_DIR", REPO_ROOT.parent / "shared" / "compat"))
    if not (path / "d2_default_config.yaml").is_file():
        raise pytest.UsageError(
            f"Detectron2 compatibility data not found at {path}. Clone segtron next to the "
            "'shared' directory (../shared/compat) or set SEGTRON_COMPAT_DIR."
        )
    return path


def lift_winograd_limits(patch: pytest.MonkeyPatch) -> None:
    """Make MODEL.WINOGRAD_CONV apply to every eligible conv, however small or narrow (the test
    models are far below the sizes at which it is chosen), for as long as ``patch`` lasts."""
    from segtron.layers import winograd

    for limit in ("_MIN_PIXELS_PER_IMAGE", "_MIN_PIXELS_PER_BATCH", "_MIN_CHANNEL_PRODUCT"):
        patch.setattr(winograd, limit, 0)


@pytest.fixture(scope="session")
def compat_dir() -> Path:
    """Path of ``../shared/compat`` (Detectron2's default config, state-dict shapes, golden fixture)."""
    return _compat_dir()


@pytest.fixture(autouse=True)
def _environment_unchanged():
    """Fail a test that leaves os.environ changed (and undo the change): a variable left
    behind reaches every later test of the worker and the processes they start (a
    PYTHONHASHSEED of 2**40 once made every later child Python refuse to start). Use
    ``monkeypatch.setenv`` / ``delenv``, which undo themselves."""
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    for name in ("PYTEST_CURRENT_TEST",):  # pytest's own, set per test phase
        before.pop(name, None)
        after.pop(name, None)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        for name in changed:
            if name in before:
                os.environ[name] = before[name]
            else:
                del os.environ[name]
        pytest.fail(f"the test left environment variables changed: {changed}; set them with "
                    "monkeypatch.setenv / delenv (or restore them) so later tests do not see them")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed torch's global RNG with 0 before each test."""
    torch.manual_seed(0)
    yield
