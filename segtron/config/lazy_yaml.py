"""The YAML form of LazyConfigs: plain YAML plus importable classes and functions.

Python configs pass classes and functions as values, not only as ``_target_`` (e.g.
``block_class=BottleneckBlock`` of ``ResNet.make_stage``, ``stem_class=SimpleStem`` of
``RegNet``). ``LazyConfig.save`` writes such a value as the tag ``!!python/name:<dotted path>``
and ``LazyConfig.load`` imports it back, so the saved file rebuilds the same model. Loading
such a tag imports the named module, as instantiating a ``_target_`` string does; no other
Python tag is read (the loader is otherwise ``yaml.SafeLoader``).
"""

import types
from typing import Any

import yaml

from segtron.utils.registry import _convert_target_to_string, locate

__all__ = ["ConfigDumper", "ConfigLoader", "is_named_callable"]

_NAME_TAG = "tag:yaml.org,2002:python/name:"


def is_named_callable(obj: Any) -> bool:
    """Whether ``obj`` is a class or function that its dotted path imports back (so not a
    lambda, a local function or an instance)."""
    if not isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType,
                            types.MethodType)):
        return False
    try:
        path = _convert_target_to_string(obj)
        return "<" not in path and locate(path) == obj
    except (ValueError, ImportError):
        return False


class ConfigDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that writes named classes and functions as ``!!python/name:`` tags."""


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``!!python/name:<dotted path>`` tags (by import)."""


def _represent_name(dumper: yaml.SafeDumper, obj: Any) -> yaml.Node:
    return dumper.represent_scalar(_NAME_TAG + _convert_target_to_string(obj), "")


def _construct_name(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    try:
        return locate(suffix)
    except ImportError as e:
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot import '{suffix}' named in the config: {e}", node.start_mark
        ) from e


ConfigDumper.add_multi_representer(type, _represent_name)
for _kind in (types.FunctionType, types.BuiltinFunctionType, types.MethodType):
    ConfigDumper.add_representer(_kind, _represent_name)
ConfigLoader.add_multi_constructor(_NAME_TAG, _construct_name)
