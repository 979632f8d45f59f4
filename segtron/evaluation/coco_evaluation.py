"""COCO-style evaluation of boxes, masks, keypoints and proposals (Detectron2's ``COCOEvaluator``).

``COCOEvaluator`` turns each image's predicted ``Instances`` into COCO result dicts while the
model runs, and at the end gathers them from all processes and scores them on the main process
with the COCO API, one task at a time (``bbox``, ``segm``, ``keypoints``). The fast path uses
faster-coco-eval (C++ matching and accumulation); ``use_fast_impl=False`` uses pycocotools.
Both give the same numbers; results are percentages (``{"bbox": {"AP": 38.2, "AP50": ...,
"AP-person": ...}}``), NaN where COCO cannot compute a metric. Next to AP, bbox and segm also
report the operating point at maximal F1 (``F1max``, ``P@F1max``, ``R@F1max`` and the score
``thresh@F1max``, overall and per class; see ``operating_point``).
"""

import contextlib
import copy
import io
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import pycocotools.mask as mask_util
import torch

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..data.datasets.coco import convert_to_coco_json
from ..structures import BoxMode
from ..utils.file_io import PathManager
from ..utils.logger import create_small_table, create_table_with_header
from .evaluator import DatasetEvaluator
from .prediction_store import (
    check_tasks,
    evaluate_proposals,
    gather_predictions,
    predictions_of_batch,
    save_predictions,
    save_results_json,
)
from .fast_eval_api import (
    COCOevalMaxDets,
    get_coco_backend,
    is_fast_coco,
    load_coco_api,
    run_coco_eval,
)
from .operating_point import report_operating_points

__all__ = ["COCOEvaluator", "COCOevalMaxDets", "instances_to_coco_json"]

logger = logging.getLogger(__name__)

# Summary metrics per task, in the order of COCOeval.stats.
_TASK_METRICS = {
    "bbox": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
    "segm": ["AP", "AP50", "AP75", "APs", "APm", "APl"],
    "keypoints": ["AP", "AP50", "AP75", "APm", "APl"],
}


def _masks_to_numpy(masks: Any) -> np.ndarray:
    """(N, H, W) predicted masks (bool/uint8/float Tensor, ndarray or BitMasks) -> bool ndarray.

    Floating masks (probabilities) are binarised at 0.5, integer masks at != 0.
    """
    masks = getattr(masks, "tensor", masks)  # BitMasks
    if isinstance(masks, torch.Tensor):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks)
    if masks.dtype == bool:
        return masks
    if np.issubdtype(masks.dtype, np.floating):
        return masks >= 0.5
    return masks != 0


def instances_to_coco_json(instances, img_id: int) -> List[Dict[str, Any]]:
    """Convert one image's predicted ``Instances`` into COCO result dicts.

    Args:
        instances: with ``pred_boxes`` (XYXY_ABS ``Boxes``), ``scores`` and ``pred_classes``
            (contiguous ids), and optionally ``pred_masks`` ((N, H, W) masks in image size) and
            ``pred_keypoints`` ((N, K, 3) x, y, score in continuous coordinates).
        img_id: the image id the results belong to.

    Returns:
        One dict per instance: ``image_id``, ``category_id`` (still the contiguous id: the
        evaluator maps it back to the dataset id), ``bbox`` (XYWH_ABS), ``score``, and when
        present ``segmentation`` (compressed RLE with ``counts`` as str) and ``keypoints``
        (flat [x, y, score, ...] with the +0.5 pixel-centre shift undone, as COCO stores pixel
        indices). The input is not modified.
    """
    num_instances = len(instances)
    if num_instances == 0:
        return []

    boxes = instances.pred_boxes.tensor.detach().cpu().numpy()
    boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS).tolist()
    scores = instances.scores.tolist()
    classes = instances.pred_classes.tolist()

    rles = None
    if instances.has("pred_masks"):
        masks = _masks_to_numpy(instances.pred_masks)
        # pycocotools encodes an (H, W, N) Fortran-ordered uint8 array, one RLE per mask.
        stacked = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
        rles = mask_util.encode(stacked)
        for rle in rles:
            # bytes are not JSON-serialisable; COCO's loaders accept the str form.
            rle["counts"] = rle["counts"].decode("utf-8")

    keypoints = None
    if instances.has("pred_keypoints"):
        kpts = instances.pred_keypoints
        kpts = kpts.detach().cpu().clone() if isinstance(kpts, torch.Tensor) else torch.tensor(kpts)
        kpts = kpts.to(torch.float64)
        kpts[:, :, :2] -= 0.5
        keypoints = kpts.reshape(num_instances, -1).tolist()

    results = []
    for k in range(num_instances):
        result = {
            "image_id": img_id,
            "category_id": classes[k],
            "bbox": boxes[k],
            "score": scores[k],
        }
        if rles is not None:
            result["segmentation"] = rles[k]
        if keypoints is not None:
            result["keypoints"] = keypoints[k]
        results.append(result)
    return results


def _is_coco_api_usable(coco_api) -> bool:
    """True when the loaded json looks like a COCO instances/keypoints file."""
    dataset = getattr(coco_api, "dataset", None)
    return isinstance(dataset, dict) and "images" in dataset and "categories" in dataset


class COCOEvaluator(DatasetEvaluator):
    """Evaluate instance detection/segmentation/keypoint outputs (and proposals) with the COCO API.

    The ground truth is the dataset's COCO json (``MetadataCatalog.get(name).json_file``); a
    dataset without one (or with a file that is not COCO instances format) is first converted
    with ``convert_to_coco_json`` into ``output_dir/<name>_coco_format.json`` (reused when it
    exists and ``allow_cached_coco``). A json without ``annotations`` (a test-dev split) gets
    its predictions written but not scored.

    Outputs: ``output_dir/instances_predictions.pth`` (the raw per-image predictions),
    ``output_dir/coco_instances_results.json`` (COCO results with dataset category ids, e.g.
    for the COCO server) and ``box_proposals.pkl`` for proposal outputs.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[Union[int, Sequence[int]]] = None,
        use_fast_impl: bool = True,
        kpt_oks_sigmas: Sequence[float] = (),
        allow_cached_coco: bool = True,
    ):
        """
        Args:
            dataset_name: a registered dataset (its metadata gives ``json_file``,
                ``thing_classes`` and ``thing_dataset_id_to_contiguous_id``).
            tasks: subset of ``("bbox", "segm", "keypoints")`` to evaluate; default (None):
                inferred from the predictions (bbox always, segm when masks are predicted,
                keypoints when keypoints are). A config passed here (deprecated Detectron2
                usage) only supplies ``TEST.KEYPOINT_OKS_SIGMAS``.
            distributed: gather predictions from all processes and evaluate on the main one
                only; False: evaluate this process's predictions alone.
            output_dir: where to write predictions, results and converted annotations.
            max_dets_per_image: detection limit per image (an int N means COCO's ``maxDets``
                ``[1, 10, N]``; a 3-sequence is taken as is); default ``[1, 10, 100]``. AP is
                reported at the largest limit (e.g. 300 for LVIS-style AP; pycocotools then
                runs ``COCOevalMaxDets``); keypoints keep COCO's 20.
            use_fast_impl: faster-coco-eval (falls back to pycocotools when not installed).
            kpt_oks_sigmas: per-keypoint OKS sigmas for keypoint AP (default: COCO person).
            allow_cached_coco: reuse a previously converted annotation file.
        """
        self._logger = logger
        self._distributed = distributed
        self._output_dir = output_dir
        self._dataset_name = dataset_name

        if max_dets_per_image is None:
            max_dets = [1, 10, 100]
        elif isinstance(max_dets_per_image, int):
            max_dets = [1, 10, int(max_dets_per_image)]
        else:
            max_dets = [int(m) for m in max_dets_per_image]
            if len(max_dets) != 3:
                raise ValueError(
                    f"COCOEvaluator('{dataset_name}'): max_dets_per_image must be an int or 3 "
                    f"numbers (COCO's maxDets), got {max_dets_per_image!r}."
                )
        self._max_dets_per_image = max_dets

        if hasattr(tasks, "TEST") and not kpt_oks_sigmas:  # a config (deprecated form)
            kpt_oks_sigmas = tuple(tasks.TEST.KEYPOINT_OKS_SIGMAS)
        self._tasks = check_tasks("COCOEvaluator", dataset_name, tasks, tuple(_TASK_METRICS))

        _, _, backend = get_coco_backend(use_fast_impl)
        self._use_fast_impl = backend == "faster-coco-eval"
        self._cpu_device = torch.device("cpu")
        self._metadata = MetadataCatalog.get(dataset_name)
        self._coco_api = self._load_ground_truth(dataset_name, output_dir, allow_cached_coco)
        # Test splits (e.g. test-dev) come without annotations: nothing to score locally.
        self._do_evaluation = "annotations" in self._coco_api.dataset
        self._kpt_oks_sigmas = tuple(kpt_oks_sigmas) if self._do_evaluation else ()
        self._predictions: List[Dict[str, Any]] = []

    # ------------------------------------------------------------------ ground truth

    def _load_ground_truth(self, dataset_name: str, output_dir: Optional[str], allow_cached: bool):
        """Load the dataset's COCO json (converting the dataset first when needed)."""
        json_file = self._metadata.get("json_file")
        if json_file is not None:
            local = PathManager.get_local_path(json_file)
            if not os.path.isfile(local) and dataset_name in DatasetCatalog:
                # Some datasets (e.g. shapes) write their json the first time they are loaded.
                DatasetCatalog.get(dataset_name)
            if not os.path.isfile(local):
                raise FileNotFoundError(
                    f"COCOEvaluator: the json_file of dataset '{dataset_name}' ('{json_file}') "
                    "does not exist. Fix the path registered in its metadata, or prepare the "
                    "dataset (see datasets/README.md)."
                )
            try:
                coco_api = load_coco_api(local, self._use_fast_impl)
            except (AssertionError, TypeError, KeyError, AttributeError, ValueError) as e:
                logger.warning("Could not read '%s' as COCO json (%s).", json_file, e)
                coco_api = None
            if coco_api is not None and _is_coco_api_usable(coco_api):
                return coco_api
            logger.warning(
                "The json_file of dataset '%s' ('%s') is not in COCO instances format; "
                "converting the dataset to COCO format instead.",
                dataset_name,
                json_file,
            )

        if output_dir is None:
            raise ValueError(
                f"COCOEvaluator: dataset '{dataset_name}' has no COCO-format json_file in its "
                "metadata, so it must be converted to COCO format, which needs a directory: "
                "pass output_dir=..."
            )
        cache_path = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
        logger.info("Trying to convert '%s' to COCO format ...", dataset_name)
        convert_to_coco_json(dataset_name, cache_path, allow_cached=allow_cached)
        if json_file is None:
            self._metadata.json_file = cache_path
        return load_coco_api(PathManager.get_local_path(cache_path), self._use_fast_impl)

    # ------------------------------------------------------------------ protocol

    def reset(self) -> None:
        """Forget the predictions of a previous pass."""
        self._predictions = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Convert and keep the predictions of one batch.

        Args:
            inputs: model inputs, each with ``image_id``.
            outputs: model outputs, each with ``instances`` (converted with
                ``instances_to_coco_json``) and/or ``proposals`` (kept as ``Instances`` with
                ``proposal_boxes`` and ``objectness_logits``).
        """
        self._predictions.extend(
            predictions_of_batch(inputs, outputs, instances_to_coco_json, self._cpu_device)
        )

    def evaluate(self, img_ids: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        """Gather the predictions, write them and score them.

        Args:
            img_ids: only score these image ids (default: every image of the json).

        Returns:
            On the main process ``{task: {metric: value}}`` (a deep copy); ``{}`` on the other
            processes, and when no predictions were received at all.
        """
        predictions = gather_predictions(
            self._predictions, self._distributed, "COCOEvaluator", self._dataset_name, logger
        )
        if predictions is None:
            return {}
        save_predictions(predictions, self._output_dir)

        self._results: "OrderedDict[str, Any]" = OrderedDict()
        if "proposals" in predictions[0]:
            self._eval_box_proposals(predictions)
        if "instances" in predictions[0]:
            self._eval_predictions(predictions, img_ids=img_ids)
        return copy.deepcopy(self._results)

    # ------------------------------------------------------------------ instances

    @staticmethod
    def _tasks_from_predictions(predictions: List[Dict[str, Any]]) -> List[str]:
        """bbox always; segm / keypoints when any result carries a mask / keypoints."""
        tasks = {"bbox"}
        for pred in predictions:
            if "segmentation" in pred:
                tasks.add("segm")
            if "keypoints" in pred:
                tasks.add("keypoints")
        return sorted(tasks)

    def _unmap_category_ids(self, coco_results: List[Dict[str, Any]]) -> None:
        """Replace contiguous category ids by the dataset's ids, in place."""
        id_map = self._metadata.get("thing_dataset_id_to_contiguous_id")
        if id_map is None:
            return
        contiguous_ids = sorted(id_map.values())
        num_classes = len(contiguous_ids)
        if contiguous_ids != list(range(num_classes)):
            raise ValueError(
                f"COCOEvaluator: thing_dataset_id_to_contiguous_id of dataset "
                f"'{self._dataset_name}' must map onto 0..{num_classes - 1}, got values "
                f"{contiguous_ids}. Fix the dataset's metadata."
            )
        reverse = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}
        for result in coco_results:
            category_id = result["category_id"]
            if category_id not in reverse:
                raise ValueError(
                    f"COCOEvaluator: a prediction for image {result['image_id']} has category "
                    f"{category_id}, but dataset '{self._dataset_name}' has {num_classes} classes "
                    f"(0..{num_classes - 1}). Check that the model's number of classes "
                    "(MODEL.ROI_HEADS.NUM_CLASSES) matches the dataset."
                )
            result["category_id"] = reverse[category_id]

    def _eval_predictions(self, predictions: List[Dict[str, Any]], img_ids=None) -> None:
        """Write the COCO results json and run the COCO API on each task."""
        logger.info("Preparing results for COCO format ...")
        # Shallow copies: the category ids are rewritten below, the stored predictions keep
        # theirs (so evaluate() can run again).
        coco_results = [dict(r) for p in predictions for r in p["instances"]]
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        self._unmap_category_ids(coco_results)

        save_results_json(coco_results, self._output_dir, "coco_instances_results.json")

        if not self._do_evaluation:
            logger.info(
                "The annotations of dataset '%s' are not available: predictions were saved but "
                "not evaluated.",
                self._dataset_name,
            )
            return

        logger.info(
            "Evaluating predictions with %s COCO API (%s)...",
            "unofficial" if self._use_fast_impl else "official",
            "faster-coco-eval" if self._use_fast_impl else "pycocotools",
        )
        for task in sorted(tasks):
            coco_eval = (
                _evaluate_predictions_on_coco(
                    self._coco_api,
                    coco_results,
                    task,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    use_fast_impl=self._use_fast_impl,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
                if len(coco_results) > 0
                else None
            )
            class_names = self._metadata.get("thing_classes")
            self._results[task] = self._derive_coco_results(
                coco_eval, task, class_names=class_names
            )
            if coco_eval is not None and task in ("bbox", "segm"):
                # After AP (whose keys and numbers stay Detectron2's): P/R/F1 at max F1.
                self._results[task].update(report_operating_points(
                    coco_eval, task, class_names, output_dir=self._output_dir))

    def _derive_coco_results(self, coco_eval, iou_type: str, class_names=None) -> Dict[str, float]:
        """Turn a summarized COCOeval into ``{metric: percent}`` plus per-category ``AP-<name>``.

        Args:
            coco_eval: the summarized COCOeval, or None when there were no predictions (every
                metric is then NaN).
            iou_type: "bbox", "segm" or "keypoints".
            class_names: names in category-id order; with more than one class, the AP of each
                (area "all", last maxDets) is added as ``AP-<name>``.
        """
        metrics = _TASK_METRICS[iou_type]
        if coco_eval is None:
            logger.warning("No predictions from the model for dataset '%s'!", self._dataset_name)
            return {metric: float("nan") for metric in metrics}

        stats = coco_eval.stats
        results = {
            metric: float(stats[i] * 100) if stats[i] >= 0 else float("nan")
            for i, metric in enumerate(metrics)
        }
        logger.info("Evaluation results for %s: \n%s", iou_type, create_small_table(results))
        if not np.isfinite(sum(results.values())):
            logger.info("Some metrics cannot be computed and are shown as NaN.")

        if not class_names or len(class_names) <= 1:
            return results
        precisions = coco_eval.eval["precision"]  # [IoU thr, recall thr, class, area, maxDets]
        if precisions.shape[2] != len(class_names):
            logger.warning(
                "Dataset '%s' has %d thing_classes but its COCO json has %d categories; "
                "per-category AP is not reported. Make thing_classes match the json's categories.",
                self._dataset_name,
                len(class_names),
                precisions.shape[2],
            )
            return results
        per_category = {}
        for idx, name in enumerate(class_names):
            precision = precisions[:, :, idx, 0, -1]
            precision = precision[precision > -1]
            ap = float(np.mean(precision)) * 100 if precision.size else float("nan")
            per_category[f"{name}"] = ap
        table = create_table_with_header(per_category, headers=("category", "AP"), min_cols=6)
        logger.info("Per-category %s AP: \n%s", iou_type, table)
        results.update({"AP-" + name: ap for name, ap in per_category.items()})
        return results

    # ------------------------------------------------------------------ proposals

    def _eval_box_proposals(self, predictions: List[Dict[str, Any]]) -> None:
        """Save the proposals and report their average recall (AR@100/1000, by area)."""
        res = evaluate_proposals(predictions, self._coco_api, self._output_dir,
                                 self._do_evaluation)
        if res is not None:
            self._results["box_proposals"] = res


def _evaluate_predictions_on_coco(
    coco_gt,
    coco_results: List[Dict[str, Any]],
    iou_type: str,
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
    use_fast_impl: bool = True,
    img_ids: Optional[Sequence[int]] = None,
    max_dets_per_image: Optional[Sequence[int]] = None,
):
    """Score ``coco_results`` for one task; returns the summarized COCOeval.

    The COCO API used is the one ``coco_gt`` belongs to (``load_coco_api``): faster-coco-eval
    for its ``COCO``, pycocotools otherwise; a ``use_fast_impl`` that disagrees is overridden
    (with a debug line), since each COCOeval needs its own library's ``COCO`` objects. The
    results are copied (the COCO API adds fields to them). For ``segm`` the boxes are dropped
    so that the COCO API takes each detection's area from its mask (otherwise the
    small/medium/large split of mask AP would use box areas).
    """
    if not coco_results:
        raise ValueError("_evaluate_predictions_on_coco needs at least one result.")
    fast = is_fast_coco(coco_gt)
    if fast != bool(use_fast_impl):
        logger.debug(
            "use_fast_impl=%s but the ground truth is a %s COCO object: using that library.",
            use_fast_impl,
            "faster-coco-eval" if fast else "pycocotools",
        )
    if iou_type == "segm":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in coco_results]
    else:
        results = [dict(r) for r in coco_results]
    if iou_type == "keypoints":
        _check_keypoint_counts(coco_gt, results, kpt_oks_sigmas)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
    return run_coco_eval(
        coco_gt,
        coco_dt,
        iou_type,
        fast=fast,
        max_dets=max_dets_per_image or (1, 10, 100),
        img_ids=list(img_ids) if img_ids is not None else None,
        kpt_oks_sigmas=kpt_oks_sigmas,
    )


def _check_keypoint_counts(coco_gt, results, kpt_oks_sigmas) -> None:
    """The COCO API assumes every gt and detection has as many keypoints as there are sigmas."""
    num_sigmas = len(kpt_oks_sigmas) if kpt_oks_sigmas else 17  # COCO person keypoints
    num_dt = len(results[0]["keypoints"]) // 3
    gt_with_kpts = [a for a in coco_gt.anns.values() if "keypoints" in a]
    num_gt = len(gt_with_kpts[0]["keypoints"]) // 3 if gt_with_kpts else num_dt
    if not num_sigmas == num_dt == num_gt:
        raise ValueError(
            f"Keypoint evaluation: predictions have {num_dt} keypoints, the ground truth "
            f"{num_gt} and there are {num_sigmas} OKS sigmas. They must agree: set "
            "TEST.KEYPOINT_OKS_SIGMAS (kpt_oks_sigmas) to one sigma per keypoint."
        )
