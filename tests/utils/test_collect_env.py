"""collect_env_info: a table with the versions that matter, robust to missing libraries."""

import sys

import numpy as np
import torch

from segtron import __version__ as segtron_version
from segtron.utils.collect_env import collect_env_info


def _rows(text):
    """``{label: value}`` from the tabulate "simple" table at the top of the report."""
    lines = text.splitlines()
    assert lines[0].startswith("---"), text[:200]
    label_width = len(lines[0].split("  ")[0])
    rows = {}
    for line in lines[1:]:
        if line.startswith("---"):  # the table's closing rule; torch's build info follows
            break
        rows[line[:label_width].strip()] = line[label_width:].strip()
    return rows


def test_collect_env_info_contents():
    text = collect_env_info()
    rows = _rows(text)
    assert rows["sys.platform"] == sys.platform
    assert rows["numpy"] == np.__version__
    assert rows["PyTorch"].startswith(torch.__version__ + " @")
    assert rows["segtron"].startswith(segtron_version + " @")
    assert rows["GPU available"] == str(torch.cuda.is_available())
    for label in ("torchvision", "fvcore", "iopath", "pycocotools", "faster-coco-eval", "cv2",
                  "PIL", "cuDNN", "CPU count", "CUDA version (PyTorch built with)"):
        assert label in rows, label
    assert rows["fvcore"] != "not found"


def test_collect_env_info_missing_libraries(monkeypatch):
    # A None entry in sys.modules makes `import x` raise ImportError.
    for name in ("pycocotools", "faster_coco_eval", "cv2", "torchvision"):
        monkeypatch.setitem(sys.modules, name, None)
    rows = _rows(collect_env_info())
    for label in ("pycocotools", "faster-coco-eval", "cv2", "torchvision"):
        assert rows[label] == "not found", label
    assert rows["PyTorch"].startswith(torch.__version__)
