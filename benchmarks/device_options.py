"""``--device`` and ``--amp`` for the peer benchmarks: where both libraries run, in which
precision, and how a timed run waits for the device.

On CUDA, kernels run asynchronously: a timed run must synchronise before the clock starts and
before it stops, or it measures only the launches. ``--amp`` is fp16 autocast on CUDA (with a
GradScaler for training, as Detectron2's AMPTrainer); it is refused on the CPU, where the
benchmarks measure float32.
"""

import argparse
import contextlib
from typing import Callable, ContextManager, Optional

import torch

__all__ = ["add_device_arguments", "resolve_device", "autocast", "synchronizer", "grad_scaler"]


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--device {cpu, cuda}`` (default cpu) and ``--amp`` to ``parser``."""
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both models run (cuda: the current GPU)")
    parser.add_argument("--amp", action="store_true",
                        help="fp16 autocast on CUDA (training: with a GradScaler)")


def resolve_device(args: argparse.Namespace) -> torch.device:
    """The torch device of ``args.device``, after checking it exists and ``--amp`` fits it.

    Raises:
        ValueError: CUDA asked for on a machine without it, or ``--amp`` on the CPU.
    """
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: torch sees no CUDA device on this machine "
            f"(torch {torch.__version__}); run with --device cpu."
        )
    if args.amp and args.device != "cuda":
        raise ValueError("--amp is fp16 autocast on CUDA; add --device cuda, or drop --amp to "
                         "measure float32 on the CPU.")
    return torch.device(args.device)


def autocast(device: torch.device, amp: bool) -> ContextManager:
    """fp16 autocast on ``device`` when ``amp``; otherwise a context that changes nothing."""
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


def synchronizer(device: torch.device) -> Optional[Callable[[], None]]:
    """A function that waits for ``device``'s queued work (None on the CPU, which has none)."""
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)


def grad_scaler(device: torch.device, amp: bool) -> Optional["torch.amp.GradScaler"]:
    """A GradScaler for fp16 training on ``device`` when ``amp``, else None."""
    return torch.amp.GradScaler(device.type) if amp else None
