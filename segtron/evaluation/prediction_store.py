"""The parts of an instance evaluator that do not depend on the metric: checking ``tasks``,
keeping each batch's predictions, gathering them on the main process, saving them, and scoring
proposals by average recall. ``COCOEvaluator`` and ``LVISEvaluator`` share them."""

import itertools
import json
import logging
import os
import pickle
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..structures import BoxMode
from ..utils import comm
from ..utils.file_io import PathManager
from ..utils.logger import create_small_table
from .coco_proposals import evaluate_box_proposals_ar

__all__ = [
    "check_tasks",
    "evaluate_proposals",
    "gather_predictions",
    "predictions_of_batch",
    "save_predictions",
    "save_results_json",
]

logger = logging.getLogger(__name__)


def check_tasks(owner: str, dataset_name: str, tasks: Any,
                valid: Sequence[str]) -> Optional[Tuple[str, ...]]:
    """``tasks`` as a tuple, or None to infer them from the predictions.

    A config passed instead (Detectron2's deprecated form) is ignored with a warning.
    Raises ValueError naming ``owner`` (e.g. "COCOEvaluator"), the dataset and the valid tasks
    for unknown ones.
    """
    if tasks is not None and hasattr(tasks, "TEST"):
        logger.warning(
            "%s was given a config instead of tasks (deprecated): tasks are inferred from the "
            "predictions. Pass explicit arguments instead.", owner,
        )
        return None
    if tasks is None:
        return None
    tasks = tuple(tasks)
    unknown = sorted(set(tasks) - set(valid))
    if unknown:
        raise ValueError(
            f"{owner}('{dataset_name}'): unknown tasks {unknown}; choose from {sorted(valid)}."
        )
    return tasks


def predictions_of_batch(inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]],
                         to_json, device: torch.device) -> List[Dict[str, Any]]:
    """One dict per image that has predictions: ``image_id``, ``instances`` (``to_json(
    instances on device, image_id)``) and / or ``proposals`` (``Instances`` on ``device``)."""
    kept = []
    for inp, output in zip(inputs, outputs):
        prediction: Dict[str, Any] = {"image_id": inp["image_id"]}
        if "instances" in output:
            prediction["instances"] = to_json(output["instances"].to(device), inp["image_id"])
        if "proposals" in output:
            prediction["proposals"] = output["proposals"].to(device)
        if len(prediction) > 1:
            kept.append(prediction)
    return kept


def gather_predictions(predictions: List[Dict[str, Any]], distributed: bool, owner: str,
                       dataset_name: str, log: logging.Logger = logger
                       ) -> Optional[List[Dict[str, Any]]]:
    """All processes' predictions on the main process (``predictions`` itself when not
    ``distributed``); None on the other processes and, with a warning on ``log`` (the
    evaluator's logger), when there are none."""
    if distributed:
        comm.synchronize()
        predictions = list(itertools.chain(*comm.gather(predictions, dst=0)))
        if not comm.is_main_process():
            return None
    if len(predictions) == 0:
        log.warning(
            "[%s] Did not receive valid predictions for dataset '%s' (did the model return "
            "'instances' or 'proposals'?).", owner, dataset_name,
        )
        return None
    return predictions


def save_predictions(predictions: List[Dict[str, Any]], output_dir: Optional[str]) -> None:
    """Write ``predictions`` to ``<output_dir>/instances_predictions.pth`` (if ``output_dir``)."""
    if not output_dir:
        return
    PathManager.mkdirs(output_dir)
    with PathManager.open(os.path.join(output_dir, "instances_predictions.pth"), "wb") as f:
        torch.save(predictions, f)


def save_results_json(results: List[Dict[str, Any]], output_dir: Optional[str],
                      filename: str) -> None:
    """Write ``results`` (COCO-style result dicts) as ``<output_dir>/<filename>`` (if
    ``output_dir``)."""
    if not output_dir:
        return
    file_path = os.path.join(output_dir, filename)
    logger.info("Saving results to %s", file_path)
    with PathManager.open(file_path, "w") as f:
        f.write(json.dumps(results))


def evaluate_proposals(predictions: List[Dict[str, Any]], gt_api, output_dir: Optional[str],
                       do_evaluation: bool) -> Optional[Dict[str, float]]:
    """Save the proposals as ``<output_dir>/box_proposals.pkl`` (the format
    ``DATASETS.PROPOSAL_FILES_*`` reads) and, with ``do_evaluation``, return their average recall
    in percent: ``AR@100``, ``ARs@100``, ..., ``ARl@1000`` against ``gt_api`` (None without)."""
    if output_dir:
        proposal_data = {
            "boxes": [p["proposals"].proposal_boxes.tensor.numpy() for p in predictions],
            "objectness_logits": [p["proposals"].objectness_logits.numpy() for p in predictions],
            "ids": [p["image_id"] for p in predictions],
            "bbox_mode": BoxMode.XYXY_ABS.value,
        }
        with PathManager.open(os.path.join(output_dir, "box_proposals.pkl"), "wb") as f:
            pickle.dump(proposal_data, f)
    if not do_evaluation:
        logger.info("Annotations are not available for evaluation.")
        return None
    logger.info("Evaluating bbox proposals ...")
    res = {}
    for limit in (100, 1000):
        for area, suffix in (("all", ""), ("small", "s"), ("medium", "m"), ("large", "l")):
            stats = evaluate_box_proposals_ar(predictions, gt_api, area=area, limit=limit)
            res[f"AR{suffix}@{limit:d}"] = float(stats["ar"].item() * 100)
    logger.info("Proposal metrics: \n%s", create_small_table(res))
    return res
