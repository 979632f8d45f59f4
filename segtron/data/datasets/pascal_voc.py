"""PASCAL VOC detection annotations (``Annotations/*.xml``) -> Detectron2 dataset dicts."""

import logging
import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Sequence

from ...structures.boxes import BoxMode
from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = ["load_voc_instances", "register_pascal_voc", "CLASS_NAMES"]

logger = logging.getLogger(__name__)

# The 20 VOC classes, in the order of the classifier's outputs.
CLASS_NAMES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def _read_split(split_file: str) -> List[str]:
    if not os.path.isfile(split_file):
        raise FileNotFoundError(
            f"PASCAL VOC split file {split_file} does not exist. It lists the image ids of the "
            "split; check the dataset directory and the split name (trainval, train, val, test)."
        )
    with open(split_file) as f:
        # One id per line; per-class lists also carry a +1/-1 flag after the id.
        return [line.split()[0] for line in f if line.strip()]


def _xml_int(tree: ET.ElementTree, path: str, xml_file: str) -> int:
    text = tree.findtext(path)
    if text is None:
        raise ValueError(f"{xml_file}: missing <{path}> element.")
    return int(float(text))


def load_voc_instances(dirname: str, split: str,
                       class_names: Sequence[str]) -> List[Dict[str, Any]]:
    """Load the VOC detection annotations of one split.

    Args:
        dirname: a VOC year directory holding ``Annotations/``, ``ImageSets/Main/``,
            ``JPEGImages/`` (e.g. ``datasets/VOC2007``).
        split: the image-id list to read, ``ImageSets/Main/{split}.txt`` (e.g. "trainval").
        class_names: class names; an object's ``category_id`` is its name's index here.

    Returns:
        list[dict], one per image: ``file_name``, ``image_id`` (the VOC id string), ``height``,
        ``width``, ``annotations`` (``category_id``, ``bbox`` in XYXY_ABS, ``bbox_mode``).
        VOC's boxes are 1-based inclusive pixel indices; 1 is subtracted from xmin and ymin so
        that a box (1, 1, W, H) becomes (0, 0, W, H) and covers the whole image. "difficult"
        objects are kept, as in Detectron2.
    """
    class_names = list(class_names)
    file_ids = _read_split(os.path.join(dirname, "ImageSets", "Main", split + ".txt"))
    dicts = []
    for file_id in file_ids:
        xml_file = os.path.join(dirname, "Annotations", file_id + ".xml")
        try:
            tree = ET.parse(xml_file)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"Annotation {xml_file} of image '{file_id}' (listed in split '{split}') does not "
                "exist; the VOC directory is incomplete."
            ) from None
        record = {
            "file_name": os.path.join(dirname, "JPEGImages", file_id + ".jpg"),
            "image_id": file_id,
            "height": _xml_int(tree, "./size/height", xml_file),
            "width": _xml_int(tree, "./size/width", xml_file),
        }
        instances = []
        for obj in tree.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in class_names:
                raise ValueError(
                    f"{xml_file}: object class '{name}' is not in class_names "
                    f"({', '.join(class_names)}). Pass the dataset's full class list."
                )
            box = obj.find("bndbox")
            if box is None:
                raise ValueError(f"{xml_file}: object '{name}' has no <bndbox>.")
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            instances.append({
                "category_id": class_names.index(name),
                "bbox": [x0 - 1.0, y0 - 1.0, x1, y1],
                "bbox_mode": BoxMode.XYXY_ABS,
            })
        record["annotations"] = instances
        dicts.append(record)
    logger.info("Loaded %d images of PASCAL VOC split '%s' from %s", len(dicts), split, dirname)
    return dicts


def register_pascal_voc(name: str, dirname: str, split: str, year: int,
                        class_names: Sequence[str] = CLASS_NAMES) -> None:
    """Register VOC split ``split`` of ``dirname`` as dataset ``name``.

    Metadata: ``thing_classes``, ``dirname``, ``year`` (2007 selects the VOC2007 11-point AP
    in evaluation) and ``split``. Nothing is read until the dataset is requested.
    """
    DatasetCatalog.register(name, lambda: load_voc_instances(dirname, split, class_names))
    MetadataCatalog.get(name).set(thing_classes=list(class_names), dirname=dirname, year=year,
                                  split=split)
