"""Loading a dataset that is prepared on first use, from a script without an
``if __name__ == "__main__"`` guard, finishes: the worker processes that prepare it do not run
the script again (which used to hang: every worker re-ran it and the pool replaced it, forever).

Each case runs the script in a fresh interpreter, with its own datasets root, and a deadline.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

from segtron.utils.env import available_cpu_cores
from tests.conftest import REPO_ROOT

DEADLINE_S = 120  # a working run takes a few seconds; a hanging one never ends

# 16 images: the smallest split that shapes draws with a process pool.
SHAPES_SCRIPT = textwrap.dedent("""
    import logging
    import os

    from segtron.data import DatasetCatalog
    from segtron.data.datasets.shapes import register_shapes_instances

    logging.basicConfig(level=logging.INFO)
    root = os.path.join(os.environ["SEGTRON_DATASETS"], "shapes")
    register_shapes_instances("shapes_unguarded", root, "unguarded", 16, seed=3, image_size=64)
    print("count", len(DatasetCatalog.get("shapes_unguarded")))
""")

# "spawn" is the default start method on macOS and Windows; a pool of the default context
# would re-run this script in its workers there (and under Python 3.14's "forkserver").
CITYSCAPES_SCRIPT = textwrap.dedent("""
    import json
    import multiprocessing
    import os

    from segtron.data.datasets import cityscapes

    multiprocessing.set_start_method("spawn", force=True)
    root = os.environ["SEGTRON_DATASETS"]
    image_dir = os.path.join(root, "leftImg8bit", "train", "aachen")
    gt_dir = os.path.join(root, "gtFine", "train", "aachen")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    car = {"label": "car", "polygon": [[1, 1], [5, 1], [5, 4], [1, 4]]}
    for i in range(4):
        stem = f"aachen_{i:06d}_000019_"
        open(os.path.join(image_dir, stem + "leftImg8bit.png"), "wb").close()
        with open(os.path.join(gt_dir, stem + "gtFine_polygons.json"), "w") as f:
            json.dump({"imgHeight": 8, "imgWidth": 8, "objects": [car]}, f)
    cityscapes._POOL_MIN_FILES = 2
    cityscapes._num_workers = lambda: 2
    dicts = cityscapes.load_cityscapes_instances(os.path.dirname(image_dir),
                                                 os.path.dirname(gt_dir))
    print("count", len(dicts))
""")


def _run_with_deadline(argv, cwd, datasets_root, stdin_text=None):
    """Run ``argv`` with $SEGTRON_DATASETS set; fail the test, killing the process and its
    workers, if it has not finished within DEADLINE_S. Returns (stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), SEGTRON_DATASETS=str(datasets_root),
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, cwd=cwd, env=env, text=True, start_new_session=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(stdin_text, timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the pool's workers too
        out, err = proc.communicate()
        pytest.fail(f"python {argv[1]!r} did not finish within {DEADLINE_S} s (hangs?); "
                    f"stderr:\n{err[-4000:]}")
    assert proc.returncode == 0, err[-4000:]
    # A worker that re-ran the script dies with a traceback, again and again.
    assert "Traceback" not in err and "bootstrapping phase" not in err, err[-4000:]
    return out, err


def _launch(how, script, tmp_path):
    """argv and stdin text to run ``script`` as a file, through stdin, or with ``-c``."""
    if how == "file":
        path = tmp_path / "unguarded.py"
        path.write_text(script)
        return [sys.executable, str(path)], None
    if how == "stdin":
        return [sys.executable, "-"], script
    # Like a notebook's kernel: a __main__ without __file__ or __spec__, which spawned workers
    # never re-run; the guard-free case that always worked, kept as a reference.
    return [sys.executable, "-c", script], None


@pytest.mark.slow
@pytest.mark.skipif(available_cpu_cores() < 2, reason="shapes draws in this process on 1 core")
@pytest.mark.parametrize("how", ["file", "stdin", "dash_c"])
def test_unguarded_script_loads_a_split_drawn_on_first_use(how, tmp_path):
    argv, stdin_text = _launch(how, SHAPES_SCRIPT, tmp_path)
    out, err = _run_with_deadline(argv, tmp_path, tmp_path / "datasets", stdin_text)
    assert "count 16" in out.split("\n"), out
    workers = re.search(r"Generating 16 .* with (\d+) worker\(s\)", err)
    assert workers and int(workers.group(1)) > 1, err[-2000:]  # the pool was used


@pytest.mark.slow
def test_unguarded_spawn_script_parses_cityscapes_with_a_pool(tmp_path):
    argv, _ = _launch("file", CITYSCAPES_SCRIPT, tmp_path)
    out, _ = _run_with_deadline(argv, tmp_path, tmp_path / "datasets")
    assert "count 4" in out.split("\n"), out
