"""Detectron2's Python configs: ``LazyCall`` and ``LazyConfig`` (load, save, overrides, to_py).

A LazyConfig is an omegaconf ``DictConfig`` whose dicts with a ``_target_`` key describe calls
that ``instantiate`` performs later. Config files are Python files (or YAML files written by
``LazyConfig.save``); see ``segtron.config.lazy_loader`` for how ``.py`` files are executed.
"""

import ast
import collections.abc as abc
import copy
import dataclasses
import difflib
import functools
import inspect
import logging
import os
from typing import Any, List, Sequence, Tuple, Union

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from segtron.utils.registry import _convert_target_to_string

from .lazy_loader import exec_config_file, to_config, top_level_configs
from .lazy_yaml import ConfigDumper, ConfigLoader, is_savable
from .lazy_to_py import config_to_py

__all__ = ["LazyCall", "LazyConfig"]

logger = logging.getLogger(__name__)


class LazyCall:
    """Describe a call without making it: ``LazyCall(f)(x=1)`` is ``{"_target_": f, "x": 1}``.

    The result is a DictConfig (objects allowed) that can be edited, then built with
    ``instantiate``. ``target`` is a callable, its dotted import path, or a mapping that itself
    instantiates to a callable. Only keyword arguments are supported, as in Detectron2.
    """

    def __init__(self, target: Any):
        if not (callable(target) or isinstance(target, (str, abc.Mapping))):
            raise TypeError(
                f"LazyCall target must be a callable or a dotted import path, got {target!r}."
            )
        self._target = target

    def __call__(self, **kwargs) -> DictConfig:
        target = self._target
        if dataclasses.is_dataclass(target):  # omegaconf cannot hold a dataclass type
            target = _convert_target_to_string(target)
        return DictConfig({**kwargs, "_target_": target}, flags={"allow_objects": True})


def _parse_override_value(text: str) -> Any:
    """A command-line override value: a Python literal, Hydra's null/true/false, else text."""
    lowered = text.strip().lower()
    if lowered in ("null", "none"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _targets_to_strings(cfg: Any) -> None:
    """Replace callable ``_target_`` values by their dotted import paths, in place (a
    ``_target_`` that is itself a LazyCall config is left as a config, its own targets named)."""
    if isinstance(cfg, DictConfig):
        target = cfg._get_node("_target_")._value() if "_target_" in cfg else None
        # A functools.partial target has no dotted path: it is saved as a partial value.
        if callable(target) and not isinstance(target, functools.partial):
            cfg["_target_"] = _convert_target_to_string(cfg["_target_"])
        for key in cfg.keys():
            _targets_to_strings(cfg._get_node(key))
    elif isinstance(cfg, ListConfig):
        for i in range(len(cfg)):
            _targets_to_strings(cfg._get_node(i))


def _unserializable_paths(obj: Any, path: str = "") -> List[str]:
    """Paths of the values in a plain container that ``save`` cannot write (``is_savable``)."""
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _unserializable_paths(v, f"{path}.{k}")]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _unserializable_paths(v, f"{path}[{i}]")]
    return [] if is_savable(obj) else [path.lstrip(".")]


def _replace_unserializable(obj: Any) -> Any:
    """``obj`` with each value ``save`` cannot write replaced by an ``<unserializable>`` string."""
    if isinstance(obj, dict):
        return {k: _replace_unserializable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_replace_unserializable(v) for v in obj]
    return obj if is_savable(obj) else f"<unserializable: {obj!r}>"


class LazyConfig:
    """Load, save and edit Python (LazyConfig) configs; all static methods, as in Detectron2."""

    @staticmethod
    def load(filename: str, keys: Union[None, str, Tuple[str, ...]] = None):
        """Load a ``.py`` or ``.yaml`` config file into a DictConfig.

        Of a ``.py`` file, the public top-level dicts and configs make the config; relative
        imports inside it load other config files. ``keys`` selects one top-level key (a str:
        its value is returned) or several (a tuple: a tuple of values).
        """
        filename = os.fspath(filename).replace("/./", "/")
        ext = os.path.splitext(filename)[1]
        if ext not in (".py", ".yaml", ".yml"):
            raise ValueError(f"Config file {filename} must be a Python (.py) or YAML file.")
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"Config file {filename} does not exist.")
        if ext == ".py":
            cfg = top_level_configs(exec_config_file(filename))
        else:
            with open(filename, encoding="utf-8") as f:
                try:
                    data = yaml.load(f, Loader=ConfigLoader)
                except yaml.YAMLError as e:
                    raise ValueError(f"Config file {filename} is not valid YAML: {e}") from e
            cfg = OmegaConf.create(data or {}, flags={"allow_objects": True})
        if keys is None:
            return cfg
        if isinstance(keys, str):
            return to_config(LazyConfig._select(cfg, keys, filename))
        return tuple(to_config(LazyConfig._select(cfg, k, filename)) for k in keys)

    @staticmethod
    def _select(cfg: DictConfig, key: str, filename: str) -> Any:
        if key not in cfg:
            raise KeyError(f"Config file {filename} has no top-level key '{key}'; it has "
                           f"{sorted(cfg.keys())}.")
        return cfg[key]

    @staticmethod
    def load_rel(filename: str, keys: Union[None, str, Tuple[str, ...]] = None):
        """``load`` with ``filename`` relative to the directory of the calling file."""
        caller = inspect.stack()[1].filename
        return LazyConfig.load(os.path.join(os.path.dirname(caller), filename), keys)

    @staticmethod
    def save(cfg: Any, filename: str) -> None:
        """Save ``cfg`` as YAML that ``load`` reads back.

        Callable ``_target_`` values are written as dotted import paths, other importable
        classes and functions as ``!!python/name:`` tags and ``functools.partial`` objects of
        them as ``!!python/partial`` mappings (see ``lazy_yaml``). Values YAML cannot hold
        (lambdas, objects, partials of those) are written as ``"<unserializable: ...>"``
        strings with a warning naming them: the file is readable but does not reproduce those
        values.
        """
        cfg = copy.deepcopy(cfg)
        if not isinstance(cfg, DictConfig):
            cfg = DictConfig(cfg, flags={"allow_objects": True})
        _targets_to_strings(cfg)
        data = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
        bad = _unserializable_paths(data)
        if bad:
            logger.warning("Config saved to %s cannot reproduce %s: YAML cannot hold these "
                           "values; they are written as '<unserializable: ...>' strings.",
                           filename, ", ".join(bad))
            data = _replace_unserializable(data)
        text = yaml.dump(data, Dumper=ConfigDumper, default_flow_style=None, allow_unicode=True,
                         width=9999, sort_keys=False)
        with open(filename, "w", encoding="utf-8") as f:
            f.write(text)

    @staticmethod
    def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
        """Apply command-line overrides such as ``["train.max_iter=100", "model.name='x'"]``.

        Values are Python literals (numbers, quoted strings, lists, tuples, dicts) or Hydra's
        ``null``/``true``/``false``; anything else is taken as a plain string. As in Detectron2,
        a key that does not exist yet is added (with a warning), but a key below a value that is
        not a config (``train.max_iter.x=1``) is an error.
        """
        for override in overrides:
            key, sep, text = override.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"Override '{override}' must look like 'key.sub=value'.")
            LazyConfig._update(cfg, key, _parse_override_value(text))
        return cfg

    @staticmethod
    def _update(cfg: DictConfig, key: str, value: Any) -> None:
        parts = key.split(".")
        for i in range(1, len(parts)):
            prefix = ".".join(parts[:i])
            node = OmegaConf.select(cfg, prefix, default=None, throw_on_missing=False)
            if node is None:
                break
            if not OmegaConf.is_config(node):
                raise KeyError(f"Cannot override '{key}': '{prefix}' is a "
                               f"{type(node).__name__}, not a config. Override '{prefix}' itself.")
        if OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False) is _MISSING:
            parent = OmegaConf.select(cfg, ".".join(parts[:-1])) if len(parts) > 1 else cfg
            known = list(parent.keys()) if OmegaConf.is_dict(parent) else []
            close = difflib.get_close_matches(parts[-1], [str(k) for k in known], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            logger.warning("Override adds the new key '%s'%s.", key, hint)
        OmegaConf.update(cfg, key, value, merge=True)

    @staticmethod
    def to_py(cfg: Any, prefix: str = "cfg.") -> str:
        """Python source that rebuilds ``cfg``: ``<prefix><key> = ...`` per top-level key.

        With ``prefix=""`` the result is itself a config file ``load`` reads; with ``"cfg."``
        it assigns into an existing config named ``cfg``. Detectron2 formats with black; this
        writes plain code, wrapped at 100 columns.
        """
        return config_to_py(cfg, prefix)


_MISSING = object()

