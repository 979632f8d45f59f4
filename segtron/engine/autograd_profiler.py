"""``AutogradProfiler``: Detectron2's older profiling hook, on ``torch.autograd.profiler``.

Prefer ``TorchProfiler`` (``torch.profiler``, TensorBoard traces); this hook exists so code
written for Detectron2 that registers it keeps working. It writes one Chrome trace,
``profiler-trace-iter{N}.json`` in ``output_dir``, per profiled iteration.
"""

from typing import Callable

import torch

from .hooks import TorchProfiler

__all__ = ["AutogradProfiler"]


class AutogradProfiler(TorchProfiler):
    """Profile selected iterations with ``torch.autograd.profiler.profile``.

    Args:
        enable_predicate: ``f(trainer) -> bool``, whether to profile the current iteration.
        output_dir: where the Chrome traces go.
        use_cuda: also time CUDA kernels (ignored without CUDA).

    Example::

        hooks.AutogradProfiler(lambda trainer: 10 < trainer.iter < 20, cfg.OUTPUT_DIR)
    """

    def __init__(self, enable_predicate: Callable, output_dir: str, *,
                 use_cuda: bool = True) -> None:
        super().__init__(enable_predicate, output_dir, save_tensorboard=False)
        self._use_cuda = use_cuda

    def before_step(self) -> None:
        if not self._enable_predicate(self.trainer):
            self._profiler = None
            return
        device = "cuda" if self._use_cuda and torch.cuda.is_available() else None
        self._profiler = torch.autograd.profiler.profile(use_device=device)
        self._profiler.__enter__()
