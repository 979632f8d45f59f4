"""A toy model and ``DefaultTrainer`` subclass for in-process trainer tests (no images: the
trainer's builders are overridden, which is also how users customise it), and a context that
undoes what ``default_setup`` / ``DefaultTrainer`` change in the process."""

import contextlib
import logging
import os
from typing import Iterator, Optional

import torch
from torch import nn

from segtron.config import get_cfg
from segtron.engine import DefaultTrainer
from segtron.utils.events import get_event_storage


class ToyModel(nn.Module):
    """Linear regression returning Detectron2-style loss dicts; the losses become NaN from
    training iteration ``nan_at_iter`` on."""

    def __init__(self, nan_at_iter: Optional[int] = None):
        super().__init__()
        self.linear = nn.Linear(3, 1)
        self.nan_at_iter = nan_at_iter

    def forward(self, batch):
        x, y = batch
        error = self.linear(x) - y
        losses = {"loss_l2": (error ** 2).mean(), "loss_l1": 0.1 * error.abs().mean()}
        if self.nan_at_iter is not None and get_event_storage().iter >= self.nan_at_iter:
            losses["loss_l1"] = losses["loss_l1"] * float("nan")
        return losses


def _batches(seed: int = 0) -> Iterator:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.tensor([[1.0], [-1.0], [0.5]])
    while True:
        x = torch.randn(4, 3, generator=generator)
        yield x, x @ weight


class ToyTrainer(DefaultTrainer):
    """``DefaultTrainer`` on ``ToyModel`` and an endless stream of random batches."""

    nan_at_iter: Optional[int] = None

    @classmethod
    def build_model(cls, cfg):
        return ToyModel(cls.nan_at_iter).to(cfg.MODEL.DEVICE)

    @classmethod
    def build_train_loader(cls, cfg):
        return _batches()


def toy_cfg(output_dir: str, **solver):
    """A config for ``ToyTrainer``: 8 iterations, a warmup and one LR step, no test set."""
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.BASE_LR = 0.05
    cfg.SOLVER.MAX_ITER = 8
    cfg.SOLVER.STEPS = (5,)
    cfg.SOLVER.WARMUP_ITERS = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = 3
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


@contextlib.contextmanager
def restored_process_state():
    """Restore the loggers, torch backend flags, RNG and PYTHONHASHSEED changed by
    ``default_setup`` / ``setup_logger``, so later tests in this process see them untouched."""
    loggers = {name: logging.getLogger(name) for name in ("segtron", "fvcore", "projects")}
    saved = {name: (list(lg.handlers), lg.level, lg.propagate) for name, lg in loggers.items()}
    benchmark = torch.backends.cudnn.benchmark
    precision = torch.get_float32_matmul_precision()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    rng = torch.get_rng_state()
    hash_seed = os.environ.get("PYTHONHASHSEED")
    try:
        yield
    finally:
        for name, lg in loggers.items():
            handlers, level, propagate = saved[name]
            for handler in list(lg.handlers):
                if handler not in handlers:
                    lg.removeHandler(handler)
            lg.setLevel(level)
            lg.propagate = propagate
        torch.backends.cudnn.benchmark = benchmark
        torch.set_float32_matmul_precision(precision)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
        torch.set_rng_state(rng)
        if hash_seed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = hash_seed
