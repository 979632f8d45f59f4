"""Flatten structured model inputs/outputs to tuples of tensors, and rebuild them.

Detectron2 path: ``detectron2.export.flatten``.

``torch.jit.trace`` and the ONNX exporter only accept a module whose ``forward`` takes and
returns tensors (or tuples of them). Detection models take ``list[dict]`` and return
``list[dict[str, Instances]]``. :func:`flatten_to_tuple` turns such an object into a flat tuple
plus a *schema*; calling the schema on a flat tuple (e.g. a traced model's outputs) rebuilds an
object of the original structure. :class:`TracingAdapter` wraps a model with that conversion so
that it can be traced.
"""

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..structures import Boxes, Instances, ROIMasks
from .patches import patch_builtin_len

logger = logging.getLogger(__name__)

__all__ = [
    "Schema",
    "IdentitySchema",
    "ListSchema",
    "TupleSchema",
    "DictSchema",
    "InstancesSchema",
    "TensorWrapSchema",
    "flatten_to_tuple",
    "TracingAdapter",
]

# Classes that wrap one tensor in attribute ``tensor`` and are rebuilt with ``cls(tensor)``.
_TENSOR_WRAPPERS = {"Boxes": Boxes, "ROIMasks": ROIMasks}


class Schema:
    """How to rebuild one object from a flat tuple: ``schema(values) -> object``.

    Subclasses implement ``flatten(obj) -> (tuple, schema)`` (a classmethod) and ``__call__``.
    """

    @classmethod
    def flatten(cls, obj: Any) -> Tuple[tuple, "Schema"]:
        """Return the flat tuple of ``obj``'s leaves and the schema that rebuilds ``obj``."""
        raise NotImplementedError

    def __call__(self, values: tuple) -> Any:
        raise NotImplementedError


@dataclass
class IdentitySchema(Schema):
    """A leaf (a tensor, or a non-tensor such as a str or int): one value, returned as is."""

    @classmethod
    def flatten(cls, obj: Any) -> Tuple[tuple, "IdentitySchema"]:
        """A leaf flattens to ``(obj,)``."""
        return (obj,), cls()

    def __call__(self, values: tuple) -> Any:
        if len(values) != 1:
            raise ValueError(f"IdentitySchema rebuilds one leaf, got {len(values)} values.")
        return values[0]


@dataclass
class ListSchema(Schema):
    """A list: the children's schemas and how many flat values each child takes."""

    schemas: List[Schema]
    sizes: List[int]

    def _split(self, values: tuple) -> List[Any]:
        expected = sum(self.sizes)
        if len(values) != expected:
            raise ValueError(
                f"{type(self).__name__} expects {expected} flat values, got {len(values)}; were "
                "the outputs produced by the model this schema was recorded from?"
            )
        out, start = [], 0
        for schema, size in zip(self.schemas, self.sizes):
            out.append(schema(tuple(values[start:start + size])))
            start += size
        return out

    def __call__(self, values: tuple) -> List[Any]:
        return self._split(values)

    @classmethod
    def flatten(cls, obj: Any) -> Tuple[tuple, "ListSchema"]:
        """Flatten each element and concatenate the results."""
        flat: List[Any] = []
        schemas, sizes = [], []
        for item in obj:
            values, schema = flatten_to_tuple(item)
            flat.extend(values)
            schemas.append(schema)
            sizes.append(len(values))
        return tuple(flat), cls(schemas, sizes)


@dataclass
class TupleSchema(ListSchema):
    """A tuple (as :class:`ListSchema`, rebuilt as a tuple)."""

    def __call__(self, values: tuple) -> tuple:
        return tuple(self._split(values))


@dataclass
class DictSchema(ListSchema):
    """A mapping with str keys, flattened in sorted key order."""

    keys: List[str]

    def __call__(self, values: tuple) -> Dict[str, Any]:
        return dict(zip(self.keys, self._split(values)))

    @classmethod
    def flatten(cls, obj: Any) -> Tuple[tuple, "DictSchema"]:
        """Flatten the values in sorted key order (keys must be str)."""
        for key in obj.keys():
            if not isinstance(key, str):
                raise KeyError(
                    f"flatten_to_tuple: only dicts with str keys can be flattened, got key "
                    f"{key!r} of type {type(key).__name__}; convert the keys to str."
                )
        keys = sorted(obj.keys())
        values, inner = ListSchema.flatten([obj[k] for k in keys])
        return values, cls(inner.schemas, inner.sizes, keys)


@dataclass
class InstancesSchema(DictSchema):
    """An ``Instances``: its fields (sorted by name) followed by ``image_size`` as an int64 (2,)
    tensor; rebuilt with ``image_size`` as that tensor when traced, else as given."""

    def __call__(self, values: tuple) -> Instances:
        if len(values) == 0:
            raise ValueError("InstancesSchema needs at least the image_size value.")
        image_size = values[-1]
        fields = super().__call__(values[:-1])
        if isinstance(image_size, torch.Tensor) and not torch.jit.is_tracing():
            image_size = tuple(int(v) for v in image_size.tolist())
        return Instances(image_size, **fields)

    @classmethod
    def flatten(cls, obj: Instances) -> Tuple[tuple, "InstancesSchema"]:
        """Flatten the fields and append the image size as a tensor."""
        values, inner = DictSchema.flatten(obj.get_fields())
        size = obj.image_size
        if isinstance(size, torch.Tensor):
            pass
        elif all(isinstance(v, torch.Tensor) for v in size):
            # Traced sizes (0-dim tensors): stacking keeps them dynamic in the graph.
            size = torch.stack([v.to(torch.int64) for v in size])
        else:
            size = torch.tensor([int(size[0]), int(size[1])], dtype=torch.int64)
        return values + (size,), cls(inner.schemas, inner.sizes, inner.keys)


@dataclass
class TensorWrapSchema(Schema):
    """An object that wraps one tensor in ``.tensor`` (``Boxes``, ``ROIMasks``); rebuilt with
    ``cls(tensor)`` for the class named ``class_name``."""

    class_name: str

    def __call__(self, values: tuple) -> Any:
        if len(values) != 1:
            raise ValueError(f"TensorWrapSchema rebuilds one tensor, got {len(values)} values.")
        klass = _TENSOR_WRAPPERS.get(self.class_name)
        if klass is None:
            raise KeyError(
                f"TensorWrapSchema: unknown class '{self.class_name}'; known: "
                f"{sorted(_TENSOR_WRAPPERS)}."
            )
        return klass(values[0])

    @classmethod
    def flatten(cls, obj: Any) -> Tuple[tuple, "TensorWrapSchema"]:
        """Flatten to ``(obj.tensor,)``."""
        return (obj.tensor,), cls(type(obj).__name__)


def flatten_to_tuple(obj: Any) -> Tuple[tuple, Schema]:
    """Flatten ``obj`` (nested list / tuple / dict / Instances / Boxes / ROIMasks / tensors /
    other leaves) into a flat tuple of leaves.

    Returns:
        ``(values, schema)``: ``schema(values)`` rebuilds an object of ``obj``'s structure.
        Strings and any type not listed are leaves (kept as they are).
    """
    if isinstance(obj, (str, bytes)):
        return IdentitySchema.flatten(obj)
    if isinstance(obj, list):
        return ListSchema.flatten(obj)
    if isinstance(obj, tuple):
        return TupleSchema.flatten(obj)
    if isinstance(obj, dict):
        return DictSchema.flatten(obj)
    if isinstance(obj, Instances):
        return InstancesSchema.flatten(obj)
    if type(obj).__name__ in _TENSOR_WRAPPERS and isinstance(obj, tuple(_TENSOR_WRAPPERS.values())):
        return TensorWrapSchema.flatten(obj)
    return IdentitySchema.flatten(obj)


def _default_inference(model: nn.Module, *inputs: Any) -> Any:
    return model(*inputs)


class TracingAdapter(nn.Module):
    """Wrap a model so that it takes and returns flat tuples of tensors, for tracing/export.

    Example::

        adapter = TracingAdapter(model, [{"image": image}])
        traced = torch.jit.trace(adapter, adapter.flattened_inputs)
        outputs = adapter.outputs_schema(traced(*adapter.flattened_inputs))

    Attributes:
        flattened_inputs (tuple[Tensor]): the example inputs, flattened; pass them to
            ``torch.jit.trace`` / ``torch.onnx.export``.
        inputs_schema: rebuilds the model's inputs from flat tensors (None when
            ``allow_non_tensor`` dropped non-tensor inputs).
        outputs_schema: rebuilds the model's outputs from the flat output tuple; set by the
            first ``forward``.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Any,
        inference_func: Optional[Callable[..., Any]] = None,
        allow_non_tensor: bool = False,
    ):
        """Args:
            model: the model (a ``DataParallel``/``DistributedDataParallel`` is unwrapped).
            inputs: the model's usual input, e.g. ``[{"image": CHW tensor}]``; a tuple is
                taken as several positional inputs.
            inference_func: ``f(model, *inputs) -> outputs``; default ``model(*inputs)``. For
                R-CNNs use e.g. ``lambda model, inputs: model.inference(inputs,
                do_postprocess=False)``.
            allow_non_tensor: accept inputs with non-tensor leaves (e.g. "file_name"); they
                are then fixed to the given values and the adapter only accepts exactly
                ``flattened_inputs``.
        """
        super().__init__()
        if isinstance(model, (nn.parallel.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        self.model = model
        if not isinstance(inputs, tuple):
            inputs = (inputs,)
        self.inputs = inputs
        self.allow_non_tensor = allow_non_tensor
        self.inference_func = inference_func if inference_func is not None else _default_inference

        flat, schema = flatten_to_tuple(inputs)
        self.flattened_inputs: Tuple[torch.Tensor, ...] = flat
        self.inputs_schema: Optional[Schema] = schema
        non_tensors = [type(x).__name__ for x in flat if not isinstance(x, torch.Tensor)]
        if non_tensors:
            if not allow_non_tensor:
                raise ValueError(
                    f"TracingAdapter: the inputs contain non-tensor values ({non_tensors}); "
                    "tracing needs tensors only. Remove them from the inputs, or pass "
                    "allow_non_tensor=True to fix them to the given values."
                )
            self.flattened_inputs = tuple(x for x in flat if isinstance(x, torch.Tensor))
            self.inputs_schema = None
        self.outputs_schema: Optional[Schema] = None

    def forward(self, *args: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """Rebuild the inputs from ``args``, run ``inference_func`` without gradients and
        return its outputs flattened to a tuple of tensors (recording ``outputs_schema``)."""
        with torch.no_grad(), patch_builtin_len():
            if self.inputs_schema is not None:
                inputs = self.inputs_schema(args)
            else:
                same = len(args) == len(self.flattened_inputs) and all(
                    a is b for a, b in zip(args, self.flattened_inputs)
                )
                if not same:
                    raise ValueError(
                        "TracingAdapter was built with allow_non_tensor=True, so it has no "
                        "inputs schema and only runs on its own `.flattened_inputs`; call it "
                        "(or trace it) with exactly those."
                    )
                inputs = self.inputs
            outputs = self.inference_func(self.model, *inputs)
            flat, schema = flatten_to_tuple(outputs)
            tensors = tuple(x for x in flat if isinstance(x, torch.Tensor))
            if len(tensors) != len(flat):
                bad = sorted({type(x).__name__ for x in flat if not isinstance(x, torch.Tensor)})
                raise ValueError(
                    f"TracingAdapter: the model's outputs contain non-tensor values {bad} that "
                    "cannot be traced; change inference_func to return tensors (or structures "
                    "of them: list, tuple, dict, Instances, Boxes, ROIMasks)."
                )
            if self.outputs_schema is None:
                self.outputs_schema = schema
            elif self.outputs_schema != schema:
                logger.warning(
                    "TracingAdapter: the output structure changed between calls; keeping the "
                    "schema of the first call (%s).", type(self.outputs_schema).__name__
                )
            return tensors
