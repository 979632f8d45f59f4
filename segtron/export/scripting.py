"""``torch.jit.script`` for code that uses ``Instances``: the compiler is given a statically
typed stand-in class with the requested fields.

Detectron2 path: ``detectron2.export.torchscript`` (``scripting_with_instances``) and
``detectron2.export.torchscript_patch`` (``patch_instances``).

``Instances`` stores arbitrary fields in a dict, which TorchScript cannot type. Within
:func:`patch_instances` every loaded module that refers to ``Instances`` sees a generated class
whose fields are typed attributes (``pred_boxes: Boxes``, ``scores: Tensor``, ...), and type
annotations naming ``Instances`` compile to it.
"""

import contextlib
import importlib.util
import itertools
import logging
import os
import sys
import tempfile
from typing import Any, Dict, Iterator
from unittest import mock

import torch
from torch import nn

from ..structures import Instances

logger = logging.getLogger(__name__)

__all__ = ["scripting_with_instances", "patch_instances"]

_counter = itertools.count()


def _type_source(kind: Any, imports: Dict[str, str]) -> str:
    """The source name of a field type, recording the import it needs."""
    if kind is torch.Tensor:
        return "Tensor"
    if not isinstance(kind, type):
        raise ValueError(
            f"scripting_with_instances: field type {kind!r} is not a class; give types such as "
            "torch.Tensor or Boxes."
        )
    imports[kind.__name__] = f"from {kind.__module__} import {kind.__name__}"
    return kind.__name__


def _class_source(name: str, fields: Dict[str, Any]) -> str:
    """Source of a TorchScript class with one Optional attribute and a property per field."""
    imports: Dict[str, str] = {}
    types = {field: _type_source(kind, imports) for field, kind in fields.items()}
    lines = [
        "from typing import List, Optional, Tuple",
        "import torch",
        "from torch import Tensor",
        *sorted(imports.values()),
        "",
        "",
        f"class {name}:",
        f'    """Instances with the typed fields {sorted(fields)} (generated for scripting)."""',
        "",
        "    def __init__(self, image_size: Tuple[int, int]):",
        "        self.image_size = image_size",
    ]
    lines += [f"        self._{f} = torch.jit.annotate(Optional[{t}], None)"
              for f, t in types.items()]
    for field, kind in types.items():
        lines += [
            "",
            "    @property",
            f"    def {field}(self) -> {kind}:",
            f"        value = self._{field}",
            "        if value is None:",
            f"            raise AttributeError(\"Instances field '{field}' is not set\")",
            "        return value",
            "",
            f"    @{field}.setter",
            f"    def {field}(self, value: {kind}) -> None:",
            f"        self._{field} = value",
        ]
    lines += ["", "    def __len__(self) -> int:"]
    for field in types:
        lines += [
            f"        value_{field} = self._{field}",
            f"        if value_{field} is not None:",
            f"            return len(value_{field})",
        ]
    lines += [
        "        raise NotImplementedError(\"Instances without fields has no length\")",
        "",
        "    def has(self, name: str) -> bool:",
    ]
    for field in types:
        lines += [f"        if name == \"{field}\":",
                  f"            return self._{field} is not None"]
    lines += ["        return False", ""]
    return "\n".join(lines)


def _load_class(name: str, source: str, folder: str) -> type:
    """Write ``source`` to a file (the compiler reads sources from files) and import it."""
    path = os.path.join(folder, f"{name}.py")
    with open(path, "w") as out:
        out.write(source)
    module_name = f"segtron_scripted_instances_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return getattr(module, name)


def _converter(new_class: type, fields: Dict[str, Any]):
    def from_instances(instances: Instances):
        """A copy of ``instances`` as the typed class (the fields it has, by reference)."""
        out = new_class(tuple(int(v) for v in instances.image_size))
        for name, value in instances.get_fields().items():
            if name not in fields:
                raise KeyError(
                    f"from_instances: field '{name}' is not one of the scripted fields "
                    f"{sorted(fields)}; add it to `fields`."
                )
            setattr(out, name, value)
        return out

    return from_instances


@contextlib.contextmanager
def patch_instances(fields: Dict[str, Any]) -> Iterator[type]:
    """Within the context, ``Instances`` is a generated class with the typed ``fields`` (field
    name -> type, e.g. ``{"pred_boxes": Boxes, "scores": torch.Tensor}``) in every loaded module
    that refers to it, and TorchScript compiles annotations naming ``Instances`` to it.

    Yields the generated class; ``cls.from_instances(instances)`` converts an ``Instances`` to
    it, for calling the scripted code from Python (also after the context)."""
    if not fields:
        raise ValueError("patch_instances needs at least one field, e.g. {'scores': Tensor}.")
    name = f"ScriptedInstances{next(_counter)}"
    with tempfile.TemporaryDirectory(prefix="segtron_script_") as folder, \
            contextlib.ExitStack() as stack:
        try:
            new_class = _load_class(name, _class_source(name, fields), folder)
            scripted = torch.jit.script(new_class)
        except Exception as err:  # the frontend raises several unrelated exception types
            non_tensor = {k: getattr(v, "__name__", v) for k, v in fields.items()
                          if v is not torch.Tensor}
            raise RuntimeError(
                f"patch_instances: the typed Instances class for fields {sorted(fields)} does "
                f"not compile ({type(err).__name__}: {err}). Field types must be torch.Tensor "
                f"or TorchScript-compilable classes; non-tensor types given: {non_tensor} "
                "(segtron's Boxes / BitMasks are not scriptable: store their .tensor instead)."
            ) from err
        original = Instances  # this module's own global is patched in the loop too
        for module in {id(m): m for m in list(sys.modules.values())}.values():
            if getattr(module, "Instances", None) is original:
                stack.enter_context(mock.patch.object(module, "Instances", new_class))
        new_class.from_instances = staticmethod(_converter(new_class, fields))
        # Annotations were evaluated when the functions were defined, so they hold the real
        # class: map it to the compiled stand-in while scripting.
        stack.enter_context(mock.patch.dict(
            torch.jit._state._script_classes, {original: torch.jit._state._get_script_class(
                new_class) or scripted}))
        yield new_class


def scripting_with_instances(model: Any, fields: Dict[str, Any]):
    """``torch.jit.script(model)`` with ``Instances`` replaced by a statically typed class.

    Args:
        model: an ``nn.Module`` (in eval mode, so training-only code is not run) or a function.
        fields: field name -> type of every ``Instances`` field the code reads or writes,
            e.g. ``{"proposal_boxes": torch.Tensor, "scores": torch.Tensor}`` (field types
            must be tensors or scriptable classes; Boxes is not).

    Returns:
        the scripted module or function.

    Raises ``RuntimeError`` naming the model and the construct TorchScript rejected (the
    compiler's message carries the file, line and source excerpt).
    """
    if isinstance(model, nn.Module) and model.training:
        logger.warning("scripting_with_instances: %s is in training mode; call .eval() first "
                       "if training-only code does not script.", type(model).__name__)
    what = type(model).__name__ if isinstance(model, nn.Module) else getattr(
        model, "__qualname__", repr(model))
    with patch_instances(fields):
        try:
            return torch.jit.script(model)
        except Exception as err:  # the frontend raises several unrelated exception types
            raise RuntimeError(
                f"scripting_with_instances: TorchScript cannot compile {what} "
                f"({type(err).__name__}): {err}\nMake the reported construct scriptable (typed "
                "arguments, no **kwargs / f-string formatting of types / comprehension ifs), "
                "keep it out of the scripted path with `if not torch.jit.is_scripting():`, or "
                "trace the model with TracingAdapter instead."
            ) from err
