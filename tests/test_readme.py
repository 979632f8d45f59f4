"""Every Python example in README.md runs as written (in a fresh interpreter, from the repo root)."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

_BLOCKS = re.findall(r"```python\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(_BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(_BLOCKS)))
def test_readme_example_runs(index):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", _BLOCKS[index]], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"README example {index} failed:\n{_BLOCKS[index]}\n{result.stderr}"


def test_readme_gives_the_two_setup_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
