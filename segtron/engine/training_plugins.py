"""What a project can plug into ``DefaultTrainer`` from a config, without its own trainer:
the training data loader and extra hooks.

- ``TRAIN_LOADER_REGISTRY``: functions ``fn(cfg) -> loader`` (an infinite iterable of batches,
  what ``build_detection_train_loader`` returns). ``DATALOADER.TRAIN_LOADER`` names one; ""
  (the default) keeps the trainer's own ``build_train_loader``. E.g. projects/YOLO registers
  "YOLOXMosaicLoader" (mosaic / mix-up dataset wrapper), projects/SSD "SSDAugmentedLoader" (the
  paper's photometric distortion, zoom-out and IoU crop).
- ``HOOK_REGISTRY``: functions ``fn(cfg, trainer) -> HookBase`` (or a list of hooks, or None).
  ``SOLVER.HOOKS`` lists names; their hooks run after the LR scheduler (and MODEL_EMA's) hook
  and before checkpointing and evaluation, so what they change in the model at an iteration is
  what gets saved and evaluated. E.g. projects/YOLO's "YOLOXModeSwitch" turns mosaic off and
  the L1 loss on for the last iterations.

A project registers on import::

    @TRAIN_LOADER_REGISTRY.register()
    def MyLoader(cfg):
        return build_detection_train_loader(cfg, mapper=MyMapper(cfg))

    @HOOK_REGISTRY.register()
    def MySwitch(cfg, trainer):
        return MySwitchHook(cfg.SOLVER.MAX_ITER - 1000)
"""

from typing import Any, List

from segtron.utils.registry import Registry

from .train_loop import HookBase

__all__ = [
    "HOOK_REGISTRY",
    "TRAIN_LOADER_REGISTRY",
    "build_registered_hooks",
    "build_registered_train_loader",
]

TRAIN_LOADER_REGISTRY = Registry("TRAIN_LOADER")
TRAIN_LOADER_REGISTRY.__doc__ = """Training data loaders by name (DATALOADER.TRAIN_LOADER):
``fn(cfg) -> infinite iterable of batches``."""

HOOK_REGISTRY = Registry("HOOK")
HOOK_REGISTRY.__doc__ = """Training hooks by name (SOLVER.HOOKS):
``fn(cfg, trainer) -> HookBase | list[HookBase] | None``."""


def _lookup(registry: Registry, name: str, key: str):
    if name not in registry:
        known = ", ".join(sorted(name for name, _ in registry)) or "(none registered)"
        raise KeyError(
            f"{key} names '{name}', which is not in {registry._name}_REGISTRY (registered: "
            f"{known}). Import the project that registers it (train_net.py imports every "
            f"package under projects/), or fix the name in the config."
        )
    return registry.get(name)


def build_registered_train_loader(cfg) -> Any:
    """The loader DATALOADER.TRAIN_LOADER names, built with ``cfg``. Raises KeyError (naming
    the key and the registered names) for an unknown name."""
    return _lookup(TRAIN_LOADER_REGISTRY, cfg.DATALOADER.TRAIN_LOADER, "DATALOADER.TRAIN_LOADER")(
        cfg)


def build_registered_hooks(cfg, trainer) -> List[HookBase]:
    """The hooks of SOLVER.HOOKS, in order. Raises KeyError for an unknown name and TypeError
    when a builder returns something that is not a hook."""
    hooks: List[HookBase] = []
    for name in cfg.SOLVER.HOOKS:
        built = _lookup(HOOK_REGISTRY, name, "SOLVER.HOOKS")(cfg, trainer)
        if built is None:
            continue
        for hook in built if isinstance(built, (list, tuple)) else [built]:
            if not isinstance(hook, HookBase):
                raise TypeError(
                    f"SOLVER.HOOKS: '{name}' returned {type(hook).__name__}, not a HookBase; "
                    "a registered hook builder returns a hook, a list of hooks or None."
                )
            hooks.append(hook)
    return hooks
