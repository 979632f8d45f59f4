"""Execute a Python (LazyConfig) config file, with relative imports resolved as config files.

Inside a config file, ``from .common.optim import SGD`` loads the file ``common/optim.py`` next
to it (no ``__init__.py`` needed) and imports its top-level ``SGD``, turning dicts into
DictConfigs; ``from ..base import model`` goes one directory up. Absolute imports work as in
Python. The hook is the ``__import__`` of the config's own builtins: nothing global is patched.
"""

import ast
import builtins
import os
import types
import uuid
from typing import Any, Dict

from omegaconf import DictConfig, ListConfig

__all__ = ["exec_config_file", "to_config", "top_level_configs"]

_CFG_PACKAGE = "segtron._cfg_loader"
_RELATIVE_ONLY_FILES = (
    "Within a config file, a relative import can only import names from another config "
    "file, e.g. `from .common.optim import SGD` for common/optim.py."
)


def to_config(obj: Any) -> Any:
    """A plain dict becomes a DictConfig (objects allowed, as LazyConfig needs); others as is."""
    if isinstance(obj, dict):
        return DictConfig(obj, flags={"allow_objects": True})
    return obj


def _check_syntax(filename: str, source: str) -> None:
    try:
        ast.parse(source, filename=filename)
    except SyntaxError as e:
        raise SyntaxError(
            f"Config file {filename} has a syntax error at line {e.lineno}: {e.msg}"
        ) from e


def _relative_file(importer: str, name: str, level: int) -> str:
    """The config file that ``from <level dots><name> import ...`` in ``importer`` means."""
    if not name:
        raise ImportError(f"{importer}: `from {'.' * level} import ...` is not allowed. "
                          + _RELATIVE_ONLY_FILES)
    path = os.path.dirname(os.path.abspath(importer))
    for _ in range(level - 1):
        path = os.path.dirname(path)
    path = os.path.join(path, *name.split("."))
    if os.path.isfile(path + ".py"):
        return path + ".py"
    if os.path.isdir(path):
        raise ImportError(f"{importer}: cannot import from the directory {path}. "
                          + _RELATIVE_ONLY_FILES)
    raise ImportError(
        f"{importer}: cannot import '{'.' * level}{name}': {path}.py does not exist."
    )


def _config_import(name, globals=None, locals=None, fromlist=(), level=0):
    """``__import__`` for config files: relative imports load other config files."""
    package = (globals or {}).get("__package__") or ""
    if level == 0 or not package.startswith(_CFG_PACKAGE):
        return builtins.__import__(name, globals, locals, fromlist, level)
    importer = globals["__file__"]
    module = types.ModuleType(f"{package}.{os.path.basename(importer)}")
    module.__dict__.update(exec_config_file(_relative_file(importer, name, level)))
    for attr in fromlist or ():
        if attr not in module.__dict__:
            raise ImportError(f"{importer}: cannot import name '{attr}' from "
                              f"'{'.' * level}{name}' ({module.__dict__['__file__']}).")
        module.__dict__[attr] = to_config(module.__dict__[attr])
    return module


def exec_config_file(filename: str) -> Dict[str, Any]:
    """Run the config file ``filename`` and return its global namespace."""
    with open(filename, encoding="utf-8") as f:
        source = f.read()
    _check_syntax(filename, source)
    config_builtins = dict(builtins.__dict__, __import__=_config_import)
    namespace = {
        "__file__": filename,
        "__name__": f"{_CFG_PACKAGE}{uuid.uuid4().hex[:8]}",
        "__package__": f"{_CFG_PACKAGE}{uuid.uuid4().hex[:8]}",
        "__builtins__": config_builtins,
    }
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def top_level_configs(namespace: Dict[str, Any]) -> DictConfig:
    """The config of an executed file: its public top-level dicts and configs."""
    return DictConfig(
        {
            name: to_config(value)
            for name, value in namespace.items()
            if isinstance(value, (dict, DictConfig, ListConfig)) and not name.startswith("_")
        },
        flags={"allow_objects": True},
    )
