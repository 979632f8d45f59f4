"""The synthetic shapes dataset with "stuff": semantic and panoptic segmentation, no download.

Each image has the 5 thing classes of ``shapes.py`` (placed, painted and annotated by the same
functions) on a background of 2-4 large regions, each filled with the texture of one stuff
class: ``stripes``, ``checks``, ``dots`` or ``noise`` (see ``shapes_stuff.py``); a region's
class is given by its texture, never by its colour. Every pixel is either a thing or stuff, so
nothing is unlabeled. Class ids, by labelling:

================  ====================  ===================  ============================
labelling         things                stuff                file
================  ====================  ===================  ============================
json category id  1..5                  6..9                 instances / panoptic jsons
semantic png      0..4                  5..8                 ``sem_seg_<split>/``
"separated" png   0 (all things)        1..4                 ``panoptic_stuff_<split>/``
================  ====================  ===================  ============================

The panoptic png stores segment ``id = R + 256 * G + 256**2 * B``; a thing's segment id is
``1000 * category_id + k`` (``k`` = 1, 2, ... in painting order), a stuff segment's is
``1000 * category_id`` (one segment per stuff class present). A split is drawn with its own
random stream (and version number): the instance splits ``shapes_train`` / ``shapes_val`` are
not affected by it.

``register_shapes_panoptic`` registers, under ``<datasets root>/shapes_panoptic``, for
``split`` in train (2000 images, seed 0) and val (200, seed 1): ``shapes_sem_seg_<split>``,
``shapes_panoptic_<split>`` ("standard" COCO panoptic), ``shapes_panoptic_<split>_separated``
(Panoptic FPN) and ``shapes_panoptic_<split>_stuffonly``. Each split is drawn on its first use,
as ``shapes_train`` is (see ``shapes.prepare_split``).
"""

import json
import logging
import os
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from ..catalog import DatasetCatalog, MetadataCatalog
from .builtin_meta import _THINGS_STUFF_COLOR
from .coco_panoptic import register_coco_panoptic, register_coco_panoptic_separated
from .coco_validation import check_image_files_exist
from .root import get_datasets_root
from .shapes import (
    ImageTask,
    ShapesGenerator,
    generate_split,
    hint_redraw_on_missing_files,
    image_size_of,
    prepare_split,
    write_image,
    write_instances_json,
    write_json,
)
from .shapes_drawing import (
    SHAPES_CLASSES,
    SHAPES_COLORS,
    _annotate,
    _finish,
    _image_rng,
    _mask_box,
    _paint_shapes,
    _place_shapes,
)
from .shapes_stuff import STUFF_CLASSES, STUFF_COLORS, draw_stuff

__all__ = [
    "SHAPES_ALL_CLASSES",
    "SHAPES_PANOPTIC_SPLITS",
    "generate_shapes_panoptic_dataset",
    "prepare_shapes_panoptic_split",
    "shapes_panoptic_paths",
    "load_shapes_sem_seg",
    "shapes_sem_seg_metadata",
    "shapes_panoptic_standard_metadata",
    "shapes_panoptic_separated_metadata",
    "register_shapes_sem_seg",
    "register_shapes_panoptic_split",
    "register_shapes_panoptic",
    "shapes_panoptic_summary",
]

logger = logging.getLogger(__name__)

# Builtin splits: split -> (number of images, seed); the same sizes and seeds as shapes_*.
SHAPES_PANOPTIC_SPLITS = {"train": (2000, 0), "val": (200, 1)}

# Bumped whenever this generator's output changes for the same seed.
PANOPTIC_GENERATOR_VERSION = 1
# Extra entropy of the images' random streams, so they differ from the instance split's.
_STREAM = 1

# The "all classes" labelling of the semantic pngs: things 0..4, then stuff 5..8.
SHAPES_ALL_CLASSES = tuple(SHAPES_CLASSES) + tuple(STUFF_CLASSES)
_NUM_THINGS = len(SHAPES_CLASSES)
_ALL_COLORS = [list(c) for c in SHAPES_COLORS] + [list(c) for c in STUFF_COLORS]
_SEGMENT_ID_STRIDE = 1000
# Label maps are flat areas: zlib's run-length strategy packs them small, fast.
_LABEL_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                     cv2.IMWRITE_PNG_STRATEGY_RLE]


# ----------------------------------------------------------------------------- labellings


def _semantic_labels(shapes: List[Dict[str, Any]], stuff: np.ndarray) -> np.ndarray:
    """All-classes label of every pixel, uint8 (H, W): a visible shape's class, else the
    stuff class of its region shifted past the things."""
    labels = (stuff + _NUM_THINGS).astype(np.uint8)
    for s in shapes:
        labels[s["mask"]] = s["class_id"]
    return labels


def _separated_labels(semantic: np.ndarray) -> np.ndarray:
    """Panoptic FPN's semantic target from the all-classes labels: things 0, stuff 1..4."""
    return np.where(semantic < _NUM_THINGS, 0, semantic - _NUM_THINGS + 1).astype(np.uint8)


def _segment(segment_id: int, category_id: int, mask: np.ndarray) -> Dict[str, Any]:
    x0, y0, x1, y1 = _mask_box(mask)
    return {"id": segment_id, "category_id": category_id, "iscrowd": 0,
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(mask.sum())}


def _panoptic_segments(shapes: List[Dict[str, Any]],
                       semantic: np.ndarray) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
    """Segment id of every pixel, int32 (H, W), and the segments' info: one segment per
    visible shape, then one per stuff class present."""
    ids = np.zeros(semantic.shape, dtype=np.int32)
    segments = []
    for k, s in enumerate(shapes, start=1):
        category_id = s["class_id"] + 1
        segment_id = _SEGMENT_ID_STRIDE * category_id + k
        ids[s["mask"]] = segment_id
        segments.append(_segment(segment_id, category_id, s["mask"]))
    for label in range(_NUM_THINGS, len(SHAPES_ALL_CLASSES)):
        mask = semantic == label
        if mask.any():
            segment_id = _SEGMENT_ID_STRIDE * (label + 1)
            ids[mask] = segment_id
            segments.append(_segment(segment_id, label + 1, mask))
    return ids, segments


def _ids_to_bgr(ids: np.ndarray) -> np.ndarray:
    """The COCO panoptic colour of segment ids (R + 256 G + 256^2 B), as a BGR uint8 image."""
    return np.stack([ids // 256 ** 2, ids // 256 % 256, ids % 256], axis=-1).astype(np.uint8)


# ----------------------------------------------------------------------------- one image


def _generate_panoptic_image(task: ImageTask) -> Dict[str, Any]:
    """Draw image ``index`` of ``split``, write its image and its three label pngs; return
    its record (size, instance annotations, panoptic segments)."""
    seed, split, index, image_size, output_dir = task
    rng = _image_rng(seed, split, index, _STREAM)
    height, width = image_size_of(rng, image_size)
    shapes = _place_shapes(rng, height, width, image_size)
    canvas, stuff = draw_stuff(rng, height, width, image_size)
    _paint_shapes(rng, canvas, shapes)
    image = _finish(rng, canvas)
    semantic = _semantic_labels(shapes, stuff)
    ids, segments = _panoptic_segments(shapes, semantic)

    file_name = f"{index:06d}.png"
    write_image(os.path.join(output_dir, split, file_name), image)
    for directory, labels in ((f"sem_seg_{split}", semantic),
                              (f"panoptic_{split}", _ids_to_bgr(ids)),
                              (f"panoptic_stuff_{split}", _separated_labels(semantic))):
        write_image(os.path.join(output_dir, directory, file_name), labels, _LABEL_PNG_PARAMS)
    return {"file_name": file_name, "height": height, "width": width,
            "annotations": _annotate(shapes, height, width), "segments_info": segments}


def _panoptic_categories() -> List[Dict[str, Any]]:
    return [{"id": i + 1, "name": name, "supercategory": "shape" if i < _NUM_THINGS else "texture",
             "isthing": int(i < _NUM_THINGS), "color": _ALL_COLORS[i]}
            for i, name in enumerate(SHAPES_ALL_CLASSES)]


def _write_panoptic_annotations(output_dir: str, split: str, info: Dict[str, Any],
                                records: List[Dict[str, Any]]) -> None:
    """Write the instances json (things) and the COCO panoptic json of a split."""
    write_instances_json(output_dir, split, info, records)
    images = [{"id": image_id, "file_name": r["file_name"], "height": r["height"],
               "width": r["width"]} for image_id, r in enumerate(records, start=1)]
    annotations = [{"image_id": image_id, "file_name": r["file_name"],
                    "segments_info": r["segments_info"]}
                   for image_id, r in enumerate(records, start=1)]
    panoptic = {"info": info, "licenses": [], "images": images, "annotations": annotations,
                "categories": _panoptic_categories()}
    write_json(os.path.join(output_dir, "annotations", f"panoptic_{split}.json"), panoptic)


PANOPTIC = ShapesGenerator(
    name="shapes panoptic",
    description="segtron synthetic shapes on textured stuff regions",
    version=PANOPTIC_GENERATOR_VERSION,
    draw_image=_generate_panoptic_image,
    write_annotations=_write_panoptic_annotations,
    image_dirs=("{split}", "sem_seg_{split}", "panoptic_{split}", "panoptic_stuff_{split}"),
    json_files=("annotations/instances_{split}.json", "annotations/panoptic_{split}.json"),
    prepare_command="python datasets/prepare_shapes.py --panoptic",
)


# ----------------------------------------------------------------------------- a whole split


def shapes_panoptic_paths(root_dir: str, split: str) -> Dict[str, str]:
    """Where the files of ``split`` live under ``root_dir``: ``image_root``,
    ``instances_json``, ``panoptic_json``, ``panoptic_root``, ``sem_seg_root`` (all-classes
    pngs) and ``panoptic_stuff_root`` (the "separated" pngs)."""
    return {
        "image_root": os.path.join(root_dir, split),
        "instances_json": os.path.join(root_dir, "annotations", f"instances_{split}.json"),
        "panoptic_json": os.path.join(root_dir, "annotations", f"panoptic_{split}.json"),
        "panoptic_root": os.path.join(root_dir, f"panoptic_{split}"),
        "sem_seg_root": os.path.join(root_dir, f"sem_seg_{split}"),
        "panoptic_stuff_root": os.path.join(root_dir, f"panoptic_stuff_{split}"),
    }


def generate_shapes_panoptic_dataset(output_dir: str, split: str, num_images: int, seed: int,
                                     image_size: int = 256,
                                     num_workers: Optional[int] = None) -> Dict[str, str]:
    """Generate one split of the shapes-with-stuff dataset; return its paths.

    Writes, for image ``NNNNNN``: ``<split>/NNNNNN.png`` (the image), ``sem_seg_<split>/``,
    ``panoptic_<split>/`` and ``panoptic_stuff_<split>/NNNNNN.png`` (the labels), and the
    jsons ``annotations/instances_<split>.json`` and ``annotations/panoptic_<split>.json``.
    Deterministic in ``(seed, split)`` whatever ``num_workers`` is, like
    ``generate_shapes_dataset``. Returns ``shapes_panoptic_paths(output_dir, split)``.
    """
    generate_split(PANOPTIC, output_dir, split, num_images, seed, image_size, num_workers)
    return shapes_panoptic_paths(output_dir, split)


def prepare_shapes_panoptic_split(root_dir: str, split: str, num_images: int, seed: int, *,
                                  image_size: int = 256, num_workers: Optional[int] = None,
                                  force: bool = False,
                                  require_same_params: bool = False) -> Dict[str, str]:
    """Make sure ``split`` of the shapes-with-stuff dataset is complete under ``root_dir``,
    generating it if not (safely when several processes ask at once; see
    ``shapes.prepare_split`` for the rules). Returns ``shapes_panoptic_paths``."""
    prepare_split(PANOPTIC, root_dir, split, num_images, seed, image_size=image_size,
                  num_workers=num_workers, force=force, require_same_params=require_same_params)
    return shapes_panoptic_paths(root_dir, split)


# ----------------------------------------------------------------------------- loading


def load_shapes_sem_seg(panoptic_json: str, image_root: str,
                        sem_seg_root: str) -> List[Dict[str, Any]]:
    """Semantic-segmentation dicts of a shapes split, one per image of ``panoptic_json``:
    ``file_name``, ``sem_seg_file_name`` (the all-classes png), ``height``, ``width``,
    ``image_id``. Raises ``MissingImageFilesError`` when images or label pngs are missing."""
    with open(panoptic_json, "r", encoding="utf-8") as f:
        images = json.load(f)["images"]
    dicts = [{"file_name": os.path.join(image_root, img["file_name"]),
              "sem_seg_file_name": os.path.join(sem_seg_root, img["file_name"]),
              "height": img["height"], "width": img["width"], "image_id": img["id"]}
             for img in images]
    check_image_files_exist([d[k] for d in dicts for k in ("file_name", "sem_seg_file_name")],
                            image_root, panoptic_json)
    return dicts


def shapes_sem_seg_metadata() -> Dict[str, Any]:
    """Metadata of the semantic splits: the 9 classes (things, then stuff) and their colours."""
    return {"stuff_classes": list(SHAPES_ALL_CLASSES),
            "stuff_colors": [list(c) for c in _ALL_COLORS],
            "ignore_label": 255, "evaluator_type": "sem_seg"}


def shapes_panoptic_standard_metadata() -> Dict[str, Any]:
    """Metadata of the "standard" panoptic splits, laid out as COCO's: all 9 classes in one
    contiguous id space (things 0..4, stuff 5..8), listed under both thing_* and stuff_*."""
    names, colors = list(SHAPES_ALL_CLASSES), [list(c) for c in _ALL_COLORS]
    return {
        "thing_classes": list(names),
        "thing_colors": [list(c) for c in colors],
        "stuff_classes": list(names),
        "stuff_colors": [list(c) for c in colors],
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(_NUM_THINGS)},
        "stuff_dataset_id_to_contiguous_id": {
            i + 1: i for i in range(_NUM_THINGS, len(SHAPES_ALL_CLASSES))},
    }


def shapes_panoptic_separated_metadata() -> Dict[str, Any]:
    """Metadata of the "separated" panoptic splits, laid out as COCO's: instances over the 5
    thing classes (0..4); the semantic branch over "things" (0) and the 4 stuff classes
    (1..4); dataset id 0 maps to 0."""
    stuff_ids = {_NUM_THINGS + 1 + i: i + 1 for i in range(len(STUFF_CLASSES))}
    stuff_ids[0] = 0
    return {
        "thing_classes": list(SHAPES_CLASSES),
        "thing_colors": [list(c) for c in SHAPES_COLORS],
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(_NUM_THINGS)},
        "stuff_classes": ["things"] + list(STUFF_CLASSES),
        "stuff_colors": [list(_THINGS_STUFF_COLOR)] + [list(c) for c in STUFF_COLORS],
        "stuff_dataset_id_to_contiguous_id": stuff_ids,
    }


# ----------------------------------------------------------------------------- registration


def _prepare_before_loading(name: str, prepare: Callable[[], Any], root_dir: str,
                            split: str) -> None:
    """Make the registered loader of ``name`` call ``prepare()`` first, and give its
    missing-file errors the fix of a generated split (``redraw_hint``)."""
    load = DatasetCatalog[name]

    def prepare_and_load() -> List[Dict[str, Any]]:
        prepare()
        with hint_redraw_on_missing_files(PANOPTIC, root_dir, split):
            return load()

    prepare_and_load.__name__ = f"load_{name}"
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, prepare_and_load)


def _preparer(root_dir: str, split: str, num_images: int, seed: int,
              image_size: int) -> Callable[[], Dict[str, str]]:
    return lambda: prepare_shapes_panoptic_split(root_dir, split, num_images, seed,
                                                 image_size=image_size)


def register_shapes_sem_seg(name: str, root_dir: str, split: str, num_images: int, seed: int,
                            image_size: int = 256) -> None:
    """Register ``name``: the semantic segmentation of shapes-with-stuff split ``split``.

    Dicts: see ``load_shapes_sem_seg``; the split is generated on first use. Metadata:
    ``shapes_sem_seg_metadata()`` plus ``image_root`` and ``sem_seg_root``.
    """
    paths = shapes_panoptic_paths(root_dir, split)
    prepare = _preparer(root_dir, split, num_images, seed, image_size)

    def load() -> List[Dict[str, Any]]:
        panoptic_json = prepare()["panoptic_json"]
        with hint_redraw_on_missing_files(PANOPTIC, root_dir, split):
            return load_shapes_sem_seg(panoptic_json, paths["image_root"], paths["sem_seg_root"])

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(image_root=paths["image_root"],
                                  sem_seg_root=paths["sem_seg_root"],
                                  **shapes_sem_seg_metadata())


def register_shapes_panoptic_split(prefix: str, root_dir: str, split: str, num_images: int,
                                   seed: int, image_size: int = 256) -> None:
    """Register shapes-with-stuff split ``split`` as COCO panoptic is registered: ``prefix``
    ("standard", through ``register_coco_panoptic``), ``prefix + "_separated"`` and
    ``prefix + "_stuffonly"`` (through ``register_coco_panoptic_separated``). The split is
    generated on the first use of any of them."""
    paths = shapes_panoptic_paths(root_dir, split)
    register_coco_panoptic(prefix, shapes_panoptic_standard_metadata(), paths["image_root"],
                           paths["panoptic_root"], paths["panoptic_json"],
                           paths["instances_json"])
    register_coco_panoptic_separated(prefix, shapes_panoptic_separated_metadata(),
                                     paths["image_root"], paths["panoptic_root"],
                                     paths["panoptic_json"], paths["panoptic_stuff_root"],
                                     paths["instances_json"], image_ext="png")
    prepare = _preparer(root_dir, split, num_images, seed, image_size)
    for name in (prefix, prefix + "_separated", prefix + "_stuffonly"):
        _prepare_before_loading(name, prepare, root_dir, split)


def register_shapes_panoptic(root: Optional[str] = None) -> None:
    """Register the builtin semantic and panoptic shapes splits (see the module docstring)
    under ``<root>/shapes_panoptic`` (``root`` defaults to ``get_datasets_root()``)."""
    base = os.path.join(get_datasets_root() if root is None else root, "shapes_panoptic")
    for split, (num_images, seed) in SHAPES_PANOPTIC_SPLITS.items():
        register_shapes_sem_seg(f"shapes_sem_seg_{split}", base, split, num_images, seed)
        register_shapes_panoptic_split(f"shapes_panoptic_{split}", base, split, num_images, seed)


# ----------------------------------------------------------------------------- statistics


def shapes_panoptic_summary(panoptic_json: str) -> Dict[str, Any]:
    """Statistics of a panoptic json: ``num_images``, ``num_segments``, ``stuff_per_image``
    (min, mean, max number of stuff segments) and ``pixel_share`` (class name -> fraction of
    all labelled pixels)."""
    with open(panoptic_json, "r", encoding="utf-8") as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    isthing = {c["id"]: c["isthing"] for c in data["categories"]}
    pixels: Counter = Counter()
    stuff_counts = []
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            pixels[names[seg["category_id"]]] += seg["area"]
        stuff_counts.append(sum(not isthing[s["category_id"]] for s in ann["segments_info"]))
    total = max(sum(pixels.values()), 1)
    return {
        "num_images": len(data["images"]),
        "num_segments": sum(len(a["segments_info"]) for a in data["annotations"]),
        "stuff_per_image": (min(stuff_counts), sum(stuff_counts) / len(stuff_counts),
                            max(stuff_counts)) if stuff_counts else (0, 0.0, 0),
        "pixel_share": {name: pixels.get(name, 0) / total for name in names.values()},
    }
