"""Process environment: RNG seeding, the torch version, and one-time library set-up.

``setup_environment()`` runs once per process. It configures OpenCV (no OpenCL; or disabled
altogether with ``$SEGTRON_DISABLE_CV2``/``$DETECTRON2_DISABLE_CV2``) and then, when
``$SEGTRON_ENV_MODULE`` or ``$DETECTRON2_ENV_MODULE`` names a module (a dotted name or a ``.py``
file), imports it and calls its ``setup_environment()``: the Detectron2 hook for site-specific
set-up.
"""

import importlib
import importlib.util
import logging
import os
import random
import sys
import time
from types import ModuleType
from typing import Any, Dict, Iterable, Optional

import numpy as np
import torch

__all__ = [
    "available_cpu_cores",
    "seed_all_rng",
    "TORCH_VERSION",
    "setup_environment",
    "setup_custom_environment",
    "fixup_module_metadata",
]

logger = logging.getLogger(__name__)


def _parse_torch_version(version: str):
    """``"2.14.1+cu130"`` -> ``(2, 14)``."""
    major, minor = version.split("+")[0].split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


TORCH_VERSION = _parse_torch_version(torch.__version__)
"""The (major, minor) version of the installed torch, for version checks."""

DOC_BUILDING = bool(os.getenv("_DOC_BUILDING", ""))

_ENV_MODULE_VARS = ("SEGTRON_ENV_MODULE", "DETECTRON2_ENV_MODULE")
_DISABLE_CV2_VARS = ("SEGTRON_DISABLE_CV2", "DETECTRON2_DISABLE_CV2")
_ENV_SETUP_DONE = False


def available_cpu_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask where the OS has
    one, else ``os.cpu_count()``); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _generated_seed() -> int:
    """A seed that differs across processes and calls: pid, clock and OS entropy combined."""
    mixed = os.getpid() * 1_000_003 + time.time_ns() + int.from_bytes(os.urandom(4), "big")
    return mixed % (2**31)


def seed_all_rng(seed: Optional[int] = None) -> int:
    """Seed python's ``random``, numpy's global RNG and torch (CPU and all GPUs).

    Args:
        seed: the seed; None or a negative value draws a fresh one (logged at INFO).
            Seeds past 2**32 (a DataLoader worker's torch seed, say) are accepted; numpy and
            child processes' ``PYTHONHASHSEED`` get it modulo 2**32.

    Returns:
        The seed that was used.
    """
    if seed is None or seed < 0:
        seed = _generated_seed()
        logger.info("Using a generated random seed %d", seed)
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)  # also seeds every CUDA device
    # Python refuses to start a child whose PYTHONHASHSEED is outside [0, 2**32 - 1].
    os.environ["PYTHONHASHSEED"] = str(seed % (2**32))
    return seed


def _import_file(module_name: str, file_path: str, make_importable: bool = False) -> ModuleType:
    """Import the Python file ``file_path`` as a module called ``module_name`` and return it.

    With ``make_importable`` the module is also put in ``sys.modules`` under that name.
    """
    spec = importlib.util.spec_from_file_location(module_name, file_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot import '{file_path}' as a module: is it a readable .py file?")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if make_importable:
        sys.modules[module_name] = module
    return module


def _first_env(names: Iterable[str]) -> Optional[str]:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _configure_libraries() -> None:
    """Disable OpenCV (when asked) or its OpenCL use, which misbehaves with data-loader workers."""
    if int(_first_env(_DISABLE_CV2_VARS) or 0):
        sys.modules["cv2"] = None  # any `import cv2` now fails loudly
        return
    os.environ["OPENCV_OPENCL_RUNTIME"] = "disabled"
    try:
        import cv2
    except ImportError:
        return
    if hasattr(cv2, "ocl"):
        cv2.ocl.setUseOpenCL(False)


def setup_custom_environment(custom_module: str) -> None:
    """Import ``custom_module`` (a dotted module name or a path to a ``.py`` file) and call its
    ``setup_environment()`` function. Returns None."""
    if custom_module.endswith(".py"):
        module = _import_file("segtron.utils.env.custom_module", custom_module)
    else:
        module = importlib.import_module(custom_module)
    setup = getattr(module, "setup_environment", None)
    if not callable(setup):
        raise AttributeError(
            f"Custom environment module '{custom_module}' (from ${_ENV_MODULE_VARS[0]} or "
            f"${_ENV_MODULE_VARS[1]}) must define a callable setup_environment(); it does not."
        )
    setup()


def setup_environment() -> None:
    """Configure libraries and run the custom environment module, once per process.

    The module comes from ``$SEGTRON_ENV_MODULE`` (else ``$DETECTRON2_ENV_MODULE``); later calls
    do nothing. Returns None.
    """
    global _ENV_SETUP_DONE
    if _ENV_SETUP_DONE:
        return
    _ENV_SETUP_DONE = True
    _configure_libraries()
    custom = _first_env(_ENV_MODULE_VARS)
    if custom:
        setup_custom_environment(custom)


def fixup_module_metadata(
    module_name: str, namespace: Dict[str, Any], keys: Optional[Iterable[str]] = None
) -> None:
    """When building docs (``$_DOC_BUILDING``), make objects re-exported by a package report that
    package as their ``__module__``.

    Args:
        module_name: the public package, e.g. ``"segtron.structures"``.
        namespace: its ``globals()``.
        keys: the names to fix; defaults to ``namespace["__all__"]`` or all public names.
    Returns None; does nothing outside doc builds.
    """
    if not DOC_BUILDING:
        return
    if keys is None:
        keys = namespace.get("__all__", [k for k in namespace if not k.startswith("_")])
    seen = set()

    def fix(obj: Any, name: str, qualname: str) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        owner = getattr(obj, "__module__", None)
        if not isinstance(owner, str) or not owner.startswith(module_name):
            return
        try:
            obj.__module__ = module_name
        except (AttributeError, TypeError):
            return
        if "." not in getattr(obj, "__name__", "."):
            obj.__name__ = name
            obj.__qualname__ = qualname
        if isinstance(obj, type):
            for attr, value in list(vars(obj).items()):
                fix(value, attr, f"{qualname}.{attr}")

    for key in keys:
        if key in namespace:
            fix(namespace[key], key, key)
