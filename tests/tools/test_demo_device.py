"""``make demo`` picks the GPU with AMP when torch sees one, and leaves the CPU demo as it is."""

import importlib.util
import subprocess
import sys

import torch

from segtron.engine.projects import get_cfg_with_projects
from tests.conftest import REPO_ROOT

DEMO_CONFIG = REPO_ROOT / "configs" / "Shapes" / "mask_rcnn_R_18_FPN_demo.yaml"


def _tool():
    spec = importlib.util.spec_from_file_location("demo_device",
                                                  REPO_ROOT / "tools" / "demo_device.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _demo_cfg(overrides):
    cfg = get_cfg_with_projects()
    cfg.merge_from_file(str(DEMO_CONFIG))
    cfg.merge_from_list(overrides)
    return cfg


def test_with_a_gpu_the_demo_trains_there_with_amp():
    cfg = _demo_cfg(_tool().demo_device_overrides(cuda_available=True))
    assert cfg.MODEL.DEVICE == "cuda" and cfg.SOLVER.AMP.ENABLED is True


def test_without_a_gpu_the_demo_config_is_unchanged():
    assert _tool().demo_device_overrides(cuda_available=False) == []
    cfg = _demo_cfg([])
    assert cfg.MODEL.DEVICE == "cpu" and cfg.SOLVER.AMP.ENABLED is False


def test_the_makefile_passes_what_the_tool_prints():
    """``make -n demo-run`` shows the train_net.py command the demo would run here."""
    result = subprocess.run(["make", "-n", "--no-print-directory", "demo-run",
                             f"PY={sys.executable}"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    command = next(line for line in result.stdout.splitlines() if "train_net.py" in line)
    if torch.cuda.is_available():
        assert "MODEL.DEVICE cuda SOLVER.AMP.ENABLED True" in command
    else:
        assert "MODEL.DEVICE" not in command and "AMP" not in command
