"""The YAML form of LazyConfigs: plain YAML plus importable callables and partials of them.

Python configs pass classes and functions as values, not only as ``_target_`` (e.g.
``block_class=BottleneckBlock`` of ``ResNet.make_stage``, ``stem_class=SimpleStem`` of
``RegNet``), and ``functools.partial`` objects of them (ViTDet's
``norm_layer=partial(nn.LayerNorm, eps=1e-6)``). ``LazyConfig.save`` writes a named class or
function as the tag ``!!python/name:<dotted path>`` and a partial as a tagged mapping::

    norm_layer: !!python/partial
      func: !!python/name:torch.nn.LayerNorm ''
      args: []
      keywords: {eps: 1.0e-06}

and ``LazyConfig.load`` builds them back, so the saved file rebuilds the same model. Loading a
name tag imports the named module, as instantiating a ``_target_`` string does; loading a
partial tag builds a ``functools.partial`` object, which calls nothing (the function runs only
when the model is built, as a ``_target_`` does). No other Python tag is read (the loader is
otherwise ``yaml.SafeLoader``). As everywhere in a saved config, tuples are written as YAML
sequences and load back as lists, also among a partial's arguments.
"""

import functools
import types
from typing import Any

import yaml

from segtron.utils.registry import _convert_target_to_string, locate

__all__ = ["ConfigDumper", "ConfigLoader", "is_named_callable", "is_savable"]

_NAME_TAG = "tag:yaml.org,2002:python/name:"
_PARTIAL_TAG = "tag:yaml.org,2002:python/partial"
_PARTIAL_FIELDS = ("func", "args", "keywords")
_SCALARS = (type(None), bool, int, float, str)


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


def _is_savable_partial(obj: Any) -> bool:
    """A plain ``functools.partial`` (no subclass, no attributes set on it) of a named callable
    or savable partial, with savable arguments."""
    return (type(obj) is functools.partial and not obj.__dict__
            and (is_named_callable(obj.func) or _is_savable_partial(obj.func))
            and all(is_savable(a) for a in obj.args) and is_savable(obj.keywords))


def is_savable(obj: Any) -> bool:
    """Whether ``LazyConfig.save`` can write ``obj`` so that ``load`` reads an equal value back:
    None, bools, numbers, strings, named classes and functions (``is_named_callable``),
    ``functools.partial`` objects of those with savable arguments, and lists, tuples and dicts
    (with scalar keys) of savable values. Returns False for anything else (lambdas, instances,
    omegaconf configs held inside a partial)."""
    if isinstance(obj, _SCALARS) or is_named_callable(obj):
        return True
    if isinstance(obj, (list, tuple)):
        return all(is_savable(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, _SCALARS) and is_savable(v) for k, v in obj.items())
    return _is_savable_partial(obj)


class ConfigDumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` that writes named classes and functions as ``!!python/name:`` tags
    and ``functools.partial`` objects as ``!!python/partial`` mappings, each in full where it
    occurs (no ``&id`` anchors: a name imports the same object back anyway)."""

    def ignore_aliases(self, data: Any) -> bool:
        """Whether ``data`` is written in full each time (scalars, callables, partials)."""
        return (isinstance(data, (type, types.FunctionType, types.BuiltinFunctionType,
                                  types.MethodType, functools.partial))
                or super().ignore_aliases(data))


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``!!python/name:<dotted path>`` tags (by import) and
    ``!!python/partial`` mappings (as ``functools.partial`` objects; nothing is called)."""


def _represent_name(dumper: yaml.SafeDumper, obj: Any) -> yaml.Node:
    return dumper.represent_scalar(_NAME_TAG + _convert_target_to_string(obj), "")


def _construct_name(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    try:
        return locate(suffix)
    except ImportError as e:
        raise yaml.constructor.ConstructorError(
            None, None, f"cannot import '{suffix}' named in the config: {e}", node.start_mark
        ) from e


def _represent_partial(dumper: yaml.SafeDumper, obj: functools.partial) -> yaml.Node:
    # A list of pairs keeps func, args, keywords in this order whatever sort_keys says.
    return dumper.represent_mapping(
        _PARTIAL_TAG, [("func", obj.func), ("args", list(obj.args)),
                       ("keywords", dict(obj.keywords))]
    )


def _construct_partial(loader: yaml.SafeLoader, node: yaml.Node) -> functools.partial:
    """``functools.partial(func, *args, **keywords)`` of a ``!!python/partial`` mapping."""
    def fail(problem: str) -> yaml.constructor.ConstructorError:
        return yaml.constructor.ConstructorError(
            None, None, f"!!python/partial {problem}; write it as a mapping with 'func' (a "
            "!!python/name: tag), 'args' (a list) and 'keywords' (a mapping)", node.start_mark)

    if not isinstance(node, yaml.MappingNode):
        raise fail(f"must be a mapping, not a {node.id}")
    fields = loader.construct_mapping(node, deep=True)
    unknown = sorted(str(k) for k in fields if k not in _PARTIAL_FIELDS)
    if unknown:
        raise fail(f"has unknown keys {unknown}")
    func = fields.get("func")
    args = fields.get("args") or []
    keywords = fields.get("keywords") or {}
    if not callable(func):
        raise fail(f"needs a callable 'func', got {func!r}")
    if not isinstance(args, list):
        raise fail(f"needs a list as 'args', got {args!r}")
    if not isinstance(keywords, dict) or not all(isinstance(k, str) for k in keywords):
        raise fail(f"needs a mapping with string keys as 'keywords', got {keywords!r}")
    return functools.partial(func, *args, **keywords)


ConfigDumper.add_multi_representer(type, _represent_name)
for _kind in (types.FunctionType, types.BuiltinFunctionType, types.MethodType):
    ConfigDumper.add_representer(_kind, _represent_name)
ConfigDumper.add_representer(functools.partial, _represent_partial)
ConfigLoader.add_multi_constructor(_NAME_TAG, _construct_name)
ConfigLoader.add_constructor(_PARTIAL_TAG, _construct_partial)
