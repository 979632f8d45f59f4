"""``DatasetCatalog`` (name -> function returning dataset dicts) and ``MetadataCatalog``.

A dataset is registered by name with a zero-argument function returning ``list[dict]`` in
Detectron2's standard format; its metadata (class names, colours, evaluator type, paths) is a
``Metadata`` object whose fields can be set once and never silently changed.
"""

import copy
import difflib
import logging
import types
from collections import UserDict
from typing import Any, Callable, Dict, List

__all__ = ["DatasetCatalog", "MetadataCatalog", "Metadata"]

logger = logging.getLogger(__name__)


def _unknown_name_hint(name: str, known: List[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class _DatasetCatalog(UserDict):
    """Global map from dataset name to the function that loads it (``list[dict]``)."""

    def register(self, name: str, func: Callable[[], List[Dict[str, Any]]]) -> None:
        """Register ``func`` (no arguments, returns ``list[dict]``) under ``name``.

        Raises TypeError if ``func`` is not callable and ValueError if ``name`` is taken.
        """
        if not callable(func):
            raise TypeError(
                f"DatasetCatalog.register('{name}', func): func must be a callable returning "
                f"list[dict], got {type(func).__name__}. Wrap data in a lambda: lambda: my_dicts."
            )
        if name in self:
            raise ValueError(
                f"Dataset '{name}' is already registered. Pick another name, or call "
                f"DatasetCatalog.remove('{name}') first to replace it."
            )
        self[name] = func

    def get(self, name: str) -> List[Dict[str, Any]]:
        """Call the function registered as ``name`` and return its ``list[dict]``.

        Raises KeyError listing the registered names when ``name`` is unknown.
        """
        try:
            func = self[name]
        except KeyError:
            known = sorted(self.keys())
            raise KeyError(
                f"Dataset '{name}' is not registered.{_unknown_name_hint(name, known)} Register it "
                "with DatasetCatalog.register or register_coco_instances; registered: "
                f"{', '.join(known) if known else '(none)'}."
            ) from None
        return func()

    def list(self) -> List[str]:
        """Return the registered dataset names."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Forget dataset ``name`` (KeyError if it is not registered)."""
        self.pop(name)

    def __str__(self) -> str:
        return f"DatasetCatalog(registered datasets: {', '.join(self.keys())})"

    __repr__ = __str__


DatasetCatalog = _DatasetCatalog()
DatasetCatalog.__doc__ = _DatasetCatalog.__doc__


class Metadata(types.SimpleNamespace):
    """Attributes of one dataset (``thing_classes``, ``thing_colors``, ``evaluator_type``, ...).

    A field set once cannot be set to a different value (AssertionError); reading a missing
    field raises AttributeError listing the fields that exist. Detectron2's deprecated names
    (``class_names`` and friends) are read and written under their current names.
    """

    name: str = "N/A"

    _RENAMED = {
        "class_names": "thing_classes",
        "dataset_id_to_contiguous_id": "thing_dataset_id_to_contiguous_id",
        "stuff_class_names": "stuff_classes",
    }

    def __getattr__(self, key: str) -> Any:
        if key in self._RENAMED:
            logger.warning("Metadata '%s' was renamed to '%s'.", key, self._RENAMED[key])
            return getattr(self, self._RENAMED[key])
        if len(self.__dict__) > 1:
            raise AttributeError(
                f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}'. "
                f"Available: {', '.join(sorted(self.__dict__))}."
            )
        raise AttributeError(
            f"Attribute '{key}' does not exist in the metadata of dataset '{self.name}': "
            "its metadata is empty. Set it with MetadataCatalog.get(name).set(...)."
        )

    def __setattr__(self, key: str, value: Any) -> None:
        if key in self._RENAMED:
            logger.warning("Metadata '%s' was renamed to '%s'.", key, self._RENAMED[key])
            key = self._RENAMED[key]
        if key in self.__dict__:
            old = self.__dict__[key]
            if not _same(old, value):
                raise AssertionError(
                    f"Metadata '{key}' of dataset '{self.name}' is already {old!r} and cannot be "
                    f"set to {value!r}. Register the dataset under another name, or "
                    f"MetadataCatalog.remove('{self.name}') first."
                )
            return
        super().__setattr__(key, value)

    def as_dict(self) -> Dict[str, Any]:
        """Return a shallow copy of all fields as a dict."""
        return copy.copy(self.__dict__)

    def set(self, **kwargs) -> "Metadata":
        """Set several fields at once (each set-once as above); returns self for chaining."""
        for key, value in kwargs.items():
            setattr(self, key, value)
        return self

    def get(self, key: str, default: Any = None) -> Any:
        """Return field ``key`` or ``default`` when it is not set."""
        try:
            return getattr(self, key)
        except AttributeError:
            return default


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. numpy arrays: elementwise comparison
        try:
            import numpy as np

            return bool(np.array_equal(a, b))
        except Exception:
            return a is b


class _MetadataCatalog(UserDict):
    """Global map from dataset name to its ``Metadata`` (created empty on first access)."""

    def get(self, name: str) -> Metadata:
        """Return the Metadata of ``name``, creating an empty one if it does not exist yet."""
        if not name:
            raise ValueError("MetadataCatalog.get needs a non-empty dataset name.")
        if name not in self:
            self[name] = Metadata(name=name)
        return self[name]

    def list(self) -> List[str]:
        """Return the names that have metadata."""
        return list(self.keys())

    def remove(self, name: str) -> None:
        """Forget the metadata of ``name`` (KeyError if there is none)."""
        self.pop(name)

    def __str__(self) -> str:
        return f"MetadataCatalog(registered metadata: {', '.join(self.keys())})"

    __repr__ = __str__


MetadataCatalog = _MetadataCatalog()
MetadataCatalog.__doc__ = _MetadataCatalog.__doc__
