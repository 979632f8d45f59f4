"""LVIS annotations (a COCO-like json) -> Detectron2 dataset dicts.

The json is read with the standard library; the ``lvis`` package is not needed. Class names
and per-class image counts come from the json's ``categories`` (so no 1203-name table is
carried here): they are put in the dataset's metadata when it is loaded.
"""

import json
import logging
import os
import time
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

from ...structures.boxes import BoxMode
from ..catalog import DatasetCatalog, MetadataCatalog

__all__ = ["load_lvis_json", "register_lvis_instances", "get_lvis_instances_meta"]

logger = logging.getLogger(__name__)


def register_lvis_instances(name: str, metadata: Dict[str, Any], json_file: str,
                            image_root: str) -> None:
    """Register an LVIS-format dataset ``name`` for instance detection/segmentation.

    Args:
        name: e.g. "lvis_v1_train".
        metadata: extra metadata (may be empty; ``thing_classes`` is filled in from the json
            when the dataset is loaded).
        json_file: the LVIS json.
        image_root: directory holding the COCO split folders (``train2017/``, ``val2017/``...).
    """
    DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root,
                                  evaluator_type="lvis", **metadata)


def _meta_from_categories(categories: Sequence[Dict[str, Any]], json_file: str) -> Dict[str, Any]:
    cats = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    if ids != list(range(1, len(ids) + 1)):
        raise ValueError(
            f"{json_file}: LVIS category ids must be 1..{len(ids)} without gaps, got "
            f"{ids[:5]}...; for COCO-style ids use load_coco_json / register_coco_instances."
        )
    # Detectron2 names LVIS classes by their first synonym.
    meta: Dict[str, Any] = {
        "thing_classes": [(c.get("synonyms") or [c["name"]])[0] for c in cats],
    }
    if all("image_count" in c for c in cats):
        meta["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]}
                                     for c in cats]
    return meta


def get_lvis_instances_meta(dataset_name: str, json_file: Optional[str] = None) -> Dict[str, Any]:
    """Return the metadata fields of an LVIS dataset.

    Args:
        dataset_name: e.g. "lvis_v1", "lvis_v1_train", "lvis_v0.5_val_cocofied".
        json_file: LVIS json to read the class list from.

    Returns:
        For "cocofied" datasets, COCO's 80-class metadata (their ids are COCO ids). Otherwise
        ``thing_classes`` (first synonym of each category, by id) and ``class_image_count``
        (``[{"id", "image_count"}]``, used by the federated loss) read from ``json_file``, or
        ``{}`` when no json is given: LVIS class names are only known from the json.
    """
    if "cocofied" in dataset_name:
        from .builtin_meta import _get_coco_instances_meta

        return _get_coco_instances_meta()
    if json_file is None:
        return {}
    with open(json_file) as f:
        return _meta_from_categories(json.load(f).get("categories", []), json_file)


def _image_path(image_root: str, img: Dict[str, Any]) -> str:
    url = img.get("coco_url")
    if url:
        # ".../train2017/000000155379.jpg": the split folder comes from the URL.
        split_folder, file_name = url.split("/")[-2:]
        return os.path.join(image_root, split_folder, file_name)
    return os.path.join(image_root, img["file_name"])


def load_lvis_json(json_file: str, image_root: str, dataset_name: Optional[str] = None,
                   extra_annotation_keys: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Load an LVIS json.

    Args:
        json_file: LVIS annotation (or image-info) json.
        image_root: directory holding the COCO split folders; an image's path is
            ``image_root/<split folder of its coco_url>/<file>``.
        dataset_name: if given, the dataset's metadata receives ``thing_classes`` and
            ``class_image_count`` from the json (COCO's metadata for "cocofied" names).
        extra_annotation_keys: annotation keys copied as-is into each instance dict.

    Returns:
        list[dict], one per image sorted by id: ``file_name``, ``height``, ``width``,
        ``image_id``, ``not_exhaustive_category_ids``, ``neg_category_ids`` (LVIS's 1-based
        ids, as in the json) and ``annotations`` (``bbox`` XYWH_ABS, ``bbox_mode``,
        ``category_id`` 0-based, ``segmentation`` polygons).
    """
    start = time.perf_counter()
    with open(json_file) as f:
        data = json.load(f)
    if time.perf_counter() - start > 1:
        logger.info("Loading %s took %.2f seconds.", json_file, time.perf_counter() - start)

    id_map = None
    if dataset_name is not None:
        if "cocofied" in dataset_name:
            meta = get_lvis_instances_meta(dataset_name)
            id_map = meta["thing_dataset_id_to_contiguous_id"]
        elif data.get("categories"):
            meta = _meta_from_categories(data["categories"], json_file)
        else:
            meta = {}
        MetadataCatalog.get(dataset_name).set(**meta)

    anns_per_image = defaultdict(list)
    ann_ids = set()
    for ann in data.get("annotations", []):
        if ann["id"] in ann_ids:
            raise ValueError(f"{json_file}: annotation id {ann['id']} is not unique.")
        ann_ids.add(ann["id"])
        anns_per_image[ann["image_id"]].append(ann)

    extra_annotation_keys = list(extra_annotation_keys or [])
    if extra_annotation_keys:
        logger.info("Also loading annotation keys: %s", extra_annotation_keys)

    dicts = []
    for img in sorted(data["images"], key=lambda im: im["id"]):
        record = {
            "file_name": _image_path(image_root, img),
            "height": img["height"],
            "width": img["width"],
            "not_exhaustive_category_ids": img.get("not_exhaustive_category_ids", []),
            "neg_category_ids": img.get("neg_category_ids", []),
            "image_id": img["id"],
        }
        objs = []
        for ann in anns_per_image.get(img["id"], []):
            segm = ann["segmentation"]
            if not segm or any(len(p) % 2 or len(p) < 6 for p in segm):
                raise ValueError(
                    f"{json_file}: annotation {ann['id']} (image {img['id']}) has an empty "
                    "segmentation or a polygon with fewer than 3 points; fix or drop it."
                )
            if id_map is not None:
                category_id = id_map[ann["category_id"]]
            else:
                category_id = ann["category_id"] - 1  # LVIS ids are 1-based
            obj = {"bbox": ann["bbox"], "bbox_mode": BoxMode.XYWH_ABS,
                   "category_id": category_id, "segmentation": segm}
            for key in extra_annotation_keys:
                obj[key] = ann[key]
            objs.append(obj)
        record["annotations"] = objs
        dicts.append(record)
    logger.info("Loaded %d images in the LVIS format from %s", len(dicts), json_file)
    return dicts
