"""Cityscapes' official metrics (Detectron2's ``cityscapes_evaluation``).

Both evaluators write the model's outputs in the Cityscapes result format into one directory
that all processes of the machine share, and score them with cityscapesScripts
(``cityscapesscripts.evaluation``), on the main process:

* ``CityscapesInstanceEvaluator``: per image a ``<name>_pred.txt`` listing one binary mask png
  per detected instance with its Cityscapes label id (not the train id) and score; the script's
  ``evalInstanceLevelSemanticLabeling`` gives ``{"segm": {"AP", "AP50"}}``: the mean over the 8
  instance classes of the area under the precision-recall curve, averaged over mask IoU
  thresholds 0.50:0.95 (``AP``) or at 0.50 (``AP50``). Ground-truth instances under 100 pixels
  and "group" regions are not counted (predictions mostly on them are ignored).
* ``CityscapesSemSegEvaluator``: per image a ``<name>_pred.png`` of label ids (the argmax train
  id mapped back); ``evalPixelLevelSemanticLabeling`` gives ``{"sem_seg": {"IoU", "iIoU",
  "IoU_sup", "iIoU_sup"}}``: the mean IoU over the 19 classes, the instance-size-weighted iIoU
  over the 8 instance classes, and both over the 7 categories (``_sup``, e.g. road and sidewalk
  both count as "flat"). Classes without ground truth and without predictions are left out.

All numbers are in percent. The ground truth of an image is
``<gt_dir>/<city>/<city>_<seq>_<frame>_gtFine_{instanceIds,labelIds}.png``, from the dataset's
metadata ``gt_dir`` and the ``file_name`` of each input. As in Detectron2 the evaluators work
within one machine only; ``evaluate`` must be called on every process.
"""

import logging
import os
import shutil
import tempfile
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate

from ..data.catalog import MetadataCatalog
from ..utils import comm
from ..utils.file_io import PathManager
from ..utils.logger import create_small_table
from .cityscapes_runner import ground_truth_file, import_cityscapes, run_cityscapes_eval
from .evaluator import DatasetEvaluator

__all__ = ["CityscapesEvaluator", "CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]

logger = logging.getLogger(__name__)


class CityscapesEvaluator(DatasetEvaluator):
    """Base of the Cityscapes evaluators: the shared result directory and the ground truth.

    Subclasses write one prediction file per image in ``process`` (recording it with
    ``_record``) and score the recorded pairs in ``evaluate``.
    """

    # Sub-folder of ``output_dir`` for the result files, and the ground-truth file suffix.
    _RESULTS_FOLDER = "cityscapes_results"
    _GT_SUFFIX = ""

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        """
        Args:
            dataset_name: a registered Cityscapes dataset; its metadata must have ``gt_dir``
                (``.../gtFine/<split>``) and, for instances, ``thing_classes``.
            output_dir: when given, the result files go to ``<output_dir>/<results folder>``
                (``cityscapes_instance_results`` / ``cityscapes_sem_seg_results``, emptied by
                ``reset``) and are kept, e.g. for a test-server submission, instead of a
                temporary directory (segtron addition; Detectron2 takes only ``dataset_name``).

        Raises:
            ValueError: when the metadata has no ``gt_dir``.
        """
        self._dataset_name = dataset_name
        self._metadata = MetadataCatalog.get(dataset_name)
        if not self._metadata.get("gt_dir"):
            raise ValueError(
                f"{type(self).__name__}: dataset '{dataset_name}' has no metadata 'gt_dir'. "
                "Register it with segtron's builtin Cityscapes datasets or set "
                f"MetadataCatalog.get('{dataset_name}').gt_dir = '.../cityscapes/gtFine/val'."
            )
        self._output_dir = output_dir
        self._cpu_device = torch.device("cpu")
        self._working_dir: Optional[tempfile.TemporaryDirectory] = None
        self._results_dir: Optional[str] = None
        self._pairs: List[Tuple[str, str]] = []

    def reset(self) -> None:
        """Start a pass: agree with the other processes on the result directory.

        Raises:
            RuntimeError: in a run over several machines (the directory is local).
        """
        if comm.get_local_size() != comm.get_world_size():
            raise RuntimeError(
                f"{type(self).__name__} works on one machine only (its processes share a local "
                f"result directory), but {comm.get_world_size()} processes run on machines of "
                f"{comm.get_local_size()}. Evaluate with --num-machines 1."
            )
        self._pairs = []
        self._cleanup()
        if self._output_dir:
            self._results_dir = os.path.abspath(os.path.join(self._output_dir,
                                                             self._RESULTS_FOLDER))
            if comm.is_main_process():  # start empty: no masks left from an earlier pass
                shutil.rmtree(self._results_dir, ignore_errors=True)
                os.makedirs(self._results_dir)
            comm.synchronize()
        else:
            self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
            # Every process writes into the main process's directory.
            self._results_dir = comm.all_gather(self._working_dir.name)[0]
            if self._results_dir != self._working_dir.name:
                self._cleanup()
        logger.info("Writing Cityscapes results to %s ...", self._results_dir)

    def _cleanup(self) -> None:
        if self._working_dir is not None:
            self._working_dir.cleanup()
            self._working_dir = None

    def _prepare(self, input_dict: Dict[str, Any]) -> Tuple[str, str]:
        """(ground-truth file, prediction path stem) of one input dict."""
        if self._results_dir is None:
            if comm.get_world_size() > 1:
                raise RuntimeError(f"{type(self).__name__}.reset() must be called on every "
                                   "process before process() (inference_on_dataset does).")
            self.reset()
        file_name = input_dict["file_name"]
        gt_dir = PathManager.get_local_path(self._metadata.gt_dir)
        gt_file = ground_truth_file(gt_dir, file_name, self._GT_SUFFIX)
        stem = os.path.splitext(os.path.basename(file_name))[0]
        return gt_file, os.path.join(self._results_dir, stem)

    def _record(self, prediction_file: str, gt_file: str) -> None:
        self._pairs.append((os.path.abspath(prediction_file), os.path.abspath(gt_file)))

    def _gathered_pairs(self) -> Optional[Tuple[List[str], List[str]]]:
        """(predictions, ground truths) of all processes on the main process, None elsewhere
        (the gather is also the barrier: all files are written when it returns)."""
        gathered = comm.gather(self._pairs, dst=0)
        if not comm.is_main_process():
            return None
        by_gt = {gt: pred for pairs in gathered for pred, gt in pairs}
        ground_truths = sorted(by_gt)
        return [by_gt[gt] for gt in ground_truths], ground_truths

    def _finish(self) -> None:
        """Delete the temporary result directory (kept when ``output_dir`` was given)."""
        self._cleanup()
        self._results_dir = None


class CityscapesInstanceEvaluator(CityscapesEvaluator):
    """Cityscapes instance-segmentation AP and AP50 (percent) via cityscapesScripts.

    Uses the outputs' ``instances`` (``pred_classes`` indexing the metadata's
    ``thing_classes``, which must be Cityscapes label names, ``scores``, ``pred_masks``).
    Contains a synchronization: call ``evaluate`` on all processes; only the main one scores.
    """

    _RESULTS_FOLDER = "cityscapes_instance_results"
    _GT_SUFFIX = "instanceIds.png"

    def __init__(self, dataset_name: str, output_dir: Optional[str] = None):
        """See ``CityscapesEvaluator``; also maps ``thing_classes`` to Cityscapes label ids.

        Raises:
            ValueError: when ``thing_classes`` is missing or names a non-Cityscapes class.
        """
        super().__init__(dataset_name, output_dir)
        name2label = import_cityscapes("helpers.labels").name2label
        classes = list(self._metadata.get("thing_classes") or [])
        unknown = [c for c in classes if c not in name2label]
        if not classes or unknown:
            raise ValueError(
                f"CityscapesInstanceEvaluator: the thing_classes of '{dataset_name}' "
                f"({classes or 'missing'}) must be Cityscapes label names; unknown: {unknown}. "
                "Use the builtin Cityscapes metadata (person, rider, car, ...)."
            )
        self._label_ids = [name2label[c].id for c in classes]
        self._file_tags = [c.replace(" ", "-") for c in classes]

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Write each image's masks and ``<name>_pred.txt`` (empty without ``instances``)."""
        for input_dict, output in zip(inputs, outputs):
            gt_file, stem = self._prepare(input_dict)
            lines = []
            if "instances" in output:
                instances = output["instances"].to(self._cpu_device)
                classes = instances.pred_classes.tolist()
                scores = instances.scores.tolist()
                masks = instances.pred_masks.numpy().astype(np.uint8)
                for i, (cls, score) in enumerate(zip(classes, scores)):
                    mask_file = f"{stem}_{i}_{self._file_tags[cls]}.png"
                    Image.fromarray(masks[i] * 255).save(mask_file)
                    lines.append(f"{os.path.basename(mask_file)} {self._label_ids[cls]} "
                                 f"{float(score)!r}\n")
            with open(f"{stem}_pred.txt", "w") as f:
                f.writelines(lines)
            self._record(f"{stem}_pred.txt", gt_file)

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        """``{"segm": {"AP", "AP50"}}`` on the main process, None on the others; ``{}`` (with
        a warning) when no image was processed."""
        lists = self._gathered_pairs()
        if lists is None:
            return None
        if not lists[1]:
            logger.warning("CityscapesInstanceEvaluator received no images; nothing to score.")
            return OrderedDict()
        logger.info("Evaluating %d images with cityscapesScripts ...", len(lists[1]))
        try:
            result = run_cityscapes_eval("evalInstanceLevelSemanticLabeling", *lists,
                                         {"predictionPath": self._results_dir})
        finally:
            self._finish()
        averages = result["averages"]
        rows = [(name, 100 * v["ap"], 100 * v["ap50%"]) for name, v in
                averages["classes"].items()]
        logger.info("Per-class AP:\n%s", tabulate(rows, headers=["class", "AP", "AP50"],
                                                  tablefmt="pipe", floatfmt=".3f"))
        segm = {"AP": 100 * float(averages["allAp"]), "AP50": 100 * float(averages["allAp50%"])}
        logger.info("Cityscapes instance segmentation:\n%s", create_small_table(segm))
        return OrderedDict(segm=segm)


class CityscapesSemSegEvaluator(CityscapesEvaluator):
    """Cityscapes semantic-segmentation IoU, iIoU, IoU_sup and iIoU_sup (percent) via
    cityscapesScripts.

    Uses the outputs' ``sem_seg`` scores over the 19 train ids (C, H, W), at the ground truth's
    size. Contains a synchronization: call ``evaluate`` on all processes.
    """

    _RESULTS_FOLDER = "cityscapes_sem_seg_results"
    _GT_SUFFIX = "labelIds.png"

    def process(self, inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]]) -> None:
        """Write each image's ``<name>_pred.png`` of label ids.

        Raises:
            ValueError: when ``sem_seg`` has more channels than the 19 train ids.
        """
        lut = _train_id_to_label_id()
        for input_dict, output in zip(inputs, outputs):
            gt_file, stem = self._prepare(input_dict)
            scores = output["sem_seg"]
            if scores.dim() != 3 or scores.shape[0] > len(lut):
                raise ValueError(
                    f"CityscapesSemSegEvaluator: sem_seg of {input_dict['file_name']} has shape "
                    f"{tuple(scores.shape)}; expected (C, H, W) with C <= {len(lut)} Cityscapes "
                    "train ids. Set MODEL.SEM_SEG_HEAD.NUM_CLASSES 19."
                )
            train_ids = scores.argmax(dim=0).to(self._cpu_device).numpy()
            Image.fromarray(lut[train_ids]).save(f"{stem}_pred.png")
            self._record(f"{stem}_pred.png", gt_file)

    def evaluate(self) -> Optional["OrderedDict[str, Dict[str, float]]"]:
        """``{"sem_seg": {"IoU", "iIoU", "IoU_sup", "iIoU_sup"}}`` on the main process, None on
        the others; ``{}`` (with a warning) when no image was processed."""
        lists = self._gathered_pairs()
        if lists is None:
            return None
        if not lists[1]:
            logger.warning("CityscapesSemSegEvaluator received no images; nothing to score.")
            return OrderedDict()
        logger.info("Evaluating %d images with cityscapesScripts ...", len(lists[1]))
        try:
            result = run_cityscapes_eval("evalPixelLevelSemanticLabeling", *lists,
                                         {"predictionPath": self._results_dir})
        finally:
            self._finish()
        rows = [(name, 100 * iou, 100 * result["classInstScores"][name])
                for name, iou in result["classScores"].items() if not np.isnan(iou)]
        logger.info("Per-class IoU:\n%s", tabulate(rows, headers=["class", "IoU", "iIoU"],
                                                   tablefmt="pipe", floatfmt=".3f"))
        sem_seg = {
            "IoU": 100 * float(result["averageScoreClasses"]),
            "iIoU": 100 * float(result["averageScoreInstClasses"]),
            "IoU_sup": 100 * float(result["averageScoreCategories"]),
            "iIoU_sup": 100 * float(result["averageScoreInstCategories"]),
        }
        logger.info("Cityscapes semantic segmentation:\n%s", create_small_table(sem_seg))
        return OrderedDict(sem_seg=sem_seg)


def _train_id_to_label_id() -> np.ndarray:
    """uint8 table: Cityscapes train id (0..18) -> label id (the values of *_labelIds.png)."""
    train_id2label = import_cityscapes("helpers.labels").trainId2label
    evaluated = sorted(t for t, label in train_id2label.items()
                       if 0 <= t < 255 and not label.ignoreInEval)
    return np.array([train_id2label[t].id for t in evaluated], dtype=np.uint8)
