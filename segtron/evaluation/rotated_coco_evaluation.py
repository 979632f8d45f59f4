"""COCO-style AP of rotated boxes (Detectron2's ``detectron2.evaluation.rotated_coco_evaluation``).

``RotatedCOCOeval`` is pycocotools' ``COCOeval`` with the box IoU replaced by the IoU of
rotated boxes ``(cx, cy, w, h, angle)`` (``structures.rotated_boxes.pairwise_iou``); boxes of 4
numbers (XYWH) are read as rotated boxes of angle 0 when the other side is rotated, and scored
with COCO's own IoU when both sides are axis-aligned. Everything else (matching, area ranges,
accumulation, summary) is COCO's, so an angle-0 box gives the same AP as the XYWH box.

``RotatedCOCOEvaluator`` is ``COCOEvaluator`` for models that predict ``RotatedBoxes``: results
keep the 5 numbers in ``bbox``, only the ``bbox`` task exists, and scoring runs on pycocotools
(the fast C++ path knows only axis-aligned IoU). The results have COCOEvaluator's keys: ``AP``,
``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AP-<class>``, then the operating point at
maximal F1. IoU alone decides a match: the angle difference of two boxes is not scored.
"""

import contextlib
import copy
import io
import logging
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from pycocotools import mask as mask_util
from pycocotools.cocoeval import COCOeval

from ..structures import BoxMode
from ..structures.rotated_boxes import RotatedBoxes, pairwise_iou
from .coco_evaluation import COCOEvaluator
from .fast_eval_api import COCOevalMaxDets
from .operating_point import report_operating_points
from .prediction_store import save_results_json

__all__ = ["RotatedCOCOEvaluator", "RotatedCOCOeval"]

logger = logging.getLogger(__name__)


class RotatedCOCOeval(COCOeval):
    """``COCOeval`` (iouType "bbox") whose IoU handles rotated boxes.

    Use as pycocotools' class: ``RotatedCOCOeval(coco_gt, coco_dt, "bbox")`` then
    ``evaluate()``, ``accumulate()``, ``summarize()``. ``bbox`` entries may hold 5 numbers
    (XYWHA_ABS, angle in degrees counter-clockwise) or 4 (XYWH_ABS). For a crowd ground-truth
    box the IoU is, as in COCO, the intersection over the detection's area.
    """

    @staticmethod
    def is_rotated(box_list) -> bool:
        """True when ``box_list`` (ndarray or list of boxes) holds 5-number boxes.

        An empty list is not rotated (its box size cannot be told).
        """
        if isinstance(box_list, np.ndarray):
            return box_list.ndim == 2 and box_list.shape[1] == 5
        if isinstance(box_list, list) and box_list:
            return all(isinstance(b, (list, np.ndarray)) and len(b) == 5 for b in box_list)
        return False

    @staticmethod
    def boxlist_to_tensor(boxlist, output_box_dim: int) -> torch.Tensor:
        """Boxes (ndarray or list, 4 or 5 numbers each) -> float32 (N, output_box_dim) tensor.

        4-number XYWH boxes become angle-0 XYWHA boxes when ``output_box_dim`` is 5; an empty
        list gives a (0, output_box_dim) tensor.
        """
        if isinstance(boxlist, list) and not boxlist:
            return torch.zeros((0, output_box_dim), dtype=torch.float32)
        if not isinstance(boxlist, (list, np.ndarray)):
            raise ValueError(
                f"RotatedCOCOeval.boxlist_to_tensor: boxes must be a list or ndarray, got "
                f"{type(boxlist).__name__}."
            )
        try:
            array = np.asarray(boxlist, dtype=np.float64)
        except ValueError:
            raise ValueError(
                "RotatedCOCOeval.boxlist_to_tensor: boxes of different lengths in one list; "
                "give every box of an image and category the same format (4 or 5 numbers)."
            ) from None
        boxes = torch.as_tensor(array, dtype=torch.float32)
        input_box_dim = boxes.shape[1] if boxes.dim() == 2 else -1
        if input_box_dim == output_box_dim:
            return boxes
        if input_box_dim == 4 and output_box_dim == 5:
            return BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS)
        raise ValueError(
            f"RotatedCOCOeval.boxlist_to_tensor: cannot turn boxes of shape "
            f"{tuple(boxes.shape)} into {output_box_dim}-number boxes; give (N, 4) XYWH or "
            "(N, 5) XYWHA boxes."
        )

    def compute_iou_dt_gt(self, dt, gt, is_crowd: Sequence[int]) -> np.ndarray:
        """(len(dt), len(gt)) IoU of detection and ground-truth boxes (4 or 5 numbers each).

        Columns of crowd ground truth hold intersection / detection area instead, as in COCO.
        """
        if not (self.is_rotated(dt) or self.is_rotated(gt)):
            return mask_util.iou(dt, gt, list(is_crowd))  # COCO's own (axis-aligned) IoU
        dt_boxes = RotatedBoxes(self.boxlist_to_tensor(dt, output_box_dim=5))
        gt_boxes = RotatedBoxes(self.boxlist_to_tensor(gt, output_box_dim=5))
        ious = pairwise_iou(dt_boxes, gt_boxes).double().numpy()
        crowd = np.asarray(is_crowd, dtype=bool).reshape(-1)
        if crowd.any() and ious.size:
            # IoU = I / (a_d + a_g - I) gives I = IoU (a_d + a_g) / (1 + IoU); crowd: I / a_d.
            area_dt = dt_boxes.area().double().numpy()[:, None]
            area_gt = gt_boxes.area().double().numpy()[None, :]
            inter = ious * (area_dt + area_gt) / (1.0 + ious)
            over_dt = np.divide(inter, area_dt, out=np.zeros_like(inter), where=area_dt > 0)
            ious[:, crowd] = over_dt[:, crowd]
        return ious

    def computeIoU(self, imgId, catId):  # noqa: N802 (pycocotools' name)
        """IoUs of one image and category: detections by score (at most maxDets[-1]) x gt.

        Returns ``[]`` when there is neither ground truth nor detection.
        """
        p = self.params
        if p.iouType != "bbox":
            raise ValueError(
                f"RotatedCOCOeval supports iouType 'bbox' only, got '{p.iouType}'; use "
                "COCOeval for segm/keypoints."
            )
        if p.useCats:
            gt, dt = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gt and not dt:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        crowd = [int(g.get("iscrowd", 0)) for g in gt]
        return self.compute_iou_dt_gt([d["bbox"] for d in dt], [g["bbox"] for g in gt], crowd)


class _RotatedCOCOevalMaxDets(RotatedCOCOeval, COCOevalMaxDets):
    """Rotated IoU with ``COCOevalMaxDets``' summary (a detection limit other than 100)."""


class RotatedCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` for rotated-box predictions (``pred_boxes`` as ``RotatedBoxes``).

    Same arguments as :class:`COCOEvaluator`; ``tasks`` may only be ``("bbox",)`` and
    ``use_fast_impl`` is ignored (pycocotools always). The ground-truth json holds XYWHA (or
    XYWH) ``bbox`` entries: a dataset without json is converted with ``convert_to_coco_json``,
    which keeps 5-number boxes. ``evaluate()`` returns ``{"bbox": {...}}`` (and
    ``box_proposals`` for proposal outputs, as COCOEvaluator).
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
        """Args: as :class:`COCOEvaluator`, except that the COCO API is pycocotools whatever
        ``use_fast_impl`` says and ``kpt_oks_sigmas`` is unused (no keypoints)."""
        if use_fast_impl:
            logger.debug("RotatedCOCOEvaluator: use_fast_impl ignored; rotated IoU is Python.")
        super().__init__(
            dataset_name, tasks, distributed, output_dir, max_dets_per_image=max_dets_per_image,
            use_fast_impl=False, kpt_oks_sigmas=kpt_oks_sigmas,
            allow_cached_coco=allow_cached_coco,
        )
        if self._tasks is not None and set(self._tasks) != {"bbox"}:
            raise ValueError(
                f"RotatedCOCOEvaluator('{dataset_name}'): only the 'bbox' task is supported, "
                f"got tasks={list(self._tasks)}; pass tasks=('bbox',) or None."
            )

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Keep one batch: ``instances`` via ``instances_to_json``, ``proposals`` as is."""
        for inp, output in zip(inputs, outputs):
            prediction: Dict[str, Any] = {"image_id": inp["image_id"]}
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                prediction["instances"] = self.instances_to_json(instances, inp["image_id"])
            if "proposals" in output:
                prediction["proposals"] = output["proposals"].to(self._cpu_device)
            if len(prediction) > 1:
                self._predictions.append(prediction)

    def instances_to_json(self, instances, img_id: int) -> List[Dict[str, Any]]:
        """One image's ``Instances`` -> COCO result dicts.

        Takes ``pred_boxes`` (``RotatedBoxes``: ``bbox`` keeps its 5 numbers; ``Boxes``: XYXY
        converted to XYWH), ``scores`` and ``pred_classes`` (contiguous ids, mapped back to the
        dataset's at evaluation); returns dicts with ``image_id``, ``category_id``, ``bbox``,
        ``score``.
        """
        if len(instances) == 0:
            return []
        boxes = instances.pred_boxes.tensor.detach().cpu().numpy()
        if boxes.shape[1] == 4:
            boxes = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
        return [
            {"image_id": img_id, "category_id": c, "bbox": b, "score": s}
            for b, s, c in zip(
                boxes.tolist(), instances.scores.tolist(), instances.pred_classes.tolist()
            )
        ]

    def _eval_predictions(self, predictions: List[Dict[str, Any]], img_ids=None) -> None:
        """Write ``coco_instances_results.json`` and score the boxes (task ``bbox``)."""
        coco_results = [dict(r) for p in predictions for r in p["instances"]]
        self._unmap_category_ids(coco_results)
        save_results_json(coco_results, self._output_dir, "coco_instances_results.json")
        if not self._do_evaluation:
            logger.info("Annotations are not available for evaluation.")
            return

        logger.info("Evaluating rotated boxes with pycocotools and rotated IoU ...")
        coco_eval = (
            self._evaluate_predictions_on_coco(self._coco_api, coco_results, img_ids=img_ids)
            if coco_results
            else None
        )
        class_names = self._metadata.get("thing_classes")
        self._results["bbox"] = self._derive_coco_results(coco_eval, "bbox", class_names)
        if coco_eval is not None:
            self._results["bbox"].update(report_operating_points(
                coco_eval, "bbox", class_names, output_dir=self._output_dir))

    def _evaluate_predictions_on_coco(self, coco_gt, coco_results, img_ids=None):
        """Run ``RotatedCOCOeval`` on ``coco_results``; returns it summarized.

        With a detection limit other than 100 the summary is ``COCOevalMaxDets``' (AP at the
        largest limit). pycocotools' printout goes to the log.
        """
        if not coco_results:
            raise ValueError("RotatedCOCOEvaluator: no results to evaluate.")
        max_dets = list(self._max_dets_per_image)
        eval_cls = RotatedCOCOeval if max(max_dets) == 100 else _RotatedCOCOevalMaxDets
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            coco_dt = coco_gt.loadRes(copy.deepcopy(coco_results))
            coco_eval = eval_cls(coco_gt, coco_dt, iouType="bbox")
            coco_eval.params.maxDets = max_dets
            if img_ids is not None:
                coco_eval.params.imgIds = list(img_ids)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        for line in captured.getvalue().splitlines():
            if line.strip():
                logger.info(line.rstrip())
        return coco_eval
