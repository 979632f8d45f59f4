"""``torch.compile`` for chosen submodules of a model (MODEL.COMPILE; segtron addition).

``torch.compile`` fuses the element-wise work around the convolutions (norms, activations,
residual additions) into fewer kernels, which is where a large detector spends much of a GPU
step that is not matrix work. It changes float rounding, so it is off by default and applied
only to the submodules named (the backbone by default: static code, no data-dependent shapes).
Compiling happens in place (``nn.Module.compile``), so parameter names, checkpoints and
``state_dict()`` stay those of the eager model; the first call of each new input shape pays
the compilation.
"""

import logging
from typing import Iterable, List

import torch
from torch import nn

from ..utils.model_cost import find_submodule

__all__ = ["compile_submodules", "compile_as_configured", "compile_from_config"]

logger = logging.getLogger(__name__)

_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_submodules(
    model: nn.Module, names: Iterable[str], mode: str = "default", backend: str = "inductor"
) -> List[str]:
    """Compile each named submodule of ``model`` in place with ``torch.compile``.

    Args:
        model: the model (its parameters and names are left as they are).
        names: dotted submodule paths, e.g. ``["backbone"]`` or ``["backbone.bottom_up"]``;
            "" compiles the whole model.
        mode: ``torch.compile``'s mode ("default", "reduce-overhead", "max-autotune", ...).
        backend: ``torch.compile``'s backend ("inductor"; "eager" only traces, for debugging).

    Returns:
        The names compiled, in the order given.

    Raises:
        KeyError: for a name that is not a submodule (the message lists the model's children).
        ValueError: for an unknown mode.
    """
    if mode not in _MODES:
        raise ValueError(f"mode {mode!r} is not a torch.compile mode; use one of {_MODES}.")
    names = list(names)
    modules = [model if name == "" else find_submodule(model, name) for name in names]
    for name, module in zip(names, modules):
        module.compile(mode=mode, backend=backend)
        logger.info("torch.compile(%s, mode=%r, backend=%r): compiled on first call per shape.",
                    name or type(model).__name__, mode, backend)
    return names


def compile_as_configured(
    model: nn.Module,
    enabled: bool,
    modules: Iterable[str],
    mode: str = "default",
    backend: str = "inductor",
    key: str = "MODEL.COMPILE",
) -> List[str]:
    """:func:`compile_submodules` when ``enabled``, with errors naming the config ``key`` the
    settings came from (``MODEL.COMPILE`` or a LazyConfig's ``train.compile``).

    Returns:
        The names compiled ([] when disabled).
    """
    def subkey(name: str) -> str:  # MODEL.COMPILE.MODE, train.compile.mode
        return f"{key}.{name.upper() if key.isupper() else name}"

    if not enabled:
        return []
    if not hasattr(torch, "compile"):
        raise RuntimeError(
            f"{subkey('enabled')} needs torch.compile (torch >= 2.0), but torch "
            f"{torch.__version__} has none; set it to False."
        )
    try:
        return compile_submodules(model, modules, mode, backend)
    except KeyError as err:
        raise KeyError(f"{subkey('modules')}: {err.args[0]}") from None
    except ValueError as err:
        raise ValueError(f"{subkey('mode')}: {err}") from None


def compile_from_config(model: nn.Module, cfg) -> List[str]:
    """Apply MODEL.COMPILE.{ENABLED, MODULES, MODE, BACKEND} to ``model``; returns the names
    compiled ([] when disabled)."""
    settings = cfg.MODEL.COMPILE
    return compile_as_configured(
        model, settings.ENABLED, settings.MODULES, settings.MODE, settings.BACKEND
    )
