"""COCO panoptic segmentation evaluation (Detectron2's ``COCOPanopticEvaluator``).

``process`` turns each image's ``output["panoptic_seg"]`` into a COCO panoptic prediction (an
RGB-encoded png kept in memory and a json entry with dataset category ids); ``evaluate``
gathers them from all processes, writes them out (kept in ``output_dir`` when one is given)
and scores them with our own PQ implementation (``panoptic_quality.pq_compute``, identical
numbers to panopticapi) against the dataset's ``panoptic_json`` / ``panoptic_root``. Results
are percentages:
``{"panoptic_seg": {"PQ", "SQ", "RQ", "PQ_th", ..., "PQ-<category>", "SQ-<category>",
"RQ-<category>"}}``.
"""

import contextlib
import copy
import io
import itertools
import json
import logging
import os
import tempfile
from collections import OrderedDict, Counter
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate

from ..data.catalog import MetadataCatalog
from ..utils import comm
from ..utils.file_io import PathManager
from .evaluator import DatasetEvaluator
from .panoptic_quality import VOID_ID, id2rgb, pq_compute

__all__ = ["COCOPanopticEvaluator"]

logger = logging.getLogger(__name__)

# Rows of the summary table: (row name, key in pq_compute's results, suffix of result keys).
_SUMMARY_ROWS = (("All", "All", ""), ("Things", "Things", "_th"), ("Stuff", "Stuff", "_st"))


def _to_python(value: Any) -> Any:
    """Tensors / numpy scalars -> plain Python numbers (json-serialisable)."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class COCOPanopticEvaluator(DatasetEvaluator):
    """Evaluate panoptic segmentation with the COCO Panoptic Quality metric (PQ, SQ, RQ).

    The dataset's metadata must give ``panoptic_json`` (ground-truth json with
    ``categories``) and ``panoptic_root`` (its pngs), and the maps
    ``thing_dataset_id_to_contiguous_id`` / ``stuff_dataset_id_to_contiguous_id`` used to turn
    the model's contiguous category ids back into dataset ids. Every ground-truth image must
    receive a prediction.

    Outputs, when ``output_dir`` is given: ``output_dir/predictions.json`` (COCO panoptic
    format: the ground-truth json with the predicted ``annotations``) and the pngs it refers to
    in ``output_dir/predictions/`` (panopticapi's convention: the pngs of ``X.json`` live in
    folder ``X``), so the pair can be scored or drawn again later (``pq_compute``,
    ``tools/visualize_json_results.py``). Without ``output_dir`` the pngs go to a temporary
    folder deleted after scoring, as in Detectron2.
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        """
        Args:
            dataset_name: a registered dataset with the panoptic metadata described above
                (``label_divisor``, default 1000, is used for outputs without segments_info).
            output_dir: where to write ``predictions.json`` and the ``predictions/`` png
                folder; None: keep neither.
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        missing = [k for k in ("panoptic_json", "panoptic_root") if self._metadata.get(k) is None]
        if missing:
            raise ValueError(
                f"COCOPanopticEvaluator: dataset '{dataset_name}' has no {' / '.join(missing)} "
                "in its metadata. Register it with register_coco_panoptic (or set "
                "panoptic_json and panoptic_root on its MetadataCatalog entry)."
            )
        thing_map = self._metadata.get("thing_dataset_id_to_contiguous_id") or {}
        stuff_map = self._metadata.get("stuff_dataset_id_to_contiguous_id") or {}
        self._thing_contiguous_id_to_dataset_id = {v: k for k, v in thing_map.items()}
        self._stuff_contiguous_id_to_dataset_id = {v: k for k, v in stuff_map.items()}
        self._label_divisor = int(self._metadata.get("label_divisor", 1000))
        self._output_dir = output_dir
        if output_dir:
            PathManager.mkdirs(output_dir)
        self._predictions: List[Dict[str, Any]] = []

    def reset(self) -> None:
        """Forget the predictions of a previous pass."""
        self._predictions = []

    # ------------------------------------------------------------------ process

    def _convert_category_id(self, segment: Mapping[str, Any], image_id: Any) -> Dict[str, Any]:
        """A json-safe copy of ``segment`` with the dataset category id and no ``isthing``.

        A segment without ``isthing`` is taken to carry the dataset category id already.
        """
        seg = {k: _to_python(v) for k, v in segment.items() if k != "isthing"}
        isthing = _to_python(segment.get("isthing"))
        if isthing is None:
            return seg
        id_map = (
            self._thing_contiguous_id_to_dataset_id
            if isthing
            else self._stuff_contiguous_id_to_dataset_id
        )
        contiguous = int(seg["category_id"])
        if contiguous not in id_map:
            kind = "thing" if isthing else "stuff"
            raise ValueError(
                f"COCOPanopticEvaluator: image {image_id}: segment {seg.get('id')} has {kind} "
                f"category {contiguous}, which is not a value of "
                f"{kind}_dataset_id_to_contiguous_id of dataset '{self._dataset_name}' "
                f"({len(id_map)} {kind} classes). Check the model's number of classes against "
                "the dataset."
            )
        seg["category_id"] = id_map[contiguous]
        return seg

    def _segments_from_labels(self, ids: np.ndarray) -> List[Dict[str, Any]]:
        """Segments of a ``category * label_divisor + instance`` image (Panoptic-DeepLab style).

        Each label L (-1 = void, skipped) becomes segment id L + 1; the caller shifts the image.
        """
        thing_ids = set(self._thing_contiguous_id_to_dataset_id)
        segments = []
        for label in np.unique(ids).tolist():
            if label == -1:
                continue
            category = label // self._label_divisor
            segments.append(
                {"id": label + 1, "category_id": category, "isthing": category in thing_ids}
            )
        return segments

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Convert and keep one batch of panoptic predictions.

        Args:
            inputs: model inputs, each with ``image_id`` and ``file_name`` (the png is named
                after it).
            outputs: each with ``panoptic_seg = (ids, segments_info)``: ``ids`` an (H, W)
                integer tensor (0 or -1 = void); ``segments_info`` a list of ``{"id",
                "category_id" (contiguous), "isthing", ...}``, or None when ``ids`` holds
                ``category * label_divisor + instance`` labels.
        """
        for inp, output in zip(inputs, outputs):
            image_id = inp["image_id"]
            panoptic_img, segments_info = output["panoptic_seg"]
            if isinstance(panoptic_img, torch.Tensor):
                panoptic_img = panoptic_img.detach().cpu().numpy()
            ids = np.asarray(panoptic_img).astype(np.int64)
            if ids.ndim != 2:
                raise ValueError(
                    f"COCOPanopticEvaluator: image {image_id}: panoptic_seg ids must be (H, W), "
                    f"got shape {ids.shape}."
                )
            if ids.size and ids.min() < -1:
                raise ValueError(
                    f"COCOPanopticEvaluator: image {image_id}: panoptic_seg has id "
                    f"{int(ids.min())}; only -1 (void) may be negative."
                )
            if segments_info is None:
                segments_info = self._segments_from_labels(ids)
                ids = ids + 1  # -1 (void) becomes 0, the void id of the COCO format
            else:
                ids = np.where(ids == -1, VOID_ID, ids)
                segments_info = self._check_segments(ids, segments_info, image_id)
            if ids.size and ids.max() >= 256 ** 3:
                raise ValueError(
                    f"COCOPanopticEvaluator: image {image_id}: segment id {int(ids.max())} does "
                    "not fit the 24 bits of a COCO panoptic png (ids must be < 2**24)."
                )

            file_name = os.path.basename(inp.get("file_name", f"{image_id}.png"))
            file_name_png = os.path.splitext(file_name)[0] + ".png"
            with io.BytesIO() as buf:
                Image.fromarray(id2rgb(ids)).save(buf, format="PNG")
                png_bytes = buf.getvalue()
            self._predictions.append(
                {
                    "image_id": image_id,
                    "file_name": file_name_png,
                    "png_string": png_bytes,
                    "segments_info": [
                        self._convert_category_id(s, image_id) for s in segments_info
                    ],
                }
            )

    def _check_segments(self, ids: np.ndarray, segments_info, image_id) -> List[Mapping[str, Any]]:
        """Every non-void id of ``ids`` must be listed; listed ids without a pixel are dropped."""
        present = set(np.unique(ids).tolist()) - {VOID_ID}
        listed = [int(_to_python(s["id"])) for s in segments_info]
        unlisted = sorted(present - set(listed))
        if unlisted:
            raise ValueError(
                f"COCOPanopticEvaluator: image {image_id}: panoptic_seg contains segment id(s) "
                f"{unlisted} that its segments_info does not list ({len(listed)} segments "
                "listed). Every non-void id needs a segments_info entry."
            )
        empty = [i for i in listed if i not in present]
        if empty:
            logger.debug(
                "Image %s: dropping segments %s, listed in segments_info but without pixels.",
                image_id, empty,
            )
            return [s for s, i in zip(segments_info, listed) if i in present]
        return list(segments_info)

    # ------------------------------------------------------------------ evaluate

    def evaluate(self) -> Dict[str, Any]:
        """Gather the predictions, write them, compute PQ and log the tables.

        Returns:
            On the main process ``{"panoptic_seg": {...}}`` (see the module docstring);
            ``{}`` on other processes and when no predictions were received.
        """
        comm.synchronize()
        gathered = comm.gather(self._predictions, dst=0)
        predictions = list(itertools.chain(*gathered))
        if not comm.is_main_process():
            return {}
        if not predictions:
            logger.warning(
                "[COCOPanopticEvaluator] Did not receive valid predictions for dataset '%s'.",
                self._dataset_name,
            )
            return {}
        names = Counter(p["file_name"] for p in predictions)
        clashes = [n for n, c in names.items() if c > 1]
        if clashes:
            raise ValueError(
                f"COCOPanopticEvaluator: several predicted images would be written as "
                f"{clashes[:5]}; the input file names must have distinct base names."
            )

        gt_json = PathManager.get_local_path(self._metadata.panoptic_json)
        gt_folder = PathManager.get_local_path(self._metadata.panoptic_root)
        with open(gt_json) as f:
            gt_data = json.load(f)

        pred_data = copy.copy(gt_data)
        pred_data["annotations"] = [
            {k: v for k, v in p.items() if k != "png_string"} for p in predictions
        ]
        with contextlib.ExitStack() as stack:
            if self._output_dir:
                # Kept beside predictions.json, in the folder panopticapi looks for.
                pred_dir = os.path.join(self._output_dir, "predictions")
                PathManager.mkdirs(pred_dir)
            else:
                pred_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="panoptic_eval"))
            logger.info("Writing all panoptic predictions to %s ...", pred_dir)
            for p in predictions:
                with PathManager.open(os.path.join(pred_dir, p["file_name"]), "wb") as f:
                    f.write(p["png_string"])
            if self._output_dir:
                predictions_json = os.path.join(self._output_dir, "predictions.json")
                with PathManager.open(predictions_json, "w") as f:
                    f.write(json.dumps(pred_data))
            pq_res = pq_compute(gt_data, pred_data, gt_folder=gt_folder,
                                pred_folder=PathManager.get_local_path(pred_dir))

        res: Dict[str, float] = {}
        for _, key, suffix in _SUMMARY_ROWS:
            for metric in ("PQ", "SQ", "RQ"):
                res[metric + suffix] = 100 * pq_res[key][metric.lower()]
        per_class = pq_res["per_class"]
        for cat in gt_data["categories"]:
            name = cat.get("name", str(cat["id"]))
            for metric in ("PQ", "SQ", "RQ"):
                res[f"{metric}-{name}"] = 100 * per_class[cat["id"]][metric.lower()]
        _log_panoptic_results(pq_res, gt_data["categories"])
        return OrderedDict({"panoptic_seg": res})


def _log_panoptic_results(pq_res: Mapping[str, Any], categories) -> None:
    """Log the All / Things / Stuff summary and the per-category table."""
    rows = [
        [name, 100 * pq_res[key]["pq"], 100 * pq_res[key]["sq"], 100 * pq_res[key]["rq"],
         pq_res[key]["n"]]
        for name, key, _ in _SUMMARY_ROWS
    ]
    table = tabulate(rows, headers=["", "PQ", "SQ", "RQ", "#categories"], tablefmt="pipe",
                     floatfmt=".3f", stralign="center", numalign="center")
    logger.info("Panoptic Evaluation Results:\n%s", table)

    per_class = pq_res["per_class"]
    rows = []
    for cat in categories:
        r = per_class[cat["id"]]
        rows.append([cat.get("name", cat["id"]), "thing" if cat.get("isthing") == 1 else "stuff",
                     100 * r["pq"], 100 * r["sq"], 100 * r["rq"], r["tp"], r["fp"], r["fn"]])
    table = tabulate(rows, headers=["category", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN"],
                     tablefmt="pipe", floatfmt=".3f", numalign="left")
    logger.info("Per-category panoptic results:\n%s", table)
