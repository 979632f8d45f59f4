"""``Registry``: fvcore's name -> object registry with errors that list what is registered."""

import difflib
import pydoc
from typing import Any

from fvcore.common.registry import Registry as _FvcoreRegistry

__all__ = ["Registry", "locate"]


class Registry(_FvcoreRegistry):
    """A name -> class/function map filled by the ``@REGISTRY.register()`` decorator.

    Same API as ``fvcore.common.registry.Registry`` (``register``, ``get``, ``in``, iteration),
    which Detectron2 uses directly. ``get`` of an unknown name raises ``KeyError`` listing the
    registered names, the closest one, and the usual cause (the module defining it was never
    imported).
    """

    def get(self, name: str) -> Any:
        """Return the object registered under ``name``; KeyError with the alternatives if none."""
        obj = self._obj_map.get(name)
        if obj is not None:
            return obj
        registered = sorted(self._obj_map)
        close = difflib.get_close_matches(str(name), registered, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise KeyError(
            f"No object named '{name}' in the '{self._name}' registry.{hint} Registered: "
            f"{', '.join(registered) if registered else '(none)'}. If '{name}' is your own "
            "component, import the module that registers it (e.g. the project package) before "
            "building the model."
        )


def locate(name: str) -> Any:
    """Import and return the object at dotted path ``name`` (e.g. ``"torch.nn.ReLU"``).

    Raises ImportError naming the path when it cannot be found.
    """
    obj = pydoc.locate(name)
    if obj is None:
        raise ImportError(f"Cannot locate '{name}': no importable module attribute has that path.")
    return obj


def _convert_target_to_string(obj: Any) -> str:
    """The inverse of ``locate``: a dotted path that ``locate`` resolves back to ``obj``.

    Takes any object with ``__module__`` and ``__qualname__`` (a class or function) and returns
    the shortest ``<module prefix>.<qualname>`` that still locates the same object, e.g.
    ``segtron.modeling.GeneralizedRCNN`` rather than ``segtron.modeling.meta_arch.rcnn.
    GeneralizedRCNN``, so the string survives moving the implementation between files.

    Raises:
        ValueError: ``obj`` has no ``__module__`` / ``__qualname__`` (an instance, say); pass
            its class instead.
    """
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ValueError(
            f"Cannot name {obj!r}: it has no __module__/__qualname__. Pass a class or a "
            "function (e.g. type(obj)), not an instance."
        )
    parts = module.split(".")
    for k in range(1, len(parts)):
        candidate = ".".join(parts[:k] + [qualname])
        try:
            if locate(candidate) is obj:
                return candidate
        except (ImportError, pydoc.ErrorDuringImport):
            continue
    return f"{module}.{qualname}"
