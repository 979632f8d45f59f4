"""Write a LazyConfig as readable Python source (``LazyConfig.to_py``).

Top-level keys become ``<prefix><key> = <expression>`` lines; a dict with ``_target_`` becomes
``LazyCall(Target)(...)`` with ``Target`` imported when it is a class or function, other dicts
become ``dict(...)``, a ``functools.partial`` of a named callable ``partial(Func, ...)``.
Expressions longer than one line allows are broken one argument a line. The result is
exec-able as long as every leaf value has an evaluable ``repr``.
"""

import collections.abc as abc
import functools
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf

from segtron.utils.registry import _convert_target_to_string, locate

from .lazy_yaml import is_named_callable, is_savable

__all__ = ["config_to_py"]

_WIDTH = 100
_INDENT = "    "


class _Imports:
    """Collects ``from module import Name`` lines; clashing names fall back to strings."""

    def __init__(self):
        self.by_name: Dict[str, str] = {}  # imported name -> module

    def reference(self, obj: Any) -> Optional[str]:
        """Python code naming ``obj`` (importing its module's top-level attribute), or None."""
        where = self._module_and_qualname(obj)
        if where is None:
            return None
        module, qualname = where
        if self.by_name.setdefault(qualname.split(".")[0], module) != module:
            return None
        return qualname

    @staticmethod
    def _module_and_qualname(obj: Any) -> Optional[Tuple[str, str]]:
        """(module to import from, qualified name in it) of a class or function, or None."""
        try:
            dotted = _convert_target_to_string(obj)
        except ValueError:
            return None
        qualname = getattr(obj, "__qualname__", "")
        if qualname and dotted.endswith("." + qualname):
            module = dotted[: -len(qualname) - 1]
        else:
            module, _, qualname = dotted.rpartition(".")
        if "<" in qualname:  # a lambda or a function's local: not importable
            return None
        # A nested name (a class's method such as ResNet.make_stage, or a nested class): import
        # the outermost class and reach the rest through attributes.
        head = qualname.split(".")[0]
        if head != qualname:  # import the outer class from where its own reference names it
            try:
                module = _convert_target_to_string(locate(f"{module}.{head}")).rpartition(".")[0]
            except (ImportError, ValueError):
                pass
        return (module, qualname) if module else None

    def callable_code(self, obj: Any) -> Optional[str]:
        """Python code naming a named class or function: its imported name, or where that name
        is taken by another import, an ``__import__(...)`` expression; None if not importable."""
        ref = self.reference(obj)
        if ref is not None or not is_named_callable(obj):
            return ref
        module, qualname = self._module_and_qualname(obj)
        return f"__import__({module!r}, fromlist=[{qualname.split('.')[0]!r}]).{qualname}"

    def lines(self) -> List[str]:
        """The import statements, sorted, with LazyCall's first."""
        out = ["from segtron.config import LazyCall"]
        out += sorted(f"from {m} import {n}" for n, m in self.by_name.items())
        return out


def _target_code(target: Any, imports: _Imports) -> str:
    """An imported name for a callable target, else its dotted path as a string literal."""
    if isinstance(target, str):
        return repr(target)
    if isinstance(target, functools.partial):
        return _expr(target, imports)
    ref = imports.reference(target)
    if ref is not None:
        return ref
    try:
        return repr(_convert_target_to_string(target))
    except ValueError:
        return repr(target)


def _pieces(value: Any, imports: _Imports) -> Tuple[str, str, List[str]]:
    """(open, close, items) of a container value, or ('', '', [code]) of a leaf."""
    if isinstance(value, (ListConfig, list, tuple)):
        items = [_expr(v, imports) for v in value]
        if isinstance(value, tuple):
            return "(", ",)" if len(items) == 1 else ")", items
        return "[", "]", items
    if isinstance(value, abc.Mapping):
        keys = [str(k) for k in value.keys() if k != "_target_"]
        as_kwargs = all(k.isidentifier() for k in keys)
        items = [
            f"{k}={_expr(value[k], imports)}" if as_kwargs else f"{k!r}: {_expr(value[k], imports)}"
            for k in keys
        ]
        if "_target_" in value:
            if not as_kwargs:
                raise ValueError(f"to_py: LazyCall keys must be identifiers, got {keys}.")
            return f"LazyCall({_target_code(value['_target_'], imports)})(", ")", items
        return ("dict(", ")", items) if as_kwargs else ("{", "}", items)
    if isinstance(value, functools.partial) and is_savable(value):
        return f"{imports.callable_code(functools.partial)}(", ")", _partial_items(value, imports)
    if callable(value) and not isinstance(value, (str, bytes)):
        ref = imports.callable_code(value)
        if ref is not None:
            return "", "", [ref]
    return "", "", [repr(value)]


def _partial_items(value: functools.partial, imports: _Imports) -> List[str]:
    """The arguments of ``partial(...)`` rebuilding ``value``: function, args, keywords."""
    items = [_expr(value.func, imports)] + [_expr(a, imports) for a in value.args]
    named = {k: v for k, v in value.keywords.items() if k.isidentifier()}
    items += [f"{k}={_expr(v, imports)}" for k, v in named.items()]
    others = {k: v for k, v in value.keywords.items() if k not in named}
    if others:
        items.append("**" + _expr(others, imports))
    return items


def _expr(value: Any, imports: _Imports, indent: str = "", room: int = _WIDTH) -> str:
    """``value`` as a Python expression, on one line when it fits in ``room`` characters."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = _container(value)
    opening, closing, items = _pieces(value, imports)
    if not opening:
        return items[0]
    flat = opening + ", ".join(items) + closing
    if len(flat) <= room and "\n" not in flat:
        return flat
    inner = indent + _INDENT
    lines = [inner + _rewrap(item, inner) + "," for item in items]
    return opening + "\n" + "\n".join(lines) + "\n" + indent + closing.lstrip(",")


def _rewrap(item: str, indent: str) -> str:
    """Indent the continuation lines of a nested multi-line item."""
    return item.replace("\n", "\n" + indent)


def _container(cfg: Any) -> Any:
    """A config as plain dicts and lists (interpolations kept as ``${...}`` strings)."""
    return OmegaConf.to_container(cfg, resolve=False)


def config_to_py(cfg: Any, prefix: str = "cfg.") -> str:
    """Python source that rebuilds ``cfg``: one assignment per top-level key after imports."""
    if not isinstance(cfg, abc.Mapping):
        raise ValueError(f"to_py needs a dict or DictConfig, got {type(cfg).__name__}.")
    if isinstance(cfg, DictConfig):
        cfg = _container(cfg)
    imports = _Imports()
    body = []
    for key, value in cfg.items():
        key = str(key)
        if key.isidentifier():
            lhs = f"{prefix}{key}"
        elif prefix.endswith("."):
            lhs = f"{prefix[:-1]}[{key!r}]"
        else:
            raise ValueError(f"to_py: top-level key {key!r} is not a Python identifier; pass a "
                             "prefix such as 'cfg.' so it can be written as cfg['...'].")
        body.append(f"{lhs} = {_expr(value, imports, '', _WIDTH - len(lhs) - 3)}")
    return "\n".join(imports.lines() + [""] + body) + "\n"

