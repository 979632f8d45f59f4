"""PASCAL VOC detection AP (Detectron2's ``PascalVOCDetectionEvaluator``).

The evaluator keeps each image's detections as lines of the VOC devkit's result files
(``image_id score xmin ymin xmax ymax``, 1-based pixel indices, score to 3 decimals and
coordinates to 1 decimal, as Detectron2 writes them), gathers them from all processes and, on
the main process, scores every class against ``<dirname>/Annotations/<id>.xml`` for the ids of
``<dirname>/ImageSets/Main/<split>.txt`` at IoU 0.50, 0.55, ..., 0.95. Like Detectron2 this
follows the devkit's rules but is not the official Matlab code. See ``pascal_voc_ap`` for the
matching and AP rules.
"""

import logging
import os
from collections import OrderedDict, defaultdict
from typing import Any, Dict, List, Optional

import numpy as np

from ..data.catalog import MetadataCatalog
from ..utils import comm
from ..utils.file_io import PathManager
from .evaluator import DatasetEvaluator
from .operating_point import OPERATING_POINT_IOU, report_operating_points_from_detections
from .pascal_voc_ap import ClassMatches, class_ap, match_class_detections, parse_rec, voc_ap
from .pascal_voc_ap import voc_eval

__all__ = ["PascalVOCDetectionEvaluator", "parse_rec", "voc_ap", "voc_eval"]

logger = logging.getLogger(__name__)

# IoU thresholds, in percent: "AP" is the mean over these, "AP50" / "AP75" single ones.
_IOU_THRESHOLDS = tuple(range(50, 100, 5))


def _read_image_ids(path: str) -> List[str]:
    with PathManager.open(path, "r") as f:
        return [line.split()[0] for line in f if line.strip()]


class PascalVOCDetectionEvaluator(DatasetEvaluator):
    """VOC-style box AP of a dataset registered with ``register_pascal_voc``.

    Results: ``{"bbox": {"AP", "AP50", "AP75"}}`` in percent, each the mean over classes;
    ``AP`` is also the mean over IoU 0.50:0.95:0.05. Then the operating point at max F1
    (``P@F1max``, ``R@F1max``, ``F1max``, ``thresh@F1max``, pooled over classes, and with more
    than one class the same per class, ``<key>-<class>``; see ``operating_point``) with VOC's
    matching at IoU 0.5. Metadata ``year`` 2007 selects the
    VOC2007 11-point AP, any other year the VOC2010+ area under the precision envelope.
    Difficult objects neither count as positives nor make a detection false. A class without
    any non-difficult object has AP NaN and is left out of the means (with a warning).
    Must be evaluated on all processes (it gathers the detections).
    """

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        """
        Args:
            dataset_name: a registered VOC dataset; its metadata must have ``dirname``,
                ``split``, ``year`` and ``thing_classes``.
            output_dir: when given, the gathered detections are also written there as the
                devkit's result files, ``comp4_det_<split>_<class>.txt`` (segtron addition;
                Detectron2 takes only ``dataset_name``).

        Raises:
            KeyError: when the metadata lacks one of those fields.
        """
        self._dataset_name = dataset_name
        meta = MetadataCatalog.get(dataset_name)
        missing = [k for k in ("dirname", "split", "year", "thing_classes") if not meta.get(k)]
        if missing:
            raise KeyError(
                f"PascalVOCDetectionEvaluator: dataset '{dataset_name}' has no metadata "
                f"{missing}. Register it with segtron.data.datasets.register_pascal_voc, or "
                "set dirname, split, year and thing_classes on its MetadataCatalog entry."
            )
        self._anno_file_template = os.path.join(meta.dirname, "Annotations", "{}.xml")
        self._image_set_path = os.path.join(meta.dirname, "ImageSets", "Main",
                                            meta.split + ".txt")
        self._split = meta.split
        self._class_names = list(meta.thing_classes)
        self._is_2007 = int(meta.year) == 2007
        self._output_dir = output_dir
        self._predictions: Dict[int, List[str]] = defaultdict(list)

    def reset(self) -> None:
        """Forget the detections of a previous pass."""
        self._predictions = defaultdict(list)

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Record each image's ``instances`` (``pred_boxes`` in 0-based XYXY, ``scores``,
        ``pred_classes``) as devkit result lines under the input's ``image_id``."""
        for inp, out in zip(inputs, outputs):
            image_id = inp["image_id"]
            instances = out["instances"].to("cpu")
            boxes = instances.pred_boxes.tensor.numpy()
            scores = instances.scores.tolist()
            classes = instances.pred_classes.tolist()
            for (x0, y0, x1, y1), score, cls in zip(boxes, scores, classes):
                # Back to VOC's 1-based indices: the loader subtracted 1 from xmin and ymin.
                self._predictions[cls].append(
                    f"{image_id} {score:.3f} {x0 + 1:.1f} {y0 + 1:.1f} {x1:.1f} {y1:.1f}"
                )

    def _gathered_predictions(self) -> Optional[Dict[int, List[str]]]:
        gathered = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        merged: Dict[int, List[str]] = defaultdict(list)
        for predictions in gathered:
            for cls, lines in predictions.items():
                merged[cls].extend(lines)
        return merged

    def _write_result_files(self, predictions: Dict[int, List[str]]) -> None:
        PathManager.mkdirs(self._output_dir)
        for cls_id, name in enumerate(self._class_names):
            path = os.path.join(self._output_dir, f"comp4_det_{self._split}_{name}.txt")
            with PathManager.open(path, "w") as f:
                f.write("".join(line + "\n" for line in predictions.get(cls_id, [])))

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        """Score the gathered detections (on the main process; None on the others).

        Returns:
            ``OrderedDict(bbox={"AP": ..., "AP50": ..., "AP75": ..., "P@F1max": ..., ...})``
            in percent (the threshold a score).
        """
        predictions = self._gathered_predictions()
        if predictions is None:
            return None
        if self._output_dir:
            self._write_result_files(predictions)
        logger.info(
            "Evaluating %s using %s metric. Note that results do not use the official Matlab "
            "API.", self._dataset_name, 2007 if self._is_2007 else 2012,
        )
        annotations = {image_id: parse_rec(self._anno_file_template.format(image_id))
                       for image_id in _read_image_ids(self._image_set_path)}
        aps = defaultdict(list)  # IoU threshold (percent) -> AP of each class
        op_matches: List[ClassMatches] = []  # each class's matching at the operating point IoU
        for cls_id, name in enumerate(self._class_names):
            detections = [_parse_line(line) for line in predictions.get(cls_id, [])]
            for thresh in _IOU_THRESHOLDS:
                matches = match_class_detections(detections, annotations, name,
                                                 ovthresh=thresh / 100.0)
                aps[thresh].append(class_ap(matches, use_07_metric=self._is_2007)[2] * 100)
                if thresh == round(OPERATING_POINT_IOU * 100):
                    op_matches.append(matches)
        no_positives = [n for n, ap in zip(self._class_names, aps[50]) if np.isnan(ap)]
        if no_positives:
            logger.warning("%s: no non-difficult ground truth for classes %s; their AP is NaN "
                           "and left out of the means.", self._dataset_name, no_positives)
        mean_ap = {thresh: _nanmean(values) for thresh, values in aps.items()}
        ret = OrderedDict()
        ret["bbox"] = {
            "AP": float(np.mean(list(mean_ap.values()))),
            "AP50": mean_ap[50],
            "AP75": mean_ap[75],
        }
        # After AP: P/R/F1 at max F1, with the same VOC matching at IoU 0.5.
        ret["bbox"].update(self._operating_points(op_matches))
        return ret

    def _operating_points(self, matches: List[ClassMatches]) -> Dict[str, float]:
        """``operating_point`` keys of the per-class VOC matches (ignored detections left out)."""
        kept = [m.true_pos | m.false_pos for m in matches]
        return report_operating_points_from_detections(
            scores=np.concatenate([m.scores[k] for m, k in zip(matches, kept)]),
            is_tp=np.concatenate([m.true_pos[k] for m, k in zip(matches, kept)]),
            classes=np.concatenate([np.full(int(k.sum()), c) for c, k in enumerate(kept)]),
            num_gt=[m.num_positives for m in matches],
            iou_type="bbox",
            class_names=self._class_names,
            matching="VOC",
        )


def _parse_line(line: str):
    image_id, score, *box = line.split()
    return (image_id, float(score), *(float(v) for v in box))


def _nanmean(values: List[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none."""
    kept = [v for v in values if not np.isnan(v)]
    return float(np.mean(kept)) if kept else float("nan")
