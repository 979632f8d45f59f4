"""The evaluator interface and the inference loop (``detectron2.evaluation.evaluator``).

* ``DatasetEvaluator``: the three-step protocol every evaluator follows (``reset`` before a
  pass over the data, ``process`` for each batch of model inputs/outputs, ``evaluate`` at the
  end, returning ``{task: {metric: value}}``);
* ``DatasetEvaluators``: several evaluators driven as one, their results merged;
* ``inference_on_dataset``: run a model over a test loader in eval mode without gradients,
  feed an evaluator and log progress and timing;
* ``inference_context``: put a model in eval mode for the duration of a ``with`` block.
"""

import datetime
import logging
import time
from collections import OrderedDict, abc
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import torch
from torch import nn

from ..utils import comm
from ..utils.logger import log_every_n_seconds

__all__ = [
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_on_dataset",
    "inference_context",
]

logger = logging.getLogger(__name__)

# Iterations left out of the per-iteration averages (model warm-up, cudnn autotuning, caches).
_MAX_WARMUP_ITERS = 5
# Seconds between two progress lines.
_LOG_PERIOD_S = 5


class DatasetEvaluator:
    """Base class of evaluators: accumulate model outputs over a dataset, then score them.

    ``inference_on_dataset`` calls ``reset()`` once, ``process(inputs, outputs)`` for every
    batch and ``evaluate()`` once at the end. In a distributed run each process sees only its
    share of the data; ``evaluate`` is expected to gather from all processes and return the
    results on the main process (other processes may return ``{}`` or None).
    """

    def reset(self) -> None:
        """Clear the state kept from a previous pass, before a new pass over the data."""

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Record one batch.

        Args:
            inputs: the batch given to the model (a list of dataset dicts after mapping, with
                e.g. ``image_id``, ``height``, ``width``).
            outputs: what the model returned for it, one dict per input (e.g.
                ``{"instances": Instances}``).
        """

    def evaluate(self) -> Optional[Dict[str, Any]]:
        """Score everything recorded since ``reset``.

        Returns:
            ``{task name: {metric name: number}}`` (e.g. ``{"bbox": {"AP": 38.2, ...}}``), or
            None / ``{}`` when there is nothing to report (e.g. on a non-main process).
        """


class DatasetEvaluators(DatasetEvaluator):
    """Several evaluators driven together; ``evaluate`` merges their result dicts.

    Two evaluators returning the same task key is an error (one would silently hide the other).
    """

    def __init__(self, evaluators: List[DatasetEvaluator]):
        """Args:
            evaluators: the evaluators, called in this order.
        """
        super().__init__()
        self._evaluators = list(evaluators)

    def reset(self) -> None:
        """Reset every evaluator."""
        for evaluator in self._evaluators:
            evaluator.reset()

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Pass the batch to every evaluator."""
        for evaluator in self._evaluators:
            evaluator.process(inputs, outputs)

    def evaluate(self) -> "OrderedDict[str, Any]":
        """Evaluate every evaluator and merge their results (on the main process).

        Raises:
            KeyError: when two evaluators report the same task key.
        """
        results: "OrderedDict[str, Any]" = OrderedDict()
        owner: Dict[str, str] = {}
        for evaluator in self._evaluators:
            result = evaluator.evaluate()
            if not comm.is_main_process() or result is None:
                continue
            name = type(evaluator).__name__
            for key, value in result.items():
                if key in results:
                    raise KeyError(
                        f"DatasetEvaluators: evaluators {owner[key]} and {name} both returned "
                        f"results for task '{key}'. Give one of them a different task name or "
                        "drop the duplicate evaluator."
                    )
                results[key] = value
                owner[key] = name
        return results


@contextmanager
def inference_context(model: nn.Module) -> Iterator[None]:
    """Switch ``model`` to eval mode inside the block; restore its training flag on exit.

    The previous mode is restored even if the block raises.
    """
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _callback(callbacks: Optional[Dict[str, Callable[[], None]]], name: str) -> None:
    """Call ``callbacks[name]()`` when given."""
    if callbacks and name in callbacks:
        callbacks[name]()


def _loader_length(data_loader: Any) -> Optional[int]:
    """``len(data_loader)`` when defined (test loaders have a fixed length), else None."""
    try:
        return len(data_loader)
    except TypeError:
        return None


def inference_on_dataset(
    model: Union[nn.Module, Callable[[List[Dict[str, Any]]], Any]],
    data_loader: Any,
    evaluator: Union[DatasetEvaluator, List[DatasetEvaluator], None],
    callbacks: Optional[Dict[str, Callable[[], None]]] = None,
) -> Dict[str, Any]:
    """Run ``model`` on every batch of ``data_loader`` and evaluate the outputs.

    An ``nn.Module`` is put in eval mode for the duration (its mode is restored afterwards);
    everything runs under ``torch.no_grad()``. Progress (images done, seconds per iteration
    for data loading, inference and evaluation, ETA) is logged about every 5 seconds; the first
    few iterations (up to 5) are warm-up and left out of the timing averages. At the end the
    total and per-iteration times of this process are logged.

    Args:
        model: a callable taking a batch (``list[dict]``) and returning the outputs; usually an
            ``nn.Module``.
        data_loader: an iterable of batches, normally from ``build_detection_test_loader``
            (it should have a length, used for the ETA).
        evaluator: a ``DatasetEvaluator``, a list of them (wrapped in ``DatasetEvaluators``), or
            None to only run the model.
        callbacks: optional functions called without arguments at ``"on_start"``,
            ``"before_inference"``, ``"after_inference"`` and ``"on_end"``.

    Returns:
        ``evaluator.evaluate()``, or ``{}`` when that returns None.
    """
    num_devices = comm.get_world_size()
    total = _loader_length(data_loader)
    logger.info(
        "Start inference on %s batches", total if total is not None else "an unknown number of"
    )

    if evaluator is None:
        evaluator = DatasetEvaluators([])
    elif isinstance(evaluator, abc.MutableSequence):
        evaluator = DatasetEvaluators(evaluator)
    evaluator.reset()

    num_warmup = max(min(_MAX_WARMUP_ITERS, total - 1), 0) if total else _MAX_WARMUP_ITERS
    start_time = time.perf_counter()
    data_time = compute_time = eval_time = 0.0
    num_iters = 0
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())

        _callback(callbacks, "on_start")
        data_start = time.perf_counter()
        for idx, inputs in enumerate(data_loader):
            data_time += time.perf_counter() - data_start
            num_iters = idx + 1
            if idx == num_warmup:
                # Warm-up done: restart every clock so the averages cover steady state only.
                start_time = time.perf_counter()
                data_time = compute_time = eval_time = 0.0

            compute_start = time.perf_counter()
            _callback(callbacks, "before_inference")
            outputs = model(inputs)
            _callback(callbacks, "after_inference")
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                # Only a process that has used CUDA can have GPU work to wait for: a CPU model
                # evaluated on a GPU machine creates no CUDA context (GPU memory; an error in a
                # process forked from one that has a context).
                torch.cuda.synchronize()
            compute_time += time.perf_counter() - compute_start

            eval_start = time.perf_counter()
            evaluator.process(inputs, outputs)
            eval_time += time.perf_counter() - eval_start

            timed_iters = idx + 1 - (num_warmup if idx >= num_warmup else 0)
            data_per_iter = data_time / timed_iters
            compute_per_iter = compute_time / timed_iters
            eval_per_iter = eval_time / timed_iters
            total_per_iter = (time.perf_counter() - start_time) / timed_iters
            if idx >= 2 * num_warmup or compute_per_iter > _LOG_PERIOD_S:
                if total is not None:
                    eta = datetime.timedelta(seconds=int(total_per_iter * (total - idx - 1)))
                    progress = f"{idx + 1}/{total}"
                else:
                    eta, progress = "unknown", str(idx + 1)
                log_every_n_seconds(
                    logging.INFO,
                    f"Inference done {progress}. Dataloading: {data_per_iter:.4f} s/iter. "
                    f"Inference: {compute_per_iter:.4f} s/iter. Eval: {eval_per_iter:.4f} "
                    f"s/iter. Total: {total_per_iter:.4f} s/iter. ETA={eta}",
                    n=_LOG_PERIOD_S,
                    name=__name__,
                )
            data_start = time.perf_counter()
        _callback(callbacks, "on_end")

    # Time of this process only, measured before the evaluator synchronises the processes.
    total_time = time.perf_counter() - start_time
    # The clocks were restarted after the warm-up iterations, unless the loader ended first.
    timed = max(num_iters - num_warmup if num_iters > num_warmup else num_iters, 1)
    logger.info(
        "Total inference time: %s (%.6f s / iter per device, on %d devices)",
        datetime.timedelta(seconds=total_time),
        total_time / timed,
        num_devices,
    )
    logger.info(
        "Total inference pure compute time: %s (%.6f s / iter per device, on %d devices)",
        datetime.timedelta(seconds=int(compute_time)),
        compute_time / timed,
        num_devices,
    )
    logger.info(
        "Per-iteration breakdown (after %d warm-up iterations): data loading %.6f s, inference "
        "%.6f s, evaluation %.6f s",
        min(num_warmup, num_iters),
        data_time / timed,
        compute_time / timed,
        eval_time / timed,
    )

    results = evaluator.evaluate()
    # An evaluator may return None on non-main processes; callers expect a dict.
    if results is None:
        results = {}
    return results
