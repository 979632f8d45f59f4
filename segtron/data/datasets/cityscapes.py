"""Cityscapes (gtFine) -> Detectron2 dataset dicts, for instance and semantic segmentation.

Layout: ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with, in ``gtFine/<split>/<city>/``,
``<stem>_gtFine_polygons.json``, ``_instanceIds.png``, ``_labelIds.png`` and (made by
``datasets/prepare_cityscapes_sem_seg.py``) ``_labelTrainIds.png``.

Instances from the polygon json are resolved the way cityscapesScripts builds its ground truth
(``json2instanceImg``): polygons are drawn in file order, each covering the ones before it.
This is done by rasterising them (Pillow, as cityscapesScripts does) rather than with
polygon algebra, so no ``shapely`` or ``cityscapesscripts`` install is needed. The visible part
of each instance is turned back into polygons that follow its pixel outline exactly (vertices
on pixel corners; outer outlines only, holes are filled, as in Detectron2); its box is the
outline's extent. Detectron2 gets nearly the same shapes by dilating each json polygon by half a
pixel and subtracting the later ones with shapely.
"""

import functools
import json
import logging
import os
from collections import namedtuple
from typing import Any, Dict, List, Tuple

import numpy as np

from ...structures.boxes import BoxMode
from ...utils.worker_pool import can_start_workers, spawn_pool

__all__ = ["load_cityscapes_instances", "load_cityscapes_semantic"]

logger = logging.getLogger(__name__)

_Label = namedtuple("_Label", "name id train_id has_instances ignore_in_eval")

# The Cityscapes label definitions (cityscapesScripts' helpers/labels.py): name, label id (the
# value in *_labelIds.png), trainId (255 = ignored in training), hasInstances, ignoreInEval.
_LABELS = (
    _Label("unlabeled", 0, 255, False, True),
    _Label("ego vehicle", 1, 255, False, True),
    _Label("rectification border", 2, 255, False, True),
    _Label("out of roi", 3, 255, False, True),
    _Label("static", 4, 255, False, True),
    _Label("dynamic", 5, 255, False, True),
    _Label("ground", 6, 255, False, True),
    _Label("road", 7, 0, False, False),
    _Label("sidewalk", 8, 1, False, False),
    _Label("parking", 9, 255, False, True),
    _Label("rail track", 10, 255, False, True),
    _Label("building", 11, 2, False, False),
    _Label("wall", 12, 3, False, False),
    _Label("fence", 13, 4, False, False),
    _Label("guard rail", 14, 255, False, True),
    _Label("bridge", 15, 255, False, True),
    _Label("tunnel", 16, 255, False, True),
    _Label("pole", 17, 5, False, False),
    _Label("polegroup", 18, 255, False, True),
    _Label("traffic light", 19, 6, False, False),
    _Label("traffic sign", 20, 7, False, False),
    _Label("vegetation", 21, 8, False, False),
    _Label("terrain", 22, 9, False, False),
    _Label("sky", 23, 10, False, False),
    _Label("person", 24, 11, True, False),
    _Label("rider", 25, 12, True, False),
    _Label("car", 26, 13, True, False),
    _Label("truck", 27, 14, True, False),
    _Label("bus", 28, 15, True, False),
    _Label("caravan", 29, 255, True, True),
    _Label("trailer", 30, 255, True, True),
    _Label("train", 31, 16, True, False),
    _Label("motorcycle", 32, 17, True, False),
    _Label("bicycle", 33, 18, True, False),
    _Label("license plate", -1, -1, False, True),
)
_NAME_TO_LABEL = {label.name: label for label in _LABELS}
_ID_TO_LABEL = {label.id: label for label in _LABELS}
# Instance classes that are evaluated, in label-id order -> contiguous ids 0..7
# (person, rider, car, truck, bus, train, motorcycle, bicycle).
_THING_ID_TO_CONTIGUOUS = {
    label.id: i
    for i, label in enumerate(l for l in _LABELS if l.has_instances and not l.ignore_in_eval)
}

_IMAGE_SUFFIX = "leftImg8bit.png"
# Below this many images the files are parsed in this process; above, in a process pool.
_POOL_MIN_FILES = 64


def _train_id_lut() -> np.ndarray:
    """uint8 table mapping a label id (0..255) to its trainId (255 where ignored/unknown)."""
    lut = np.full(256, 255, dtype=np.uint8)
    for label in _LABELS:
        if 0 <= label.id < 256 and 0 <= label.train_id < 255:
            lut[label.id] = label.train_id
    return lut


def _num_workers() -> int:
    """Processes used to parse a large split: half the cores, at most 16."""
    return min(max((os.cpu_count() or 1) // 2, 1), 16)


def _get_cityscapes_files(image_dir: str, gt_dir: str) -> List[Tuple[str, str, str, str]]:
    """Return ``(image, instanceIds png, labelIds png, polygons json)`` per image, sorted."""
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(
            f"Cityscapes image directory {image_dir} does not exist; expected "
            "leftImg8bit/<split>/<city>/*_leftImg8bit.png."
        )
    files = []
    for city in sorted(os.listdir(image_dir)):
        city_img_dir = os.path.join(image_dir, city)
        if not os.path.isdir(city_img_dir):
            continue
        for basename in sorted(os.listdir(city_img_dir)):
            if not basename.endswith(_IMAGE_SUFFIX):
                continue
            stem = os.path.join(gt_dir, city, basename[: -len(_IMAGE_SUFFIX)] + "gtFine_")
            files.append((os.path.join(city_img_dir, basename), stem + "instanceIds.png",
                          stem + "labelIds.png", stem + "polygons.json"))
    if not files:
        raise FileNotFoundError(
            f"No Cityscapes images (<city>/*_{_IMAGE_SUFFIX}) found under {image_dir}."
        )
    logger.info("%d Cityscapes images found in %s", len(files), image_dir)
    return files


def _lookup_label(name: str, json_file: str) -> Tuple[_Label, bool]:
    """Return (label, is_crowd) for a polygon's label name; "cargroup" is a crowd of cars."""
    if name in _NAME_TO_LABEL:
        return _NAME_TO_LABEL[name], False
    if name.endswith("group") and name[: -len("group")] in _NAME_TO_LABEL:
        return _NAME_TO_LABEL[name[: -len("group")]], True
    raise ValueError(f"{json_file}: unknown Cityscapes label '{name}'.")


def _mask_to_polygons(mask: np.ndarray, x0: int, y0: int) -> List[List[float]]:
    """Outer outlines of the pixels of ``mask`` (a crop at offset x0, y0), as flat polygons
    whose vertices lie on pixel corners (a pixel (x, y) spans [x, x+1] x [y, y+1])."""
    import cv2

    # Work at twice the resolution, on the grid of pixel corners: corner[j, i] is set when one
    # of the four pixels touching corner (i, j) is set. The contour of that grid is the pixel
    # outline of the mask, except that it cuts concave corners diagonally (put back below);
    # doubling the resolution first keeps one-pixel gaps between parts of the mask open.
    big = np.pad(np.repeat(np.repeat(mask.astype(bool), 2, axis=0), 2, axis=1), 1)
    corner = big[:-1, :-1] | big[:-1, 1:] | big[1:, :-1] | big[1:, 1:]
    corner = np.pad(corner, 1)  # findContours needs a zero border; coordinates shift by 1
    contours = cv2.findContours(corner.astype(np.uint8), cv2.RETR_EXTERNAL,
                                cv2.CHAIN_APPROX_NONE)[-2]
    polygons = []
    for contour in contours:
        points = _axis_aligned_outline(contour.reshape(-1, 2), corner)
        if len(points) < 3:
            continue
        xy = (np.asarray(points, dtype=np.float64) - 1) / 2 + (x0, y0)
        polygons.append(xy.reshape(-1).tolist())
    return polygons


def _axis_aligned_outline(chain: np.ndarray, corner: np.ndarray) -> List[Tuple[int, int]]:
    """Replace each diagonal step of a closed chain of corner points by the two axis-aligned
    steps through the corner that is set in ``corner``; keep only the turning points."""
    steps = []
    n = len(chain)
    for k in range(n):
        (xa, ya), (xb, yb) = chain[k], chain[(k + 1) % n]
        steps.append((int(xa), int(ya)))
        if xa != xb and ya != yb:
            if corner[ya, xb]:
                steps.append((int(xb), int(ya)))
            elif corner[yb, xa]:
                steps.append((int(xa), int(yb)))
    # Drop points where the outline goes straight on.
    m = len(steps)
    if m < 3:
        return steps
    turns = []
    for k in range(m):
        (xp, yp), (x, y), (xn, yn) = steps[k - 1], steps[k], steps[(k + 1) % m]
        if (x - xp) * (yn - y) - (y - yp) * (xn - x) != 0:
            turns.append((x, y))
    return turns


def _instance_annotation(mask: np.ndarray, x0: int, y0: int, category_id: int, iscrowd: bool,
                         to_polygons: bool, height: int, width: int):
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    anno = {
        "iscrowd": iscrowd,
        "category_id": category_id,
        # The extent of the visible pixels, in pixel-edge coordinates.
        "bbox": (float(x0 + xs.min()), float(y0 + ys.min()),
                 float(x0 + xs.max() + 1), float(y0 + ys.max() + 1)),
        "bbox_mode": BoxMode.XYXY_ABS,
    }
    if to_polygons:
        anno["segmentation"] = _mask_to_polygons(mask, x0, y0)
    else:
        import pycocotools.mask as mask_util

        full = np.zeros((height, width), dtype=np.uint8, order="F")
        full[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]] = mask
        anno["segmentation"] = mask_util.encode(full[:, :, None])[0]
    return anno


def _annotations_from_json(json_file: str, to_polygons: bool) -> Tuple[int, int, List[dict]]:
    from PIL import Image, ImageDraw

    try:
        with open(json_file) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Cityscapes polygon file {json_file} does not exist; gtFine must hold a "
            "*_gtFine_polygons.json next to each image's other ground-truth files."
        ) from None
    height, width = int(data["imgHeight"]), int(data["imgWidth"])
    # Paint the polygons in file order (later ones cover earlier ones), each with its own value.
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    instances = []
    for index, obj in enumerate(data["objects"], start=1):
        if "deleted" in obj:
            continue
        label, crowd = _lookup_label(obj["label"], json_file)
        if label.id < 0:  # e.g. license plate: never drawn in the ground truth
            continue
        points = [(float(x), float(y)) for x, y in obj["polygon"]]
        if not points:
            continue
        draw.polygon(points, fill=index)
        # Non-instance labels (road, sky, ...) are painted too: they still cover instances.
        if label.has_instances and not label.ignore_in_eval:
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            instances.append((index, label, crowd, min(xs), min(ys), max(xs), max(ys)))
    painted = np.asarray(canvas)
    annos = []
    for index, label, crowd, px0, py0, px1, py1 in instances:
        x0, y0 = max(int(np.floor(px0)), 0), max(int(np.floor(py0)), 0)
        x1, y1 = min(int(np.ceil(px1)) + 1, width), min(int(np.ceil(py1)) + 1, height)
        if x1 <= x0 or y1 <= y0:
            continue
        mask = (painted[y0:y1, x0:x1] == index).astype(np.uint8)
        anno = _instance_annotation(mask, x0, y0, _THING_ID_TO_CONTIGUOUS[label.id], crowd,
                                    to_polygons, height, width)
        if anno is not None:
            annos.append(anno)
    return height, width, annos


def _annotations_from_png(instance_file: str, to_polygons: bool) -> Tuple[int, int, List[dict]]:
    from PIL import Image

    try:
        with Image.open(instance_file) as im:
            inst = np.asarray(im).astype(np.int64)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"Cityscapes instance png {instance_file} does not exist; it ships in gtFine."
        ) from None
    height, width = inst.shape
    annos = []
    # Values >= 1000 are label_id * 1000 + instance index; values < 1000 are a label id, i.e.
    # a crowd region for instance classes. Ids below 24 are never instance classes.
    for value in np.unique(inst[inst >= 24]):
        label_id = int(value // 1000 if value >= 1000 else value)
        if label_id not in _THING_ID_TO_CONTIGUOUS:
            continue
        ys, xs = np.nonzero(inst == value)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        mask = (inst[y0:y1, x0:x1] == value).astype(np.uint8)
        anno = _instance_annotation(mask, int(x0), int(y0), _THING_ID_TO_CONTIGUOUS[label_id],
                                    bool(value < 1000), to_polygons, height, width)
        if anno is not None:
            annos.append(anno)
    return height, width, annos


def _cityscapes_files_to_dict(files: Tuple[str, str, str, str], from_json: bool,
                              to_polygons: bool) -> Dict[str, Any]:
    image_file, instance_file, _, json_file = files
    if from_json:
        height, width, annos = _annotations_from_json(json_file, to_polygons)
    else:
        height, width, annos = _annotations_from_png(instance_file, to_polygons)
    return {"file_name": image_file, "image_id": os.path.basename(image_file),
            "height": height, "width": width, "annotations": annos}


def load_cityscapes_instances(image_dir: str, gt_dir: str, from_json: bool = True,
                              to_polygons: bool = True) -> List[Dict[str, Any]]:
    """Load Cityscapes instance annotations of one split.

    Args:
        image_dir: e.g. ``datasets/cityscapes/leftImg8bit/train``.
        gt_dir: e.g. ``datasets/cityscapes/gtFine/train``.
        from_json: read ``*_gtFine_polygons.json`` (True) or ``*_gtFine_instanceIds.png``.
        to_polygons: segmentation as polygons (list of flat [x0, y0, x1, y1, ...] lists on
            pixel corners) or, if False, as COCO RLE dicts.

    Returns:
        list[dict], one per image (sorted by city and name): ``file_name``, ``image_id`` (the
        image's basename), ``height``, ``width``, ``annotations`` with ``iscrowd`` (True for
        "<class>group" regions), ``category_id`` (0..7 in the order person, rider, car, truck,
        bus, train, motorcycle, bicycle), ``bbox`` (XYXY_ABS, extent of the visible pixels),
        ``bbox_mode`` and ``segmentation``. Fully covered instances are dropped.

    With ``from_json=False`` the box is also the pixel-edge extent ``(xmin, ymin, xmax + 1,
    ymax + 1)`` of the instance's pixels (Detectron2 leaves out the + 1 on that path only).
    """
    files = _get_cityscapes_files(image_dir, gt_dir)
    parse = functools.partial(_cityscapes_files_to_dict, from_json=from_json,
                              to_polygons=to_polygons)
    workers = _num_workers()
    if len(files) >= _POOL_MIN_FILES and workers > 1 and can_start_workers():
        logger.info("Parsing Cityscapes annotations with %d processes ...", workers)
        with spawn_pool(workers) as pool:
            dicts = pool.map(parse, files, chunksize=8)
    else:
        dicts = [parse(f) for f in files]
    logger.info("Loaded %d images from %s", len(dicts), image_dir)
    return dicts


def load_cityscapes_semantic(image_dir: str, gt_dir: str) -> List[Dict[str, Any]]:
    """Load Cityscapes semantic segmentation of one split.

    Returns:
        list[dict]: ``file_name``, ``sem_seg_file_name`` (``*_gtFine_labelTrainIds.png``: values
        are trainIds 0..18, 255 = ignore), ``height``, ``width`` (from the polygon json).

    Raises FileNotFoundError when the labelTrainIds pngs have not been generated yet (run
    ``python datasets/prepare_cityscapes_sem_seg.py``).
    """
    dicts = []
    for image_file, _, label_file, json_file in _get_cityscapes_files(image_dir, gt_dir):
        train_id_file = label_file.replace("labelIds", "labelTrainIds")
        if not dicts and not os.path.isfile(train_id_file):
            raise FileNotFoundError(
                f"{train_id_file} does not exist. Generate the *_labelTrainIds.png files with "
                "`python datasets/prepare_cityscapes_sem_seg.py` (or cityscapesScripts' "
                "createTrainIdLabelImgs.py); see datasets/README.md#cityscapes."
            )
        with open(json_file) as f:
            data = json.load(f)
        dicts.append({"file_name": image_file, "sem_seg_file_name": train_id_file,
                      "height": data["imgHeight"], "width": data["imgWidth"]})
    return dicts
