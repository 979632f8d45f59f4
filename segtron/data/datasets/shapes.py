"""The synthetic "shapes" instance-segmentation dataset (CPU quickstart, tests; no download).

Each image (about 256 px a side; each side drawn from 7/8 to 9/8 of ``image_size``) has a
textured background (gradient, stripes, checks or smooth colour noise) and 1 to 8 filled shapes
of 5 classes (circle, square, triangle, star, cross) in random colours, sizes, rotations and
slight stretches. The class is given by the outline only: colours are drawn independently of
the class. Shapes are painted in order, so later shapes occlude earlier ones; an annotation
describes the *visible* part of its shape:

* ``segmentation``: the polygon when nothing covers the shape, else the compressed RLE of the
  visible mask (pycocotools); the polygon is rasterised with pycocotools to make the mask, so it
  decodes exactly to the pixels the annotation stands for;
* ``bbox``: the tight XYWH box of the visible mask; ``area``: its pixel count; ``iscrowd``: 0.

Heavy occlusion is avoided at generation time rather than filtered afterwards: a shape is only
placed where every shape under it keeps at least ``MIN_VISIBLE_FRACTION`` of its pixels (and
``MIN_VISIBLE_PIXELS``); after a few failed placements the shape is left out. Every shape lies
entirely inside its image.

Everything is a function of ``(seed, split, image index)``, so a split is byte-identical for a
given seed whatever the number of worker processes.

``register_shapes`` registers ``shapes_train`` and ``shapes_val`` under
``<datasets root>/shapes``; the data is generated the first time a split is loaded (under a
file lock, into a temporary directory renamed into place, with a completion marker written
last), so several processes (ranks of a distributed run) can ask for it at once.
"""

import contextlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections import Counter
from typing import Any, Dict, Iterator, List, Optional, Tuple

import cv2

from ..catalog import DatasetCatalog, MetadataCatalog
from ...utils.env import available_cpu_cores
from .root import get_datasets_root
from .shapes_drawing import (
    SHAPES_CLASSES,
    SHAPES_COLORS,
    _PNG_PARAMS,
    _annotate,
    _image_rng,
    _place_shapes,
    _render,
)

__all__ = [
    "SHAPES_CLASSES",
    "SHAPES_COLORS",
    "SHAPES_SPLITS",
    "generate_shapes_dataset",
    "prepare_shapes_split",
    "register_shapes_instances",
    "register_shapes",
    "shapes_dataset_summary",
]

logger = logging.getLogger(__name__)

# Builtin splits: dataset name -> (split, number of images, seed).
SHAPES_SPLITS = {
    "shapes_train": ("train", 2000, 0),
    "shapes_val": ("val", 200, 1),
}

# Bumped whenever the generator's output changes for the same seed.
GENERATOR_VERSION = 1

def _generate_image(task: Tuple[int, str, int, int, str]) -> Dict[str, Any]:
    """Draw image ``index`` of ``split``, write its PNG, return its record and annotations."""
    seed, split, index, image_size, image_dir = task
    rng = _image_rng(seed, split, index)
    lo, hi = round(image_size * 7 / 8), round(image_size * 9 / 8)
    height, width = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    shapes = _place_shapes(rng, height, width, image_size)
    image = _render(rng, shapes, height, width)
    file_name = f"{index:06d}.png"
    path = os.path.join(image_dir, file_name)
    if not cv2.imwrite(path, image, _PNG_PARAMS):
        raise OSError(f"Could not write image '{path}' (is the disk full or read-only?).")
    return {"file_name": file_name, "height": height, "width": width,
            "annotations": _annotate(shapes, height, width)}


# ----------------------------------------------------------------------------- a whole split


def _default_num_workers() -> int:
    return min(available_cpu_cores(), 8)


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _iterate_images(tasks: List[Tuple], num_workers: int) -> Iterator[Dict[str, Any]]:
    """Image records in task order, from a process pool when it pays off (not in a daemon,
    e.g. a DataLoader worker, which may not have children). Workers are spawned, not forked:
    a fork of a process whose OpenCV or OpenMP thread pools are running can inherit a held lock
    and hang in its first OpenCV call (seen under pytest-xdist)."""
    if num_workers <= 1 or len(tasks) < 16 or mp.current_process().daemon:
        for task in tasks:
            yield _generate_image(task)
        return
    with mp.get_context("spawn").Pool(num_workers, initializer=_worker_init) as pool:
        yield from pool.imap(_generate_image, tasks, chunksize=4)


def _check_split_name(split: str) -> None:
    if not split or not split.replace("_", "").replace("-", "").isalnum():
        raise ValueError(
            f"Shapes split name {split!r} must be non-empty and made of letters, digits, "
            "'_' and '-' (it names a directory and a json file)."
        )


def generate_shapes_dataset(output_dir: str, split: str, num_images: int, seed: int,
                            image_size: int = 256, num_workers: Optional[int] = None) -> str:
    """Generate one split of the shapes dataset and return the path of its COCO json.

    Writes ``output_dir/<split>/NNNNNN.png`` (``num_images`` of them, BGR PNG) and
    ``output_dir/annotations/instances_<split>.json`` (COCO instances format). The output is a
    function of ``(seed, split)`` only: the same arguments give byte-identical files whatever
    ``num_workers`` is (default: the usable cores, at most 8; 0 or 1 runs in this process).
    Existing files of the same names are overwritten.
    """
    _check_split_name(split)
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if not isinstance(image_size, int) or image_size < 64:
        raise ValueError(f"image_size must be an int >= 64, got {image_size!r}.")
    workers = _default_num_workers() if num_workers is None else int(num_workers)

    image_dir = os.path.join(output_dir, split)
    ann_dir = os.path.join(output_dir, "annotations")
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    logger.info("Generating %d shapes images of split '%s' (seed %d) in %s with %d worker(s) ...",
                num_images, split, seed, output_dir, max(workers, 1))

    tasks = [(seed, split, i, image_size, image_dir) for i in range(num_images)]
    start = time.perf_counter()
    last_log = start
    images, annotations = [], []
    for index, record in enumerate(_iterate_images(tasks, workers)):
        image_id = index + 1
        images.append({"id": image_id, "file_name": record["file_name"],
                       "height": record["height"], "width": record["width"]})
        for ann in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
        now = time.perf_counter()
        if now - last_log >= 5.0 and index + 1 < num_images:
            logger.info("  shapes '%s': %d/%d images (%.1f s)", split, index + 1, num_images,
                        now - start)
            last_log = now

    coco = {
        "info": {"description": "segtron synthetic shapes", "version": str(GENERATOR_VERSION),
                 "split": split, "seed": seed, "num_images": num_images,
                 "image_size": image_size},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(SHAPES_CLASSES)],
    }
    json_file = os.path.join(ann_dir, f"instances_{split}.json")
    tmp_file = json_file + f".tmp{os.getpid()}"
    with open(tmp_file, "w", encoding="utf-8") as f:
        json.dump(coco, f, separators=(",", ":"))
    os.replace(tmp_file, json_file)
    logger.info("Generated shapes split '%s': %d images, %d objects in %.1f s -> %s", split,
                num_images, len(annotations), time.perf_counter() - start, json_file)
    return json_file


# ----------------------------------------------------------------------------- first use


def _marker_path(root_dir: str, split: str) -> str:
    return os.path.join(root_dir, f".{split}_complete.json")


def _read_marker(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _exclusive_lock(lock_file: str, what: str) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``lock_file`` (waiting for it, with a log line)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no inter-process protection
        logger.warning("fcntl is unavailable: generating %s without an inter-process lock.", what)
        yield
        return
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("Waiting for another process to finish preparing %s (lock %s) ...",
                        what, lock_file)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_shapes_split(root_dir: str, split: str, num_images: int, seed: int, *,
                         image_size: int = 256, num_workers: Optional[int] = None,
                         force: bool = False,
                         require_same_params: bool = False) -> Tuple[str, str]:
    """Make sure split ``split`` exists, complete, under ``root_dir``; generate it if not.

    Returns ``(json_file, image_root)``: ``root_dir/annotations/instances_<split>.json`` and
    ``root_dir/<split>``. A split counts as complete when its marker
    ``root_dir/.<split>_complete.json`` (written last) exists. An existing complete split is
    kept as it is, whatever parameters it was generated with, unless ``force`` is set or
    ``require_same_params`` is set and they differ from these. Generation is safe when several
    processes call this at once: one generates (under an ``fcntl`` lock on
    ``root_dir/.lock``, into a temporary directory renamed into place), the others wait.
    """
    _check_split_name(split)
    json_file = os.path.join(root_dir, "annotations", f"instances_{split}.json")
    image_root = os.path.join(root_dir, split)
    marker = _marker_path(root_dir, split)
    params = {"version": GENERATOR_VERSION, "split": split, "num_images": num_images,
              "seed": seed, "image_size": image_size}

    def usable(found: Optional[Dict[str, Any]]) -> bool:
        if found is None or force or not os.path.isfile(json_file) or not os.path.isdir(image_root):
            return False
        same = all(found.get(k) == v for k, v in params.items())
        if not same and require_same_params:
            return False
        if not same:
            logger.info("Using existing shapes split '%s' in %s, generated with %s.", split,
                        root_dir, {k: found.get(k) for k in params})
        return True

    if usable(_read_marker(marker)):  # fast path, no lock (also works on read-only storage)
        return json_file, image_root

    lock_file = os.path.join(root_dir, ".lock")
    try:  # fail early, and clearly, where the data cannot be written
        os.makedirs(root_dir, exist_ok=True)
        os.close(os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666))
    except OSError as e:
        raise OSError(
            f"Cannot generate the shapes dataset (split '{split}') in '{root_dir}': {e}. Point "
            "$SEGTRON_DATASETS at a writable directory, or generate the data elsewhere with "
            "'python datasets/prepare_shapes.py --root DIR' and set SEGTRON_DATASETS=DIR."
        ) from e
    with _exclusive_lock(lock_file, f"shapes split '{split}' in {root_dir}"):
        found = _read_marker(marker)
        if usable(found):  # another process generated it while we waited
            logger.info("Shapes split '%s' in %s is ready (prepared by another process).",
                        split, root_dir)
            return json_file, image_root
        if found is None and (os.path.exists(json_file) or os.path.exists(image_root)):
            logger.warning("Shapes split '%s' in %s is incomplete (no marker %s): regenerating.",
                           split, root_dir, marker)
        # Under the lock nobody else is generating here: leftovers of crashed runs can go.
        for entry in os.listdir(root_dir):
            if entry.startswith(".tmp_"):
                shutil.rmtree(os.path.join(root_dir, entry), ignore_errors=True)
        tmp_dir = tempfile.mkdtemp(prefix=f".tmp_{split}_", dir=root_dir)
        try:
            generate_shapes_dataset(tmp_dir, split, num_images, seed, image_size=image_size,
                                    num_workers=num_workers)
            with contextlib.suppress(FileNotFoundError):
                os.remove(marker)
            if os.path.exists(image_root):
                os.rename(image_root, os.path.join(tmp_dir, "old_images"))
            os.rename(os.path.join(tmp_dir, split), image_root)
            os.makedirs(os.path.dirname(json_file), exist_ok=True)
            os.replace(os.path.join(tmp_dir, "annotations", f"instances_{split}.json"), json_file)
            done = dict(params, generated_by_pid=os.getpid(), generated_at=time.time())
            with open(marker + ".tmp", "w", encoding="utf-8") as f:
                json.dump(done, f)
            os.replace(marker + ".tmp", marker)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("Shapes split '%s' is ready: %s, %s", split, json_file, image_root)
    return json_file, image_root


# ----------------------------------------------------------------------------- registration


def register_shapes_instances(name: str, root_dir: str, split: str, num_images: int, seed: int,
                              image_size: int = 256) -> None:
    """Register dataset ``name``: split ``split`` of the shapes dataset under ``root_dir``.

    The loader generates the split on first use (see ``prepare_shapes_split``) and returns
    Detectron2-format dicts through ``load_coco_json``. Metadata: ``thing_classes``,
    ``thing_colors``, ``evaluator_type="coco"``, ``json_file``, ``image_root``.
    """
    json_file = os.path.join(root_dir, "annotations", f"instances_{split}.json")
    image_root = os.path.join(root_dir, split)

    def load() -> List[Dict[str, Any]]:
        prepare_shapes_split(root_dir, split, num_images, seed, image_size=image_size)
        from .coco import load_coco_json

        return load_coco_json(json_file, image_root, name)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        thing_classes=list(SHAPES_CLASSES),
        thing_colors=[list(c) for c in SHAPES_COLORS],
        evaluator_type="coco",
        json_file=json_file,
        image_root=image_root,
    )


def register_shapes(root: Optional[str] = None) -> None:
    """Register ``shapes_train`` (2000 images, seed 0) and ``shapes_val`` (200, seed 1).

    Their data lives in ``<root>/shapes`` (``root`` defaults to ``get_datasets_root()``) and is
    generated the first time a split is loaded.
    """
    base = os.path.join(get_datasets_root() if root is None else root, "shapes")
    for name, (split, num_images, seed) in SHAPES_SPLITS.items():
        register_shapes_instances(name, base, split, num_images, seed)


# ----------------------------------------------------------------------------- statistics


def shapes_dataset_summary(json_file: str) -> Dict[str, Any]:
    """Statistics of a COCO json (shapes or other): counts per class, size bucket, occlusion.

    Returns a dict with ``num_images``, ``num_objects``, ``objects_per_image`` (min, mean,
    max), ``per_class`` (name -> count), ``per_size`` (COCO bucket by ``area``: small < 32^2 <=
    medium < 96^2 <= large -> count), ``num_rle`` (objects stored as RLE, i.e. occluded) and
    ``images_with_occlusion``.
    """
    with open(json_file, "r", encoding="utf-8") as f:
        coco = json.load(f)
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    counts = [per_image.get(img["id"], 0) for img in coco["images"]]
    sizes = Counter()
    for a in coco["annotations"]:
        sizes["small" if a["area"] < 32 ** 2 else "medium" if a["area"] < 96 ** 2 else "large"] += 1
    rle = [a for a in coco["annotations"] if isinstance(a["segmentation"], dict)]
    per_class = Counter(names[a["category_id"]] for a in coco["annotations"])
    return {
        "num_images": len(coco["images"]),
        "num_objects": len(coco["annotations"]),
        "objects_per_image": (min(counts), sum(counts) / len(counts), max(counts)) if counts
        else (0, 0.0, 0),
        "per_class": {name: per_class.get(name, 0) for name in names.values()},
        "per_size": {k: sizes.get(k, 0) for k in ("small", "medium", "large")},
        "num_rle": len(rle),
        "images_with_occlusion": len({a["image_id"] for a in rle}),
    }
