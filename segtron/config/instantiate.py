"""``instantiate``: build objects from the ``{"_target_": ..., **kwargs}`` dicts of LazyConfigs."""

import collections.abc as abc
import dataclasses
import logging
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from segtron.utils.registry import locate

__all__ = ["instantiate"]

logger = logging.getLogger(__name__)


def instantiate(cfg: Any) -> Any:
    """Recursively build the objects that ``cfg`` describes.

    A mapping with a ``_target_`` key (a callable, or its dotted path such as
    ``"torch.nn.Conv2d"``) is replaced by ``target(**other_keys)``, after its values are
    instantiated in turn. Lists are instantiated element by element (a ``ListConfig`` stays a
    ``ListConfig``). Anything else, including a mapping without ``_target_``, is returned as is,
    as in Detectron2. A failing call is re-raised naming the config path (e.g.
    ``model.backbone.bottom_up``) and the target.
    """
    return _instantiate(cfg, "")


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _instantiate(cfg: Any, path: str) -> Any:
    if isinstance(cfg, ListConfig):
        items = [_instantiate(cfg[i], _join(path, i)) for i in range(len(cfg))]
        return ListConfig(items, flags={"allow_objects": True})
    if isinstance(cfg, list):
        return [_instantiate(x, _join(path, i)) for i, x in enumerate(cfg)]
    if isinstance(cfg, DictConfig) and dataclasses.is_dataclass(cfg._metadata.object_type):
        return OmegaConf.to_object(cfg)  # a structured config: build its dataclass
    if isinstance(cfg, abc.Mapping) and "_target_" in cfg:
        kwargs = {k: _instantiate(v, _join(path, k)) for k, v in cfg.items() if k != "_target_"}
        target = _resolve_target(_instantiate(cfg["_target_"], _join(path, "_target_")), path)
        return _call(target, kwargs, path)
    return cfg


def _where(path: str) -> str:
    return f"config '{path}'" if path else "the config root"


def _resolve_target(target: Any, path: str) -> Any:
    """The callable named by a ``_target_`` value (a callable or a dotted import path)."""
    if isinstance(target, str):
        try:
            target = locate(target)
        except ImportError as e:
            raise ImportError(
                f"instantiate: cannot import _target_ '{target}' of {_where(path)}. Check the "
                "dotted path (module.submodule.Name) and that its package is installed."
            ) from e
    if not callable(target):
        raise TypeError(
            f"instantiate: _target_ of {_where(path)} is {target!r}, which is not callable. "
            "Set it to a class or function, or to its dotted import path."
        )
    return target


def _target_name(target: Any) -> str:
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(target)


def _call(target: Any, kwargs: dict, path: str) -> Any:
    try:
        return target(**kwargs)
    except (TypeError, ValueError, KeyError) as e:
        name = _target_name(target)
        logger.error("Error when instantiating %s at %s", name, _where(path))
        raise type(e)(
            f"instantiate: calling {name} for {_where(path)} with arguments "
            f"{sorted(kwargs)} failed: {e}"
        ) from e
    except Exception as e:
        if hasattr(e, "add_note"):  # Python >= 3.11
            e.add_note(f"(while instantiating {_target_name(target)} for {_where(path)})")
        logger.error("Error when instantiating %s at %s", _target_name(target), _where(path))
        raise
