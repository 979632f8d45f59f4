"""A two-image Cityscapes-format ground truth (gtFine layout, 40 x 20 pixels) and model outputs.

cityscapesScripts reads any image size; it only skips ground-truth instances under 100 pixels
(``minRegionSizes``), so every instance here has at least 100.

Image A, ``frankfurt/frankfurt_000000_000019``: rows 0-4 sky (label id 23), rows 5-19 road (7)
with two cars (26): car 26000 at rows 8-17 x cols 2-11 (100 px), car 26001 at rows 8-17 x
cols 20-31 (120 px). Road: 15 * 40 - 100 - 120 = 380 px.
Image B, ``lindau/lindau_000000_000019``: cols 36-39 unlabeled (0, ignored in evaluation); in
cols 0-35 rows 0-4 sky, rows 5-19 road with person 24000 at rows 5-16 x cols 5-14 (120 px).
Road: 15 * 36 - 120 = 420 px; road in both images: 800 px.
"""

import os
import uuid
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

from segtron.data.catalog import MetadataCatalog
from segtron.structures import Instances

H, W = 20, 40
THING_CLASSES = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
# Label id -> train id, for the classes used here (unlabeled 0 is predicted as road).
LABEL_TO_TRAIN = {0: 0, 7: 0, 8: 1, 23: 10, 24: 11, 26: 13}
IMAGES = ("frankfurt_000000_000019", "lindau_000000_000019")


def _instance_maps() -> Dict[str, np.ndarray]:
    """Core name -> instanceIds array (label id, or label id * 1000 + index on instances)."""
    a = np.full((H, W), 7, dtype=np.int32)
    a[0:5] = 23
    a[8:18, 2:12] = 26000
    a[8:18, 20:32] = 26001
    b = np.full((H, W), 7, dtype=np.int32)
    b[0:5] = 23
    b[5:17, 5:15] = 24000
    b[:, 36:40] = 0
    return dict(zip(IMAGES, (a, b)))


INSTANCE_MAPS = _instance_maps()


def label_map(core: str) -> np.ndarray:
    """labelIds of an image: instance ids turned back into their label id."""
    inst = INSTANCE_MAPS[core]
    return np.where(inst >= 1000, inst // 1000, inst)


class TinyCityscapes:
    """Writes gtFine/val/<city>/... under ``root`` and registers metadata with ``gt_dir``."""

    def __init__(self, root, **metadata):
        self.gt_dir = os.path.join(str(root), "gtFine", "val")
        self.image_dir = os.path.join(str(root), "leftImg8bit", "val")
        for core, inst in INSTANCE_MAPS.items():
            city = core.split("_")[0]
            os.makedirs(os.path.join(self.gt_dir, city), exist_ok=True)
            stem = os.path.join(self.gt_dir, city, core + "_gtFine_")
            Image.fromarray(inst.astype(np.uint16)).save(stem + "instanceIds.png")
            Image.fromarray(label_map(core).astype(np.uint8)).save(stem + "labelIds.png")
        self.name = f"tiny_cityscapes_{uuid.uuid4().hex[:8]}"
        meta = {"gt_dir": self.gt_dir, "thing_classes": THING_CLASSES}
        meta.update(metadata)
        MetadataCatalog.get(self.name).set(**{k: v for k, v in meta.items() if v is not None})

    def input_dict(self, core: str) -> dict:
        """The dataset dict of one image (only ``file_name`` is read by the evaluators)."""
        city = core.split("_")[0]
        return {"file_name": os.path.join(self.image_dir, city, core + "_leftImg8bit.png"),
                "image_id": core, "height": H, "width": W}

    def cleanup(self) -> None:
        """Unregister the metadata."""
        MetadataCatalog.remove(self.name)


def instances(dets: List[Tuple[int, float, np.ndarray]]) -> Instances:
    """Model-output Instances from (contiguous class, score, bool mask) triples."""
    result = Instances((H, W))
    result.pred_classes = torch.tensor([d[0] for d in dets], dtype=torch.int64)
    result.scores = torch.tensor([d[1] for d in dets], dtype=torch.float32)
    masks = np.stack([d[2] for d in dets]) if dets else np.zeros((0, H, W), dtype=bool)
    result.pred_masks = torch.from_numpy(masks.astype(bool))
    return result


def perfect_detections() -> Dict[str, List[Tuple[int, float, np.ndarray]]]:
    """Every ground-truth instance detected exactly (car = class 2, person = class 0)."""
    a, b = INSTANCE_MAPS[IMAGES[0]], INSTANCE_MAPS[IMAGES[1]]
    return {IMAGES[0]: [(2, 0.9, a == 26000), (2, 0.8, a == 26001)],
            IMAGES[1]: [(0, 0.95, b == 24000)]}


def sem_seg_scores(train_ids: np.ndarray) -> torch.Tensor:
    """(19, H, W) scores whose argmax is ``train_ids``."""
    labels = torch.as_tensor(train_ids, dtype=torch.int64)
    return torch.nn.functional.one_hot(labels, 19).permute(2, 0, 1).float()


def perfect_train_ids(core: str) -> np.ndarray:
    """The ground truth's train ids (unlabeled pixels predicted as road)."""
    lut = np.zeros(256, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut[label_map(core)]
