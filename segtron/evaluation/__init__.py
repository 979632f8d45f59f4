"""Evaluation of model outputs (``detectron2.evaluation``).

``inference_on_dataset`` runs a model over a test loader and feeds a ``DatasetEvaluator``;
``COCOEvaluator`` scores boxes, masks, keypoints and proposals with the COCO API;
``PascalVOCDetectionEvaluator`` scores boxes with the PASCAL VOC devkit's AP rules;
``print_csv_format`` / ``verify_results`` report and check the numbers.
"""

from .coco_evaluation import COCOEvaluator
from .evaluator import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from .panoptic_evaluation import COCOPanopticEvaluator
from .pascal_voc_evaluation import PascalVOCDetectionEvaluator
from .sem_seg_evaluation import SemSegEvaluator
from .testing import print_csv_format, verify_results

__all__ = [
    "COCOEvaluator",
    "COCOPanopticEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "inference_context",
    "inference_on_dataset",
    "PascalVOCDetectionEvaluator",
    "print_csv_format",
    "SemSegEvaluator",
    "verify_results",
]
