"""Learning-rate schedules with the ``detectron2.solver.lr_scheduler`` API.

The modern path (what :func:`segtron.solver.build_lr_scheduler` builds) describes the *shape* of
a schedule as an fvcore ``ParamScheduler`` — a function from training progress ``where`` in
[0, 1) to a multiplier — and applies it to every parameter group's base LR with
:class:`LRMultiplier`, stepped once per iteration. :class:`WarmupParamScheduler` puts a warmup
phase in front of any such shape.

:class:`WarmupMultiStepLR` and :class:`WarmupCosineLR` are the older self-contained schedulers
that Detectron2 still ships for existing code; new code should prefer the composition above.
"""

import logging
import math
from bisect import bisect_right
from typing import Any, Dict, List, Sequence

import torch
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
)

try:  # torch >= 2.0 names the base class publicly.
    from torch.optim.lr_scheduler import LRScheduler
except ImportError:  # pragma: no cover - older torch
    from torch.optim.lr_scheduler import _LRScheduler as LRScheduler

__all__ = [
    "LRScheduler",
    "LRMultiplier",
    "WarmupParamScheduler",
    "WarmupMultiStepLR",
    "WarmupCosineLR",
]

logger = logging.getLogger(__name__)

_WARMUP_METHODS = ("linear", "constant")


class WarmupParamScheduler(CompositeParamScheduler):
    """A ``ParamScheduler`` shape preceded by a warmup phase.

    Args:
        scheduler: the main fvcore ``ParamScheduler`` (a multiplier of the base LR).
        warmup_factor: multiplier of ``scheduler(0)`` at the very start of warmup.
        warmup_length: fraction of training (in [0, 1]) spent warming up, i.e.
            ``WARMUP_ITERS / MAX_ITER``.
        warmup_method: ``"linear"`` ramps from ``warmup_factor * scheduler(0)`` to the main
            schedule's value where warmup ends; ``"constant"`` holds
            ``warmup_factor * scheduler(0)`` for the whole warmup.
        rescale_interval: if False (default) the main schedule runs on the global clock, so
            warmup only replaces its first ``warmup_length`` of training and the linear ramp
            ends at ``scheduler(warmup_length)``. If True the main schedule is compressed into
            the remaining ``1 - warmup_length`` and starts from its beginning after warmup (the
            ramp then ends at ``scheduler(0)``).

    Calling the instance with ``where`` in [0, 1) returns the multiplier at that progress.
    """

    def __init__(
        self,
        scheduler: ParamScheduler,
        warmup_factor: float,
        warmup_length: float,
        warmup_method: str = "linear",
        rescale_interval: bool = False,
    ):
        if not isinstance(scheduler, ParamScheduler):
            raise ValueError(
                f"WarmupParamScheduler needs an fvcore ParamScheduler as `scheduler`, got "
                f"{type(scheduler).__name__}."
            )
        if not 0.0 <= warmup_length <= 1.0:
            raise ValueError(
                f"warmup_length must be a fraction of training in [0, 1], got {warmup_length}; "
                "pass WARMUP_ITERS / MAX_ITER."
            )
        start_value = warmup_factor * scheduler(0.0)
        if warmup_method == "linear":
            end_value = scheduler(0.0) if rescale_interval else scheduler(warmup_length)
            warmup = LinearParamScheduler(start_value, end_value)
        elif warmup_method == "constant":
            warmup = ConstantParamScheduler(start_value)
        else:
            raise ValueError(
                f"Unknown warmup method {warmup_method!r} (SOLVER.WARMUP_METHOD); valid values "
                f"are {list(_WARMUP_METHODS)}."
            )
        super().__init__(
            [warmup, scheduler],
            lengths=[warmup_length, 1.0 - warmup_length],
            interval_scaling=["rescaled", "rescaled" if rescale_interval else "fixed"],
        )


class LRMultiplier(LRScheduler):
    """Per-iteration LR scheduler: ``lr_i = base_lr_i * multiplier(iteration / max_iter)``.

    ``base_lr_i`` is each parameter group's LR when the scheduler is created (its
    ``initial_lr``). Call :meth:`step` once after every optimizer step; the LR used at iteration
    ``t`` (counting from 0) is ``base_lr * multiplier(t / max_iter)``. After ``max_iter`` steps
    the LR stays at its last-iteration value instead of evaluating the multiplier outside
    [0, 1), where fvcore schedulers are undefined.

    Args:
        optimizer: the optimizer whose parameter groups' ``"lr"`` are set.
        multiplier: an fvcore ``ParamScheduler`` giving the multiplier as a function of
            progress in [0, 1).
        max_iter: total number of training iterations (the progress denominator).
        last_iter: index of the last completed iteration, -1 to start from scratch (the
            optimizer groups then get ``initial_lr`` recorded).

    ``state_dict()`` holds only ``base_lrs`` and ``last_epoch`` (the multiplier is rebuilt from
    the config), so checkpoints stay small and picklable.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        multiplier: ParamScheduler,
        max_iter: int,
        last_iter: int = -1,
    ):
        if not isinstance(multiplier, ParamScheduler):
            raise ValueError(
                "LRMultiplier(multiplier=) must be an fvcore ParamScheduler, got "
                f"{type(multiplier).__name__}; wrap a schedule in e.g. WarmupParamScheduler."
            )
        if int(max_iter) != max_iter or max_iter <= 0:
            raise ValueError(f"LRMultiplier needs a positive integer max_iter, got {max_iter!r}.")
        self._multiplier = multiplier
        self._max_iter = int(max_iter)
        super().__init__(optimizer, last_epoch=last_iter)

    def _multiplier_at(self, iteration: int) -> float:
        # Hold the final value once training is over: fvcore shapes are defined on [0, 1).
        iteration = min(max(iteration, 0), self._max_iter - 1)
        return self._multiplier(iteration / self._max_iter)

    def get_lr(self) -> List[float]:
        """LR of every parameter group for iteration ``self.last_epoch``."""
        factor = self._multiplier_at(self.last_epoch)
        return [base_lr * factor for base_lr in self.base_lrs]

    def state_dict(self) -> Dict[str, Any]:
        """``{"base_lrs": [...], "last_epoch": int}``: what is needed to resume."""
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore ``base_lrs`` and ``last_epoch`` from :meth:`state_dict`, then set every group's
        ``"lr"`` (and ``get_last_lr()``) to the value for the restored iteration, so the next
        iteration trains at the resumed LR even if the optimizer state was not restored."""
        base_lrs = list(state_dict["base_lrs"])
        if len(base_lrs) != len(self.optimizer.param_groups):
            raise ValueError(
                f"The LR scheduler state has {len(base_lrs)} parameter groups but the optimizer "
                f"has {len(self.optimizer.param_groups)}; the checkpoint was written for a "
                "different model or solver configuration. Start the schedule fresh (do not "
                "resume), or resume with the configuration that wrote it."
            )
        self.base_lrs = base_lrs
        self.last_epoch = int(state_dict["last_epoch"])
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


def _get_warmup_factor_at_iter(
    method: str, iteration: int, warmup_iters: int, warmup_factor: float
) -> float:
    """Warmup multiplier of the legacy schedulers at ``iteration``.

    1.0 once ``iteration >= warmup_iters``; before that ``warmup_factor`` ("constant") or
    ``warmup_factor * (1 - alpha) + alpha`` with ``alpha = iteration / warmup_iters``
    ("linear").
    """
    if iteration >= warmup_iters:
        return 1.0
    if method == "constant":
        return warmup_factor
    if method == "linear":
        alpha = iteration / warmup_iters
        return warmup_factor * (1.0 - alpha) + alpha
    raise ValueError(
        f"Unknown warmup method {method!r}; valid values are {list(_WARMUP_METHODS)}."
    )


class WarmupMultiStepLR(LRScheduler):
    """Legacy scheduler: warmup, then multiply the LR by ``gamma`` at each milestone.

    ``lr = base_lr * warmup(iter) * gamma ** (number of milestones <= iter)``.
    Deprecated in favour of :class:`LRMultiplier` with a :class:`WarmupParamScheduler`; kept
    for code written against Detectron2's old API.

    Args:
        optimizer: the optimizer to schedule.
        milestones: increasing iterations at which the LR is multiplied by ``gamma``.
        gamma: the decay factor.
        warmup_factor, warmup_iters, warmup_method: the warmup (see
            ``_get_warmup_factor_at_iter``).
        last_epoch: last completed iteration, -1 to start fresh.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: Sequence[int],
        gamma: float = 0.1,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        logger.warning(
            "WarmupMultiStepLR is deprecated; use LRMultiplier with a WarmupParamScheduler "
            "(what build_lr_scheduler returns) instead."
        )
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be a list of increasing integers, got {milestones}.")
        self.milestones = list(milestones)
        self.gamma = gamma
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """LR of every parameter group for iteration ``self.last_epoch``."""
        factor = _get_warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor
        )
        decay = self.gamma ** bisect_right(self.milestones, self.last_epoch)
        return [base_lr * factor * decay for base_lr in self.base_lrs]

    def _compute_values(self) -> List[float]:
        # Kept for callers of the older torch scheduler protocol.
        return self.get_lr()


class WarmupCosineLR(LRScheduler):
    """Legacy scheduler: warmup, then half-cosine decay from ``base_lr`` to 0 over ``max_iters``.

    ``lr = base_lr * warmup(iter) * 0.5 * (1 + cos(pi * iter / max_iters))``.
    Deprecated in favour of :class:`LRMultiplier` with a :class:`WarmupParamScheduler`.

    Args:
        optimizer: the optimizer to schedule.
        max_iters: iterations of the cosine half-period.
        warmup_factor, warmup_iters, warmup_method: the warmup (see
            ``_get_warmup_factor_at_iter``).
        last_epoch: last completed iteration, -1 to start fresh.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        max_iters: int,
        warmup_factor: float = 0.001,
        warmup_iters: int = 1000,
        warmup_method: str = "linear",
        last_epoch: int = -1,
    ):
        logger.warning(
            "WarmupCosineLR is deprecated; use LRMultiplier with a WarmupParamScheduler "
            "(what build_lr_scheduler returns) instead."
        )
        self.max_iters = max_iters
        self.warmup_factor = warmup_factor
        self.warmup_iters = warmup_iters
        self.warmup_method = warmup_method
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        """LR of every parameter group for iteration ``self.last_epoch``."""
        factor = _get_warmup_factor_at_iter(
            self.warmup_method, self.last_epoch, self.warmup_iters, self.warmup_factor
        )
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.last_epoch / self.max_iters))
        return [base_lr * factor * cosine for base_lr in self.base_lrs]

    def _compute_values(self) -> List[float]:
        # Kept for callers of the older torch scheduler protocol.
        return self.get_lr()
