"""Hooks for ``TrainerBase``: timing, writing metrics, checkpoints, LR scheduling, evaluation,
precise BN statistics, validation losses, profiling.

Register them with ``trainer.register_hooks([...])``; they run in the given order. Typical
order (what ``DefaultTrainer`` builds): IterationTimer, LRScheduler, PreciseBN,
PeriodicCheckpointer, EvalHook / ValidationLoss, BestCheckpointer, PeriodicWriter (last, so it
writes what the others recorded in the same iteration).
"""

import datetime
import itertools
import logging
import math
import operator
import os
import tempfile
import time
import warnings
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

import torch
from fvcore.common.checkpoint import Checkpointer
from fvcore.common.checkpoint import PeriodicCheckpointer as _FvcorePeriodicCheckpointer
from fvcore.common.param_scheduler import ParamScheduler
from fvcore.common.timer import Timer
from torch import nn

import segtron.utils.comm as comm
from segtron.evaluation.testing import flatten_results_dict
from segtron.utils.event_writers import EventWriter
from segtron.utils.events import EventStorage
from segtron.utils.file_io import PathManager

from .train_loop import HookBase

with warnings.catch_warnings():
    # fvcore.nn's package import scripts a focal loss with torch.jit.script, which this torch
    # deprecates: a FutureWarning at every start that is not the user's to act on.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    from fvcore.nn.precise_bn import get_bn_modules, update_bn_stats
from .validation_loss import ValidationLoss

__all__ = [
    "CallbackHook",
    "IterationTimer",
    "PeriodicWriter",
    "PeriodicCheckpointer",
    "BestCheckpointer",
    "LRScheduler",
    "EvalHook",
    "PreciseBN",
    "TorchProfiler",
    "TorchMemoryStats",
    "ValidationLoss",
    "AutogradProfiler",
]

logger = logging.getLogger(__name__)


class CallbackHook(HookBase):
    """A hook made of functions, each called with the trainer.

    Args:
        before_train, after_train, before_step, after_step: callables ``f(trainer)``, or None.
    """

    def __init__(
        self,
        *,
        before_train: Optional[Callable] = None,
        after_train: Optional[Callable] = None,
        before_step: Optional[Callable] = None,
        after_step: Optional[Callable] = None,
    ) -> None:
        self._before_train = before_train
        self._after_train = after_train
        self._before_step = before_step
        self._after_step = after_step

    def before_train(self) -> None:
        if self._before_train:
            self._before_train(self.trainer)

    def after_train(self) -> None:
        if self._after_train:
            self._after_train(self.trainer)
        # The callables may hold the trainer (closures); drop them so it can be freed.
        self._before_train = self._after_train = None
        self._before_step = self._after_step = None

    def before_step(self) -> None:
        if self._before_step:
            self._before_step(self.trainer)

    def after_step(self) -> None:
        if self._after_step:
            self._after_step(self.trainer)


class IterationTimer(HookBase):
    """Record each step's time as ``time`` and log the total training time at the end.

    The step time covers, from this hook's ``before_step`` to its ``after_step``, the hooks
    after it in ``before_step``, ``run_step`` and the hooks before it in ``after_step``;
    register it first. The first ``warmup_iter`` steps (slow: allocation, cudnn autotuning)
    are neither recorded nor counted in the overall speed.

    Args:
        warmup_iter: number of initial iterations to leave out.
    """

    def __init__(self, warmup_iter: int = 3) -> None:
        self._warmup_iter = warmup_iter
        self._step_timer = Timer()
        self._start_time = time.perf_counter()
        self._total_timer = Timer()  # time inside steps, i.e. excluding time in hooks

    def before_train(self) -> None:
        self._start_time = time.perf_counter()
        self._total_timer.reset()
        self._total_timer.pause()

    def after_train(self) -> None:
        total_time = time.perf_counter() - self._start_time
        step_time = self._total_timer.seconds()
        hook_time = total_time - step_time
        num_iter = self.trainer.storage.iter + 1 - self.trainer.start_iter - self._warmup_iter
        if num_iter > 0 and step_time > 0:
            logger.info(
                "Overall training speed: %d iterations in %s (%.4f s / it)",
                num_iter,
                datetime.timedelta(seconds=int(step_time)),
                step_time / num_iter,
            )
        logger.info(
            "Total training time: %s (%s on hooks)",
            datetime.timedelta(seconds=int(total_time)),
            datetime.timedelta(seconds=int(hook_time)),
        )

    def before_step(self) -> None:
        self._step_timer.reset()
        self._total_timer.resume()

    def after_step(self) -> None:
        done = self.trainer.storage.iter - self.trainer.start_iter + 1
        if done >= self._warmup_iter:
            self.trainer.storage.put_scalars(time=self._step_timer.seconds())
        else:
            # Still warming up: restart the overall clocks.
            self._start_time = time.perf_counter()
            self._total_timer.reset()
        self._total_timer.pause()


class PeriodicWriter(HookBase):
    """Call ``write()`` of each writer every ``period`` iterations and after the last one;
    write once more and close them after training. Before training, each writer's
    ``discard_from(start_iter)`` drops what an earlier run wrote for the iterations this run
    writes again (a resumed run: ``metrics.json`` keeps each iteration once, the newest).

    Args:
        writers: ``EventWriter`` instances.
        period: iterations between writes.
    """

    def __init__(self, writers: Iterable[EventWriter], period: int = 20) -> None:
        self._writers = list(writers)
        for w in self._writers:
            if not isinstance(w, EventWriter):
                raise TypeError(
                    f"PeriodicWriter got a {type(w).__name__}; writers must subclass "
                    "segtron.utils.events.EventWriter."
                )
        self._period = period

    def before_train(self) -> None:
        for writer in self._writers:
            writer.discard_from(self.trainer.start_iter)

    def after_step(self) -> None:
        it = self.trainer.iter
        if (it + 1) % self._period == 0 or it == self.trainer.max_iter - 1:
            for writer in self._writers:
                writer.write()

    def after_train(self) -> None:
        for writer in self._writers:
            # Writes what hooks recorded after the last step (e.g. final evaluation); after a
            # failure, what was recorded since the last periodic write.
            writer.write()
            writer.close()


class PeriodicCheckpointer(_FvcorePeriodicCheckpointer, HookBase):
    """Save ``model_{iter:07d}.pth`` every ``period`` iterations and ``model_final.pth`` after
    the last one: fvcore's ``PeriodicCheckpointer`` as a hook.

    Same arguments as ``fvcore.common.checkpoint.PeriodicCheckpointer`` (``checkpointer``,
    ``period``, ``max_iter``, ``max_to_keep``, ``file_prefix``); ``max_iter`` is taken from the
    trainer. Give it a ``DetectionCheckpointer`` so every save is atomic. Each checkpoint holds
    ``iteration``, the iteration just completed.
    """

    def before_train(self) -> None:
        self.max_iter = self.trainer.max_iter

    def after_step(self) -> None:
        # Saves only the model and the checkpointer's checkpointables (plus "iteration").
        self.step(self.trainer.iter)


class BestCheckpointer(HookBase):
    """Save a checkpoint when a validation metric reaches its best value so far.

    Register it after the hook that computes the metric (``EvalHook``); it looks at the latest
    value of ``val_metric`` in the storage at the same iterations as an ``EvalHook`` with the
    same period, and after training. NaN or infinite values are never best.

    Args:
        eval_period: the evaluation period (same as the EvalHook's).
        checkpointer: the checkpointer that saves (a ``DetectionCheckpointer``).
        val_metric: the storage name, e.g. ``"bbox/AP50"`` or ``"val_total_loss"``.
        mode: ``"max"`` when larger is better, ``"min"`` when smaller is.
        file_prefix: name of the checkpoint (``<file_prefix>.pth``, overwritten on improvement).
    """

    def __init__(
        self,
        eval_period: int,
        checkpointer: Checkpointer,
        val_metric: str,
        mode: str = "max",
        file_prefix: str = "model_best",
    ) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"BestCheckpointer mode must be 'max' or 'min', got {mode!r}.")
        self._period = eval_period
        self._val_metric = val_metric
        self._compare = operator.gt if mode == "max" else operator.lt
        self._checkpointer = checkpointer
        self._file_prefix = file_prefix
        self.best_metric: Optional[float] = None
        self.best_iter: Optional[int] = None

    def _update_best(self, value: float, iteration: int) -> bool:
        if math.isnan(value) or math.isinf(value):
            return False
        self.best_metric = value
        self.best_iter = iteration
        return True

    def _best_checking(self) -> None:
        latest = self.trainer.storage.latest().get(self._val_metric)
        if latest is None:
            logger.warning(
                "Given val metric %s does not seem to be computed/stored. Will not be "
                "checkpointing based on it. Check the name against the evaluation results "
                "(e.g. 'bbox/AP50') and register BestCheckpointer after the EvalHook.",
                self._val_metric,
            )
            return
        value, metric_iter = latest
        if self.best_metric is None:
            if self._update_best(value, metric_iter):
                self._checkpointer.save(self._file_prefix, iteration=metric_iter)
                logger.info(
                    "Saved first model at %.5f @ %d steps", self.best_metric, self.best_iter
                )
        elif self._compare(value, self.best_metric):
            self._checkpointer.save(self._file_prefix, iteration=metric_iter)
            logger.info(
                "Saved best model as latest eval score for %s is %.5f, better than last best "
                "score %.5f @ iteration %d.",
                self._val_metric, value, self.best_metric, self.best_iter,
            )
            self._update_best(value, metric_iter)
        else:
            logger.info(
                "Not saving as latest eval score for %s is %.5f, not better than best score "
                "%.5f @ iteration %d.",
                self._val_metric, value, self.best_metric, self.best_iter,
            )

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        is_last = next_iter == self.trainer.max_iter
        if self._period > 0 and next_iter % self._period == 0 and not is_last:
            self._best_checking()

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:  # only when training completed
            self._best_checking()


class LRScheduler(HookBase):
    """Step the LR scheduler after every iteration and record the current ``lr``.

    The recorded ``lr`` is that of the parameter group with the most parameters (when every
    group has one parameter: the first group with the most common initial lr).

    Args:
        optimizer: defaults to ``trainer.optimizer``.
        scheduler: a ``torch.optim.lr_scheduler`` scheduler, or an fvcore ``ParamScheduler``
            (wrapped in ``segtron.solver.LRMultiplier`` over ``trainer.max_iter``); defaults
            to ``trainer.scheduler``.
    """

    def __init__(self, optimizer: Optional[torch.optim.Optimizer] = None, scheduler: Any = None):
        self._optimizer = optimizer
        self._scheduler = scheduler

    def before_train(self) -> None:
        self._optimizer = self._optimizer or self.trainer.optimizer
        if isinstance(self.scheduler, ParamScheduler):
            from segtron.solver.lr_scheduler import LRMultiplier

            self._scheduler = LRMultiplier(
                self._optimizer,
                self.scheduler,
                self.trainer.max_iter,
                last_iter=self.trainer.iter - 1,
            )
        self._best_param_group_id = LRScheduler.get_best_param_group_id(self._optimizer)

    @staticmethod
    def get_best_param_group_id(optimizer: torch.optim.Optimizer) -> int:
        """Index of the parameter group whose lr is reported (see the class docstring)."""
        groups = optimizer.param_groups
        largest = max(len(g["params"]) for g in groups)
        if largest == 1:
            # One parameter per group (e.g. per-parameter weight decay): report the most
            # common lr, which is the base lr for most parameters.
            common_lr = Counter(g["lr"] for g in groups).most_common(1)[0][0]
            return next(i for i, g in enumerate(groups) if g["lr"] == common_lr)
        return next(i for i, g in enumerate(groups) if len(g["params"]) == largest)

    def after_step(self) -> None:
        lr = self._optimizer.param_groups[self._best_param_group_id]["lr"]
        self.trainer.storage.put_scalar("lr", lr, smoothing_hint=False)
        self.scheduler.step()

    @property
    def scheduler(self):
        """The scheduler stepped: the one given, or ``trainer.scheduler``."""
        return self._scheduler or self.trainer.scheduler

    def state_dict(self) -> Dict[str, Any]:
        """The scheduler's state when it is a torch LR scheduler, else empty."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            return self.scheduler.state_dict()
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the scheduler's state (torch LR schedulers only)."""
        if isinstance(self.scheduler, torch.optim.lr_scheduler.LRScheduler):
            logger.info("Loading scheduler from state_dict ...")
            self.scheduler.load_state_dict(state_dict)


class EvalHook(HookBase):
    """Run an evaluation function every ``eval_period`` iterations and after training, and
    record its results.

    The function takes no arguments and returns a nested dict of numbers (e.g.
    ``{"bbox": {"AP": 40.1, ...}}``) or nothing; results are recorded flattened as
    ``bbox/AP`` etc. It is called on every process (evaluation is usually distributed); all
    processes wait for each other afterwards.

    Args:
        eval_period: iterations between evaluations; 0 evaluates only after training.
        eval_function: the evaluation, ``f() -> dict``.
        eval_after_train: also evaluate after the last iteration (when training completed).
    """

    def __init__(
        self, eval_period: int, eval_function: Callable[[], Any], eval_after_train: bool = True
    ) -> None:
        self._period = eval_period
        self._func = eval_function
        self._eval_after_train = eval_after_train

    def _do_eval(self) -> None:
        results = self._func()
        if results:
            if not isinstance(results, Mapping):
                raise TypeError(
                    f"EvalHook: the eval function must return a dict, got {type(results).__name__}."
                )
            flat = flatten_results_dict(results)
            for name, value in flat.items():
                try:
                    flat[name] = float(value)
                except (TypeError, ValueError) as e:
                    raise ValueError(
                        "[EvalHook] eval_function should return a nested dict of float. Got "
                        f"'{name}: {value!r}' instead."
                    ) from e
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
        # Evaluation can take different times on different processes; start the next
        # iteration together.
        comm.synchronize()

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        is_last = next_iter == self.trainer.max_iter
        if self._period > 0 and next_iter % self._period == 0 and not is_last:
            self._do_eval()  # the last iteration is evaluated in after_train

    def after_train(self) -> None:
        if self._eval_after_train and self.trainer.iter + 1 >= self.trainer.max_iter:
            self._do_eval()
        # The function often refers to the trainer; release it.
        del self._func


class PreciseBN(HookBase):
    """Recompute BatchNorm statistics (``fvcore.nn.precise_bn.update_bn_stats``) every
    ``period`` iterations and after the last one.

    Disabled (with a log line) when the model has no BatchNorm layer in training mode. Runs on
    every process; the model's own storage writes during it are discarded.

    Args:
        period: iterations between updates; 0 updates only after the last iteration.
        model: the model whose BN layers to update.
        data_loader: an iterable of training batches (an iterator over it is kept across
            updates).
        num_iter: batches per update.
    """

    def __init__(self, period: int, model: nn.Module, data_loader: Iterable, num_iter: int):
        if len(get_bn_modules(model)) == 0:
            logger.info(
                "PreciseBN is disabled because model does not contain BN layers in training mode."
            )
            self._disabled = True
            return
        self._model = model
        self._data_loader = data_loader
        self._num_iter = num_iter
        self._period = period
        self._disabled = False
        self._data_iter = None

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        is_final = next_iter == self.trainer.max_iter
        if is_final or (self._period > 0 and next_iter % self._period == 0):
            self.update_stats()

    def update_stats(self) -> None:
        """Run ``num_iter`` batches through the model to update its BN statistics."""
        if self._disabled:
            return
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)

        def batches():
            for i in itertools.count(1):
                if i % 100 == 0:
                    logger.info("Running precise-BN ... %d/%d iterations.", i, self._num_iter)
                yield next(self._data_iter)

        with EventStorage():  # throw away what the model records
            logger.info(
                "Running precise-BN for %d iterations...  Note that this could produce different "
                "statistics every time.", self._num_iter,
            )
            update_bn_stats(self._model, batches(), self._num_iter)


class TorchProfiler(HookBase):
    """Profile selected iterations with ``torch.profiler`` and save the traces.

    Args:
        enable_predicate: ``f(trainer) -> bool``, whether to profile the current iteration.
        output_dir: where traces go: ``log/profiler-tensorboard-iter{N}`` (TensorBoard plugin
            format) or ``profiler-trace-iter{N}.json`` (Chrome trace).
        activities: ``torch.profiler.ProfilerActivity`` values; default CPU (+ CUDA if there).
        save_tensorboard: save in TensorBoard format rather than a Chrome trace.
    """

    def __init__(
        self,
        enable_predicate: Callable,
        output_dir: str,
        *,
        activities: Optional[List] = None,
        save_tensorboard: bool = True,
    ) -> None:
        self._enable_predicate = enable_predicate
        self._activities = activities
        self._output_dir = output_dir
        self._save_tensorboard = save_tensorboard
        self._profiler = None

    def before_step(self) -> None:
        if not self._enable_predicate(self.trainer):
            self._profiler = None
            return
        on_trace_ready = None
        if self._save_tensorboard:
            trace_dir = f"profiler-tensorboard-iter{self.trainer.iter}"
            on_trace_ready = torch.profiler.tensorboard_trace_handler(
                os.path.join(self._output_dir, "log", trace_dir),
                f"worker{comm.get_rank()}",
            )
        self._profiler = torch.profiler.profile(
            activities=self._activities,
            on_trace_ready=on_trace_ready,
            record_shapes=True,
            profile_memory=True,
            with_stack=True,
            with_flops=True,
        )
        self._profiler.__enter__()

    def after_step(self) -> None:
        if self._profiler is None:
            return
        self._profiler.__exit__(None, None, None)
        if not self._save_tensorboard:
            PathManager.mkdirs(self._output_dir)
            out_file = os.path.join(
                self._output_dir, f"profiler-trace-iter{self.trainer.iter}.json"
            )
            if "://" not in out_file:
                self._profiler.export_chrome_trace(out_file)
            else:  # remote storage: export locally, then copy
                with tempfile.TemporaryDirectory(prefix="segtron_profiler") as tmp:
                    local = os.path.join(tmp, "tmp.json")
                    self._profiler.export_chrome_trace(local)
                    with open(local) as f, PathManager.open(out_file, "w") as out:
                        out.write(f.read())
        self._profiler = None


class TorchMemoryStats(HookBase):
    """Log CUDA memory usage every ``period`` iterations (and at the last one), at most
    ``max_runs`` times; the last time also logs ``torch.cuda.memory_summary()``. Peak counters
    are reset after each log. Does nothing without CUDA.

    Args:
        period: iterations between logs.
        max_runs: number of logs.
    """

    def __init__(self, period: int = 20, max_runs: int = 10) -> None:
        self._period = period
        self._max_runs = max_runs
        self._runs = 0

    def after_step(self) -> None:
        if self._runs >= self._max_runs or not torch.cuda.is_available():
            return
        it = self.trainer.iter
        if (it + 1) % self._period != 0 and it != self.trainer.max_iter - 1:
            return
        mb = 1024.0 * 1024.0
        logger.info(
            "iter: %d  max_reserved_mem: %.0fMB  reserved_mem: %.0fMB  max_allocated_mem: %.0fMB"
            "  allocated_mem: %.0fMB",
            it,
            torch.cuda.max_memory_reserved() / mb,
            torch.cuda.memory_reserved() / mb,
            torch.cuda.max_memory_allocated() / mb,
            torch.cuda.memory_allocated() / mb,
        )
        self._runs += 1
        if self._runs == self._max_runs:
            logger.info("\n%s", torch.cuda.memory_summary())
        torch.cuda.reset_peak_memory_stats()


# Defined in its own file (it subclasses TorchProfiler above); exported here, as in Detectron2.
from .autograd_profiler import AutogradProfiler  # noqa: E402
