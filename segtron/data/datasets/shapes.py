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

That machinery (``generate_split``, ``prepare_split``) works for any ``ShapesGenerator``: the
instance splits here are one (``INSTANCES``), the variant with stuff regions in
``shapes_panoptic.py`` is another.
"""

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np

from ..catalog import DatasetCatalog, MetadataCatalog
from ...utils.env import available_cpu_cores
from ...utils.worker_pool import can_start_workers, spawn_pool
from .coco_validation import MissingImageFilesError
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
    "ShapesGenerator",
    "generate_split",
    "prepare_split",
    "generate_shapes_dataset",
    "prepare_shapes_split",
    "register_shapes_instances",
    "register_shapes",
    "redraw_hint",
    "hint_redraw_on_missing_files",
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

# Work item of one image: (seed, split, index, image_size, output directory of the split).
ImageTask = Tuple[int, str, int, int, str]


@dataclass(frozen=True)
class ShapesGenerator:
    """One kind of shapes split: how an image is drawn and which files a split is made of.

    ``draw_image(task)`` draws image ``index`` of a split, writes its files under the task's
    output directory and returns its record (``file_name``, ``height``, ``width``,
    ``annotations`` and whatever ``write_annotations`` needs); it must be a module-level
    function, as it runs in worker processes. ``write_annotations(output_dir, split, info,
    records)`` writes the json files from the records, in image order. ``image_dirs`` and
    ``json_files`` are the per-split paths (relative to the dataset root, ``{split}`` filled
    in) that make a split: they are moved into place together once all are written.
    ``version`` is bumped whenever the output for the same seed changes.
    """

    name: str
    description: str
    version: int
    draw_image: Callable[[ImageTask], Dict[str, Any]]
    write_annotations: Callable[[str, str, Dict[str, Any], List[Dict[str, Any]]], Any]
    image_dirs: Tuple[str, ...]
    json_files: Tuple[str, ...]
    prepare_command: str = "python datasets/prepare_shapes.py"

    def dirs(self, split: str) -> List[str]:
        """The directories of ``split``, relative to the dataset root."""
        return [d.format(split=split) for d in self.image_dirs]

    def jsons(self, split: str) -> List[str]:
        """The json files of ``split``, relative to the dataset root."""
        return [j.format(split=split) for j in self.json_files]


def write_image(path: str, image: np.ndarray, params: Optional[List[int]] = None) -> None:
    """Write ``image`` (uint8, BGR or single channel) as a PNG at ``path`` (OpenCV ``params``,
    default: the dataset's PNG settings), or raise OSError."""
    if not cv2.imwrite(path, image, _PNG_PARAMS if params is None else params):
        raise OSError(f"Could not write image '{path}' (is the disk full or read-only?).")


def write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as compact json at ``path`` (through a temporary file, then renamed)."""
    tmp_file = path + f".tmp{os.getpid()}"
    with open(tmp_file, "w", encoding="utf-8") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp_file, path)


def image_size_of(rng: np.random.Generator, image_size: int) -> Tuple[int, int]:
    """Draw an image's (height, width), each between 7/8 and 9/8 of ``image_size``."""
    lo, hi = round(image_size * 7 / 8), round(image_size * 9 / 8)
    height, width = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    return height, width


def _generate_image(task: ImageTask) -> Dict[str, Any]:
    """Draw image ``index`` of ``split``, write its PNG, return its record and annotations."""
    seed, split, index, image_size, output_dir = task
    rng = _image_rng(seed, split, index)
    height, width = image_size_of(rng, image_size)
    shapes = _place_shapes(rng, height, width, image_size)
    image = _render(rng, shapes, height, width)
    file_name = f"{index:06d}.png"
    write_image(os.path.join(output_dir, split, file_name), image)
    return {"file_name": file_name, "height": height, "width": width,
            "annotations": _annotate(shapes, height, width)}


def write_instances_json(output_dir: str, split: str, info: Dict[str, Any],
                         records: List[Dict[str, Any]]) -> str:
    """Write ``output_dir/annotations/instances_<split>.json`` (COCO instances) from the image
    records; image ids are 1, 2, ... in record order. Returns the path."""
    images, annotations = [], []
    for image_id, record in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": record["file_name"],
                       "height": record["height"], "width": record["width"]})
        for ann in record["annotations"]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    coco = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"}
                       for i, name in enumerate(SHAPES_CLASSES)],
    }
    json_file = os.path.join(output_dir, "annotations", f"instances_{split}.json")
    write_json(json_file, coco)
    return json_file


INSTANCES = ShapesGenerator(
    name="shapes",
    description="segtron synthetic shapes",
    version=GENERATOR_VERSION,
    draw_image=_generate_image,
    write_annotations=write_instances_json,
    image_dirs=("{split}",),
    json_files=("annotations/instances_{split}.json",),
)


# ----------------------------------------------------------------------------- a whole split


def _default_num_workers() -> int:
    return min(available_cpu_cores(), 8)


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _iterate_images(draw: Callable[[ImageTask], Dict[str, Any]], tasks: List[ImageTask],
                    num_workers: int) -> Iterator[Dict[str, Any]]:
    """``draw(task)`` of every task, in task order, from a process pool when it pays off (not
    in a daemon, e.g. a DataLoader worker, which may not have children). The pool is
    ``spawn_pool``'s: a script that loads a split at top level, without a main guard, works."""
    if num_workers <= 1 or len(tasks) < 16 or not can_start_workers():
        for task in tasks:
            yield draw(task)
        return
    with spawn_pool(num_workers, initializer=_worker_init) as pool:
        yield from pool.imap(draw, tasks, chunksize=4)


def _check_split_name(split: str) -> None:
    if not split or not split.replace("_", "").replace("-", "").isalnum():
        raise ValueError(
            f"Shapes split name {split!r} must be non-empty and made of letters, digits, "
            "'_' and '-' (it names a directory and a json file)."
        )


def _check_generation_args(split: str, num_images: Any, seed: Any, image_size: Any) -> None:
    _check_split_name(split)
    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images must be a positive int, got {num_images!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if not isinstance(image_size, int) or image_size < 64:
        raise ValueError(f"image_size must be an int >= 64, got {image_size!r}.")


def generate_split(generator: ShapesGenerator, output_dir: str, split: str, num_images: int,
                   seed: int, image_size: int = 256, num_workers: Optional[int] = None) -> None:
    """Generate split ``split`` of the kind ``generator`` describes into ``output_dir``.

    Writes every directory and json file of ``generator`` for this split. The output is a
    function of ``(seed, split)`` only: the same arguments give byte-identical files whatever
    ``num_workers`` is (default: the usable cores, at most 8; 0 or 1 runs in this process).
    Existing files of the same names are overwritten.
    """
    _check_generation_args(split, num_images, seed, image_size)
    workers = _default_num_workers() if num_workers is None else int(num_workers)
    for directory in generator.dirs(split) + ["annotations"]:
        os.makedirs(os.path.join(output_dir, directory), exist_ok=True)
    logger.info("Generating %d %s images of split '%s' (seed %d) in %s with %d worker(s) ...",
                num_images, generator.name, split, seed, output_dir, max(workers, 1))

    tasks = [(seed, split, i, image_size, output_dir) for i in range(num_images)]
    start = time.perf_counter()
    last_log = start
    records = []
    for record in _iterate_images(generator.draw_image, tasks, workers):
        records.append(record)
        now = time.perf_counter()
        if now - last_log >= 5.0 and len(records) < num_images:
            logger.info("  %s '%s': %d/%d images (%.1f s)", generator.name, split, len(records),
                        num_images, now - start)
            last_log = now

    info = {"description": generator.description, "version": str(generator.version),
            "split": split, "seed": seed, "num_images": num_images, "image_size": image_size}
    generator.write_annotations(output_dir, split, info, records)
    logger.info("Generated %s split '%s': %d images, %d objects in %.1f s -> %s",
                generator.name, split, num_images, sum(len(r["annotations"]) for r in records),
                time.perf_counter() - start, output_dir)


def generate_shapes_dataset(output_dir: str, split: str, num_images: int, seed: int,
                            image_size: int = 256, num_workers: Optional[int] = None) -> str:
    """Generate one split of the shapes dataset and return the path of its COCO json.

    Writes ``output_dir/<split>/NNNNNN.png`` (``num_images`` of them, BGR PNG) and
    ``output_dir/annotations/instances_<split>.json`` (COCO instances format). The output is a
    function of ``(seed, split)`` only: the same arguments give byte-identical files whatever
    ``num_workers`` is (default: the usable cores, at most 8; 0 or 1 runs in this process).
    Existing files of the same names are overwritten.
    """
    generate_split(INSTANCES, output_dir, split, num_images, seed, image_size, num_workers)
    return os.path.join(output_dir, "annotations", f"instances_{split}.json")


# ----------------------------------------------------------------------------- first use


def _marker_path(root_dir: str, split: str) -> str:
    return os.path.join(root_dir, f".{split}_complete.json")


def redraw_hint(generator: ShapesGenerator, root_dir: str, split: str) -> str:
    """The fix for files missing from a generated split: how to have it drawn again."""
    return (
        f"The {generator.name} split '{split}' in '{root_dir}' is generated by segtron, and "
        "files have gone missing since it was drawn. Delete its completion marker "
        f"'{_marker_path(root_dir, split)}' (or the whole directory '{root_dir}') and the split "
        "is drawn again the next time it is loaded."
    )


@contextlib.contextmanager
def hint_redraw_on_missing_files(generator: ShapesGenerator, root_dir: str,
                                 split: str) -> Iterator[None]:
    """Re-raise the missing-file errors of loading a generated split (the existence checks of
    the loaders themselves) with ``redraw_hint`` as the fix instead of "check image_root"."""
    try:
        yield
    except MissingImageFilesError as e:
        raise e.with_fix(redraw_hint(generator, root_dir, split)) from e
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} {redraw_hint(generator, root_dir, split)}") from e


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


def _move_into_place(generator: ShapesGenerator, tmp_dir: str, root_dir: str,
                     split: str) -> None:
    """Move the split's directories and jsons from ``tmp_dir`` to ``root_dir``; what they
    replace goes into ``tmp_dir``, to be deleted with it (under a name with a dot, which no
    split's directory has)."""
    for i, directory in enumerate(generator.dirs(split)):
        target = os.path.join(root_dir, directory)
        if os.path.exists(target):
            os.rename(target, os.path.join(tmp_dir, f".old_{i}"))
        os.rename(os.path.join(tmp_dir, directory), target)
    for json_file in generator.jsons(split):
        target = os.path.join(root_dir, json_file)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(tmp_dir, json_file), target)


def prepare_split(generator: ShapesGenerator, root_dir: str, split: str, num_images: int,
                  seed: int, *, image_size: int = 256, num_workers: Optional[int] = None,
                  force: bool = False, require_same_params: bool = False) -> None:
    """Make sure split ``split`` of kind ``generator`` exists, complete, under ``root_dir``.

    A split counts as complete when its marker ``root_dir/.<split>_complete.json`` (written
    last) exists. An existing complete split is kept as it is, whatever parameters it was
    generated with, unless ``force`` is set or ``require_same_params`` is set and they differ
    from these. Generation is safe when several processes call this at once: one generates
    (under an ``fcntl`` lock on ``root_dir/.lock``, into a temporary directory whose contents
    are renamed into place), the others wait.
    """
    _check_split_name(split)
    outputs = [os.path.join(root_dir, p) for p in generator.dirs(split) + generator.jsons(split)]
    marker = _marker_path(root_dir, split)
    params = {"version": generator.version, "split": split, "num_images": num_images,
              "seed": seed, "image_size": image_size}
    what = f"{generator.name} split '{split}'"

    def usable(found: Optional[Dict[str, Any]]) -> bool:
        if found is None or force or not all(os.path.exists(p) for p in outputs):
            return False
        same = all(found.get(k) == v for k, v in params.items())
        if not same and require_same_params:
            return False
        if not same:
            logger.info("Using existing %s in %s, generated with %s.", what, root_dir,
                        {k: found.get(k) for k in params})
        return True

    if usable(_read_marker(marker)):  # fast path, no lock (also works on read-only storage)
        return

    lock_file = os.path.join(root_dir, ".lock")
    try:  # fail early, and clearly, where the data cannot be written
        os.makedirs(root_dir, exist_ok=True)
        os.close(os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666))
    except OSError as e:
        raise OSError(
            f"Cannot generate the {what} in '{root_dir}': {e}. Point $SEGTRON_DATASETS at a "
            f"writable directory, or generate the data elsewhere with "
            f"'{generator.prepare_command} --root DIR' and set SEGTRON_DATASETS=DIR."
        ) from e
    with _exclusive_lock(lock_file, f"{what} in {root_dir}"):
        found = _read_marker(marker)
        if usable(found):  # another process generated it while we waited
            logger.info("The %s in %s is ready (prepared by another process).", what, root_dir)
            return
        if found is None and any(os.path.exists(p) for p in outputs):
            logger.warning("The %s in %s is incomplete (no marker %s): regenerating.", what,
                           root_dir, marker)
        # Under the lock nobody else is generating here: leftovers of crashed runs can go.
        for entry in os.listdir(root_dir):
            if entry.startswith(".tmp_"):
                shutil.rmtree(os.path.join(root_dir, entry), ignore_errors=True)
        tmp_dir = tempfile.mkdtemp(prefix=f".tmp_{split}_", dir=root_dir)
        try:
            generate_split(generator, tmp_dir, split, num_images, seed, image_size=image_size,
                           num_workers=num_workers)
            with contextlib.suppress(FileNotFoundError):
                os.remove(marker)
            _move_into_place(generator, tmp_dir, root_dir, split)
            done = dict(params, generated_by_pid=os.getpid(), generated_at=time.time())
            with open(marker + ".tmp", "w", encoding="utf-8") as f:
                json.dump(done, f)
            os.replace(marker + ".tmp", marker)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("The %s is ready in %s.", what, root_dir)


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
    prepare_split(INSTANCES, root_dir, split, num_images, seed, image_size=image_size,
                  num_workers=num_workers, force=force, require_same_params=require_same_params)
    return (os.path.join(root_dir, "annotations", f"instances_{split}.json"),
            os.path.join(root_dir, split))


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

        with hint_redraw_on_missing_files(INSTANCES, root_dir, split):
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
