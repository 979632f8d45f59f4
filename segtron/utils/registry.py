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
