"""``torch.jit.script`` for code that uses ``Instances``: the compiler is given a statically
typed stand-in class with the requested fields.

Detectron2 path: ``detectron2.export.torchscript`` (``scripting_with_instances``) and
``detectron2.export.torchscript_patch`` (``patch_instances``).

``Instances`` stores arbitrary fields in a dict, which TorchScript cannot type. Within
:func:`patch_instances` every loaded module that refers to ``Instances`` sees a generated class
whose fields are typed attributes (``pred_boxes: Boxes``, ``scores: Tensor``, ...), and type
annotations naming ``Instances`` compile to it. ``Boxes`` and ``ImageList`` are TorchScript
classes themselves. :func:`freeze_training_mode` makes ``self.training`` a constant, so that
training-only branches are not compiled (inference is what gets scripted, as in Detectron2).

Model code stays scriptable through a few local conventions: Python-only checks and error
messages under ``if not torch.jit.is_scripting():``; a module whose fast eager forward does not
compile keeps it in ``_forward_eager`` and gives TorchScript a plain equivalent; modules
holding plain lists of submodules (ResNet, FPN, the anchor generator) return a copy with
``nn.ModuleList``s from ``__prepare_scriptable__``.
"""

import contextlib
import copy
import importlib.util
import itertools
import logging
import os
import sys
import tempfile
from typing import Any, Dict, Iterator, List
from unittest import mock

import torch
from torch import nn

from ..structures import Instances

logger = logging.getLogger(__name__)

__all__ = ["scripting_with_instances", "patch_instances", "freeze_training_mode"]

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
    """Source of a TorchScript class with one Optional attribute and a property per field, and
    the ``Instances`` methods inference code calls: ``len``, ``has``, ``get_fields`` (Boxes-like
    fields as their ``.tensor``), ``to``, ``__getitem__`` and ``cat``."""
    imports: Dict[str, str] = {}
    types = {field: _type_source(kind, imports) for field, kind in fields.items()}
    lines = [
        "from typing import Dict, List, Optional, Tuple",
        "import torch",
        "from torch import Tensor",
        *sorted(imports.values()),
        "",
        "",
        f"class {name}:",
        f'    """Instances with the typed fields {sorted(fields)} (generated for scripting)."""',
        "",
        "    def __init__(",
        "        self,",
        "        image_size: Tuple[int, int],",
        *[f"        {f}: Optional[{t}] = None," for f, t in types.items()],
        "    ):",
        "        self.image_size = image_size",
    ]
    lines += [f"        self._{f} = {f}" for f in types]
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
    lines += _methods_source(name, types)
    # Compiled on import: torch.jit.script resolves a class's names in its caller's frame.
    lines += ["", f"torch.jit.script({name})", ""]
    return "\n".join(lines)


def _methods_source(name: str, types: Dict[str, str]) -> List[str]:
    """Source of ``get_fields``, ``to``, ``__getitem__`` and ``cat`` of the generated class
    (``types``: field name -> source name of its type)."""
    # Inside the class the compiler does not see __init__'s defaults: pass every field.
    new = f"{name}(%s" + ", None" * len(types) + ")"

    def if_set(field: str, *body: str) -> List[str]:
        """Source lines that run ``body`` (on the field as ``value``) when ``field`` is set."""
        return [f"        value = self._{field}", "        if value is not None:",
                *(f"            {line}" for line in body)]

    lines = ["    def get_fields(self) -> Dict[str, Tensor]:",
             "        out: Dict[str, Tensor] = {}"]
    for field, kind in types.items():
        lines += if_set(field, f"out[\"{field}\"] = " + ("value" if kind == "Tensor"
                                                          else "value.tensor"))
    lines += ["        return out", "",
              f"    def to(self, device: torch.device) -> \"{name}\":",
              "        out = " + new % "self.image_size"]
    for field, kind in types.items():
        moved = "value.to(device)" if kind == "Tensor" else f"{kind}(value.tensor.to(device))"
        lines += if_set(field, f"out._{field} = {moved}")
    lines += ["        return out", "",
              f"    def __getitem__(self, item: Tensor) -> \"{name}\":",
              "        out = " + new % "self.image_size"]
    for field in types:
        lines += if_set(field, f"out._{field} = value[item]")
    lines += ["        return out", "",
              f"    def cat(self, instance_lists: List[\"{name}\"]) -> \"{name}\":",
              "        \"\"\"The concatenation of ``instance_lists`` (called on any instance: "
              "``parts[0].cat(parts)``).\"\"\"",
              "        out = " + new % "instance_lists[0].image_size"]
    for field, kind in types.items():
        joined = (f"torch.cat(values_{field}, dim=0)" if kind == "Tensor"
                  else f"value.cat(values_{field})")
        lines += if_set(field, f"values_{field} = [x.{field} for x in instance_lists]",
                        f"out._{field} = {joined}")
    lines += ["        return out", ""]
    return lines


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


def _clear_jit_cache() -> None:
    """Forget compiled module types and free functions: what was compiled against one
    generated Instances class must be recompiled against the next one."""
    from torch.jit._recursive import concrete_type_store
    from torch.jit._state import _jit_caching_layer

    concrete_type_store.type_store.clear()
    _jit_caching_layer.clear()


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
        _clear_jit_cache()
        stack.callback(_clear_jit_cache)
        try:
            new_class = _load_class(name, _class_source(name, fields), folder)
        except Exception as err:  # the frontend raises several unrelated exception types
            non_tensor = {k: getattr(v, "__name__", v) for k, v in fields.items()
                          if v is not torch.Tensor}
            raise RuntimeError(
                f"patch_instances: the typed Instances class for fields {sorted(fields)} does "
                f"not compile ({type(err).__name__}: {err}). Field types must be torch.Tensor "
                f"or TorchScript classes (such as Boxes); non-tensor types given: {non_tensor} "
                "(BitMasks / PolygonMasks / Keypoints are not: store their .tensor instead)."
            ) from err
        original = Instances  # this module's own global is patched in the loop too
        for module in {id(m): m for m in list(sys.modules.values())}.values():
            if getattr(module, "Instances", None) is original:
                stack.enter_context(mock.patch.object(module, "Instances", new_class))
        new_class.from_instances = staticmethod(_converter(new_class, fields))
        # Annotations were evaluated when the functions were defined, so they hold the real
        # class: map it to the compiled stand-in while scripting (only this entry is undone:
        # classes compiled meanwhile, such as Boxes, stay registered).
        script_classes = torch.jit._state._script_classes
        script_classes[original] = torch.jit._state._get_script_class(new_class)
        stack.callback(script_classes.pop, original, None)
        yield new_class


def _failure_context(err: BaseException, model: Any) -> str:
    """Where the compiler was when ``err`` was raised, read from the traceback's frames: the
    submodule being compiled, the function being parsed and the annotation being resolved,
    e.g. " (in roi_heads.box_head: FastRCNNConvFCHead; function FastRCNNConvFCHead.forward;
    annotation ShapeSpec)". Errors such as a SyntaxError from parsing a lambda carry no
    source location of their own; this names what was being compiled. "" when unknown."""
    names = {}
    if isinstance(model, nn.Module):
        names = {id(m): name or "the model" for name, m in model.named_modules()}
    module = function = annotation = None
    tb = err.__traceback__
    while tb is not None:
        local = tb.tb_frame.f_locals
        if isinstance(local.get("nn_module"), nn.Module):
            module = local["nn_module"]
        if callable(local.get("fn")) and hasattr(local["fn"], "__qualname__"):
            function = local["fn"].__qualname__
        if isinstance(local.get("ann"), type):
            annotation = local["ann"].__name__
        tb = tb.tb_next
    parts = []
    if module is not None:
        kind = type(module).__name__
        parts.append(f"in {names[id(module)]}: {kind}" if id(module) in names else f"in {kind}")
    if function is not None:
        parts.append(f"function {function}")
    if annotation is not None:
        parts.append(f"annotation {annotation}")
    return f" ({'; '.join(parts)})" if parts else ""


@contextlib.contextmanager
def freeze_training_mode(model: Any) -> Iterator[None]:
    """Within the context, the ``training`` attribute of every module class in ``model`` is
    annotated ``torch.jit.Final[bool]``: a constant for TorchScript, so that ``if
    self.training:`` branches (training-only code) are not compiled. Annotations are restored
    afterwards. Does nothing for a plain function."""
    if not isinstance(model, nn.Module):
        yield
        return
    saved = []  # (class, its own annotations before, whether it had its own dict)
    for cls in {type(m) for m in model.modules()}:
        if hasattr(cls, "__constants__"):  # the older mechanism; cannot be mixed with Final
            continue
        own = cls.__dict__.get("__annotations__")
        saved.append((cls, dict(own) if own is not None else None))
        # TorchScript reads a class's own annotations, else its nearest annotated base's (a
        # subclass of StandardROIHeads keeps the Final mask_on / keypoint_on it inherits).
        annotations = dict(next((k.__dict__["__annotations__"] for k in cls.__mro__
                                 if k.__dict__.get("__annotations__")), {}))
        annotations["training"] = torch.jit.Final[bool]
        cls.__annotations__ = annotations
    try:
        yield
    finally:
        for cls, before in saved:
            if before is None:
                del cls.__annotations__
            else:
                cls.__annotations__ = before


def scripting_with_instances(model: Any, fields: Dict[str, Any]):
    """``torch.jit.script(model)`` with ``Instances`` replaced by a statically typed class.

    Args:
        model: an ``nn.Module`` (in eval mode, so training-only code is not run) or a function.
        fields: field name -> type of every ``Instances`` field the code reads or writes,
            e.g. ``{"proposal_boxes": Boxes, "scores": torch.Tensor}`` (field types must be
            tensors or TorchScript classes such as ``Boxes``).

    Returns:
        the scripted module (compiled from a deep copy: ``model`` itself is left as it was) or
        function.

    Raises ``RuntimeError`` naming the model and the construct TorchScript rejected (the
    compiler's message carries the file, line and source excerpt).
    """
    if isinstance(model, nn.Module) and model.training:
        logger.warning("scripting_with_instances: %s is in training mode; call .eval() first "
                       "if training-only code does not script.", type(model).__name__)
    what = type(model).__name__ if isinstance(model, nn.Module) else getattr(
        model, "__qualname__", repr(model))
    if isinstance(model, nn.Module):
        # torch.jit.script writes what __prepare_scriptable__ returns (ResNet, FPN and the
        # anchor generator give copies with ModuleLists) into the parent modules: script a
        # copy, so that the caller's model keeps its own modules and state-dict names.
        model = copy.deepcopy(model)
    with patch_instances(fields), freeze_training_mode(model):
        try:
            return torch.jit.script(model)
        except Exception as err:  # the frontend raises several unrelated exception types
            raise RuntimeError(
                f"scripting_with_instances: TorchScript cannot compile {what}"
                f"{_failure_context(err, model)} ({type(err).__name__}): {err}\nMake the "
                "reported construct scriptable (typed arguments, no **kwargs / f-string "
                "formatting of types / comprehension ifs / lambdas / try blocks), "
                "keep it out of the scripted path with `if not torch.jit.is_scripting():`, or "
                "trace the model with TracingAdapter instead."
            ) from err

