"""``ValidationLoss``: the training losses on a validation set, logged during training.

A segtron addition (Detectron2 users have long asked for it), enabled in ``DefaultTrainer`` by
``TEST.VAL_LOSS_PERIOD``; exported from ``segtron.engine.hooks``.
"""

import logging
import time
from typing import Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

import segtron.utils.comm as comm
from segtron.utils.events import EventStorage

from .train_loop import HookBase

__all__ = ["ValidationLoss"]

logger = logging.getLogger(__name__)

# Modules whose running statistics change in training mode: BatchNorm*d, SyncBatchNorm (and
# subclasses such as NaiveSyncBatchNorm), InstanceNorm with track_running_stats.
_NORM_TYPES: Tuple[type, ...] = (nn.modules.batchnorm._NormBase,)


class ValidationLoss(HookBase):
    """Compute the model's training losses on validation data and record them as ``val_*``.

    Every ``eval_period`` iterations and after the last one (when training completed), the
    model runs on the validation batches with gradients disabled. It stays in training mode,
    so it returns its dict of losses, but every BatchNorm-like layer (BatchNorm, SyncBatchNorm,
    NaiveSyncBatchNorm, tracked InstanceNorm) is put in eval mode for the duration, so its
    running statistics are used and left unchanged; all modes are restored afterwards. What
    the model records in the event storage meanwhile (sampling statistics etc.) is discarded.

    Each loss is averaged over all batches of all processes (every process must run the hook)
    and recorded as ``val_<loss name>``, their sum as ``val_total_loss``, on every process
    (so a ``BestCheckpointer(..., "val_total_loss", mode="min")`` works too).

    The batches must carry what the model needs for its losses (e.g. ``instances`` for the
    R-CNN models), so map the validation dataset as for training (but without random
    augmentation), not with the test mapper that drops annotations.

    Args:
        eval_period: iterations between evaluations; 0 evaluates only after training.
        model: the model being trained (a DistributedDataParallel wrapper is looked through).
        data_loader: the validation batches. A finite loader (one with ``len()``) is iterated
            completely each time, from the start, so each evaluation sees the same data.
        num_batches: use only this many batches (per process) each time; required when the
            loader has no ``len()`` (e.g. an infinite training-style loader).
    """

    def __init__(
        self,
        eval_period: int,
        model: nn.Module,
        data_loader: Iterable,
        num_batches: Optional[int] = None,
    ) -> None:
        if num_batches is None:
            try:
                len(data_loader)  # type: ignore[arg-type]
            except TypeError:
                raise ValueError(
                    "ValidationLoss: the data loader has no len(), so it may be infinite; pass "
                    "num_batches=N to use N batches per evaluation."
                ) from None
        elif num_batches <= 0:
            raise ValueError(f"ValidationLoss: num_batches must be positive, got {num_batches}.")
        self._period = eval_period
        self._model = model
        self._data_loader = data_loader
        self._num_batches = num_batches

    def _module(self) -> nn.Module:
        # Call the wrapped module directly: no gradient reduction happens without backward,
        # and DDP would broadcast buffers on every forward.
        model = self._model
        if isinstance(model, (DistributedDataParallel, DataParallel)):
            model = model.module
        return model

    def compute_losses(self) -> Dict[str, float]:
        """Run the validation batches and return ``{"val_total_loss": ..., "val_<loss>": ...}``
        averaged over all batches of all processes (must be called on every process)."""
        model = self._module()
        if not model.training:
            raise RuntimeError(
                "ValidationLoss needs the model in training mode (it returns losses only then); "
                "another hook left it in eval mode."
            )
        norms = [m for m in model.modules() if isinstance(m, _NORM_TYPES) and m.training]
        sums: Dict[str, float] = {}
        counts: Dict[str, int] = {}
        num = 0
        start = time.perf_counter()
        try:
            for m in norms:
                m.eval()
            with torch.no_grad(), EventStorage():  # discard what the model records
                for batch in self._batches():
                    loss_dict = model(batch)
                    if isinstance(loss_dict, torch.Tensor):
                        loss_dict = {"total_loss": loss_dict}
                    if not isinstance(loss_dict, dict):
                        raise TypeError(
                            "ValidationLoss: in training mode the model must return a dict of "
                            f"losses, got {type(loss_dict).__name__}."
                        )
                    for name, value in loss_dict.items():
                        sums[name] = sums.get(name, 0.0) + float(value.detach().float().item())
                        counts[name] = counts.get(name, 0) + 1
                    num += 1
        finally:
            for m in norms:
                m.train()

        gathered: List[Tuple[Dict[str, float], Dict[str, int], int]] = comm.all_gather(
            (sums, counts, num)
        )
        total_batches = sum(n for _, _, n in gathered)
        if total_batches == 0:
            raise ValueError(
                "ValidationLoss: the validation data loader produced no batches; check the "
                "validation dataset (DATASETS.TEST) is not empty."
            )
        # Per-name counts: a loss missing from some batches is averaged over those it is in.
        names = sorted({name for s, _, _ in gathered for name in s})
        means = {
            name: sum(s.get(name, 0.0) for s, _, _ in gathered)
            / sum(c.get(name, 0) for _, c, _ in gathered)
            for name in names
        }
        results = {f"val_{name}": value for name, value in means.items() if name != "total_loss"}
        results["val_total_loss"] = sum(means.values())
        logger.info(
            "Validation losses over %d batches (%.1fs): %s",
            total_batches,
            time.perf_counter() - start,
            "  ".join(f"{k}: {v:.4g}" for k, v in results.items()),
        )
        return results

    def _batches(self):
        if self._num_batches is None:
            yield from self._data_loader
            return
        for i, batch in enumerate(self._data_loader):
            yield batch
            if i + 1 >= self._num_batches:
                return

    def _do_eval(self) -> None:
        results = self.compute_losses()
        self.trainer.storage.put_scalars(**results, smoothing_hint=False)

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        is_last = next_iter == self.trainer.max_iter
        if self._period > 0 and next_iter % self._period == 0 and not is_last:
            self._do_eval()  # the last iteration is handled by after_train

    def after_train(self) -> None:
        if self.trainer.iter + 1 >= self.trainer.max_iter:  # only when training completed
            self._do_eval()
