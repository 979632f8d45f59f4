"""Fixtures of the evaluation tests: a tiny synthetic COCO dataset on disk and a log catcher."""

import json
import logging
import uuid
from typing import Dict, List

import numpy as np
import pytest
import torch

from segtron.data.catalog import DatasetCatalog, MetadataCatalog
from segtron.structures import Boxes, Instances

from .synthetic_coco import CATEGORIES, make_detections, make_synthetic_coco, strip_private


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.records: List[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.DEBUG) -> List[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@pytest.fixture
def catch_logs():
    """``catch_logs(name)`` -> a handler collecting the records of logger ``name``."""
    installed = []

    def attach(name: str) -> _ListHandler:
        handler = _ListHandler()
        log = logging.getLogger(name)
        installed.append((log, handler, log.level))
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)
        return handler

    yield attach
    for log, handler, level in installed:
        log.removeHandler(handler)
        log.setLevel(level)


def to_instances(dets: Dict[str, np.ndarray], id_map: Dict[int, int], with_masks=True):
    """Detections from ``make_detections`` as model-output ``Instances`` (contiguous classes)."""
    height, width = dets["masks"].shape[1:]
    inst = Instances((height, width))
    inst.pred_boxes = Boxes(torch.as_tensor(dets["boxes"]))
    inst.scores = torch.as_tensor(dets["scores"])
    inst.pred_classes = torch.as_tensor([id_map[int(c)] for c in dets["category_ids"]],
                                        dtype=torch.int64)
    if with_masks:
        inst.pred_masks = torch.as_tensor(dets["masks"])
    return inst


class SyntheticCoco:
    """A registered dataset backed by a small synthetic COCO json, and detections for it."""

    def __init__(self, tmp_path, num_images=6, seed=0):
        self.coco = make_synthetic_coco(num_images, seed=seed)
        self.gt_file = str(tmp_path / "gt.json")
        with open(self.gt_file, "w") as f:
            json.dump(strip_private(self.coco), f)
        self.name = f"synthetic_eval_{uuid.uuid4().hex[:8]}"
        self.id_map = {c["id"]: i for i, c in enumerate(CATEGORIES)}
        MetadataCatalog.get(self.name).set(
            json_file=self.gt_file,
            thing_classes=[c["name"] for c in CATEGORIES],
            thing_dataset_id_to_contiguous_id=self.id_map,
            evaluator_type="coco",
        )
        self.detections = list(make_detections(self.coco, seed=seed + 1))

    def feed(self, evaluator, with_masks=True, detections=None):
        """Give every image's detections to ``evaluator.process``, one image per batch."""
        for image_id, dets in detections if detections is not None else self.detections:
            inst = to_instances(dets, self.id_map, with_masks=with_masks)
            evaluator.process([{"image_id": image_id}], [{"instances": inst}])

    def cleanup(self):
        MetadataCatalog.remove(self.name)
        if self.name in DatasetCatalog:
            DatasetCatalog.remove(self.name)


@pytest.fixture
def synthetic_coco(tmp_path):
    data = SyntheticCoco(tmp_path)
    yield data
    data.cleanup()
