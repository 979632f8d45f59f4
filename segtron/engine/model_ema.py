"""An exponential moving average (EMA) of a model's weights, kept while training and evaluated
instead of the raw weights: what YOLO-family, DETR-family and many classification recipes do.

Configured by the ``MODEL_EMA`` keys (segtron's; off by default):

- ``MODEL_EMA.ENABLED``: keep the average, evaluate with it, and end training with it;
- ``MODEL_EMA.DECAY``: ``d``, the weight of the old average at each update;
- ``MODEL_EMA.DECAY_RAMP_ITERS``: ``r``; when > 0 the decay after ``n`` updates is
  ``d * (1 - exp(-n / r))``, so the first updates follow the raw weights closely (YOLOX:
  ``d`` 0.9998, ``r`` 2000); 0 keeps ``d`` from the start.

After every optimizer step each floating-point entry of the model's ``state_dict`` (parameters
and BatchNorm statistics) becomes ``decay * ema + (1 - decay) * raw``; integer entries
(``num_batches_tracked``) are copied. ``DefaultTrainer`` then

- evaluates with the average swapped in (:meth:`ModelEMA.applied`), the raw weights restored
  afterwards so training goes on from them;
- saves the average in every checkpoint under ``"model_ema"`` (so ``--resume`` restores it),
  beside the raw weights under ``"model"``;
- copies the average into the model after the last iteration, so ``model_final.pth``'s
  ``"model"`` is the averaged network that was evaluated (what ``DefaultPredictor`` and
  ``--eval-only`` then load).

``train_net.py --eval-only`` with MODEL_EMA.ENABLED evaluates a checkpoint's ``"model_ema"``
when it has one (:func:`load_model_ema_for_eval`), so an intermediate checkpoint scores as it
did during training.
"""

import contextlib
import logging
import math
from typing import Any, Dict, Iterator, Optional

import torch
from torch import nn

from .train_loop import HookBase, unwrap_model

__all__ = ["ModelEMA", "ModelEMAHook", "build_model_ema", "load_model_ema_for_eval"]

logger = logging.getLogger(__name__)


class ModelEMA:
    """The running average of a model's ``state_dict``.

    Args:
        model: the model (possibly DDP-wrapped) whose weights start the average.
        decay: weight ``d`` of the old average at each update, in [0, 1).
        ramp_iters: ``r``; when > 0 the decay after ``n`` updates is ``d * (1 - exp(-n / r))``.

    Attributes:
        updates (int): number of :meth:`update` calls so far (saved in checkpoints).
        state (dict): parameter / buffer name -> averaged tensor, on the model's devices.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp_iters: float = 0.0):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MODEL_EMA.DECAY must be in [0, 1), got {decay}.")
        if ramp_iters < 0:
            raise ValueError(f"MODEL_EMA.DECAY_RAMP_ITERS must be >= 0, got {ramp_iters}.")
        self.decay = float(decay)
        self.ramp_iters = float(ramp_iters)
        self.updates = 0
        self.state: Dict[str, torch.Tensor] = {}
        self.reset(model)

    def reset(self, model: nn.Module) -> None:
        """Restart the average from ``model``'s current weights (``updates`` back to 0)."""
        weights = unwrap_model(model).state_dict()
        self.state = {name: value.detach().clone() for name, value in weights.items()}
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay used by update number ``updates`` (1 for the first update)."""
        if self.ramp_iters <= 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.ramp_iters))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (after an optimizer step)."""
        self.updates += 1
        decay = self.decay_at(self.updates)
        for name, value in unwrap_model(model).state_dict().items():
            average = self.state.get(name)
            if average is None or average.shape != value.shape:
                raise KeyError(
                    f"ModelEMA: the model's '{name}' ({tuple(value.shape)}) is not in the "
                    "average it was built from; build the EMA after the model is complete."
                )
            if average.is_floating_point():
                average.mul_(decay).add_(value.detach().to(average.dtype), alpha=1.0 - decay)
            else:
                average.copy_(value)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the average into ``model`` (its raw weights are overwritten)."""
        unwrap_model(model).load_state_dict(self.state)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Context in which ``model`` holds the average; its own weights come back on exit
        (also on an exception)."""
        inner = unwrap_model(model)
        raw = {k: v.detach().clone() for k, v in inner.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                inner.load_state_dict(raw)

    def state_dict(self) -> Dict[str, Any]:
        """``{"updates": int, "state": {name: tensor}}``, for the checkpointer."""
        return {"updates": self.updates, "state": self.state}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (tensors moved to the current average's
        devices). Raises KeyError naming the entries missing from ``state_dict``."""
        saved = state_dict["state"]
        missing = sorted(set(self.state) - set(saved))
        if missing:
            raise KeyError(
                f"The checkpoint's model_ema lacks {len(missing)} entries of the model "
                f"(e.g. {missing[:3]}); it was saved from a different model. Start without "
                "--resume, or set MODEL_EMA.ENABLED False."
            )
        self.state = {k: saved[k].to(v.device, v.dtype) for k, v in self.state.items()}
        self.updates = int(state_dict["updates"])


class ModelEMAHook(HookBase):
    """Updates a :class:`ModelEMA` after every step and copies it into the model after the
    last one (so the final checkpoint and evaluation use it). ``DefaultTrainer`` registers it
    before the checkpointer and evaluation hooks."""

    def __init__(self, ema: ModelEMA):
        self.ema = ema

    def after_step(self) -> None:
        self.ema.update(self.trainer.model)
        if self.trainer.iter + 1 >= self.trainer.max_iter:
            self.ema.copy_to(self.trainer.model)
            logger.info("MODEL_EMA: the model now holds the weight average (%d updates).",
                        self.ema.updates)


def build_model_ema(cfg, model: nn.Module) -> Optional[ModelEMA]:
    """A :class:`ModelEMA` of ``model`` from the MODEL_EMA keys, or None when
    MODEL_EMA.ENABLED is False."""
    if not cfg.MODEL_EMA.ENABLED:
        return None
    return ModelEMA(model, cfg.MODEL_EMA.DECAY, cfg.MODEL_EMA.DECAY_RAMP_ITERS)


def load_model_ema_for_eval(cfg, model: nn.Module, checkpoint: Dict[str, Any]) -> bool:
    """With MODEL_EMA.ENABLED, load ``checkpoint["model_ema"]`` (a dict loaded from a segtron
    checkpoint) into ``model``. Returns whether it did; logs which weights are evaluated."""
    if not cfg.MODEL_EMA.ENABLED:
        return False
    if "model_ema" not in checkpoint:
        logger.info("MODEL_EMA: the checkpoint has no 'model_ema'; evaluating its 'model'.")
        return False
    ema = ModelEMA(model, cfg.MODEL_EMA.DECAY, cfg.MODEL_EMA.DECAY_RAMP_ITERS)
    ema.load_state_dict(checkpoint["model_ema"])
    ema.copy_to(model)
    logger.info("MODEL_EMA: evaluating the checkpoint's weight average (%d updates).",
                ema.updates)
    return True
