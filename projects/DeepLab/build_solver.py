"""``build_lr_scheduler`` of the DeepLab project (Detectron2's name and signature)."""

import torch

from segtron.solver import build_lr_scheduler as _build_core_lr_scheduler
from segtron.solver import LRScheduler

from . import lr_scheduler  # noqa: F401  (registers WarmupPolyLR)

__all__ = ["build_lr_scheduler"]


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """The LR scheduler that SOLVER.LR_SCHEDULER_NAME names: "WarmupPolyLR" (this project's
    :class:`~.lr_scheduler.WarmupPolyLR`) or any of segtron's. The core
    ``segtron.solver.build_lr_scheduler`` builds all of them once this package is imported;
    this entry point is kept for Detectron2 DeepLab scripts that call it."""
    return _build_core_lr_scheduler(cfg, optimizer)
