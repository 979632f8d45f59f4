"""COCO panoptic segmentation: the panoptic json + png format, in two registrations.

* "standard" (``register_coco_panoptic``): one dict per image pointing at its panoptic png,
  with ``segments_info`` in contiguous ids (Panoptic-DeepLab, MaskFormer, ...).
* "separated" (``register_coco_panoptic_separated``): instances from the COCO *instances* json
  plus a semantic png where all things are class 0 (Panoptic FPN); also registers the
  semantic part alone as ``name + "_stuffonly"``.
"""

import copy
import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional

from ..catalog import DatasetCatalog, MetadataCatalog
from .coco import load_coco_json, load_sem_seg

__all__ = [
    "load_coco_panoptic_json",
    "register_coco_panoptic",
    "register_coco_panoptic_separated",
    "merge_to_panoptic",
]

logger = logging.getLogger(__name__)


def _convert_segment(segment: Dict[str, Any], meta: Mapping[str, Any], json_file: str,
                     image_id: int) -> Dict[str, Any]:
    seg = dict(segment)
    cat = seg["category_id"]
    things = meta["thing_dataset_id_to_contiguous_id"]
    stuff = meta.get("stuff_dataset_id_to_contiguous_id", {})
    if cat in things:
        seg["category_id"], seg["isthing"] = things[cat], True
    elif cat in stuff:
        seg["category_id"], seg["isthing"] = stuff[cat], False
    else:
        raise KeyError(
            f"{json_file}: segment {seg.get('id')} of image {image_id} has category_id {cat}, "
            "which is in neither thing_dataset_id_to_contiguous_id nor "
            "stuff_dataset_id_to_contiguous_id of the metadata. Use the metadata matching this "
            "json (e.g. _get_builtin_metadata('coco_panoptic_standard'))."
        )
    return seg


def load_coco_panoptic_json(json_file: str, image_dir: str, gt_dir: str,
                            meta: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Load a COCO panoptic json (the "standard" format).

    Args:
        json_file: panoptic json, e.g. ``coco/annotations/panoptic_train2017.json``.
        image_dir: the images, e.g. ``coco/train2017``.
        gt_dir: the panoptic pngs, e.g. ``coco/panoptic_train2017``.
        meta: metadata with ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id``.

    Returns:
        list[dict], one per annotated image: ``file_name`` (in ``image_dir``: the name the
        json's ``images`` entry of that image gives, else the png's name with ``.jpg`` as in
        COCO), ``image_id`` (int), ``pan_seg_file_name``, ``segments_info`` (the json's
        segments with ``category_id`` made contiguous and ``isthing`` added).
    """
    with open(json_file) as f:
        data = json.load(f)
    image_files = {int(img["id"]): img["file_name"] for img in data.get("images", [])
                   if "file_name" in img}
    ret = []
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        stem = os.path.splitext(ann["file_name"])[0]
        ret.append({
            # Without an images entry: COCO's images are jpgs named like the pngs.
            "file_name": os.path.join(image_dir, image_files.get(image_id, stem + ".jpg")),
            "image_id": image_id,
            "pan_seg_file_name": os.path.join(gt_dir, ann["file_name"]),
            "segments_info": [_convert_segment(s, meta, json_file, image_id)
                              for s in ann["segments_info"]],
        })
    if not ret:
        raise ValueError(f"{json_file} has no annotations; nothing to load for {image_dir}.")
    for key in ("file_name", "pan_seg_file_name"):
        if not os.path.isfile(ret[0][key]):
            raise FileNotFoundError(
                f"{ret[0][key]} (first entry of {json_file}) does not exist. Check that the "
                f"images are in {image_dir} and the panoptic pngs in {gt_dir}."
            )
    logger.info("Loaded %d images in COCO panoptic format from %s", len(ret), json_file)
    return ret


def register_coco_panoptic(name: str, metadata: Mapping[str, Any], image_root: str,
                           panoptic_root: str, panoptic_json: str,
                           instances_json: Optional[str] = None) -> None:
    """Register the "standard" COCO panoptic dataset ``name``.

    Args:
        name: e.g. "coco_2017_train_panoptic".
        metadata: extra metadata (e.g. ``_get_builtin_metadata("coco_panoptic_standard")``);
            must hold the thing/stuff dataset-id -> contiguous-id maps.
        image_root, panoptic_root, panoptic_json: see ``load_coco_panoptic_json``.
        instances_json: the matching instances json, stored as metadata ``json_file``.
    """
    meta = dict(metadata)
    DatasetCatalog.register(
        name, lambda: load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, meta))
    MetadataCatalog.get(name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        label_divisor=1000,
        **metadata,
    )


def register_coco_panoptic_separated(name: str, metadata: Mapping[str, Any], image_root: str,
                                     panoptic_root: str, panoptic_json: str, sem_seg_root: str,
                                     instances_json: str, image_ext: str = "jpg") -> None:
    """Register the "separated" COCO panoptic dataset ``name + "_separated"`` and its semantic
    half ``name + "_stuffonly"``.

    ``name_separated`` dicts are the instances json's dicts (``load_coco_json``) merged with
    ``sem_seg_file_name`` from ``sem_seg_root`` (pngs where things are 0 and stuff 1..53, made
    by ``datasets/prepare_panoptic_fpn.py``). ``name_stuffonly`` is ``load_sem_seg`` alone.

    Args:
        name: prefix, e.g. "coco_2017_train_panoptic".
        metadata: e.g. ``_get_builtin_metadata("coco_panoptic_separated")``.
        image_root: the images; panoptic_root / panoptic_json: the panoptic annotations (kept
            in metadata for evaluation); sem_seg_root: the semantic pngs; instances_json: the
            COCO instances json.
        image_ext: file name ending of the images, to pair them with the semantic pngs.
    """
    panoptic_name = name + "_separated"

    def load_separated():
        return merge_to_panoptic(load_coco_json(instances_json, image_root, panoptic_name),
                                 load_sem_seg(sem_seg_root, image_root, image_ext=image_ext))

    def load_stuffonly():
        return load_sem_seg(sem_seg_root, image_root, image_ext=image_ext)

    DatasetCatalog.register(panoptic_name, load_separated)
    MetadataCatalog.get(panoptic_name).set(
        panoptic_root=panoptic_root,
        image_root=image_root,
        panoptic_json=panoptic_json,
        sem_seg_root=sem_seg_root,
        json_file=instances_json,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        **metadata,
    )

    semantic_name = name + "_stuffonly"
    DatasetCatalog.register(semantic_name, load_stuffonly)
    MetadataCatalog.get(semantic_name).set(
        sem_seg_root=sem_seg_root,
        image_root=image_root,
        evaluator_type="sem_seg",
        ignore_label=255,
        **metadata,
    )


def merge_to_panoptic(detection_dicts: List[Dict[str, Any]],
                      sem_seg_dicts: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Merge instance dicts with semantic dicts of the same images (matched by ``file_name``).

    Returns one shallow-copied detection dict per image, updated with the keys of its
    semantic dict. Raises KeyError naming an image that has no semantic annotation.
    """
    by_file = {d["file_name"]: d for d in sem_seg_dicts}
    if not by_file:
        raise ValueError("merge_to_panoptic: no semantic segmentation dicts to merge with.")
    merged = []
    for det in detection_dicts:
        try:
            sem = by_file[det["file_name"]]
        except KeyError:
            raise KeyError(
                f"Image {det['file_name']} has instance annotations but no semantic "
                "segmentation file; regenerate the semantic pngs for every image."
            ) from None
        out = copy.copy(det)
        out.update(sem)
        merged.append(out)
    return merged
