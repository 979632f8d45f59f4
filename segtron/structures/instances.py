"""``Instances``: the per-image set of detected or annotated objects.

Detectron2 path: ``detectron2.structures.instances``.
"""

import itertools
import logging
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from .boxes import _is_integer_index

logger = logging.getLogger(__name__)

__all__ = ["Instances"]


def _select_from_list(values: Sequence[Any], item: Any) -> List[Any]:
    """Index a plain Python list with a slice, index list, index tensor/array or bool mask."""
    if isinstance(item, slice):
        return list(values[item])
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu().numpy()
    index = np.asarray(item)
    if index.dtype == bool:
        if index.ndim != 1 or len(index) != len(values):
            raise IndexError(
                f"Bool mask of shape {index.shape} cannot index a list field of length "
                f"{len(values)}; the mask needs one entry per instance."
            )
        index = np.nonzero(index)[0]
    if index.ndim != 1:
        raise IndexError(f"Index of shape {index.shape} cannot select instances; use a 1-D index.")
    return [values[int(i)] for i in index]


class Instances:
    """A list of objects in one image, stored as named fields of equal length.

    Each field (``pred_boxes``, ``scores``, ``gt_classes``, ...) holds one entry per object and
    can be any object with ``__len__`` and ``__getitem__`` (Tensor, Boxes, BitMasks, list...).
    Fields are read and written as attributes (``inst.scores = t``) or with ``set/get/has/
    remove``. ``image_size`` is the (height, width) of the image the objects belong to.
    """

    def __init__(self, image_size: Tuple[int, int], **kwargs: Any):
        """Args:
            image_size: (height, width) of the image.
            kwargs: initial fields, name -> value.
        """
        self._image_size = image_size
        self._fields: Dict[str, Any] = {}
        for name, value in kwargs.items():
            self.set(name, value)

    @property
    def image_size(self) -> Tuple[int, int]:
        """(height, width) of the image."""
        return self._image_size

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, value)
        else:
            self.set(name, value)

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails, i.e. for field names (and missing attributes).
        fields = self.__dict__.get("_fields")
        if fields is None or name not in fields:
            existing = sorted(fields) if fields else []
            raise AttributeError(
                f"Instances has no field '{name}'; existing fields: {existing}. "
                f"Set it with `instances.{name} = value` or instances.set('{name}', value)."
            )
        return fields[name]

    def set(self, name: str, value: Any) -> None:
        """Set field ``name`` to ``value``; its length must match the other fields.

        Raises ``TypeError`` if ``value`` has no length and ``ValueError`` naming the field and
        both lengths if the length differs from the other fields.
        """
        try:
            new_len = len(value)
        except TypeError:
            raise TypeError(
                f"Instances field '{name}' must have a length (one entry per instance); got a "
                f"{type(value).__name__}."
            ) from None
        for other, other_value in self._fields.items():
            if other == name:
                continue
            if len(other_value) != new_len:
                raise ValueError(
                    f"Cannot set Instances field '{name}' of length {new_len}: the existing field "
                    f"'{other}' has length {len(other_value)}. All fields need one entry per "
                    "instance."
                )
            break
        self._fields[name] = value

    def has(self, name: str) -> bool:
        """Whether field ``name`` exists."""
        return name in self._fields

    def remove(self, name: str) -> None:
        """Delete field ``name`` (``KeyError`` naming the existing fields if absent)."""
        if name not in self._fields:
            raise KeyError(
                f"Instances has no field '{name}' to remove; fields: {sorted(self._fields)}"
            )
        del self._fields[name]

    def get(self, name: str) -> Any:
        """Return field ``name`` (``AttributeError`` if absent)."""
        return self.__getattr__(name)

    def get_fields(self) -> Dict[str, Any]:
        """Return the dict of all fields, name -> value (the live dict, not a copy)."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> "Instances":
        """Return new Instances with every field that has a ``.to`` method converted with the
        same arguments (device and/or dtype as for ``Tensor.to``); other fields are shared."""
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            if hasattr(value, "to"):
                value = value.to(*args, **kwargs)
            out.set(name, value)
        return out

    def __getitem__(self, item: Any) -> "Instances":
        """Select instances; returns a new ``Instances`` with the same image size.

        ``item`` may be an int (gives a length-1 Instances; ``IndexError`` when out of range),
        a slice, an (N,) bool mask or a 1-D index tensor. Plain-list fields are indexed
        element by element.
        """
        if _is_integer_index(item):
            n = len(self)
            index = int(item)
            if index >= n or index < -n:
                raise IndexError(f"Instances index {index} is out of range for {n} instances.")
            if index < 0:
                index += n
            item = slice(index, index + 1)
        out = Instances(self._image_size)
        for name, value in self._fields.items():
            if isinstance(value, (list, tuple)):
                out.set(name, _select_from_list(value, item))
            else:
                out.set(name, value[item])
        return out

    def __len__(self) -> int:
        for value in self._fields.values():
            return len(value)
        raise NotImplementedError(
            "Instances without fields has no length; set a field first "
            "(e.g. instances.pred_boxes = Boxes(...))."
        )

    def __iter__(self):
        raise NotImplementedError(
            "Instances is not iterable; index it (instances[i]) or iterate over a field."
        )

    @staticmethod
    def cat(instance_lists: Sequence["Instances"]) -> "Instances":
        """Concatenate Instances of the same image size and field names.

        Tensors are joined with ``torch.cat``, lists are chained, other fields use their type's
        ``cat`` (Boxes, BitMasks, PolygonMasks, Keypoints...). A one-element list returns its
        element unchanged.
        """
        if not isinstance(instance_lists, (list, tuple)) or len(instance_lists) == 0:
            raise ValueError("Instances.cat expects a non-empty list of Instances.")
        for i, inst in enumerate(instance_lists):
            if not isinstance(inst, Instances):
                raise TypeError(f"Instances.cat: element {i} is a {type(inst).__name__}.")
        if len(instance_lists) == 1:
            return instance_lists[0]

        first = instance_lists[0]
        names = list(first._fields.keys())
        for i, inst in enumerate(instance_lists[1:], start=1):
            if tuple(inst.image_size) != tuple(first.image_size):
                raise ValueError(
                    f"Instances.cat: element {i} has image_size {inst.image_size} but element 0 "
                    f"has {first.image_size}; only Instances of one image can be concatenated."
                )
            if set(inst._fields) != set(names):
                raise ValueError(
                    f"Instances.cat: element {i} has fields {sorted(inst._fields)} but element 0 "
                    f"has {sorted(names)}; all must have the same fields."
                )

        out = Instances(first.image_size)
        for name in names:
            values = [inst._fields[name] for inst in instance_lists]
            head = values[0]
            if isinstance(head, torch.Tensor):
                joined = torch.cat(values, dim=0)
            elif isinstance(head, list):
                joined = list(itertools.chain.from_iterable(values))
            elif hasattr(type(head), "cat"):
                joined = type(head).cat(values)
            else:
                raise ValueError(
                    f"Instances.cat: field '{name}' of type {type(head).__name__} cannot be "
                    "concatenated; give the type a `cat` classmethod or store a tensor/list."
                )
            out.set(name, joined)
        return out

    def __repr__(self) -> str:
        count = len(self) if self._fields else 0
        parts = ", ".join(f"{k}: {_summarise(v)}" for k, v in self._fields.items())
        height, width = self._image_size[0], self._image_size[1]
        return (
            f"Instances(num_instances={count}, image_height={height}, image_width={width}, "
            f"fields=[{parts}])"
        )

    __str__ = __repr__


def _summarise(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    inner = getattr(value, "tensor", None)
    if isinstance(inner, torch.Tensor):
        return f"{type(value).__name__}(shape={tuple(inner.shape)}, device={inner.device})"
    return f"{type(value).__name__}(len={len(value)})"
