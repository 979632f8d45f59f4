"""Context managers that make model code trace with dynamic sizes.

Detectron2 path: ``detectron2.export.torchscript_patch`` (``patch_builtin_len``).
"""

import contextlib
import importlib
from typing import Any, Iterator, Sequence
from unittest import mock

import torch

from ..structures import Instances

__all__ = ["patch_builtin_len", "LEN_PATCHED_MODULES"]

# Modules whose per-image box counts (``len(instances)``, ``len(boxes)``) must stay traced
# values: they split batched predictions per image.
LEN_PATCHED_MODULES = (
    "segtron.modeling.roi_heads.fast_rcnn",
    "segtron.modeling.roi_heads.mask_head",
    "segtron.modeling.roi_heads.keypoint_head",
)


def traced_len(obj: Any) -> Any:
    """``len(obj)`` that keeps the tracer's size value for tensors, ``Instances`` and tensor
    wrappers (Boxes, ...): returns ``obj.shape[0]`` (a traced 0-dim tensor while tracing)
    instead of a Python int frozen into the graph. Other objects use their ``__len__``."""
    if isinstance(obj, torch.Tensor):
        return obj.shape[0]
    if isinstance(obj, Instances):
        for value in obj.get_fields().values():
            return traced_len(value)
        return obj.__len__()
    inner = getattr(obj, "tensor", None)
    if isinstance(inner, torch.Tensor):
        return inner.shape[0]
    return obj.__len__()


@contextlib.contextmanager
def patch_builtin_len(modules: Sequence[str] = ()) -> Iterator[None]:
    """Within the context, ``len`` in ``LEN_PATCHED_MODULES`` and ``modules`` (dotted module
    names) is :func:`traced_len`, so that traced graphs keep per-image counts dynamic.

    Eager results are unchanged (``traced_len`` gives the same numbers outside tracing)."""
    with contextlib.ExitStack() as stack:
        for name in tuple(LEN_PATCHED_MODULES) + tuple(modules):
            try:
                module = importlib.import_module(name)
            except ImportError as err:
                raise ValueError(
                    f"patch_builtin_len: cannot import module '{name}' ({err}); pass importable "
                    "dotted module names."
                ) from err
            stack.enter_context(mock.patch.object(module, "len", traced_len, create=True))
        yield
