"""Optimizers, parameter groups, gradient clipping and LR schedules (``detectron2.solver`` API).

``build_optimizer(cfg, model)`` and ``build_lr_scheduler(cfg, optimizer)`` are what a trainer
calls; ``get_default_optimizer_params`` / ``reduce_param_groups`` build parameter groups for a
hand-made optimizer; ``LRMultiplier`` + ``WarmupParamScheduler`` compose a schedule from any
fvcore ``ParamScheduler``.
"""

from .build import (
    LR_SCHEDULER_REGISTRY,
    GradientClipType,
    build_lr_scheduler,
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)
from .lr_scheduler import (
    LRMultiplier,
    LRScheduler,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
)

__all__ = [
    "LR_SCHEDULER_REGISTRY",
    "build_lr_scheduler",
    "build_optimizer",
    "get_default_optimizer_params",
    "reduce_param_groups",
    "maybe_add_gradient_clipping",
    "GradientClipType",
    "LRMultiplier",
    "LRScheduler",
    "WarmupParamScheduler",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
]
