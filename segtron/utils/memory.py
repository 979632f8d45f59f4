"""``retry_if_cuda_oom``: call a function again, then on CPU, when CUDA runs out of memory."""

import functools
import logging
from typing import Any, Callable

import torch

__all__ = ["retry_if_cuda_oom"]

logger = logging.getLogger(__name__)


def _is_cuda_oom(error: BaseException) -> bool:
    """True for PyTorch's CUDA out-of-memory error (its own class, or the older RuntimeError)."""
    oom_class = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_class is not None and isinstance(error, oom_class):
        return True
    return isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)


def _to_cpu(value: Any) -> Any:
    """``value`` moved to the CPU when it looks like a CUDA tensor (has ``.device`` of type
    "cuda" and ``.to``: tensors, Boxes, ...); anything else unchanged. Nested containers are
    not searched."""
    device = getattr(value, "device", None)
    if getattr(device, "type", None) == "cuda" and hasattr(value, "to"):
        return value.to(device="cpu")
    return value


def retry_if_cuda_oom(func: Callable) -> Callable:
    """Wrap ``func`` so that a CUDA out-of-memory error is retried, first after
    ``torch.cuda.empty_cache()``, then with every CUDA-tensor argument moved to the CPU.

    Args:
        func: a stateless callable (it may run up to three times) taking tensor-like
            arguments; only top-level arguments are moved, not tensors inside containers.

    Returns:
        The wrapped callable. After the CPU retry its results may be CPU tensors even for CUDA
        inputs; moving them back is the caller's choice. Errors other than CUDA OOM, and an OOM
        on the last try, propagate unchanged.

    Example::

        masks = retry_if_cuda_oom(paste_masks_in_image)(masks, boxes, image_shape)
    """

    @functools.wraps(func)
    def wrapped(*args, **kwargs):
        for attempt in range(2):
            try:
                return func(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised unless it is a CUDA OOM
                if not _is_cuda_oom(e):
                    raise
            if attempt == 0 and torch.cuda.is_available():
                torch.cuda.empty_cache()
        logger.info("Copying the inputs of %s to the CPU after CUDA ran out of memory.", func)
        cpu_args = [_to_cpu(a) for a in args]
        cpu_kwargs = {k: _to_cpu(v) for k, v in kwargs.items()}
        return func(*cpu_args, **cpu_kwargs)

    return wrapped
