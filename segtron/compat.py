"""Let existing Detectron2 code run on segtron: ``import detectron2.X`` resolves to ``segtron.X``.

Usage, before anything imports detectron2::

    import segtron.compat
    segtron.compat.install_detectron2_alias()
    from detectron2.structures import Boxes   # this is segtron.structures.Boxes

The alias returns segtron's own module objects, so ``detectron2.structures.Boxes is
segtron.structures.Boxes`` and isinstance checks agree whichever name a file imported. It refuses
to shadow a real Detectron2 installation unless ``force=True``.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Optional

__all__ = ["install_detectron2_alias", "uninstall_detectron2_alias", "is_detectron2_alias_installed"]

_ALIAS = "detectron2"
_TARGET = "segtron"


class ExistingModuleLoader(importlib.abc.Loader):
    """A loader that hands out an already-imported module under another name (an alias),
    leaving the module's own ``__spec__`` in place. Used for ``detectron2.X`` -> ``segtron.X``
    here and for ``segtron.projects.<name>`` -> ``projects.<Dir>``."""

    def __init__(self, module):
        self._module = module
        self._spec = module.__spec__

    def create_module(self, spec):
        return self._module

    def exec_module(self, module):
        # importlib stamped the alias spec on the module; give segtron's module its own back.
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder mapping ``detectron2[.X]`` to ``segtron[.X]``."""

    def find_spec(self, fullname: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname != _ALIAS and not fullname.startswith(_ALIAS + "."):
            return None
        target_name = _TARGET + fullname[len(_ALIAS):]
        try:
            module = importlib.import_module(target_name)
        except ModuleNotFoundError as e:
            if e.name != target_name:
                raise
            raise ModuleNotFoundError(
                f"'{fullname}' is aliased to '{target_name}', which segtron does not provide. "
                "Port that import to an available segtron module, or install real Detectron2 "
                "and do not install the alias.",
                name=fullname,
            ) from None
        is_package = hasattr(module, "__path__")
        if is_package:
            _alias_loaded_submodules(target_name)
        return importlib.machinery.ModuleSpec(
            fullname, ExistingModuleLoader(module), is_package=is_package
        )


def _alias_loaded_submodules(package: str) -> None:
    """Register every already-imported ``segtron.<package>.X`` as ``detectron2.<...>.X`` in
    ``sys.modules`` directly. Importing such a submodule through the import system would set it
    as an attribute of its (shared) parent package, replacing a same-named public object:
    ``import detectron2.layers.nms`` would turn ``segtron.layers.nms`` from the function into
    the module. Registered this way, the import finds it and changes nothing."""
    prefix = package + "."
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix) and module is not None:
            sys.modules.setdefault(_ALIAS + name[len(_TARGET):], module)


def _installed_finder() -> Optional[_AliasFinder]:
    return next((f for f in sys.meta_path if isinstance(f, _AliasFinder)), None)


def is_detectron2_alias_installed() -> bool:
    """Return True when ``import detectron2`` currently resolves to segtron."""
    return _installed_finder() is not None


def install_detectron2_alias(force: bool = False) -> None:
    """Make ``detectron2`` and all ``detectron2.X`` imports resolve to ``segtron`` / ``segtron.X``.

    Args:
        force: alias even if a real Detectron2 is importable (it is then hidden in this process).

    Raises:
        RuntimeError: a real Detectron2 is installed or already imported and ``force`` is False.
    """
    if is_detectron2_alias_installed():
        return
    real = sys.modules.get(_ALIAS)
    if real is not None and not force:
        raise RuntimeError(
            f"A real 'detectron2' is already imported (from {getattr(real, '__file__', '?')}); "
            "install the alias before anything imports detectron2, or pass force=True."
        )
    if real is None and not force and importlib.util.find_spec(_ALIAS) is not None:
        spec = importlib.util.find_spec(_ALIAS)
        raise RuntimeError(
            f"A real Detectron2 is installed at {spec.origin}; the alias would hide it. Use it "
            "directly, uninstall it, or call install_detectron2_alias(force=True)."
        )
    if force:
        for name in [n for n in sys.modules if n == _ALIAS or n.startswith(_ALIAS + ".")]:
            del sys.modules[name]
    sys.meta_path.insert(0, _AliasFinder())


def uninstall_detectron2_alias() -> None:
    """Undo ``install_detectron2_alias``: drop the finder and the aliased ``detectron2`` modules."""
    finder = _installed_finder()
    if finder is None:
        return
    sys.meta_path.remove(finder)
    for name in [n for n in sys.modules if n == _ALIAS or n.startswith(_ALIAS + ".")]:
        if getattr(sys.modules[name], "__name__", "").startswith(_TARGET):
            del sys.modules[name]
