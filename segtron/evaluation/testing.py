"""Reporting and checking evaluation results (``detectron2.evaluation.testing``).

* ``print_csv_format`` logs results as ``copypaste:`` lines (metric names, then values, comma
  separated) that paste straight into a spreadsheet;
* ``verify_results`` compares results with ``cfg.TEST.EXPECTED_RESULTS`` (used by CI runs);
* ``flatten_results_dict`` turns ``{"bbox": {"AP": 1}}`` into ``{"bbox/AP": 1}``.
"""

import logging
import pprint
from collections.abc import Mapping
from typing import Any, Dict

import numpy as np

__all__ = ["print_csv_format", "verify_results", "flatten_results_dict"]

logger = logging.getLogger(__name__)


def print_csv_format(results: Mapping) -> None:
    """Log ``results`` in the ``copypaste:`` format, one block per task.

    For a task whose value is a dict, three lines are logged: ``copypaste: Task: <task>``, the
    metric names and the values (4 decimals), both comma-separated. Per-category metrics (names
    with a ``-``, e.g. ``AP-person``) are left out. A task with a plain value is logged as
    ``copypaste: <task>=<value>``.

    Args:
        results: ``{task: {metric: value}}`` as returned by ``inference_on_dataset``; an
            OrderedDict keeps the tasks' order.
    """
    if not isinstance(results, Mapping):
        raise TypeError(
            f"print_csv_format expects a dict of results, got {type(results).__name__}: "
            f"{results!r}."
        )
    for task, res in results.items():
        if isinstance(res, Mapping):
            important = [(k, v) for k, v in res.items() if "-" not in k]
            logger.info("copypaste: Task: %s", task)
            logger.info("copypaste: %s", ",".join(k for k, _ in important))
            logger.info("copypaste: %s", ",".join(f"{v:.4f}" for _, v in important))
        else:
            logger.info("copypaste: %s=%s", task, res)


def verify_results(cfg, results: Mapping) -> bool:
    """Check ``results`` against ``cfg.TEST.EXPECTED_RESULTS``.

    Each expected entry is ``[task, metric, expected value, tolerance]``; it passes when
    ``results[task][metric]`` exists, is finite and is within ``tolerance`` of the expected
    value. An empty list always passes.

    Returns:
        True when every entry passes. Otherwise the failing entries, the expected list and the
        actual results are logged as errors and False is returned (Detectron2 exits the
        process here; callers such as ``train_net.py`` decide what to do).
    """
    expected_results = cfg.TEST.EXPECTED_RESULTS
    if not len(expected_results):
        return True

    failures = []
    for entry in expected_results:
        if len(entry) != 4:
            raise ValueError(
                f"TEST.EXPECTED_RESULTS entries must be [task, metric, expected, tolerance]; got "
                f"{entry!r}."
            )
        task, metric, expected, tolerance = entry
        task_results = results.get(task)
        actual = task_results.get(metric) if isinstance(task_results, Mapping) else None
        if actual is None:
            failures.append(f"{task}/{metric}: missing from the results (expected {expected})")
        elif not np.isfinite(actual):
            failures.append(f"{task}/{metric}: got {actual}, not a finite number")
        elif abs(actual - expected) > tolerance:
            failures.append(
                f"{task}/{metric}: got {actual:.4f}, expected {expected} +/- {tolerance} "
                f"(off by {abs(actual - expected):.4f})"
            )

    if failures:
        logger.error("Result verification failed!")
        for failure in failures:
            logger.error("  %s", failure)
        logger.error("Expected Results: %s", list(expected_results))
        logger.error("Actual Results: %s", pprint.pformat(results))
        return False
    logger.info("Results verification passed.")
    return True


def flatten_results_dict(results: Mapping) -> Dict[str, Any]:
    """Flatten nested result dicts, joining keys with ``/``.

    ``{"bbox": {"AP": 50.0, "AP50": 70.0}, "x": 1}`` -> ``{"bbox/AP": 50.0, "bbox/AP50": 70.0,
    "x": 1}``; nesting of any depth is flattened.
    """
    flat: Dict[str, Any] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in flatten_results_dict(value).items():
                flat[f"{key}/{sub_key}"] = sub_value
        else:
            flat[key] = value
    return flat
