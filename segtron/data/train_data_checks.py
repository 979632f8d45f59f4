"""Checks that the training data fits the model a config describes (segtron addition).

``build_detection_train_loader(cfg)`` runs them once, before the first iteration, so that a
mismatch between ``DATASETS.TRAIN`` and ``MODEL.*`` fails with a message naming the dataset,
the config key and the fix instead of training wrongly or crashing deep inside a head:

* ``check_num_classes``: the number of classes in the datasets' metadata (``thing_classes``,
  ``stuff_classes``) against the ``NUM_CLASSES`` key(s) the meta-architecture reads;
* ``check_annotation_fields``: with ``MODEL.MASK_ON`` / ``MODEL.KEYPOINT_ON`` every instance
  annotation must carry ``segmentation`` / ``keypoints``.

Nothing here is part of Detectron2's API.
"""

import logging
from typing import Any, Dict, List, Sequence, Tuple

from .catalog import MetadataCatalog
from .datasets.coco_validation import format_examples

__all__ = ["num_classes_keys", "check_num_classes", "check_annotation_fields"]

logger = logging.getLogger(__name__)

# Meta-architecture -> (config node under MODEL, metadata field counted against its NUM_CLASSES).
# Meta-architectures not listed here are looked up as MODEL.<NAME.upper()>.NUM_CLASSES against
# thing_classes (RetinaNet, FCOS, and the projects' SSD and YOLOX follow that convention).
_CLASS_KEYS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "GeneralizedRCNN": (("ROI_HEADS", "thing_classes"),),
    "PanopticFPN": (("ROI_HEADS", "thing_classes"), ("SEM_SEG_HEAD", "stuff_classes")),
    "SemanticSegmentor": (("SEM_SEG_HEAD", "stuff_classes"),),
    "ProposalNetwork": (),
}


def num_classes_keys(cfg) -> List[Tuple[str, int, str]]:
    """``(full config key, its value, metadata field)`` for each class count the model of
    ``cfg`` has, e.g. ``[("MODEL.ROI_HEADS.NUM_CLASSES", 80, "thing_classes")]``; empty for
    meta-architectures without one (or unknown ones)."""
    arch = cfg.MODEL.META_ARCHITECTURE
    pairs = _CLASS_KEYS.get(arch)
    if pairs is None:
        node = cfg.MODEL.get(arch.upper())
        pairs = (
            ((arch.upper(), "thing_classes"),)
            if node is not None and "NUM_CLASSES" in node
            else ()
        )
    return [(f"MODEL.{n}.NUM_CLASSES", int(cfg.MODEL[n].NUM_CLASSES), f) for n, f in pairs]


def check_num_classes(cfg, dataset_names: Sequence[str]) -> None:
    """Compare each dataset's class list with the model's class count(s).

    More classes in the metadata than the config key allows is a ValueError (instances of the
    extra classes would be out of range, or read as background); fewer is logged as a warning
    (the extra outputs are never trained). Datasets without the metadata field are skipped.
    """
    for key, num_classes, field in num_classes_keys(cfg):
        for name in dataset_names:
            classes = MetadataCatalog[name].get(field) if name in MetadataCatalog else None
            if classes is None:
                continue
            if len(classes) > num_classes:
                raise ValueError(
                    f"Dataset '{name}' has {len(classes)} {field} ({format_examples(classes)}) "
                    f"but {key} is {num_classes}, so instances of the last "
                    f"{len(classes) - num_classes} classes cannot be learned. Set {key} "
                    f"{len(classes)}, or train on a dataset with at most {num_classes} classes."
                )
            if len(classes) < num_classes:
                logger.warning(
                    "Dataset '%s' has %d %s but %s is %d: the model's outputs for the other %d "
                    "classes are never trained. Set %s %d unless that is intended.",
                    name, len(classes), field, key, num_classes,
                    num_classes - len(classes), key, len(classes),
                )


def _lacking(dataset_dicts: List[Dict[str, Any]], key: str) -> Tuple[int, List[str]]:
    """(number of non-crowd annotations without ``key``, file names of the first images)."""
    count, files = 0, []
    for record in dataset_dicts:
        n = sum(1 for a in record.get("annotations", ()) if not a.get("iscrowd", 0)
                and key not in a)
        if n:
            count += n
            files.append(record.get("file_name", "?"))
    return count, files


def check_annotation_fields(cfg, dataset_names: Sequence[str],
                            dataset_dicts: List[Dict[str, Any]]) -> None:
    """Raise ValueError when ``MODEL.MASK_ON`` (``MODEL.KEYPOINT_ON``) is set but instance
    annotations of the training dicts have no ``segmentation`` (``keypoints``), naming the
    datasets, the count, a few image files and the fix."""
    for flag, enabled, key in (
        ("MODEL.MASK_ON", cfg.MODEL.MASK_ON, "segmentation"),
        ("MODEL.KEYPOINT_ON", cfg.MODEL.KEYPOINT_ON, "keypoints"),
    ):
        if not enabled:
            continue
        count, files = _lacking(dataset_dicts, key)
        if count:
            raise ValueError(
                f"{flag} is True but {count} instance annotations of DATASETS.TRAIN "
                f"({', '.join(repr(n) for n in dataset_names)}) have no '{key}' (in "
                f"{len(files)} images, e.g. {format_examples(files, limit=3)}). Set {flag} "
                f"False to train without it, or add '{key}' to those annotations."
            )
