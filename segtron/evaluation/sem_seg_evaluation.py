"""Semantic segmentation metrics (Detectron2's ``SemSegEvaluator``).

``SemSegEvaluator`` compares each image's predicted label map (the argmax of the model's
``"sem_seg"`` scores) with the dataset's label PNG and accumulates a confusion matrix over the
whole dataset. At the end the matrices of all processes are summed and turned into the COCO-stuff
metrics, all in percent:

* ``mIoU``: mean over classes of TP / (TP + FP + FN);
* ``fwIoU``: the per-class IoUs weighted by each class's share of the ground-truth pixels;
* ``mACC``: mean over classes of TP / (TP + FN) (per-class recall);
* ``pACC``: correctly labelled pixels / all labelled pixels;
* ``IoU-<class>`` and ``ACC-<class>`` for every class (NaN for a class without ground-truth
  pixels; such a class is also left out of the means, as in Detectron2).

Pixels whose ground truth is the dataset's ``ignore_label`` are not counted.
"""

import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image
from tabulate import tabulate

from ..data.catalog import DatasetCatalog, MetadataCatalog
from ..utils import comm
from ..utils.file_io import PathManager
from ..utils.logger import create_small_table
from .evaluator import DatasetEvaluator

__all__ = ["SemSegEvaluator", "load_image_into_numpy_array"]

logger = logging.getLogger(__name__)

# The ignore label used when neither the caller nor the dataset's metadata gives one.
_DEFAULT_IGNORE_LABEL = 255
# At most this many distinct bad label values are listed in an error message.
_MAX_LISTED_VALUES = 10


def load_image_into_numpy_array(
    filename: str,
    copy: bool = False,
    dtype: Optional[Union[np.dtype, str, type]] = None,
) -> np.ndarray:
    """Read an image file (e.g. a label PNG) into a numpy array, through ``PathManager``.

    Args:
        filename: path or URI of the image.
        copy: passed to ``np.array`` (force a copy of the decoded pixels).
        dtype: the array's dtype (e.g. ``int`` for label maps); default: the image's own.

    Returns:
        (H, W) for single-channel images (label PNGs, palette PNGs give their indices),
        (H, W, C) for multi-channel ones.
    """
    with PathManager.open(filename, "rb") as f:
        image = Image.open(f)
        return np.array(image, dtype=dtype) if copy else np.asarray(image, dtype=dtype)


def _format_values(values: np.ndarray) -> str:
    """``[3, 7, 300]`` -> ``"3, 7, 300"``, shortened to the first few with a count of the rest."""
    shown = ", ".join(str(int(v)) for v in values[:_MAX_LISTED_VALUES])
    if len(values) > _MAX_LISTED_VALUES:
        shown += f", ... ({len(values) - _MAX_LISTED_VALUES} more)"
    return shown


def _metrics_from_confusion(conf_matrix: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-class and mean metrics of a semantic segmentation confusion matrix.

    Args:
        conf_matrix: (N+1, N+1) integer pixel counts; entry [p, g] counts pixels predicted as
            class p whose ground truth is class g. Row and column N (the last) hold the ignored
            pixels and are left out.

    Returns:
        A dict of fractions in [0, 1] (not percent): ``acc`` and ``iou`` ((N,) per class, NaN
        for a class without ground-truth pixels) and the scalars ``mIoU``, ``fwIoU``, ``mACC``
        and ``pACC`` (NaN when no pixel has a ground-truth class).
    """
    counts = np.asarray(conf_matrix, dtype=np.float64)[:-1, :-1]
    true_pos = np.diag(counts)
    gt_pixels = counts.sum(axis=0)  # per class: pixels whose ground truth is the class
    pred_pixels = counts.sum(axis=1)  # per class: pixels predicted as the class
    union = gt_pixels + pred_pixels - true_pos
    total_gt = gt_pixels.sum()

    # As in Detectron2, a class enters the means only when it has ground-truth pixels; a class
    # that is only predicted still costs the true classes of those pixels (as their misses).
    acc_valid = gt_pixels > 0
    iou_valid = acc_valid & (union > 0)
    acc = np.full(len(true_pos), np.nan)
    iou = np.full(len(true_pos), np.nan)
    acc[acc_valid] = true_pos[acc_valid] / gt_pixels[acc_valid]
    iou[iou_valid] = true_pos[iou_valid] / union[iou_valid]

    if total_gt == 0:
        nan = float("nan")
        return {"acc": acc, "iou": iou, "mIoU": nan, "fwIoU": nan, "mACC": nan, "pACC": nan}
    frequency = gt_pixels / total_gt
    return {
        "acc": acc,
        "iou": iou,
        "mIoU": float(iou[iou_valid].mean()),
        "fwIoU": float((iou[iou_valid] * frequency[iou_valid]).sum()),
        "mACC": float(acc[acc_valid].mean()),
        "pACC": float(true_pos.sum() / total_gt),
    }


class SemSegEvaluator(DatasetEvaluator):
    """Evaluate semantic segmentation outputs against the dataset's label PNGs.

    The ground truth of an input is found through its ``file_name``: the dataset's dicts
    (``DatasetCatalog.get(dataset_name)``) map each ``file_name`` to a ``sem_seg_file_name``,
    a PNG of per-pixel class ids in ``[0, num_classes)`` or ``ignore_label``, at the image's
    original size. The prediction must have that size too (the meta-architectures resize their
    output to the input's ``height`` / ``width``).

    Outputs in ``output_dir`` (when given): ``sem_seg_predictions.json`` (the predictions in
    COCO stuff results format: one RLE per predicted class per image, with the dataset's
    category id) and ``sem_seg_evaluation.pth`` (the metrics dict, ``torch.save``d).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        sem_seg_loading_fn: Callable[..., np.ndarray] = load_image_into_numpy_array,
        num_classes: Optional[int] = None,
        ignore_label: Optional[int] = None,
    ):
        """
        Args:
            dataset_name: a registered dataset whose dicts have ``file_name`` and
                ``sem_seg_file_name``, and whose metadata has ``stuff_classes`` (class names in
                label order), optionally ``ignore_label`` and
                ``stuff_dataset_id_to_contiguous_id`` (for the json's category ids).
            distributed: sum the confusion matrices of all processes and report on the main
                process; False: report this process's images alone.
            output_dir: where to write ``sem_seg_predictions.json`` and
                ``sem_seg_evaluation.pth``; None: write nothing (and keep no per-image
                predictions).
            sem_seg_loading_fn: ``fn(path, dtype=int)`` -> (H, W) int array of labels; the
                default reads the PNG with Pillow.
            num_classes: the number of classes; default ``len(stuff_classes)``, and it must
                agree with it when both exist (without ``stuff_classes`` the classes are named
                ``"0"``, ``"1"``, ...).
            ignore_label: the label of pixels to leave out; default the metadata's
                ``ignore_label``, else 255.
        """
        self._dataset_name = dataset_name
        self._distributed = distributed
        self._output_dir = output_dir
        self._sem_seg_loading_fn = sem_seg_loading_fn

        self.input_file_to_gt_file: Dict[str, str] = {}
        for record in DatasetCatalog.get(dataset_name):
            if "sem_seg_file_name" not in record:
                raise ValueError(
                    f"SemSegEvaluator: the dict of '{record.get('file_name')}' in dataset "
                    f"'{dataset_name}' has no 'sem_seg_file_name', so it has no semantic "
                    "segmentation ground truth. Evaluate a dataset that has label PNGs."
                )
            self.input_file_to_gt_file[record["file_name"]] = record["sem_seg_file_name"]

        meta = MetadataCatalog.get(dataset_name)
        class_names = meta.get("stuff_classes")
        if class_names is None:
            if num_classes is None:
                raise ValueError(
                    f"SemSegEvaluator: the metadata of dataset '{dataset_name}' has no "
                    "'stuff_classes'. Set MetadataCatalog.get(name).stuff_classes to the class "
                    "names in label order, or pass num_classes=..."
                )
            class_names = [str(i) for i in range(num_classes)]
        elif num_classes is not None and num_classes != len(class_names):
            raise ValueError(
                f"SemSegEvaluator: num_classes={num_classes} but dataset '{dataset_name}' has "
                f"{len(class_names)} stuff_classes. Drop the argument or fix the metadata."
            )
        self._class_names: List[str] = list(class_names)
        self._num_classes = len(self._class_names)
        if ignore_label is None:
            ignore_label = meta.get("ignore_label", _DEFAULT_IGNORE_LABEL)
        self._ignore_label = int(ignore_label)

        id_map = meta.get("stuff_dataset_id_to_contiguous_id")
        self._contiguous_id_to_dataset_id: Optional[Dict[int, int]] = (
            {int(c): d for d, c in id_map.items()} if id_map is not None else None
        )
        self.reset()

    # ------------------------------------------------------------------ protocol

    def reset(self) -> None:
        """Zero the confusion matrix and forget the kept predictions."""
        size = self._num_classes + 1
        # [predicted label, ground-truth label]; index num_classes holds ignored pixels.
        self._conf_matrix = np.zeros((size, size), dtype=np.int64)
        self._predictions: List[Dict[str, Any]] = []

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Add one batch to the confusion matrix.

        Args:
            inputs: model inputs, each with the ``file_name`` of its dataset dict.
            outputs: model outputs, each with ``"sem_seg"``: a (C, H, W) tensor of class scores
                (logits or probabilities) at the image's original size; the label of a pixel is
                the argmax over C.

        Raises:
            KeyError: an input whose ``file_name`` is not in the dataset.
            ValueError: a label PNG that is not (H, W), or holds a value outside
                ``[0, num_classes)`` other than ``ignore_label``; a prediction that is not
                (C, H, W) or predicts a label >= num_classes.
        """
        for inp, output in zip(inputs, outputs):
            file_name = inp.get("file_name")
            if file_name not in self.input_file_to_gt_file:
                raise KeyError(
                    f"SemSegEvaluator: input file_name {file_name!r} is not an image of dataset "
                    f"'{self._dataset_name}', so its label PNG is unknown. Evaluate the loader "
                    "built from that same dataset."
                )
            gt_file = self.input_file_to_gt_file[file_name]
            pred = self._predicted_labels(output["sem_seg"], file_name)
            gt = self._load_ground_truth(gt_file, pred.shape)

            num_bins = self._num_classes + 1
            flat_index = num_bins * pred.reshape(-1) + gt.reshape(-1)
            self._conf_matrix += np.bincount(flat_index, minlength=num_bins * num_bins).reshape(
                num_bins, num_bins
            )
            if self._output_dir:
                self._predictions.extend(self.encode_json_sem_seg(pred, file_name))

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """Sum the confusion matrices (across processes when distributed) and compute metrics.

        Returns:
            On the main process ``{"sem_seg": {"mIoU", "fwIoU", "IoU-<class>"..., "mACC",
            "pACC", "ACC-<class>"...}}`` in percent (NaN for a class without ground-truth
            pixels); ``{}`` on the other processes.
        """
        conf_matrix = self._conf_matrix
        predictions = self._predictions
        if self._distributed:
            comm.synchronize()
            conf_matrix = np.sum(comm.all_gather(self._conf_matrix), axis=0)
            predictions = list(itertools.chain(*comm.all_gather(self._predictions)))
            if not comm.is_main_process():
                return {}

        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            file_path = os.path.join(self._output_dir, "sem_seg_predictions.json")
            logger.info("Saving semantic segmentation predictions to %s", file_path)
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(predictions))

        if conf_matrix[:-1, :-1].sum() == 0:
            logger.warning(
                "[SemSegEvaluator] No labelled pixel was evaluated for dataset '%s' (no images "
                "processed, or every pixel is ignore_label=%d): every metric is NaN.",
                self._dataset_name,
                self._ignore_label,
            )
        metrics = _metrics_from_confusion(conf_matrix)
        res: Dict[str, float] = {
            "mIoU": 100 * metrics["mIoU"],
            "fwIoU": 100 * metrics["fwIoU"],
        }
        for name, value in zip(self._class_names, metrics["iou"]):
            res[f"IoU-{name}"] = 100 * float(value)
        res["mACC"] = 100 * metrics["mACC"]
        res["pACC"] = 100 * metrics["pACC"]
        for name, value in zip(self._class_names, metrics["acc"]):
            res[f"ACC-{name}"] = 100 * float(value)
        self._log_results(res, metrics)

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "sem_seg_evaluation.pth")
            with PathManager.open(file_path, "wb") as f:
                torch.save(res, f)
        return OrderedDict({"sem_seg": res})

    # ------------------------------------------------------------------ helpers

    def _predicted_labels(self, scores: torch.Tensor, file_name: str) -> np.ndarray:
        """(C, H, W) scores -> (H, W) int64 labels, checked to be < num_classes."""
        if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
            shape = tuple(scores.shape) if hasattr(scores, "shape") else type(scores).__name__
            raise ValueError(
                f"SemSegEvaluator: the 'sem_seg' output for '{file_name}' must be a (C, H, W) "
                f"tensor of class scores, got {shape}."
            )
        pred = scores.argmax(dim=0).cpu().numpy().astype(np.int64)
        if pred.size and pred.max() >= self._num_classes:
            raise ValueError(
                f"SemSegEvaluator: the 'sem_seg' output for '{file_name}' has "
                f"{scores.shape[0]} channels and predicts label {int(pred.max())}, but dataset "
                f"'{self._dataset_name}' has {self._num_classes} classes. Make the model's "
                "number of classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES) match stuff_classes."
            )
        return pred

    def _load_ground_truth(self, gt_file: str, pred_shape: Tuple[int, ...]) -> np.ndarray:
        """Read and check one label PNG; ignored pixels become label ``num_classes``.

        Args:
            gt_file: the ``sem_seg_file_name``.
            pred_shape: (H, W) of the prediction it is compared with.

        Returns:
            (H, W) int64 labels in ``[0, num_classes]``.
        """
        gt = np.array(self._sem_seg_loading_fn(gt_file, dtype=int), dtype=np.int64)
        if gt.shape != tuple(pred_shape):
            raise ValueError(
                f"SemSegEvaluator: label PNG '{gt_file}' has size (H, W) = {gt.shape} but the "
                f"prediction for it has size {tuple(pred_shape)}. Labels must be single-channel "
                "and the model's output must be at the image's original size (the input's "
                "'height' and 'width')."
            )
        ignored = gt == self._ignore_label
        bad = ~ignored & ((gt < 0) | (gt >= self._num_classes))
        if bad.any():
            raise ValueError(
                f"SemSegEvaluator: label PNG '{gt_file}' contains value(s) "
                f"{_format_values(np.unique(gt[bad]))}; labels of dataset '{self._dataset_name}' "
                f"must be in [0, {self._num_classes}) ({self._num_classes} stuff_classes) or "
                f"the ignore label {self._ignore_label}. Check the label files, or the "
                "dataset's stuff_classes / ignore_label metadata."
            )
        gt[ignored] = self._num_classes
        return gt

    def encode_json_sem_seg(
        self, sem_seg: np.ndarray, input_file_name: str
    ) -> List[Dict[str, Any]]:
        """One image's label map in COCO stuff results format (one RLE per predicted class).

        Args:
            sem_seg: (H, W) int array of contiguous class ids.
            input_file_name: the image's ``file_name``, stored in each result.

        Returns:
            ``[{"file_name", "category_id", "segmentation"}]``, one per class present, in
            increasing label order. ``category_id`` is the dataset's id from
            ``stuff_dataset_id_to_contiguous_id`` when the metadata has it, else the label;
            ``segmentation`` is a compressed RLE with ``counts`` as str.
        """
        results = []
        for label in np.unique(sem_seg):
            label = int(label)
            if self._contiguous_id_to_dataset_id is None:
                category_id = label
            elif label in self._contiguous_id_to_dataset_id:
                category_id = self._contiguous_id_to_dataset_id[label]
            else:
                raise ValueError(
                    f"SemSegEvaluator: label {label} predicted for '{input_file_name}' is not in "
                    f"stuff_dataset_id_to_contiguous_id of dataset '{self._dataset_name}' "
                    f"(contiguous ids {sorted(self._contiguous_id_to_dataset_id)})."
                )
            mask = np.asfortranarray((sem_seg == label)[:, :, None].astype(np.uint8))
            rle = mask_util.encode(mask)[0]
            rle["counts"] = rle["counts"].decode("utf-8")
            results.append(
                {"file_name": input_file_name, "category_id": category_id, "segmentation": rle}
            )
        return results

    def _log_results(self, res: Dict[str, float], metrics: Dict[str, Any]) -> None:
        """Log the four means as a small table and the per-class IoU / ACC as a longer one."""
        summary = {k: res[k] for k in ("mIoU", "fwIoU", "mACC", "pACC")}
        logger.info(
            "Semantic segmentation results of '%s': \n%s",
            self._dataset_name,
            create_small_table(summary),
        )
        rows: Sequence[Sequence[Any]] = [
            (name, 100 * iou, 100 * acc)
            for name, iou, acc in zip(self._class_names, metrics["iou"], metrics["acc"])
        ]
        table = tabulate(
            rows, headers=["category", "IoU", "ACC"], tablefmt="pipe", floatfmt=".3f",
            numalign="left",
        )
        logger.info("Per-category IoU and ACC (nan: no ground-truth pixels): \n%s", table)
