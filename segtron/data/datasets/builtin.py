"""Registers the builtin datasets (COCO, LVIS, Cityscapes, PASCAL VOC, ADE20K) and their
metadata under the names and paths Detectron2 uses, relative to ``get_datasets_root()``.

Importing this module touches nothing on disk: each registered function checks its files when
the dataset is requested, and raises FileNotFoundError naming the missing paths and the
section of ``datasets/README.md`` that explains how to get them.

Do not add your own datasets here; register them with ``DatasetCatalog.register`` or
``register_coco_instances`` in your project.
"""

import logging
import os
from typing import Any, Callable, Dict, List, Sequence

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import ADE20K_SEM_SEG_CATEGORIES, _get_builtin_metadata
from .cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from .coco import load_sem_seg, register_coco_instances
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated
from .lvis import get_lvis_instances_meta, register_lvis_instances
from .pascal_voc import register_pascal_voc
from .root import get_datasets_root

__all__ = [
    "register_all_coco",
    "register_all_lvis",
    "register_all_cityscapes",
    "register_all_pascal_voc",
    "register_all_ade20k",
]

logger = logging.getLogger(__name__)

_README = "datasets/README.md"

# ---- COCO: name -> (image directory, annotation json), relative to the datasets root --------
_PREDEFINED_SPLITS_COCO = {
    "coco": {
        "coco_2014_train": ("coco/train2014", "coco/annotations/instances_train2014.json"),
        "coco_2014_val": ("coco/val2014", "coco/annotations/instances_val2014.json"),
        "coco_2014_minival": ("coco/val2014", "coco/annotations/instances_minival2014.json"),
        "coco_2014_valminusminival": (
            "coco/val2014", "coco/annotations/instances_valminusminival2014.json"),
        "coco_2017_train": ("coco/train2017", "coco/annotations/instances_train2017.json"),
        "coco_2017_val": ("coco/val2017", "coco/annotations/instances_val2017.json"),
        "coco_2017_test": ("coco/test2017", "coco/annotations/image_info_test2017.json"),
        "coco_2017_test-dev": ("coco/test2017", "coco/annotations/image_info_test-dev2017.json"),
        "coco_2017_val_100": ("coco/val2017", "coco/annotations/instances_val2017_100.json"),
    },
    "coco_person": {
        "keypoints_coco_2014_train": (
            "coco/train2014", "coco/annotations/person_keypoints_train2014.json"),
        "keypoints_coco_2014_val": (
            "coco/val2014", "coco/annotations/person_keypoints_val2014.json"),
        "keypoints_coco_2014_minival": (
            "coco/val2014", "coco/annotations/person_keypoints_minival2014.json"),
        "keypoints_coco_2014_valminusminival": (
            "coco/val2014", "coco/annotations/person_keypoints_valminusminival2014.json"),
        "keypoints_coco_2017_train": (
            "coco/train2017", "coco/annotations/person_keypoints_train2017.json"),
        "keypoints_coco_2017_val": (
            "coco/val2017", "coco/annotations/person_keypoints_val2017.json"),
        "keypoints_coco_2017_val_100": (
            "coco/val2017", "coco/annotations/person_keypoints_val2017_100.json"),
    },
}

# ---- COCO panoptic: name -> (panoptic pngs, panoptic json, semantic pngs for Panoptic FPN) --
# The instances dataset "<name without _panoptic>" gives the images and the instances json.
_PREDEFINED_SPLITS_COCO_PANOPTIC = {
    "coco_2017_train_panoptic": (
        "coco/panoptic_train2017",
        "coco/annotations/panoptic_train2017.json",
        "coco/panoptic_stuff_train2017",  # made by datasets/prepare_panoptic_fpn.py
    ),
    "coco_2017_val_panoptic": (
        "coco/panoptic_val2017",
        "coco/annotations/panoptic_val2017.json",
        "coco/panoptic_stuff_val2017",
    ),
    "coco_2017_val_100_panoptic": (
        "coco/panoptic_val2017_100",
        "coco/annotations/panoptic_val2017_100.json",
        "coco/panoptic_stuff_val2017_100",
    ),
}

# ---- LVIS: family -> name -> (image root holding the COCO split folders, json) --------------
_PREDEFINED_SPLITS_LVIS = {
    "lvis_v1": {
        "lvis_v1_train": ("coco/", "lvis/lvis_v1_train.json"),
        "lvis_v1_val": ("coco/", "lvis/lvis_v1_val.json"),
        "lvis_v1_test_dev": ("coco/", "lvis/lvis_v1_image_info_test_dev.json"),
        "lvis_v1_test_challenge": ("coco/", "lvis/lvis_v1_image_info_test_challenge.json"),
    },
    "lvis_v0.5": {
        "lvis_v0.5_train": ("coco/", "lvis/lvis_v0.5_train.json"),
        "lvis_v0.5_val": ("coco/", "lvis/lvis_v0.5_val.json"),
        "lvis_v0.5_val_rand_100": ("coco/", "lvis/lvis_v0.5_val_rand_100.json"),
        "lvis_v0.5_test": ("coco/", "lvis/lvis_v0.5_image_info_test.json"),
    },
    "lvis_v0.5_cocofied": {
        "lvis_v0.5_train_cocofied": ("coco/", "lvis/lvis_v0.5_train_cocofied.json"),
        "lvis_v0.5_val_cocofied": ("coco/", "lvis/lvis_v0.5_val_cocofied.json"),
    },
}

# ---- Cityscapes: name pattern -> (images, gtFine) --------------------------------------------
_RAW_CITYSCAPES_SPLITS = {
    "cityscapes_fine_{task}_train": ("cityscapes/leftImg8bit/train/", "cityscapes/gtFine/train/"),
    "cityscapes_fine_{task}_val": ("cityscapes/leftImg8bit/val/", "cityscapes/gtFine/val/"),
    "cityscapes_fine_{task}_test": ("cityscapes/leftImg8bit/test/", "cityscapes/gtFine/test/"),
}

# ---- PASCAL VOC: name -> (year directory, split) ---------------------------------------------
_PASCAL_VOC_SPLITS = {
    "voc_2007_trainval": ("VOC2007", "trainval"),
    "voc_2007_train": ("VOC2007", "train"),
    "voc_2007_val": ("VOC2007", "val"),
    "voc_2007_test": ("VOC2007", "test"),
    "voc_2012_trainval": ("VOC2012", "trainval"),
    "voc_2012_train": ("VOC2012", "train"),
    "voc_2012_val": ("VOC2012", "val"),
}

# ---- ADE20K (SceneParsing): name -> directory name under images/ and annotations_detectron2/
_ADE20K_SPLITS = {"ade20k_sem_seg_train": "training", "ade20k_sem_seg_val": "validation"}


# Directories that a prepare step writes (see datasets/README.md), by directory name.
_MADE_BY = {
    "panoptic_stuff_train2017": "prepare_panoptic_fpn.py",
    "panoptic_stuff_val2017": "prepare_panoptic_fpn.py",
    "annotations_detectron2": "prepare_ade20k_sem_seg.py",
}


def _made_by(path: str) -> str:
    parts = os.path.normpath(path).split(os.sep)
    return next((script for part, script in _MADE_BY.items() if part in parts), "")


def _join(root: str, path: str) -> str:
    return path if "://" in path else os.path.join(root, path)


def _checked(name: str, section: str, paths: Sequence[str],
             load: Callable[[], List[Dict[str, Any]]]) -> Callable[[], List[Dict[str, Any]]]:
    """Wrap ``load`` so that it first checks ``paths`` exist (remote URLs are not checked)."""

    def load_builtin() -> List[Dict[str, Any]]:
        missing = [p for p in paths if "://" not in p and not os.path.exists(p)]
        if missing:
            made = [f"{p} is made by `python datasets/{_made_by(p)}`"
                    for p in missing if _made_by(p)]
            raise FileNotFoundError(
                f"Builtin dataset '{name}' is not on disk: missing {', '.join(missing)}. "
                + "".join(f"{m}. " for m in made)
                + f"Download and lay it out as described in {_README}#{section}, under the "
                "datasets root ($SEGTRON_DATASETS, else $DETECTRON2_DATASETS, else ./datasets); "
                "or point SEGTRON_DATASETS at the directory that already holds it."
            )
        return load()

    load_builtin.__name__ = f"load_{name}"
    return load_builtin


def _guard(name: str, section: str, paths: Sequence[str]) -> None:
    """Put the on-disk check in front of an already registered dataset ``name``."""
    load = DatasetCatalog[name]
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, _checked(name, section, paths, load))


def register_all_coco(root: str) -> None:
    """Register COCO instances/keypoints (2014, 2017) and COCO panoptic 2017 under ``root``.

    Panoptic: "<split>_panoptic" (standard), "<split>_panoptic_separated" (Panoptic FPN) and
    "<split>_panoptic_stuffonly" (its semantic half).
    """
    for family, splits in _PREDEFINED_SPLITS_COCO.items():
        for name, (image_root, json_file) in splits.items():
            json_file, image_root = _join(root, json_file), _join(root, image_root)
            register_coco_instances(name, _get_builtin_metadata(family), json_file, image_root)
            _guard(name, "coco", [json_file, image_root])

    for prefix, (panoptic_root, panoptic_json, semantic_root) in (
            _PREDEFINED_SPLITS_COCO_PANOPTIC.items()):
        instances_meta = MetadataCatalog.get(prefix[: -len("_panoptic")])
        image_root, instances_json = instances_meta.image_root, instances_meta.json_file
        panoptic_root, panoptic_json = _join(root, panoptic_root), _join(root, panoptic_json)
        semantic_root = _join(root, semantic_root)

        register_coco_panoptic_separated(
            prefix, _get_builtin_metadata("coco_panoptic_separated"), image_root,
            panoptic_root, panoptic_json, semantic_root, instances_json)
        _guard(prefix + "_separated", "coco-panoptic", [instances_json, image_root, semantic_root])
        _guard(prefix + "_stuffonly", "coco-panoptic", [image_root, semantic_root])

        register_coco_panoptic(
            prefix, _get_builtin_metadata("coco_panoptic_standard"), image_root,
            panoptic_root, panoptic_json, instances_json)
        _guard(prefix, "coco-panoptic", [panoptic_json, panoptic_root, image_root])


def register_all_lvis(root: str) -> None:
    """Register LVIS v1, v0.5 and v0.5-cocofied under ``root`` (images from ``root/coco``)."""
    for family, splits in _PREDEFINED_SPLITS_LVIS.items():
        for name, (image_root, json_file) in splits.items():
            json_file, image_root = _join(root, json_file), _join(root, image_root)
            register_lvis_instances(name, get_lvis_instances_meta(family), json_file, image_root)
            _guard(name, "lvis", [json_file, image_root])


def register_all_cityscapes(root: str) -> None:
    """Register Cityscapes fine instance and semantic segmentation (train/val/test)."""
    for pattern, (image_dir, gt_dir) in _RAW_CITYSCAPES_SPLITS.items():
        image_dir, gt_dir = _join(root, image_dir), _join(root, gt_dir)

        inst_name = pattern.format(task="instance_seg")
        DatasetCatalog.register(inst_name, _checked(
            inst_name, "cityscapes", [image_dir, gt_dir],
            lambda x=image_dir, y=gt_dir: load_cityscapes_instances(
                x, y, from_json=True, to_polygons=True)))
        MetadataCatalog.get(inst_name).set(
            image_dir=image_dir, gt_dir=gt_dir, evaluator_type="cityscapes_instance",
            **_get_builtin_metadata("cityscapes"))

        sem_name = pattern.format(task="sem_seg")
        DatasetCatalog.register(sem_name, _checked(
            sem_name, "cityscapes", [image_dir, gt_dir],
            lambda x=image_dir, y=gt_dir: load_cityscapes_semantic(x, y)))
        MetadataCatalog.get(sem_name).set(
            image_dir=image_dir, gt_dir=gt_dir, evaluator_type="cityscapes_sem_seg",
            ignore_label=255, **_get_builtin_metadata("cityscapes"))


def register_all_pascal_voc(root: str) -> None:
    """Register PASCAL VOC 2007 (trainval/train/val/test) and 2012 (trainval/train/val)."""
    for name, (dirname, split) in _PASCAL_VOC_SPLITS.items():
        dirname = _join(root, dirname)
        year = 2007 if "2007" in name else 2012
        register_pascal_voc(name, dirname, split, year)
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"
        _guard(name, "pascal-voc", [
            os.path.join(dirname, "ImageSets", "Main", split + ".txt"),
            os.path.join(dirname, "Annotations"),
            os.path.join(dirname, "JPEGImages"),
        ])


def register_all_ade20k(root: str) -> None:
    """Register ADE20K SceneParsing (150 classes) train/val semantic segmentation."""
    root = os.path.join(root, "ADEChallengeData2016")
    for name, dirname in _ADE20K_SPLITS.items():
        image_dir = os.path.join(root, "images", dirname)
        gt_dir = os.path.join(root, "annotations_detectron2", dirname)

        DatasetCatalog.register(name, _checked(
            name, "ade20k", [image_dir, gt_dir],
            lambda x=image_dir, y=gt_dir: load_sem_seg(y, x, gt_ext="png", image_ext="jpg")))
        MetadataCatalog.get(name).set(
            stuff_classes=ADE20K_SEM_SEG_CATEGORIES[:],
            image_root=image_dir,
            sem_seg_root=gt_dir,
            evaluator_type="sem_seg",
            ignore_label=255,
        )


def _register_all(root: str) -> None:
    register_all_coco(root)
    register_all_lvis(root)
    register_all_cityscapes(root)
    register_all_pascal_voc(root)
    register_all_ade20k(root)


_register_all(get_datasets_root())
