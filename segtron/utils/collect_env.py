"""``collect_env_info()``: a table of the platform, library versions and GPUs, for bug reports.

Run ``python -m segtron.utils.collect_env`` to see it; training logs it at start-up.
"""

import importlib
import importlib.metadata
import os
import sys
from collections import defaultdict
from typing import List, Optional, Tuple

from tabulate import tabulate

from segtron.utils.env import available_cpu_cores

__all__ = ["collect_env_info"]

_NOT_FOUND = "not found"

# (row label, import name, distribution name for importlib.metadata)
_LIBRARIES = [
    ("fvcore", "fvcore", "fvcore"),
    ("iopath", "iopath", "iopath"),
    ("pycocotools", "pycocotools", "pycocotools"),
    ("faster-coco-eval", "faster_coco_eval", "faster-coco-eval"),
    ("cv2", "cv2", "opencv-python-headless"),
    ("PIL", "PIL", "pillow"),
]


def _import(name: str):
    """The module ``name``, or None when it is missing or fails to import."""
    try:
        return importlib.import_module(name)
    except Exception:  # a broken install must not break the report
        return None


def _version(module, dist_name: Optional[str] = None) -> str:
    """``module.__version__``, else the installed distribution's version, else "unknown"."""
    version = getattr(module, "__version__", None)
    if version is None and dist_name is not None:
        try:
            version = importlib.metadata.version(dist_name)
        except importlib.metadata.PackageNotFoundError:
            version = None
    return str(version) if version is not None else "unknown"


def _version_and_path(module, dist_name: Optional[str] = None) -> str:
    """``"<version> @<package directory>"`` or "not found"."""
    if module is None:
        return _NOT_FOUND
    location = getattr(module, "__file__", None)
    where = f" @{os.path.dirname(location)}" if location else ""
    return _version(module, dist_name) + where


def _cpu_count() -> str:
    total = os.cpu_count()
    usable = available_cpu_cores()
    if total and usable != total:
        return f"{usable} (of {total})"
    return str(total)


def _torch_rows(torch) -> List[Tuple[str, str]]:
    """Rows describing torch's build, CUDA/ROCm, GPUs and cuDNN."""
    rows: List[Tuple[str, str]] = [("PyTorch", _version_and_path(torch, "torch"))]
    rows.append(("PyTorch debug build", str(getattr(torch.version, "debug", "unknown"))))
    try:
        has_gpu = bool(torch.cuda.is_available())
    except Exception:
        has_gpu = False
    rows.append(("GPU available", str(has_gpu)))
    if has_gpu:
        by_name = defaultdict(list)
        for index in range(torch.cuda.device_count()):
            capability = ".".join(str(x) for x in torch.cuda.get_device_capability(index))
            by_name[f"{torch.cuda.get_device_name(index)} (arch={capability})"].append(str(index))
        for name, indices in by_name.items():
            rows.append(("GPU " + ",".join(indices), name))
    hip = getattr(torch.version, "hip", None)
    if hip:
        rows.append(("ROCm version", str(hip)))
    cuda = getattr(torch.version, "cuda", None)
    rows.append(("CUDA version (PyTorch built with)", str(cuda) if cuda else _NOT_FOUND))
    try:
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except Exception:
        cudnn = None
    rows.append(("cuDNN", str(cudnn) if cudnn else _NOT_FOUND))
    if has_gpu:
        rows.append(("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")))
    return rows


def collect_env_info() -> str:
    """Return a table (string) of the environment: platform, Python, numpy, segtron, torch,
    torchvision, GPUs/CUDA/cuDNN, fvcore, iopath, pycocotools, faster-coco-eval, cv2, PIL and the
    CPU count, followed by torch's build configuration. Missing libraries show "not found"."""
    rows: List[Tuple[str, str]] = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.replace("\n", "")),
    ]
    numpy = _import("numpy")
    rows.append(("numpy", _version(numpy, "numpy") if numpy is not None else _NOT_FOUND))
    rows.append(("segtron", _version_and_path(_import("segtron"), "segtron")))

    torch = _import("torch")
    if torch is None:
        rows.append(("PyTorch", _NOT_FOUND))
    else:
        rows.extend(_torch_rows(torch))
    rows.append(("torchvision", _version_and_path(_import("torchvision"), "torchvision")))

    for label, import_name, dist_name in _LIBRARIES:
        module = _import(import_name)
        rows.append((label, _version(module, dist_name) if module is not None else _NOT_FOUND))
    rows.append(("CPU count", _cpu_count()))

    text = tabulate(rows) + "\n"
    if torch is not None:
        try:
            text += torch.__config__.show()
        except Exception:
            pass
    return text


def main() -> None:
    """Write ``collect_env_info()`` to stdout."""
    sys.stdout.write(collect_env_info() + "\n")


if __name__ == "__main__":
    main()
