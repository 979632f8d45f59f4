"""The training loop: ``TrainerBase`` runs hooks around ``run_step``; ``SimpleTrainer`` and
``AMPTrainer`` implement one optimisation step.

A trainer's ``train(start_iter, max_iter)`` opens an ``EventStorage(start_iter)`` and, for every
iteration, calls each hook's ``before_step``, then ``run_step`` (which calls ``after_backward``
once the gradients exist), then each hook's ``after_step``. ``before_train`` / ``after_train``
bracket the loop; ``after_train`` runs even when training fails, and then sees
``trainer.iter < trainer.max_iter``, which tells hooks not to do their end-of-training work.
"""

import concurrent.futures
import logging
import time
import weakref
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

import segtron.utils.comm as comm
from segtron.utils.events import EventStorage, get_event_storage

__all__ = ["HookBase", "TrainerBase", "SimpleTrainer", "AMPTrainer", "unwrap_model"]

logger = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module a trainer's ``model`` wraps (``DistributedDataParallel`` / ``DataParallel``:
    its ``.module``), else ``model`` itself: where attributes such as a flag a hook sets
    live."""
    return getattr(model, "module", model)


class HookBase:
    """Base class of the hooks a ``TrainerBase`` calls around training and each step.

    The trainer calls, in order::

        hook.before_train()
        for iter in range(start_iter, max_iter):
            hook.before_step()
            trainer.run_step()      # calls hook.after_backward() after backward()
            hook.after_step()
        iter += 1
        hook.after_train()

    Hooks are called in registration order. A hook reaches the trainer (``self.trainer.iter``,
    ``self.trainer.storage``, ``self.trainer.model``, ...) through ``self.trainer``, a weak
    proxy set by ``TrainerBase.register_hooks`` (hooks must not keep the trainer alive).
    ``after_train`` also runs after a failure; ``self.trainer.iter == self.trainer.max_iter``
    only when training completed.

    A hook with state to resume returns it from ``state_dict()``; it is saved with the
    trainer's state under the hook's class name.
    """

    trainer: Any = None
    """The trainer (a ``weakref.proxy``), set when the hook is registered."""

    def before_train(self) -> None:
        """Called once before the first iteration."""

    def after_train(self) -> None:
        """Called once after the last iteration, or after training failed."""

    def before_step(self) -> None:
        """Called before each iteration."""

    def after_backward(self) -> None:
        """Called in each iteration after the backward pass, before the optimizer step."""

    def after_step(self) -> None:
        """Called after each iteration."""

    def state_dict(self) -> Dict[str, Any]:
        """The hook's state to checkpoint; empty (nothing saved) by default."""
        return {}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore what ``state_dict()`` returned; does nothing by default."""


class TrainerBase:
    """An iterative trainer with hooks; subclasses implement ``run_step``.

    Attributes:
        iter: the current iteration.
        start_iter: the iteration training started (or resumed) from.
        max_iter: the iteration to stop at (exclusive).
        storage: the ``EventStorage`` open during training.
    """

    def __init__(self) -> None:
        self._hooks: List[HookBase] = []
        self.iter: int = 0
        self.start_iter: int = 0
        self.max_iter: int = 0
        self.storage: Optional[EventStorage] = None

    def register_hooks(self, hooks: Sequence[Optional[HookBase]]) -> None:
        """Append hooks (``None`` entries are skipped); they run in the order given.

        Raises:
            TypeError: if an entry is not a ``HookBase``.
        """
        hooks = [h for h in hooks if h is not None]
        for h in hooks:
            if not isinstance(h, HookBase):
                raise TypeError(
                    f"register_hooks got a {type(h).__name__}; hooks must subclass "
                    "segtron.engine.HookBase."
                )
            # A weak proxy: trainer -> hook -> trainer would otherwise be a reference cycle
            # that keeps the trainer (and its model) alive until the garbage collector runs.
            h.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter: int, max_iter: int) -> None:
        """Run iterations ``start_iter`` .. ``max_iter - 1`` with the registered hooks.

        Exceptions are logged with the iteration they happened at and re-raised; hooks'
        ``after_train`` runs in any case.
        """
        logger.info("Starting training from iteration %d", start_iter)
        self.iter = self.start_iter = int(start_iter)
        self.max_iter = int(max_iter)

        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                # iter == max_iter tells after_train that training completed.
                self.iter += 1
            except Exception:
                logger.exception("Exception during training at iteration %d:", self.iter)
                raise
            finally:
                self.after_train()

    def before_train(self) -> None:
        """Call every hook's ``before_train``."""
        for h in self._hooks:
            h.before_train()

    def after_train(self) -> None:
        """Set ``storage.iter`` to ``iter`` and call every hook's ``after_train``."""
        self.storage.iter = self.iter
        for h in self._hooks:
            h.after_train()

    def before_step(self) -> None:
        """Set ``storage.iter`` to ``iter`` and call every hook's ``before_step``."""
        self.storage.iter = self.iter
        for h in self._hooks:
            h.before_step()

    def after_backward(self) -> None:
        """Call every hook's ``after_backward``."""
        for h in self._hooks:
            h.after_backward()

    def after_step(self) -> None:
        """Call every hook's ``after_step``."""
        for h in self._hooks:
            h.after_step()

    def run_step(self) -> None:
        """One training iteration; implemented by subclasses."""
        raise NotImplementedError(f"{type(self).__name__} must implement run_step().")

    def state_dict(self) -> Dict[str, Any]:
        """``{"iteration": iter, "hooks": {hook class name: hook state}}`` (``hooks`` only when
        some hook has state; of several hooks of one class only the first is saved)."""
        state: Dict[str, Any] = {"iteration": self.iter}
        hooks_state: Dict[str, Any] = {}
        for h in self._hooks:
            hook_state = h.state_dict()
            if not hook_state:
                continue
            name = type(h).__qualname__
            if name in hooks_state:
                continue  # ambiguous which one to restore; keep the first
            hooks_state[name] = hook_state
        if hooks_state:
            state["hooks"] = hooks_state
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore ``iter`` and hook states saved by ``state_dict()``; states of hooks that are
        not registered are skipped with a warning."""
        self.iter = int(state_dict["iteration"])
        for name, hook_state in state_dict.get("hooks", {}).items():
            for h in self._hooks:
                if type(h).__qualname__ == name:
                    h.load_state_dict(hook_state)
                    break
            else:
                logger.warning("Cannot find the hook '%s', its state_dict is ignored.", name)


class SimpleTrainer(TrainerBase):
    """A trainer for the common case: one model, one optimizer, one data loader.

    Each ``run_step`` takes the next batch, computes the model's losses, their sum's gradients,
    and steps the optimizer; losses and data-loading time go to the storage. For anything
    fancier, subclass it or write your own ``run_step``.

    Args:
        model: a module in training mode that takes a batch and returns a dict of scalar loss
            tensors (or a single loss tensor).
        data_loader: an iterable of batches; iterated once per training run, so it should be
            infinite (Detectron2's training loaders are).
        optimizer: a ``torch.optim.Optimizer``.
        gather_metric_period: gather and record the metrics every this many iterations
            (gathering synchronises processes, so a period > 1 saves time on many GPUs).
        zero_grad_before_forward: zero the gradients before the forward pass instead of
            right before the backward pass (for models that use gradients in ``forward``).
        async_write_metrics: record metrics on a background thread.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        async_write_metrics: bool = False,
    ) -> None:
        super().__init__()
        model.train()
        self.model = model
        self.data_loader = data_loader
        self._data_loader_iter_obj = None
        self.optimizer = optimizer
        self.gather_metric_period = int(gather_metric_period)
        self.zero_grad_before_forward = zero_grad_before_forward
        self.async_write_metrics = async_write_metrics
        # One worker keeps the writes in iteration order.
        self.concurrent_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending_writes: List[concurrent.futures.Future] = []

    def run_step(self) -> None:
        """Load a batch, forward, backward, record metrics, step the optimizer."""
        if not self.model.training:
            raise RuntimeError(
                f"[{type(self).__name__}] the model was switched to eval mode; call "
                "model.train() again after evaluating (hooks must restore the mode)."
            )
        self._raise_failed_writes()

        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        loss_dict = self.model(data)
        losses, loss_dict = _sum_losses(loss_dict)
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()

        self.after_backward()
        self._record_metrics(loss_dict, data_time)
        self.optimizer.step()

    @property
    def _data_loader_iter(self):
        # Created on first use, so the loader's workers only start when training does.
        if self._data_loader_iter_obj is None:
            self._data_loader_iter_obj = iter(self.data_loader)
        return self._data_loader_iter_obj

    def reset_data_loader(self, data_loader_builder) -> None:
        """Replace the data loader by ``data_loader_builder()``; the old one is released first
        (so its workers exit before new ones start)."""
        del self.data_loader
        self._data_loader_iter_obj = None
        self.data_loader = data_loader_builder()

    def _record_metrics(self, loss_dict: Mapping[str, torch.Tensor], data_time: float) -> None:
        if self.async_write_metrics:
            future = self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
            self._pending_writes.append(future)
        else:
            self._write_metrics(loss_dict, data_time)

    def _raise_failed_writes(self, wait: bool = False) -> None:
        """Re-raise (on the training thread) an error of a background metrics write."""
        still_pending = []
        for future in self._pending_writes:
            if not wait and not future.done():
                still_pending.append(future)
                continue
            error = future.exception()
            if error is not None:
                self._pending_writes = []
                raise error
        self._pending_writes = still_pending

    def _write_metrics(
        self,
        loss_dict: Mapping[str, torch.Tensor],
        data_time: float,
        prefix: str = "",
        iter: Optional[int] = None,
    ) -> None:
        """Record metrics every ``gather_metric_period`` iterations (see ``write_metrics``)."""
        cur_iter = self.iter if iter is None else iter
        if (cur_iter + 1) % self.gather_metric_period == 0:
            try:
                SimpleTrainer.write_metrics(loss_dict, data_time, cur_iter, prefix)
            except FloatingPointError:
                raise
            except Exception:
                logger.exception("Exception in writing metrics at iteration %d:", cur_iter)
                raise

    @staticmethod
    def write_metrics(
        loss_dict: Mapping[str, torch.Tensor],
        data_time: float,
        cur_iter: int,
        prefix: str = "",
    ) -> None:
        """Gather losses and data time from all processes and record them on the main one.

        Records ``{prefix}total_loss`` (the sum of the per-loss means over processes), each loss
        (when there is more than one) and ``data_time`` (the slowest process's); every process
        also records its own ``rank_data_time``. Must be called by all processes.

        Raises:
            FloatingPointError: on every process, if the total loss is infinite or NaN; the
                message names the iteration and every loss value.
        """
        metrics = {name: float(value.detach().cpu().item()) for name, value in loss_dict.items()}
        metrics["data_time"] = data_time
        storage = get_event_storage()
        storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
        # all_gather rather than gather: every process sees a NaN and stops together, instead
        # of the others waiting forever at the next collective.
        all_metrics = comm.all_gather(metrics)

        max_data_time = max(m.pop("data_time") for m in all_metrics)
        reduced = {name: float(np.mean([m[name] for m in all_metrics])) for name in all_metrics[0]}
        total = sum(reduced.values())
        if not np.isfinite(total):
            raise FloatingPointError(
                f"Loss became infinite or NaN at iteration={cur_iter}!\nloss_dict = {reduced}\n"
                "Lower the learning rate (SOLVER.BASE_LR) or lengthen the warmup "
                "(SOLVER.WARMUP_ITERS), and check the data for degenerate boxes."
            )
        if comm.is_main_process():
            storage.put_scalar("data_time", max_data_time, cur_iter=cur_iter)
            storage.put_scalar(f"{prefix}total_loss", total, cur_iter=cur_iter)
            if len(reduced) > 1:
                storage.put_scalars(cur_iter=cur_iter, **reduced)

    def after_train(self) -> None:
        """Finish background metric writes, run the hooks' ``after_train``, then re-raise a
        failed background write."""
        try:
            self._raise_failed_writes(wait=True)
            error = None
        except Exception as e:  # report after the hooks ran (writers, final checkpoint)
            error = e
        super().after_train()
        if error is not None:
            raise error

    def state_dict(self) -> Dict[str, Any]:
        """The ``TrainerBase`` state plus the optimizer's (``"optimizer"``)."""
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the ``TrainerBase`` state and the optimizer's."""
        super().load_state_dict(state_dict)
        self.optimizer.load_state_dict(state_dict["optimizer"])


class AMPTrainer(SimpleTrainer):
    """``SimpleTrainer`` with automatic mixed precision.

    On CUDA the forward pass runs under ``torch.autocast("cuda", dtype=precision)`` and a
    ``GradScaler`` scales the loss (unless ``precision`` is bfloat16, which needs none). On CPU
    the forward runs under ``torch.autocast("cpu", dtype=torch.bfloat16)`` without a scaler
    (float16 autocast is a CUDA feature; a float16 ``precision`` is replaced by bfloat16).
    The device is the one holding the model's parameters.

    Args:
        model, data_loader, optimizer, gather_metric_period, zero_grad_before_forward,
            async_write_metrics: as in ``SimpleTrainer``.
        grad_scaler: a ``torch.amp.GradScaler``; by default one is created, enabled when the
            model is on CUDA and ``precision`` is float16.
        precision: the autocast dtype, ``torch.float16`` or ``torch.bfloat16``.
        log_grad_scaler: record the scaler's scale as ``[metric]grad_scaler`` each step.
    """

    def __init__(
        self,
        model: nn.Module,
        data_loader: Iterable,
        optimizer: torch.optim.Optimizer,
        gather_metric_period: int = 1,
        zero_grad_before_forward: bool = False,
        grad_scaler: Optional["torch.amp.GradScaler"] = None,
        precision: torch.dtype = torch.float16,
        log_grad_scaler: bool = False,
        async_write_metrics: bool = False,
    ) -> None:
        if isinstance(model, DistributedDataParallel) and model.device_ids and len(
            model.device_ids
        ) > 1:
            raise ValueError(
                "AMPTrainer does not support single-process multi-device training: wrap the "
                "model in DistributedDataParallel with one device per process."
            )
        if isinstance(model, DataParallel):
            raise ValueError(
                "AMPTrainer does not support DataParallel; use DistributedDataParallel with one "
                "device per process (segtron.engine.launch)."
            )
        if precision not in (torch.float16, torch.bfloat16):
            raise ValueError(
                f"AMPTrainer precision must be torch.float16 or torch.bfloat16, got {precision}."
            )
        super().__init__(
            model,
            data_loader,
            optimizer,
            gather_metric_period=gather_metric_period,
            zero_grad_before_forward=zero_grad_before_forward,
            async_write_metrics=async_write_metrics,
        )
        first_param = next(model.parameters(), None)
        self.device_type = first_param.device.type if first_param is not None else "cpu"
        if self.device_type == "cuda":
            self.precision = precision
        else:
            if precision != torch.bfloat16:
                logger.info(
                    "AMPTrainer: the model is on %s; using bfloat16 autocast without a gradient "
                    "scaler (float16 autocast needs CUDA).", self.device_type,
                )
            self.precision = torch.bfloat16
        if grad_scaler is None:
            enabled = self.device_type == "cuda" and self.precision == torch.float16
            grad_scaler = torch.amp.GradScaler("cuda", enabled=enabled)
        self.grad_scaler = grad_scaler
        self.log_grad_scaler = log_grad_scaler

    def run_step(self) -> None:
        """Like ``SimpleTrainer.run_step``, with the forward under autocast and the backward
        and optimizer step through the gradient scaler."""
        if not self.model.training:
            raise RuntimeError(
                "[AMPTrainer] the model was switched to eval mode; call model.train() again "
                "after evaluating (hooks must restore the mode)."
            )
        self._raise_failed_writes()

        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(device_type=self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            losses, loss_dict = _sum_losses(loss_dict)
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()

        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        self._record_metrics(loss_dict, data_time)

        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self) -> Dict[str, Any]:
        """The ``SimpleTrainer`` state plus the gradient scaler's (``"grad_scaler"``; empty when
        the scaler is disabled)."""
        state = super().state_dict()
        state["grad_scaler"] = self.grad_scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the ``SimpleTrainer`` state and the gradient scaler's."""
        super().load_state_dict(state_dict)
        if "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def _sum_losses(loss_dict: Any):
    """``(sum of losses, dict of losses)`` from a model's output: a dict of scalar tensors, or
    one tensor (recorded as ``total_loss``)."""
    if isinstance(loss_dict, torch.Tensor):
        return loss_dict, {"total_loss": loss_dict}
    if not isinstance(loss_dict, Mapping) or not loss_dict:
        raise TypeError(
            "In training mode the model must return a non-empty dict of scalar loss tensors "
            f"(or one loss tensor); got {type(loss_dict).__name__}. Is the model in train mode "
            "and does the batch carry its annotations?"
        )
    return sum(loss_dict.values()), loss_dict
