"""Optimizer, parameter groups, gradient clipping and LR schedule from a config.

Same API and semantics as ``detectron2.solver.build``:

* :func:`build_optimizer` — SGD (``SOLVER.MOMENTUM``, ``SOLVER.NESTEROV``) or, segtron's
  ``SOLVER.OPTIMIZER = "AdamW"`` / ``"Adam"``, AdamW / Adam with betas (0.9, 0.999) (Adam's
  weight decay is the L2 term added to the gradient, AdamW's is decoupled); parameter groups from
  :func:`get_default_optimizer_params`; gradient clipping per ``SOLVER.CLIP_GRADIENTS``.
* :func:`build_lr_scheduler` — an :class:`~segtron.solver.lr_scheduler.LRMultiplier` driven by
  an fvcore schedule chosen by ``SOLVER.LR_SCHEDULER_NAME``, behind a warmup.
"""

import copy
import itertools
import logging
from collections import defaultdict
from enum import Enum
from typing import Any, Callable, Dict, Iterable, List, Optional, Type, Union

import torch
from fvcore.common.param_scheduler import (
    CosineParamScheduler,
    MultiStepParamScheduler,
    StepWithFixedGammaParamScheduler,
)

from segtron.layers.batch_norm import FrozenBatchNorm2d, LayerNorm, NaiveSyncBatchNorm
from segtron.utils.registry import Registry

from .lr_scheduler import LRMultiplier, LRScheduler, WarmupParamScheduler

__all__ = [
    "LR_SCHEDULER_REGISTRY",
    "GradientClipType",
    "build_optimizer",
    "build_lr_scheduler",
    "get_default_optimizer_params",
    "maybe_add_gradient_clipping",
    "reduce_param_groups",
]

logger = logging.getLogger(__name__)

_GradientClipperInput = Union[torch.Tensor, Iterable[torch.Tensor]]
_GradientClipper = Callable[[_GradientClipperInput], None]

_OPTIMIZERS = ("SGD", "AdamW", "Adam")
# Adam and AdamW: the moment decay rates (PyTorch's defaults).
_ADAM_BETAS = (0.9, 0.999)
_LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")

LR_SCHEDULER_REGISTRY = Registry("LR_SCHEDULER")
LR_SCHEDULER_REGISTRY.__doc__ = """
LR schedulers that SOLVER.LR_SCHEDULER_NAME may name besides the built-in ones (segtron; a
project registers its own, e.g. DeepLab's "WarmupPolyLR"). An entry is called as
``obj(cfg, optimizer)`` and returns an LR scheduler of ``optimizer`` that the trainer steps once
per iteration (a ``@configurable`` scheduler class with ``from_config(cls, cfg, optimizer)``).
"""

# Modules whose parameters get ``weight_decay_norm``. NaiveSyncBatchNorm subclasses BatchNorm2d;
# FrozenBatchNorm2d has buffers only. segtron's channels-first LayerNorm is included here (in
# Detectron2 only torch.nn.LayerNorm is).
_NORM_MODULE_TYPES = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
    torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d,
    torch.nn.InstanceNorm2d,
    torch.nn.InstanceNorm3d,
    torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
    FrozenBatchNorm2d,
    NaiveSyncBatchNorm,
    LayerNorm,
)


# ------------------------------------------------------------------------------------------
# Gradient clipping
# ------------------------------------------------------------------------------------------
class GradientClipType(Enum):
    """Values of ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE``.

    ``VALUE``: clamp every gradient element to ``[-CLIP_VALUE, CLIP_VALUE]``.
    ``NORM``: rescale each parameter's gradient so its ``NORM_TYPE``-norm is at most
    ``CLIP_VALUE`` (one norm per parameter tensor).
    ``FULL_MODEL``: rescale all gradients together so the norm of their concatenation is at
    most ``CLIP_VALUE`` (the clipping of Detectron2's DETR / Mask2Former projects).
    """

    VALUE = "value"
    NORM = "norm"
    FULL_MODEL = "full_model"


def _clip_type_from_cfg(clip_cfg) -> GradientClipType:
    try:
        return GradientClipType(clip_cfg.CLIP_TYPE)
    except ValueError:
        raise ValueError(
            f"Unknown SOLVER.CLIP_GRADIENTS.CLIP_TYPE {clip_cfg.CLIP_TYPE!r}; valid values are "
            f"{[t.value for t in GradientClipType]}."
        ) from None


def _create_gradient_clipper(clip_cfg) -> _GradientClipper:
    """A function clipping the gradients of a tensor or an iterable of tensors in place, as
    ``SOLVER.CLIP_GRADIENTS`` (``clip_cfg``) asks. For ``"norm"`` and ``"full_model"`` it is
    norm clipping of whatever it is given; the caller decides per parameter or all at once."""
    clip_type = _clip_type_from_cfg(clip_cfg)
    clip_value = float(clip_cfg.CLIP_VALUE)
    norm_type = float(clip_cfg.NORM_TYPE)

    if clip_type is GradientClipType.VALUE:

        def clip_by_value(params: _GradientClipperInput) -> None:
            torch.nn.utils.clip_grad_value_(params, clip_value)

        return clip_by_value

    def clip_by_norm(params: _GradientClipperInput) -> None:
        torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type)

    return clip_by_norm


def _generate_optimizer_class_with_gradient_clipping(
    optimizer: Type[torch.optim.Optimizer],
    *,
    per_param_clipper: Optional[_GradientClipper] = None,
    global_clipper: Optional[_GradientClipper] = None,
) -> Type[torch.optim.Optimizer]:
    """Subclass of ``optimizer`` whose ``step`` first clips gradients: each parameter on its
    own with ``per_param_clipper``, or all parameters of all groups together with
    ``global_clipper`` (exactly one of the two)."""
    if (per_param_clipper is None) == (global_clipper is None):
        raise ValueError("Give exactly one of per_param_clipper and global_clipper.")

    def step_with_clipping(self, closure=None):
        if per_param_clipper is not None:
            for group in self.param_groups:
                for param in group["params"]:
                    per_param_clipper(param)
        else:
            global_clipper(itertools.chain.from_iterable(g["params"] for g in self.param_groups))
        return super(clipped_class, self).step(closure)

    clipped_class = type(
        optimizer.__name__ + "WithGradientClip",
        (optimizer,),
        {
            "step": step_with_clipping,
            "__doc__": f"{optimizer.__name__} that clips gradients before every step().",
        },
    )
    return clipped_class


def maybe_add_gradient_clipping(
    cfg, optimizer: Union[torch.optim.Optimizer, Type[torch.optim.Optimizer]]
) -> Union[torch.optim.Optimizer, Type[torch.optim.Optimizer]]:
    """Add gradient clipping to an optimizer class or instance if
    ``cfg.SOLVER.CLIP_GRADIENTS.ENABLED``; otherwise return ``optimizer`` unchanged.

    Given a class, returns a subclass whose ``step`` clips before stepping (instantiate it like
    the original). Given an instance, changes its class to that subclass and returns the same
    instance. ``CLIP_TYPE`` "value" clips elements to ``CLIP_VALUE``; "norm" limits each
    parameter's gradient ``NORM_TYPE``-norm to ``CLIP_VALUE``; "full_model" limits the norm of
    all gradients taken together. Gradients are clipped when ``step()`` runs, so under AMP
    (``GradScaler.step``) they are already unscaled.
    """
    clip_cfg = cfg.SOLVER.CLIP_GRADIENTS
    if not clip_cfg.ENABLED:
        return optimizer
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer_type = type(optimizer)
    elif isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        optimizer_type = optimizer
    else:
        raise TypeError(
            "maybe_add_gradient_clipping takes a torch.optim.Optimizer instance or subclass, "
            f"got {optimizer!r}."
        )
    clipper = _create_gradient_clipper(clip_cfg)
    if _clip_type_from_cfg(clip_cfg) is GradientClipType.FULL_MODEL:
        clipped_type = _generate_optimizer_class_with_gradient_clipping(
            optimizer_type, global_clipper=clipper
        )
    else:
        clipped_type = _generate_optimizer_class_with_gradient_clipping(
            optimizer_type, per_param_clipper=clipper
        )
    if isinstance(optimizer, torch.optim.Optimizer):
        optimizer.__class__ = clipped_type
        return optimizer
    return clipped_type


# ------------------------------------------------------------------------------------------
# Optimizer and parameter groups
# ------------------------------------------------------------------------------------------
def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``model``'s trainable parameters described by ``cfg.SOLVER``.

    ``SOLVER.OPTIMIZER``: "SGD" (``MOMENTUM``, ``NESTEROV``), "AdamW" or "Adam" (betas
    (0.9, 0.999); Adam adds ``weight_decay * param`` to the gradient, AdamW decays the
    parameter directly). All use ``BASE_LR`` and ``WEIGHT_DECAY`` as defaults and the
    parameter groups of :func:`get_default_optimizer_params` (``WEIGHT_DECAY_NORM``,
    ``BIAS_LR_FACTOR``, ``WEIGHT_DECAY_BIAS``); gradient clipping is added per
    ``SOLVER.CLIP_GRADIENTS``.
    Raises ValueError for an unknown ``SOLVER.OPTIMIZER``.
    """
    solver = cfg.SOLVER
    name = solver.get("OPTIMIZER", "SGD")
    if name not in _OPTIMIZERS:
        raise ValueError(
            f"Unknown SOLVER.OPTIMIZER {name!r}; valid values are {list(_OPTIMIZERS)}."
        )
    params = get_default_optimizer_params(
        model,
        base_lr=solver.BASE_LR,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        bias_lr_factor=solver.BIAS_LR_FACTOR,
        weight_decay_bias=solver.WEIGHT_DECAY_BIAS,
    )
    if not params:
        raise ValueError(
            "build_optimizer: the model has no trainable parameters (all have "
            "requires_grad=False). Unfreeze some (e.g. lower MODEL.BACKBONE.FREEZE_AT)."
        )
    if name == "SGD":
        optimizer = torch.optim.SGD(
            params,
            lr=solver.BASE_LR,
            momentum=solver.MOMENTUM,
            nesterov=solver.NESTEROV,
            weight_decay=solver.WEIGHT_DECAY,
            foreach=True,
        )
    else:
        adam_class = torch.optim.AdamW if name == "AdamW" else torch.optim.Adam
        optimizer = adam_class(
            params, lr=solver.BASE_LR, betas=_ADAM_BETAS, weight_decay=solver.WEIGHT_DECAY,
            foreach=True,  # one multi-tensor update: the per-parameter loop is slow on CPU
        )
    logger.debug("Built %s with %d parameter groups.", name, len(optimizer.param_groups))
    return maybe_add_gradient_clipping(cfg, optimizer)


def get_default_optimizer_params(
    model: torch.nn.Module,
    base_lr: Optional[float] = None,
    weight_decay: Optional[float] = None,
    weight_decay_norm: Optional[float] = None,
    bias_lr_factor: Optional[float] = 1.0,
    weight_decay_bias: Optional[float] = None,
    lr_factor_func: Optional[Callable[[str], float]] = None,
    overrides: Optional[Dict[str, Dict[str, float]]] = None,
) -> List[Dict[str, Any]]:
    """Parameter groups for ``torch.optim`` with per-parameter hyper-parameters.

    Args:
        model: the module whose parameters are optimized. Each parameter appears once even if
            shared between modules; parameters with ``requires_grad=False`` are left out.
        base_lr: ``"lr"`` of every group (None: leave it to the optimizer's default).
        weight_decay: ``"weight_decay"`` of every group (None: the optimizer's default).
        weight_decay_norm: weight decay of parameters of normalization modules (BatchNorm*,
            SyncBatchNorm, GroupNorm, InstanceNorm*, LayerNorm, LocalResponseNorm, segtron's
            NaiveSyncBatchNorm / LayerNorm); None: like other parameters.
        bias_lr_factor: a parameter named ``bias`` gets ``lr = base_lr * bias_lr_factor``
            (needs ``base_lr`` when not 1.0).
        weight_decay_bias: weight decay of parameters named ``bias`` (None: no special value,
            so ``weight_decay`` or, for a norm's bias, ``weight_decay_norm``).
        lr_factor_func: called with a parameter's full name (``model.named_parameters()``
            style) and returns a factor multiplied into its ``lr`` (needs ``base_lr``), e.g.
            layer-wise LR decay.
        overrides: ``{param_name: {hyper-parameter: value}}`` keyed by the parameter's own name
            within its module (e.g. ``"bias"``, ``"pos_embed"``); applied last, so they win over
            everything above. Cannot contain ``"bias"`` together with a non-default
            ``bias_lr_factor`` / ``weight_decay_bias``.

    Returns:
        a list of ``{"params": [...], hyper-parameter: value, ...}`` dicts, groups with
        identical hyper-parameters merged by :func:`reduce_param_groups`.
    """
    overrides = copy.deepcopy(overrides) if overrides is not None else {}
    defaults: Dict[str, float] = {}
    if base_lr is not None:
        defaults["lr"] = base_lr
    if weight_decay is not None:
        defaults["weight_decay"] = weight_decay

    bias_overrides: Dict[str, float] = {}
    if bias_lr_factor is not None and bias_lr_factor != 1.0:
        if base_lr is None:
            raise ValueError(
                "get_default_optimizer_params: bias_lr_factor != 1.0 needs base_lr "
                "(SOLVER.BASE_LR) to compute the bias LR."
            )
        bias_overrides["lr"] = base_lr * bias_lr_factor
    if weight_decay_bias is not None:
        bias_overrides["weight_decay"] = weight_decay_bias
    if bias_overrides:
        if "bias" in overrides:
            raise ValueError(
                "get_default_optimizer_params: overrides['bias'] conflicts with bias_lr_factor / "
                "weight_decay_bias (SOLVER.BIAS_LR_FACTOR / SOLVER.WEIGHT_DECAY_BIAS); set one "
                "or the other."
            )
        overrides["bias"] = bias_overrides
    if lr_factor_func is not None and base_lr is None:
        raise ValueError("get_default_optimizer_params: lr_factor_func needs base_lr.")

    groups: List[Dict[str, Any]] = []
    seen = set()
    for module_name, module in model.named_modules():
        for local_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            hyperparams = dict(defaults)
            if weight_decay_norm is not None and isinstance(module, _NORM_MODULE_TYPES):
                hyperparams["weight_decay"] = weight_decay_norm
            if lr_factor_func is not None:
                full_name = f"{module_name}.{local_name}" if module_name else local_name
                hyperparams["lr"] *= lr_factor_func(full_name)
            hyperparams.update(overrides.get(local_name, {}))
            groups.append({"params": [param], **hyperparams})
    return reduce_param_groups(groups)


def _expand_param_groups(params: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One group per parameter. A parameter listed in several groups gets the union of their
    hyper-parameters, later groups winning on conflicts; order is first appearance."""
    per_param: Dict[Any, Dict[str, Any]] = defaultdict(dict)
    for group in params:
        if "params" not in group:
            raise ValueError(f"A parameter group needs a 'params' entry, got keys {list(group)}.")
        hyper = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        names = group.get("param_names")
        for i, param in enumerate(group["params"]):
            entry = {"params": [param], **hyper}
            if names is not None:
                entry["param_names"] = [names[i]]
            per_param[param].update(entry)
    return list(per_param.values())


def reduce_param_groups(params: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge parameter groups with identical hyper-parameters into as few groups as possible.

    Takes a list of ``{"params": [...], (optional) "param_names": [...], key: value, ...}``;
    a parameter may appear in several groups (its hyper-parameters are then combined, later
    groups winning). Returns groups in order of first appearance, each with the parameters
    (and names, when given) of every input parameter sharing exactly those hyper-parameters.
    """
    merged: Dict[tuple, Dict[str, Any]] = {}
    for entry in _expand_param_groups(params):
        hyper = {k: v for k, v in entry.items() if k not in ("params", "param_names")}
        key = tuple(sorted(hyper.items()))
        if key not in merged:
            merged[key] = {**hyper, "params": []}
            if "param_names" in entry:
                merged[key]["param_names"] = []
        merged[key]["params"].extend(entry["params"])
        if "param_names" in merged[key]:
            merged[key]["param_names"].extend(entry.get("param_names", []))
    return list(merged.values())


# ------------------------------------------------------------------------------------------
# LR schedule
# ------------------------------------------------------------------------------------------
def _multistep_schedule(solver) -> MultiStepParamScheduler:
    steps = [int(s) for s in solver.STEPS]
    if any(b <= a for a, b in zip(steps, steps[1:])) or any(s <= 0 for s in steps):
        raise ValueError(
            f"SOLVER.STEPS must be strictly increasing positive iterations, got {tuple(steps)}."
        )
    kept = [s for s in steps if s < solver.MAX_ITER]
    if len(kept) != len(steps):
        logger.warning(
            "SOLVER.STEPS %s has values >= SOLVER.MAX_ITER (%d); they never take effect and are "
            "ignored.",
            [s for s in steps if s >= solver.MAX_ITER],
            solver.MAX_ITER,
        )
    return MultiStepParamScheduler(
        values=[solver.GAMMA**k for k in range(len(kept) + 1)],
        milestones=kept,
        num_updates=solver.MAX_ITER,
    )


def _cosine_schedule(solver) -> CosineParamScheduler:
    if solver.BASE_LR <= 0:
        raise ValueError(
            f"WarmupCosineLR needs SOLVER.BASE_LR > 0 (got {solver.BASE_LR}) to decay towards "
            "SOLVER.BASE_LR_END."
        )
    end_value = solver.BASE_LR_END / solver.BASE_LR
    if not 0.0 <= end_value <= 1.0:
        raise ValueError(
            f"WarmupCosineLR needs 0 <= SOLVER.BASE_LR_END <= SOLVER.BASE_LR, got "
            f"BASE_LR_END={solver.BASE_LR_END}, BASE_LR={solver.BASE_LR}."
        )
    return CosineParamScheduler(1.0, end_value)


def _fixed_gamma_schedule(solver) -> StepWithFixedGammaParamScheduler:
    return StepWithFixedGammaParamScheduler(
        base_value=1.0,
        gamma=solver.GAMMA,
        num_decays=int(solver.NUM_DECAYS),
        num_updates=int(solver.MAX_ITER),
    )


_SCHEDULE_BUILDERS = {
    "WarmupMultiStepLR": _multistep_schedule,
    "WarmupCosineLR": _cosine_schedule,
    "WarmupStepWithFixedGammaLR": _fixed_gamma_schedule,
}


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """The per-iteration LR scheduler of ``optimizer`` described by ``cfg.SOLVER``.

    ``LR_SCHEDULER_NAME`` picks the shape (a multiplier of each group's base LR):
    "WarmupMultiStepLR" — ``GAMMA ** k`` after the k-th of ``STEPS`` (steps >= ``MAX_ITER``
    are dropped with a warning); "WarmupCosineLR" — cosine from 1 to
    ``BASE_LR_END / BASE_LR``; "WarmupStepWithFixedGammaLR" — ``NUM_DECAYS`` decays by
    ``GAMMA`` at equal intervals. The shape is preceded by a ``WARMUP_METHOD`` warmup of
    ``WARMUP_ITERS`` iterations starting at ``WARMUP_FACTOR`` (``RESCALE_INTERVAL``: see
    :class:`WarmupParamScheduler`). Returns an :class:`LRMultiplier` over ``MAX_ITER``
    iterations; call its ``step()`` after every iteration. Any other name is looked up in
    :data:`LR_SCHEDULER_REGISTRY` and built by the registered entry. Raises ValueError for an
    unknown name or inconsistent keys.
    """
    solver = cfg.SOLVER
    name = solver.LR_SCHEDULER_NAME
    if name not in _SCHEDULE_BUILDERS and name in LR_SCHEDULER_REGISTRY:
        return LR_SCHEDULER_REGISTRY.get(name)(cfg, optimizer)
    if name not in _SCHEDULE_BUILDERS:
        registered = sorted(n for n, _ in LR_SCHEDULER_REGISTRY)
        raise ValueError(
            f"Unknown SOLVER.LR_SCHEDULER_NAME {name!r}; valid values are {list(_LR_SCHEDULERS)}"
            f" and the registered {registered} (a project's scheduler is registered when its "
            "package is imported; train_net.py imports every package under projects/)."
        )
    if int(solver.MAX_ITER) != solver.MAX_ITER or solver.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be a positive integer, got {solver.MAX_ITER!r}.")
    if solver.WARMUP_ITERS < 0:
        raise ValueError(f"SOLVER.WARMUP_ITERS must be >= 0, got {solver.WARMUP_ITERS}.")
    schedule = _SCHEDULE_BUILDERS[name](solver)
    schedule = WarmupParamScheduler(
        schedule,
        solver.WARMUP_FACTOR,
        min(solver.WARMUP_ITERS / solver.MAX_ITER, 1.0),
        solver.WARMUP_METHOD,
        solver.RESCALE_INTERVAL,
    )
    return LRMultiplier(optimizer, multiplier=schedule, max_iter=int(solver.MAX_ITER))
