"""Tiny models, loaders and hooks for the engine tests: a linear regression that returns a
dict of losses, trained on an endless stream of random batches."""

import itertools
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from segtron.engine import HookBase

Batch = Tuple[torch.Tensor, torch.Tensor]

TRUE_WEIGHT = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def make_batch(generator: torch.Generator, batch_size: int = 8) -> Batch:
    """Inputs (batch_size, 4) and targets of a fixed linear function plus a little noise."""
    x = torch.randn(batch_size, 4, generator=generator)
    y = x @ TRUE_WEIGHT + 0.01 * torch.randn(batch_size, 1, generator=generator)
    return x, y


def infinite_loader(seed: int = 0, batch_size: int = 8) -> Iterator[Batch]:
    """An endless stream of batches (like Detectron2's training loaders)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        yield make_batch(generator, batch_size)


def finite_loader(num_batches: int, seed: int = 1, batch_size: int = 8) -> List[Batch]:
    """A list of batches (a finite, re-iterable loader with len())."""
    return list(itertools.islice(infinite_loader(seed, batch_size), num_batches))


class TinyRegressor(nn.Module):
    """``model((x, y))`` -> ``{"loss_mse": ..., "loss_l1": ...}`` in training mode.

    Args:
        batch_norm: put a BatchNorm1d before the linear layer.
        nan_at_call: make ``loss_l1`` NaN on this (0-based) forward call.
    """

    def __init__(self, batch_norm: bool = False, nan_at_call: Optional[int] = None) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4) if batch_norm else nn.Identity()
        self.linear = nn.Linear(4, 1)
        self.nan_at_call = nan_at_call
        self.calls = 0
        self.grad_enabled_in_forward: List[bool] = []

    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        x, y = batch
        self.grad_enabled_in_forward.append(torch.is_grad_enabled())
        pred = self.linear(self.norm(x))
        losses = {
            "loss_mse": ((pred.float() - y) ** 2).mean(),
            "loss_l1": 0.1 * (pred.float() - y).abs().mean(),
        }
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            losses["loss_l1"] = losses["loss_l1"] * float("nan")
        self.calls += 1
        return losses


class RecordingHook(HookBase):
    """Records ``(event, trainer.iter, storage.iter)`` for every call, in a shared list."""

    def __init__(self, name: str, log: List[tuple]) -> None:
        self.name = name
        self.log = log

    def _record(self, event: str) -> None:
        self.log.append((self.name, event, self.trainer.iter, self.trainer.storage.iter))

    def before_train(self) -> None:
        self._record("before_train")

    def after_train(self) -> None:
        self._record("after_train")

    def before_step(self) -> None:
        self._record("before_step")

    def after_backward(self) -> None:
        self._record("after_backward")

    def after_step(self) -> None:
        self._record("after_step")


def sgd(model: nn.Module, lr: float = 0.05) -> torch.optim.Optimizer:
    """Plain SGD over the model's parameters."""
    return torch.optim.SGD(model.parameters(), lr=lr)
