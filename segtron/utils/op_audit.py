"""Count the ops a model's forward pass dispatches, and the host syncs among them, per stage.

On a GPU, a detector at batch 1 is bound by the CPU launching many small kernels and by
device->host synchronisations (after one, the GPU idles while the CPU launches what follows).
Both can be counted on any device, the CPU included: every aten op dispatched costs the CPU a
trip through the dispatcher and, unless it only makes a view or allocates (``view``, ``select``,
``expand``, ``empty``, ... : counted apart as *views*), at least one kernel launch on CUDA; the
ops listed below make the host wait for the device on CUDA.
``OpAudit`` counts them with a ``TorchDispatchMode`` (every op that reaches the dispatcher,
after autograd and composite ops have been decomposed: the ops a CUDA run would launch) and
attributes each to the innermost running *stage*, a named submodule tracked with forward
pre/post hooks. segtron addition (Detectron2 has no such module).

Host syncs (each checked on the CPU under the dispatch mode with torch 2.14; the CUDA behaviour
is that of ATen's and torchvision's CUDA kernels):

* ``aten::_local_scalar_dense``: ``t.item()``, ``bool(t)``, ``int(t)``, ``float(t)``,
  ``if t:``, ``list[t]`` (``__index__``) all dispatch it; on CUDA it copies one value to the
  host and waits for it.
* ``aten::is_nonzero``: the same scalar read; on this torch ``torch.is_nonzero`` decomposes
  to ``_local_scalar_dense`` before the mode sees it, it is listed in case another does not.
* ``aten::nonzero``: the output size is data dependent, so CUDA copies the count to the host.
  ``torch.where(mask)``, ``torch.nonzero(as_tuple=True)`` and ``torch.argwhere`` dispatch it.
  (``aten::nonzero_static`` has a fixed size and does not sync.)
* ``aten::masked_select``: data-dependent output size, as ``nonzero``.
* ``aten::_unique``, ``_unique2`` (``torch.unique``), ``unique_dim``, ``unique_consecutive``,
  ``unique_dim_consecutive``: data-dependent output size.
* ``aten::repeat_interleave`` with a tensor of repeats and no ``output_size``: CUDA sums the
  repeats on the host to size the output. ``x.repeat_interleave(tensor)`` dispatches the
  ``.Tensor`` overload without ``output_size``; an int repeat decomposes into view ops.
* ``aten::index`` with a bool (or uint8) index: ``boxes[mask]`` dispatches ``index.Tensor``
  with the mask; CUDA turns the mask into indices with ``nonzero``. Integer indices do not
  sync.
* ``aten::index_put_`` / ``index_put`` / ``_index_put_impl_`` with a bool index
  (``x[mask] = v``): the same ``nonzero``, except ATen's masked-fill shortcut (one mask,
  no accumulation, a one-element value on the CPU, such as a Python number), which does not
  sync. The shortcut is assumed whenever the value has one element and lives on the CPU.
* ``aten::bincount``: CUDA reads ``max()`` on the host to size the output; ``aten::histc``
  with ``min == max`` (the default) reads the min and max the same way.
* ``aten::equal``, ``aten::allclose``: they return a Python bool.
* ``torchvision::nms``: its CUDA kernel copies the suppression mask to the host and walks it
  there.
* ``aten::_to_copy`` / ``aten::copy_`` between the CPU and a device, either way, without
  ``non_blocking``: ATen copies with ``cudaMemcpyAsync`` then ``cudaStreamSynchronize``.
* ``Tensor.tolist`` and ``Tensor.cpu`` on a CPU tensor, when the audited model is on the CPU:
  they dispatch nothing there (counted by a ``TorchFunctionMode``), but on a GPU run they copy
  a device tensor to the host (one op, one sync). On a GPU the copy is dispatched and counted
  as ``_to_copy`` instead. ``Tensor.numpy`` is not counted (on a device tensor it raises, so
  working code calls ``.cpu()`` first) and neither is ``.to("cpu")`` on the CPU (it cannot be
  told apart from ``.to(self.device)``).

The CPU count is an estimate of the GPU one: a scalar read of a tensor that a GPU run would
keep on the CPU is counted all the same, ops inside a custom op's kernel (torchvision's NMS
sorts, copies back) count as one, and the host->device copies of a GPU run (its inputs moved
to the device, ``torch.tensor(data, device=...)``) are invisible on the CPU. Code that
branches on the device runs its CPU branch: ``paste_masks_in_image`` pastes box by box on a
CPU (five scalar reads per detection) and in large chunks on a GPU, so on the CPU the
``(model)`` row of an R-CNN with masks grows with the number of detections.

Example::

    with OpAudit(model) as audit, torch.no_grad():
        model([{"image": image}])
    print(audit.table())   # stage, ops, kernels, syncs, which syncs; in forward order
    audit.as_dict()        # the same, for JSON
"""

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from tabulate import SEPARATING_LINE, tabulate
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from segtron.utils.model_cost import find_submodule

__all__ = [
    "OpAudit", "StageCounts", "default_stages", "is_host_sync", "launches_no_kernel",
    "MODEL_ROW",
]

logger = logging.getLogger(__name__)

MODEL_ROW = "(model)"  # the row of ops run outside every stage

_ALWAYS_SYNC = frozenset({
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select",
    "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive",
    "aten::unique_dim_consecutive", "aten::bincount", "aten::equal", "aten::allclose",
    "torchvision::nms",
})
_INDEX_PUT = frozenset({"aten::index_put_", "aten::index_put", "aten::_index_put_impl_"})
_MASK_DTYPES = (torch.bool, torch.uint8)
# Ops that launch no kernel on CUDA besides the views (``OpOverload.is_view``): allocations, and
# views whose schema does not say so.
_NO_KERNEL = frozenset({
    "aten::_unsafe_view", "aten::empty", "aten::empty_strided", "aten::empty_like",
    "aten::new_empty", "aten::new_empty_strided", "aten::resize_",
})


def launches_no_kernel(func) -> bool:
    """Whether the dispatched op ``func`` only makes a view or allocates (no CUDA kernel)."""
    return bool(func.is_view) or func._schema.name in _NO_KERNEL


def _argument(func, args: Sequence[Any], kwargs: Dict[str, Any], name: str, default=None):
    """The value of argument ``name`` of an op call, positional or keyword."""
    if name in kwargs:
        return kwargs[name]
    for position, argument in enumerate(func._schema.arguments):
        if argument.name == name:
            return args[position] if position < len(args) else default
    return default


def _is_host_device_copy(source: torch.device, destination: torch.device) -> bool:
    """True for a copy between the CPU and an accelerator (not meta), either way."""
    kinds = {source.type, destination.type}
    return "cpu" in kinds and len(kinds) == 2 and "meta" not in kinds


def _has_mask(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in _MASK_DTYPES for i in indices or ())


def _masked_fill_shortcut(indices, value) -> bool:
    """ATen's index_put_ shortcut to masked_fill_ (no nonzero, no sync): one mask index and
    a one-element value on the CPU."""
    masks = [i for i in indices if isinstance(i, torch.Tensor)]
    return (len(masks) == 1 and masks[0].dtype in _MASK_DTYPES
            and isinstance(value, torch.Tensor) and value.numel() == 1
            and value.device.type == "cpu")


def is_host_sync(func, args: Sequence[Any], kwargs: Optional[Dict[str, Any]] = None) -> bool:
    """Whether the dispatched op ``func`` (an ``OpOverload``) called with ``args`` /
    ``kwargs`` makes the host wait for the device on CUDA (see the module docstring)."""
    kwargs = kwargs or {}
    name = func._schema.name
    if name in _ALWAYS_SYNC:
        return True
    if name == "aten::repeat_interleave":
        repeats = _argument(func, args, kwargs, "repeats")
        return (isinstance(repeats, torch.Tensor)
                and _argument(func, args, kwargs, "output_size") is None)
    if name == "aten::index":
        return _has_mask(_argument(func, args, kwargs, "indices"))
    if name in _INDEX_PUT:
        indices = _argument(func, args, kwargs, "indices")
        if not _has_mask(indices):
            return False
        if _argument(func, args, kwargs, "accumulate", False):
            return True
        return not _masked_fill_shortcut(indices, _argument(func, args, kwargs, "values"))
    if name == "aten::histc":
        low = _argument(func, args, kwargs, "min", 0)
        return low == _argument(func, args, kwargs, "max", 0)
    if name == "aten::_to_copy":
        source = args[0].device
        destination = kwargs.get("device") or source
        return (_is_host_device_copy(source, torch.device(destination))
                and not kwargs.get("non_blocking", False))
    if name == "aten::copy_":
        destination, source = args[0], args[1]
        blocking = not _argument(func, args, kwargs, "non_blocking", False)
        return blocking and _is_host_device_copy(source.device, destination.device)
    return False


@dataclass
class StageCounts:
    """What one stage dispatched: ``ops``, ``views`` (the ops among them that launch no
    kernel: views, allocations) and ``syncs`` (counts), ``op_counts`` and ``sync_counts``
    (``Counter`` of op names such as ``aten::convolution``); ``kernels`` is ops - views."""

    ops: int = 0
    views: int = 0
    syncs: int = 0
    op_counts: Counter = field(default_factory=Counter)
    sync_counts: Counter = field(default_factory=Counter)

    @property
    def kernels(self) -> int:
        """The ops that launch at least one kernel (or copy) on CUDA."""
        return self.ops - self.views

    def add(self, op: str, sync: bool, view: bool = False) -> None:
        """Count one dispatch of ``op``: a view when ``view``, a sync when ``sync``."""
        self.ops += 1
        self.views += int(view)
        self.op_counts[op] += 1
        if sync:
            self.syncs += 1
            self.sync_counts[op] += 1

    def merge(self, other: "StageCounts") -> None:
        """Add ``other``'s counts to these."""
        self.ops += other.ops
        self.views += other.views
        self.syncs += other.syncs
        self.op_counts.update(other.op_counts)
        self.sync_counts.update(other.sync_counts)

    def as_dict(self) -> Dict[str, Any]:
        """``{"ops", "kernels", "syncs", "op_counts", "sync_counts"}``, counters as plain dicts
        sorted by count, most frequent first."""
        return {"ops": self.ops, "kernels": self.kernels, "syncs": self.syncs,
                "op_counts": dict(self.op_counts.most_common()),
                "sync_counts": dict(self.sync_counts.most_common())}


def default_stages(model: nn.Module, root: str = "", depth: int = 2) -> List[str]:
    """Dotted names of ``model``'s submodules at most ``depth`` levels below ``root`` ("" for
    the model itself): its children and grandchildren by default, e.g. "backbone",
    "roi_heads.box_pooler". ``root`` itself is included when given. Raises KeyError (naming the
    model's children) when there is no submodule ``root``."""
    base = find_submodule(model, root) if root else model
    names = [root] if root else []
    for name, _ in base.named_modules():
        if name and name.count(".") < depth:
            names.append(f"{root}.{name}" if root else name)
    return names


class _DispatchCounter(TorchDispatchMode):
    """Hands every dispatched op and its arguments to ``audit._record``."""

    def __init__(self, audit: "OpAudit"):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.audit._record(func._schema.name, is_host_sync(func, args, kwargs),
                           launches_no_kernel(func))
        return func(*args, **kwargs)


# Tensor methods that copy a device tensor to the host on a GPU run but dispatch nothing on
# the CPU: counted (one op, one sync) when called on a CPU tensor of a CPU-resident model.
_HOST_COPY_METHODS = {torch.Tensor.tolist: "Tensor.tolist", torch.Tensor.cpu: "Tensor.cpu"}


class _HostCopyCounter(TorchFunctionMode):
    """Counts ``Tensor.tolist`` and ``Tensor.cpu`` on CPU tensors (see the module docstring)."""

    def __init__(self, audit: "OpAudit"):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = _HOST_COPY_METHODS.get(func)
        if (name is not None and args and isinstance(args[0], torch.Tensor)
                and args[0].device.type == "cpu"):
            self.audit._record(name, True)
        return func(*args, **(kwargs or {}))


class OpAudit:
    """A context manager that counts, per stage, the ops dispatched and the host syncs among
    them while it is active (see the module docstring for what counts as a sync).

    Args:
        model: the model whose submodules are the stages.
        stages: dotted submodule names to attribute ops to (e.g. ``["backbone",
            "roi_heads.box_pooler"]``); default ``default_stages(model)``: its children and
            grandchildren. Ops run inside several nested stages go to the innermost; ops run
            outside every stage (the model's own pre- and post-processing) to ``MODEL_ROW``.

    Counts accumulate over every forward run inside the ``with`` block. On exit the hooks are
    removed and the modes popped; the counts stay readable (``rows``, ``total``, ``table``,
    ``as_dict``).

    Raises:
        KeyError: when a stage names no submodule (the message lists the model's children).
    """

    def __init__(self, model: nn.Module, stages: Optional[Iterable[str]] = None):
        self.model = model
        names = default_stages(model) if stages is None else list(stages)
        self._modules: Dict[str, nn.Module] = {}
        for name in names:
            if name == MODEL_ROW:
                raise KeyError(f"OpAudit: '{MODEL_ROW}' is the row of ops outside every "
                               "stage, not a submodule name; leave it out of `stages`.")
            module = find_submodule(model, name)
            if any(module is seen for seen in self._modules.values()):
                continue  # a shared module: counted under its first name
            self._modules[name] = module
        self._rows: Dict[str, StageCounts] = {}
        self._stack: List[str] = []
        self._handles: list = []
        self._modes: Optional[contextlib.ExitStack] = None

    @property
    def stages(self) -> List[str]:
        """The stage names hooked, in the order given."""
        return list(self._modules)

    def __enter__(self) -> "OpAudit":
        if self._modes is not None:
            raise RuntimeError("OpAudit is already active; use one `with` block at a time.")
        for name, module in self._modules.items():
            self._handles.append(module.register_forward_pre_hook(self._enter_hook(name)))
            self._handles.append(
                module.register_forward_hook(self._exit_hook(name), always_call=True))
        self._modes = contextlib.ExitStack()
        try:
            if self._counts_host_copies():
                self._modes.enter_context(_HostCopyCounter(self))
            self._modes.enter_context(_DispatchCounter(self))
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._close()
        total = self.total()
        logger.debug("OpAudit: %d ops (%d kernels), %d host syncs in %d stages", total.ops,
                     total.kernels, total.syncs, len(self._rows))

    def _close(self) -> None:
        if self._modes is not None:
            self._modes.close()
            self._modes = None
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._stack = []

    def _counts_host_copies(self) -> bool:
        """True when the model is on the CPU (or has no parameters or buffers): then
        ``Tensor.tolist`` / ``Tensor.cpu`` stand in for the device->host copies of a GPU run."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return not tensors or tensors[0].device.type == "cpu"

    def _enter_hook(self, name: str):
        def hook(_module, _args):
            self._row(name)
            self._stack.append(name)
        return hook

    def _exit_hook(self, name: str):
        def hook(_module, _args, _output):
            # Pop up to and including `name`: entries above it belong to stages whose
            # exception was caught inside the model (their post-hook never ran).
            for depth in range(len(self._stack) - 1, -1, -1):
                if self._stack[depth] == name:
                    del self._stack[depth:]
                    return
        return hook

    def _row(self, name: str) -> StageCounts:
        row = self._rows.get(name)
        if row is None:
            row = self._rows[name] = StageCounts()
        return row

    def _record(self, op: str, sync: bool, view: bool = False) -> None:
        self._row(self._stack[-1] if self._stack else MODEL_ROW).add(op, sync, view)

    def rows(self, prefix: str = "") -> Dict[str, StageCounts]:
        """Stage name -> ``StageCounts``, in forward order (the order in which the stages were
        first entered; ``MODEL_ROW`` where its first op ran). Stages that never ran are left
        out. With ``prefix``, only the stage ``prefix`` and the stages under it."""
        if not prefix:
            return dict(self._rows)
        return {name: row for name, row in self._rows.items()
                if name == prefix or name.startswith(prefix + ".")}

    def total(self, prefix: str = "") -> StageCounts:
        """The sum of ``rows(prefix)``."""
        total = StageCounts()
        for row in self.rows(prefix).values():
            total.merge(row)
        return total

    def table(self, prefix: str = "") -> str:
        """A plain-text table of ``rows(prefix)`` and their total: stage, ops, kernels (ops
        that are not views), syncs and which syncs (op name x count, most frequent first)."""
        def cells(name: str, counts: StageCounts):
            which = ", ".join(f"{op} x{n}" for op, n in counts.sync_counts.most_common())
            return (name, counts.ops, counts.kernels, counts.syncs, which)

        rows = [cells(name, r) for name, r in self.rows(prefix).items()]
        rows += [SEPARATING_LINE, cells("total", self.total(prefix))]
        return tabulate(rows, headers=("stage", "ops", "kernels", "syncs", "which syncs"),
                        tablefmt="simple")

    def as_dict(self, prefix: str = "") -> Dict[str, Any]:
        """``rows(prefix)`` in forward order and their total, JSON-serializable:
        ``{"stages": [{"stage": name, **StageCounts.as_dict()}, ...], "total": {...}}``."""
        return {"stages": [{"stage": name, **row.as_dict()}
                           for name, row in self.rows(prefix).items()],
                "total": self.total(prefix).as_dict()}
