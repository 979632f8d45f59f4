"""WarmupPolyLR: DeepLab's "poly" learning-rate schedule behind a warmup."""

import math
from typing import List

import torch

from segtron.config import configurable
from segtron.solver import LR_SCHEDULER_REGISTRY, LRScheduler
from segtron.solver.lr_scheduler import _get_warmup_factor_at_iter

__all__ = ["WarmupPolyLR"]


@LR_SCHEDULER_REGISTRY.register()
class WarmupPolyLR(LRScheduler):
    """Per-iteration LR ``base_lr * warmup(it) * (1 - it / max_iters) ** power``.

    ``warmup(it)`` ramps from ``warmup_factor`` to 1 over ``warmup_iters`` ("linear") or holds
    ``warmup_factor`` ("constant"), then is 1. With ``constant_ending`` > 0, once warmup is over
    and the poly factor drops below ``constant_ending``, the LR stays at
    ``base_lr * constant_ending``. ``last_epoch`` counts iterations; step once per iteration.

    Args:
        optimizer: the optimizer whose groups' ``lr`` it sets.
        max_iters: length of the schedule (SOLVER.MAX_ITER); the LR reaches 0 there.
        warmup_factor, warmup_iters, warmup_method: SOLVER.WARMUP_*.
        last_epoch: last completed iteration, -1 to start fresh.
        power: SOLVER.POLY_LR_POWER.
        constant_ending: SOLVER.POLY_LR_CONSTANT_ENDING.

    Built by ``build_lr_scheduler`` for SOLVER.LR_SCHEDULER_NAME "WarmupPolyLR", or as
    ``WarmupPolyLR(cfg, optimizer)``.
    """

    @configurable
    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
        power: float = 0.9,
        constant_ending: float = 0.0,
    ):
        if max_iters <= 0:
            raise ValueError(
                f"WarmupPolyLR max_iters (SOLVER.MAX_ITER) must be > 0, got {max_iters}."
            )
        if power <= 0:
            raise ValueError(f"WarmupPolyLR power (SOLVER.POLY_LR_POWER) must be > 0, got {power}.")
        if not 0.0 <= constant_ending <= 1.0:
            raise ValueError(
                "WarmupPolyLR constant_ending (SOLVER.POLY_LR_CONSTANT_ENDING) must be in [0, 1], "
                f"got {constant_ending}."
            )
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        self.power = power
        self.constant_ending = constant_ending
        super().__init__(optimizer, last_epoch)

    @classmethod
    def from_config(cls, cfg, optimizer: torch.optim.Optimizer):
        solver = cfg.SOLVER
        return {
            "optimizer": optimizer,
            "max_iters": solver.MAX_ITER,
            "warmup_factor": solver.WARMUP_FACTOR,
            "warmup_iters": solver.WARMUP_ITERS,
            "warmup_method": solver.WARMUP_METHOD,
            "power": solver.POLY_LR_POWER,
            "constant_ending": solver.POLY_LR_CONSTANT_ENDING,
        }

    def _factor(self, iteration: int) -> float:
        warmup = _get_warmup_factor_at_iter(
            self.warmup_method, iteration, self.warmup_iters, self.warmup_factor
        )
        poly = math.pow(max(0.0, 1.0 - iteration / self.max_iters), self.power)
        if self.constant_ending > 0 and warmup == 1.0 and poly < self.constant_ending:
            return self.constant_ending
        return warmup * poly

    def get_lr(self) -> List[float]:
        """LR of every parameter group for iteration ``self.last_epoch``."""
        factor = self._factor(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def _compute_values(self) -> List[float]:
        # Kept for callers of the older torch scheduler protocol.
        return self.get_lr()
