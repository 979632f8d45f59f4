"""LVIS box and mask AP (Detectron2's ``LVISEvaluator``), with segtron's own LVIS evaluation.

Detectron2 scores LVIS with the ``lvis`` package (``LVISEval``). segtron cannot depend on it:
``lvis`` requires ``opencv-python``, which installs the same ``cv2`` package as segtron's
``opencv-python-headless`` and so conflicts with it. The evaluation is therefore implemented
here from its published definition (``lvis_matching``: the federated rules; ``lvis_metrics``:
AP / AR as COCO accumulates them) and reports the same metrics: AP, AP50, AP75, APs, APm, APl,
APr, APc, APf, then (as the lvis-api summary shows them) AR@300, ARs@300, ARm@300, ARl@300.
Results are percentages; a metric without any category to average over is NaN. Like
``COCOEvaluator``, each task's results end with the operating point at max F1 (``P@F1max``,
``R@F1max``, ``F1max``, ``thresh@F1max`` and per category ``<key>-<class>``; see
``operating_point``), here with LVIS's federated matching at IoU 0.5.
"""

import copy
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..data.catalog import MetadataCatalog
from ..utils.file_io import PathManager
from ..utils.logger import create_small_table
from .coco_evaluation import instances_to_coco_json
from .evaluator import DatasetEvaluator
from .fast_eval_api import load_coco_api
from .lvis_matching import flat_detections, match_federated
from .lvis_metrics import format_summary_lines, lvis_metric_names, summarize_matches
from .prediction_store import (
    check_tasks,
    evaluate_proposals,
    gather_predictions,
    predictions_of_batch,
    save_predictions,
    save_results_json,
)
from .operating_point import OPERATING_POINT_IOU, report_operating_points_from_detections

__all__ = ["LVISEvaluator"]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm")
_DEFAULT_MAX_DETS = 300  # LVIS's official limit per image


class LVISEvaluator(DatasetEvaluator):
    """Evaluate proposals and instance detection / segmentation outputs with LVIS's metrics.

    The ground truth is the dataset's LVIS json (metadata ``json_file``, as set by
    ``register_lvis_instances``). Predictions are kept per image while the model runs, gathered
    from all processes and scored on the main one. Outputs in ``output_dir``:
    ``instances_predictions.pth`` (raw per-image predictions), ``lvis_instances_results.json``
    (results with LVIS category ids, e.g. for the evaluation server) and, for proposals,
    ``box_proposals.pkl``. A json without annotations (test split) is written, not scored.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset whose metadata has ``json_file`` (LVIS format).
            tasks: subset of ("bbox", "segm"); default (None): inferred from the predictions
                (segm when they have masks). A config given here (deprecated Detectron2 usage)
                is ignored with a warning and the tasks are inferred.
            distributed: gather predictions from all processes and evaluate on the main one;
                False: evaluate this process's predictions alone.
            output_dir: where to write the predictions and results (optional).
            max_dets_per_image: detections kept per image (highest scores over all
                categories) when computing AP; default 300, LVIS's official limit.

        Raises:
            ValueError: for unknown tasks, a bad ``max_dets_per_image`` or a dataset without
                ``json_file``.
            FileNotFoundError: when ``json_file`` does not exist.
        """
        self._logger = logger
        self._dataset_name = dataset_name
        self._tasks = check_tasks("LVISEvaluator", dataset_name, tasks, _TASKS)
        if max_dets_per_image is None:
            max_dets_per_image = _DEFAULT_MAX_DETS
        if isinstance(max_dets_per_image, bool) or not isinstance(max_dets_per_image, int) \
                or max_dets_per_image <= 0:
            raise ValueError(
                f"LVISEvaluator('{dataset_name}'): max_dets_per_image must be a positive int "
                f"(LVIS uses 300), got {max_dets_per_image!r}."
            )
        self._max_dets_per_image = max_dets_per_image
        self._distributed = distributed
        self._output_dir = output_dir
        self._cpu_device = torch.device("cpu")
        self._metadata = MetadataCatalog.get(dataset_name)
        self._lvis_api = self._load_ground_truth()
        # Test splits come without annotations: they are scored by the LVIS server only.
        self._do_evaluation = len(self._lvis_api.anns) > 0
        self._predictions: List[Dict[str, Any]] = []

    def _load_ground_truth(self):
        """The dataset's LVIS json as a pycocotools ``COCO`` (images, annotations, categories)."""
        json_file = self._metadata.get("json_file")
        if json_file is None:
            raise ValueError(
                f"LVISEvaluator: dataset '{self._dataset_name}' has no json_file in its "
                "metadata. Register it with register_lvis_instances(name, {}, json_file, "
                "image_root), or set MetadataCatalog.get(name).json_file."
            )
        local = PathManager.get_local_path(json_file)
        if not os.path.isfile(local):
            raise FileNotFoundError(
                f"LVISEvaluator: the json_file of dataset '{self._dataset_name}' ('{json_file}') "
                "does not exist. Fix the registered path or prepare the dataset (see "
                "datasets/README.md)."
            )
        return load_coco_api(local, fast=False)

    def reset(self) -> None:
        """Forget the predictions of a previous pass."""
        self._predictions = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Convert and keep the predictions of one batch.

        Args:
            inputs: model inputs, each with ``image_id``.
            outputs: model outputs with ``instances`` (converted by ``instances_to_coco_json``)
                and/or ``proposals`` (kept as ``Instances``).
        """
        self._predictions.extend(
            predictions_of_batch(inputs, outputs, instances_to_coco_json, self._cpu_device)
        )

    def evaluate(self) -> Dict[str, Any]:
        """Gather the predictions, write them and score them.

        Returns:
            On the main process ``OrderedDict(bbox={...}, segm={...})`` (and ``box_proposals``
            for proposals), a deep copy; ``{}`` on other processes or without predictions.
        """
        predictions = gather_predictions(
            self._predictions, self._distributed, "LVISEvaluator", self._dataset_name, logger
        )
        if predictions is None:
            return {}
        save_predictions(predictions, self._output_dir)

        self._results: "OrderedDict[str, Any]" = OrderedDict()
        if "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if "instances" in predictions[0]:
            self._eval_predictions(predictions)
        return copy.deepcopy(self._results)

    @staticmethod
    def _tasks_from_predictions(lvis_results: List[Dict[str, Any]]) -> List[str]:
        """bbox, plus segm when any result carries a mask."""
        if any("segmentation" in r for r in lvis_results):
            return ["bbox", "segm"]
        return ["bbox"]

    def _unmap_category_ids(self, lvis_results: List[Dict[str, Any]]) -> None:
        """Contiguous ids -> the json's ids (``thing_dataset_id_to_contiguous_id``, else +1)."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is not None:
            reverse = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
        else:  # LVIS ids are 1-based and contiguous
            reverse = {cat_id - 1: cat_id for cat_id in self._lvis_api.cats}
        for result in lvis_results:
            if result["category_id"] not in reverse:
                raise ValueError(
                    f"LVISEvaluator: a prediction for image {result['image_id']} has class "
                    f"{result['category_id']}, but dataset '{self._dataset_name}' has "
                    f"{len(reverse)} classes. Make the model's number of classes "
                    "(MODEL.ROI_HEADS.NUM_CLASSES) match the dataset."
                )
            result["category_id"] = reverse[result["category_id"]]

    def _eval_predictions(self, predictions: List[Dict[str, Any]]) -> None:
        """Write the LVIS results json and score each task."""
        logger.info("Preparing results in the LVIS format ...")
        # Copies: the stored predictions keep their contiguous ids (evaluate() may run again).
        lvis_results = [dict(r) for p in predictions for r in p["instances"]]
        tasks = self._tasks or self._tasks_from_predictions(lvis_results)
        self._unmap_category_ids(lvis_results)

        save_results_json(lvis_results, self._output_dir, "lvis_instances_results.json")
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return
        logger.info("Evaluating predictions with segtron's LVIS evaluation ...")
        for task in sorted(tasks):
            self._results[task] = _evaluate_predictions_on_lvis(
                self._lvis_api, lvis_results, task,
                max_dets_per_image=self._max_dets_per_image,
                class_names=self._class_names(), output_dir=self._output_dir,
            )

    def _class_names(self) -> List[str]:
        """Category names in json-id order: metadata ``thing_classes`` once the dataset was
        loaded, else the json's (first synonym, as ``register_lvis_instances`` names them)."""
        names = self._metadata.get("thing_classes")
        if names and len(names) == len(self._lvis_api.cats):
            return list(names)
        cats = [self._lvis_api.cats[cat_id] for cat_id in sorted(self._lvis_api.cats)]
        return [(c.get("synonyms") or [c["name"]])[0] for c in cats]

    def _eval_box_proposals(self, predictions: List[Dict[str, Any]]) -> None:
        """Save the proposals and report their average recall (AR@100/1000, by area)."""
        res = evaluate_proposals(predictions, self._lvis_api, self._output_dir,
                                 self._do_evaluation)
        if res is not None:
            self._results["box_proposals"] = res


def _evaluate_predictions_on_lvis(lvis_gt, lvis_results: List[Dict[str, Any]], iou_type: str,
                                  max_dets_per_image: Optional[int] = None,
                                  class_names: Optional[Sequence[str]] = None,
                                  output_dir: Optional[str] = None,
                                  ) -> Dict[str, float]:
    """Score ``lvis_results`` (json category ids) for one task; ``{metric: percent}``.

    After the LVIS metrics come the operating point keys at max F1 (``operating_point``) with
    LVIS's federated matching at IoU 0.5, area "all": pooled over categories and, when
    ``class_names`` has one name per json category (in id order, more than one), per category.
    LVIS reports no per-category AP; with LVIS's 1203 categories the per-category points go to
    ``<output_dir>/operating_points_<task>.csv`` instead of the results. For "segm" the
    detections' mask areas decide the small/medium/large split. Without results every metric is NaN (with a warning) and no
    operating point is reported.
    """
    max_dets = _DEFAULT_MAX_DETS if max_dets_per_image is None else max_dets_per_image
    metrics = lvis_metric_names(max_dets)
    if len(lvis_results) == 0:
        logger.warning("No predictions from the model!")
        return {metric: float("nan") for metric in metrics}
    matches = match_federated(lvis_gt, lvis_results, iou_type, max_dets)
    summary = summarize_matches(lvis_gt, matches, max_dets)
    for line in format_summary_lines(summary, iou_type, max_dets):
        logger.info(line)
    results = {k: float(v * 100) if v >= 0 else float("nan") for k, v in summary.items()}
    logger.info("Evaluation results for %s: \n%s", iou_type, create_small_table(results))
    scores, is_tp, classes, num_gt = flat_detections(matches, OPERATING_POINT_IOU, "all")
    results.update(report_operating_points_from_detections(
        scores, is_tp, classes, num_gt, iou_type=iou_type, class_names=class_names,
        matching="LVIS", output_dir=output_dir,
    ))
    return results
