"""Every Python example in README.md and in the projects' READMEs runs as written (in a fresh
interpreter, from the repo root)."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

_READMES = [REPO_ROOT / "README.md", REPO_ROOT / "projects" / "README.md"] + sorted(
    (REPO_ROOT / "projects").glob("*/README.md"))
_EXAMPLES = [
    (f"{path.relative_to(REPO_ROOT)}:{i}", block)
    for path in _READMES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S))
]
_BLOCKS = [block for name, block in _EXAMPLES if name.startswith("README.md:")]


def test_readme_has_python_examples():
    assert len(_BLOCKS) >= 3


@pytest.mark.parametrize("name,block", _EXAMPLES, ids=[name for name, _ in _EXAMPLES])
def test_readme_example_runs(name, block):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", block], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"example {name} failed:\n{block}\n{result.stderr}"


def test_readme_gives_the_two_setup_commands():
    text = (REPO_ROOT / "README.md").read_text()
    assert "make demo" in text and "make test" in text
