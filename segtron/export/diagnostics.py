"""Turn a failed trace or ONNX export into an error that names the module and the op.

``torch.jit.trace`` and the TorchScript-based ``torch.onnx.export`` fail deep inside the tracer
or a symbolic function, with a message such as "Exporting the operator 'aten::cummax' to ONNX
opset version 16 is not supported" that does not say which part of a 40-module detector
called the op. :func:`export_diagnostics` wraps an export and re-raises such failures as
:class:`ExportFailure`, whose message names:

- the module, by its path in the user's model (e.g. ``roi_heads.mask_head.mask_fcn1``) and
  its class;
- the op (e.g. ``aten::cummax``) and the source line that called it, when known;
- a fix.

Two sources of that information, because a failure can happen in either phase:

- while the model runs under the tracer, forward hooks keep the stack of modules being
  executed; the innermost one still open when the exception arrives is the culprit;
- while the traced graph is converted to ONNX, each graph node goes through the exporter's
  ``_run_symbolic_function``; it is wrapped for the duration of the export so that the node
  that fails is recorded, with its kind (the op), its scope (the module path) and its source
  range.

Detectron2 has no such module; the name is segtron's.
"""

import contextlib
import logging
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["ExportFailure", "export_diagnostics", "resolve_scope"]

logger = logging.getLogger(__name__)

# Ops named in exporter / tracer messages: "aten::cummax", "torchvision::roi_align", ...
_OP_PATTERN = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*::[A-Za-z_][A-Za-z0-9_.]*)")


class ExportFailure(RuntimeError):
    """A trace or export failure attributed to one module and op.

    Attributes:
        export_format: what was being produced ("ONNX", "TorchScript (tracing)", ...).
        module_path: the module's dotted path in the model ("" for the model itself; None when
            unknown).
        module_type: the module's class name (None when unknown).
        op: the op that failed, e.g. "aten::cummax" (None when unknown).
        source: "file:line" of the call that produced the op (None when unknown).
        hint: what to do about it.
    """

    def __init__(self, message: str, *, export_format: str, module_path: Optional[str],
                 module_type: Optional[str], op: Optional[str], source: Optional[str],
                 hint: str):
        super().__init__(message)
        self.export_format = export_format
        self.module_path = module_path
        self.module_type = module_type
        self.op = op
        self.source = source
        self.hint = hint


def _scope_segments(scope: str) -> List[Tuple[str, str]]:
    """``[(type, name), ...]`` of a traced node's scope name, one per module call, outermost
    first: ``"a.M::/b.Pooler::box_pooler"`` -> ``[("a.M", ""), ("b.Pooler", "box_pooler")]``."""
    segments = []
    for part in scope.strip("/").split("/"):
        type_name, _, name = part.rpartition("::")
        segments.append((type_name, name))
    return segments


def _qualified_type(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def resolve_scope(root: nn.Module, scope: str) -> Optional[nn.Module]:
    """The module of ``root`` that a traced node's scope name points to, or None.

    The tracer records, per module call, the class and a name that is a dotted path either
    from ``root`` or from a module above it; each segment is therefore looked up by path
    suffix among the descendants of the previous segment's module, then of ``root``,
    preferring modules of the recorded class.
    """
    if not scope:
        return None
    current = root
    for type_name, name in _scope_segments(scope)[1:]:
        if not name:
            continue
        candidates = [
            module for base in (current, root) for path, module in base.named_modules()
            if path and (path == name or path.endswith("." + name))
        ]
        typed = [m for m in candidates if _qualified_type(m) == type_name]
        candidates = typed or candidates
        if not candidates:
            return None
        current = candidates[0]
    return current


class _ModuleStack:
    """Forward hooks on every module of a model that keep the stack of modules running.

    A module whose forward raises is never popped, so after an exception the top of the
    stack is the innermost module that was running when it happened.
    """

    def __init__(self, model: nn.Module):
        self.stack: List[nn.Module] = []
        self._handles = []
        for module in model.modules():
            self._handles.append(module.register_forward_pre_hook(self._push))
            self._handles.append(module.register_forward_hook(self._pop))

    def _push(self, module: nn.Module, _inputs: Any) -> None:
        self.stack.append(module)

    def _pop(self, module: nn.Module, _inputs: Any, _outputs: Any) -> None:
        # Pop up to and including `module` (entries above it come from modules whose
        # exception was caught inside the model).
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is module:
                del self.stack[i:]
                return

    def innermost(self) -> Optional[nn.Module]:
        """The innermost module still running, or None."""
        return self.stack[-1] if self.stack else None

    def remove(self) -> None:
        """Remove all hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


class _FailedNode:
    """Records the graph node whose ONNX symbolic function raised, while installed."""

    def __init__(self):
        self.kind: Optional[str] = None
        self.scope: Optional[str] = None
        self.source: Optional[str] = None
        self._module = None
        self._original = None

    def install(self) -> None:
        """Wrap the TorchScript-based exporter's ``_run_symbolic_function`` (looked up by
        name from C++ for every node, so wrapping the module attribute is enough)."""
        try:
            from torch.onnx._internal.torchscript_exporter import utils as exporter_utils
        except ImportError:  # another torch layout: no node-level diagnostics
            logger.debug("torch.onnx exporter internals not found; no node diagnostics.")
            return
        original = exporter_utils._run_symbolic_function
        recorder = self

        def run_symbolic_function(graph, block, node, *args, **kwargs):
            try:
                return original(graph, block, node, *args, **kwargs)
            except Exception:
                if recorder.kind is None:
                    recorder.kind = node.kind()
                    recorder.scope = node.scopeName()
                    recorder.source = _first_user_frame(node.sourceRange())
                raise

        self._module, self._original = exporter_utils, original
        exporter_utils._run_symbolic_function = run_symbolic_function

    def remove(self) -> None:
        """Put the original function back."""
        if self._module is not None:
            self._module._run_symbolic_function = self._original
            self._module = None


def _first_user_frame(source_range: str) -> Optional[str]:
    """The first "file(line): function" of a node's source range that is not in torch itself,
    as "file:line"; None when there is none."""
    torch_dir = os.path.dirname(torch.__file__)
    for line in source_range.splitlines():
        match = re.match(r"\s*(.+?)\((\d+)\):", line)
        if match and not os.path.abspath(match.group(1)).startswith(torch_dir):
            return f"{match.group(1)}:{match.group(2)}"
    return None


def _module_names(model: nn.Module) -> Dict[int, str]:
    """id(module) -> its dotted path in ``model`` (the first path when shared)."""
    names: Dict[int, str] = {}
    for name, module in model.named_modules():
        names.setdefault(id(module), name)
    return names


def _describe_module(model: nn.Module, root: nn.Module,
                     module: Optional[nn.Module]) -> Tuple[Optional[str], Optional[str]]:
    """(dotted path in ``model``, class name) of ``module``; a module outside ``model`` (e.g.
    the ``TracingAdapter`` around it) gets ``""`` when it is ``root`` and its path in ``root``
    otherwise; (None, None) for no module."""
    if module is None:
        return None, None
    path = _module_names(model).get(id(module))
    if path is None:
        path = _module_names(root).get(id(module))
    return path, type(module).__name__


def _hint(error: BaseException, op: Optional[str], in_onnx_pass: bool,
          module_text: str, opset: Optional[int]) -> str:
    """What to do about ``error``."""
    from torch.onnx import errors as onnx_errors

    if isinstance(error, onnx_errors.UnsupportedOperatorError):
        return (
            f"register an ONNX symbolic for '{op}' with segtron.utils.testing."
            f"register_custom_op_onnx_export('{op}', symbolic_fn, {opset or 'OPSET'}) "
            "(or torch.onnx.register_custom_op_symbolic), export with an opset that supports "
            f"it, or change {module_text} to use ops that ONNX has."
        )
    if in_onnx_pass:
        return (
            f"the exporter cannot convert this use of '{op}' (see the message); rewrite that "
            f"call in {module_text} (other arguments or ops, or another code path under "
            "torch.jit.is_tracing()), or register a symbolic that handles it with "
            "segtron.utils.testing.register_custom_op_onnx_export."
        )
    return (
        f"make {module_text} traceable: take and return tensors (or lists/dicts/Instances "
        "of them), and avoid Python values computed from tensor data; or export with "
        "--export-method scripting."
    )


def _short(message: str, limit: int = 400) -> str:
    """The first line of an exporter message (they end with long graph dumps), shortened."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _build_failure(error: BaseException, model: nn.Module, root: nn.Module,
                   stack: _ModuleStack, node: _FailedNode, export_format: str,
                   opset: Optional[int]) -> ExportFailure:
    """An :class:`ExportFailure` describing ``error`` from what the hooks recorded."""
    in_onnx_pass = node.kind is not None
    if in_onnx_pass:
        path, type_name = _describe_module(model, root, resolve_scope(root, node.scope or ""))
        op, source = node.kind, node.source
    else:
        path, type_name = _describe_module(model, root, stack.innermost())
        found = _OP_PATTERN.search(str(error))
        op, source = (found.group(1) if found else None), None
    if path is None:
        module_text = "an unknown module (no scope information)"
    elif path == "":
        module_text = f"the model itself ({type_name})"
    else:
        module_text = f"module '{path}' ({type_name})"
    phase = "converting the traced graph to ONNX" if in_onnx_pass else "tracing the model"
    hint = _hint(error, op, in_onnx_pass, module_text, opset)
    message = (
        f"{export_format} export failed while {phase}, in {module_text}"
        + (f", at op '{op}'" if op else "")
        + (f" (called from {source})" if source else "")
        + f": {type(error).__name__}: {_short(str(error))}\nFix: {hint}"
    )
    return ExportFailure(message, export_format=export_format, module_path=path,
                         module_type=type_name, op=op, source=source, hint=hint)


@contextlib.contextmanager
def export_diagnostics(model: nn.Module, root: Optional[nn.Module] = None,
                       export_format: str = "ONNX",
                       opset_version: Optional[int] = None) -> Iterator[None]:
    """Run a trace / export inside this context to get :class:`ExportFailure` on failure.

    Args:
        model: the user's model; module paths in messages are relative to it.
        root: the module actually traced or exported when it wraps ``model`` (e.g. a
            ``TracingAdapter``); default ``model``.
        export_format: named in the message ("ONNX", "TorchScript (tracing)").
        opset_version: the ONNX opset used, quoted in the fix hint.

    Raises:
        ExportFailure: chained (``from``) to the original exception, when anything inside
            the context raises an ``Exception``; an ``ExportFailure`` passes through unchanged.
    """
    root = model if root is None else root
    stack = _ModuleStack(root)
    node = _FailedNode()
    node.install()
    try:
        yield
    except ExportFailure:
        raise
    except Exception as error:
        failure = _build_failure(error, model, root, stack, node, export_format, opset_version)
        logger.debug("Export failure: %s", failure)
        raise failure from error
    finally:
        node.remove()
        stack.remove()
