"""Evaluation of model outputs (``detectron2.evaluation``).

``inference_on_dataset`` runs a model over a test loader and feeds a ``DatasetEvaluator``;
``COCOEvaluator`` scores boxes, masks, keypoints and proposals with the COCO API;
``RotatedCOCOEvaluator`` scores rotated boxes (XYWHA) the same way, with rotated IoU;
``PascalVOCDetectionEvaluator`` scores boxes with the PASCAL VOC devkit's AP rules;
``LVISEvaluator`` scores boxes and masks with LVIS's federated AP (segtron's own evaluation);
``CityscapesInstanceEvaluator`` / ``CityscapesSemSegEvaluator`` score with cityscapesScripts;
``print_csv_format`` / ``verify_results`` report and check the numbers.
"""

from .cityscapes_evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from .coco_evaluation import COCOEvaluator
from .evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from .lvis_evaluation import LVISEvaluator
from .panoptic_evaluation import COCOPanopticEvaluator
from .pascal_voc_evaluation import PascalVOCDetectionEvaluator
from .rotated_coco_evaluation import RotatedCOCOEvaluator
from .sem_seg_evaluation import SemSegEvaluator
from .testing import print_csv_format, verify_results

__all__ = [
    "CityscapesInstanceEvaluator",
    "CityscapesSemSegEvaluator",
    "COCOEvaluator",
    "COCOPanopticEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_context",
    "inference_on_dataset",
    "LVISEvaluator",
    "PascalVOCDetectionEvaluator",
    "print_csv_format",
    "RotatedCOCOEvaluator",
    "SemSegEvaluator",
    "verify_results",
]
