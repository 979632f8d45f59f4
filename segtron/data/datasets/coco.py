"""COCO-format annotations <-> Detectron2's standard dataset dicts (``detectron2.data.datasets.coco``).

* ``load_coco_json`` reads a COCO instances/keypoints json into ``list[dict]``;
* ``register_coco_instances`` registers such a file lazily under a dataset name;
* ``convert_to_coco_dict`` / ``convert_to_coco_json`` turn any registered dataset back into COCO
  json (what ``COCOEvaluator`` needs for datasets that are not COCO files to begin with);
* ``load_sem_seg`` pairs images with per-pixel label files for semantic segmentation.

Unlike Detectron2, the loader validates the file first: a broken file fails with a ValueError
naming the file, the ids and the fix, and each annotation it drops is counted in the log.
"""

import contextlib
import datetime
import io
import json
import logging
import os
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pycocotools.mask as mask_util

from ...structures.boxes import BoxMode
from ..catalog import DatasetCatalog, MetadataCatalog
from .coco_validation import (
    DropCounter,
    are_finite,
    are_numbers,
    bbox_is_well_formed,
    check_coco_references,
    check_coco_structure,
    check_image_files_exist,
    format_examples,
    read_coco_json,
)

__all__ = [
    "load_coco_json",
    "load_sem_seg",
    "convert_to_coco_dict",
    "convert_to_coco_json",
    "register_coco_instances",
]

logger = logging.getLogger(__name__)

# Keys copied from every COCO annotation into the dataset dict when present.
_BASE_ANNOTATION_KEYS = ("iscrowd", "bbox", "keypoints", "category_id")

_DROP_IGNORE = "with 'ignore': 1 skipped (ignore regions are not supported; mark them iscrowd=1)"
_DROP_EMPTY_BOX = "with a box of width or height <= 0 dropped"
_DROP_NON_FINITE_BOX = (
    "with a NaN or infinite box coordinate dropped (fix the exporter that wrote them)"
)
_DROP_BOX_OUTSIDE = (
    "with a box entirely outside its image dropped (check the image's width/height and that "
    "boxes are [x, y, width, height])"
)
_DROP_NO_POLYGON = (
    "dropped because none of their polygons has >= 3 points (6 finite numbers, an even count)"
)
_DROP_POLYGONS_OUTSIDE = "dropped because their polygons lie entirely outside the image"
_BAD_POLYGON = (
    "had polygons with < 3 points, an odd number of coordinates or a NaN/infinite coordinate "
    "removed"
)


def _build_coco_api(data: Dict[str, Any]):
    """Index the decoded json with pycocotools' COCO (without its prints on stdout)."""
    from pycocotools.coco import COCO

    api = COCO()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _is_valid_polygon(polygon: Any) -> bool:
    """A flat list of an even number (>= 6) of finite numbers."""
    return (
        isinstance(polygon, list)
        and len(polygon) >= 6
        and len(polygon) % 2 == 0
        and are_numbers(polygon)
        and are_finite(polygon)
    )


def _polygons_outside(polygons: List[List[float]], width: float, height: float) -> bool:
    """True when the extent of all the points misses the image ``[0, width] x [0, height]``."""
    xs = [x for p in polygons for x in p[0::2]]
    ys = [y for p in polygons for y in p[1::2]]
    return max(xs) <= 0 or min(xs) >= width or max(ys) <= 0 or min(ys) >= height


def _box_outside(bbox: Sequence[float], width: float, height: float) -> bool:
    """True when the XYWH box does not overlap the image ``[0, width] x [0, height]``."""
    x, y, w, h = bbox[:4]
    return x >= width or y >= height or x + w <= 0 or y + h <= 0


def _convert_segmentation(
    segm: Any, ann_id: Any, json_file: str, drops: DropCounter, image_size: Sequence[float]
) -> Any:
    """Return the segmentation to store, or None when the annotation must be dropped.

    Polygons with fewer than 3 points, an odd number of coordinates or a non-finite one are
    removed; an annotation is dropped when no polygon is left or when they all lie outside the
    image (``image_size`` is (height, width)). An RLE dict with uncompressed (list) counts is
    compressed with pycocotools.
    """
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(
                f"Annotation {ann_id} in COCO json file '{json_file}' has an RLE segmentation "
                f"without 'counts' and 'size' (keys: {sorted(segm)}). Fix that annotation."
            )
        if isinstance(segm["counts"], list):
            height, width = segm["size"]
            return mask_util.frPyObjects(segm, height, width)
        return segm
    if isinstance(segm, list):
        polygons = [p for p in segm if _is_valid_polygon(p)]
        if len(polygons) < len(segm):
            drops.add(_BAD_POLYGON, ann_id)
        if not polygons:
            drops.add(_DROP_NO_POLYGON, ann_id)
            return None
        if _polygons_outside(polygons, image_size[1], image_size[0]):
            drops.add(_DROP_POLYGONS_OUTSIDE, ann_id)
            return None
        return polygons
    raise ValueError(
        f"Annotation {ann_id} in COCO json file '{json_file}' has a segmentation of type "
        f"{type(segm).__name__}; COCO expects a list of polygons or an RLE dict."
    )


def _set_metadata_from_json(dataset_name: str, categories, json_file: str, image_root: str):
    """Set thing_classes, the id map and (if unset) paths/evaluator; return the id map."""
    meta = MetadataCatalog.get(dataset_name)
    cats = sorted(categories, key=lambda c: c["id"])
    cat_ids = [c["id"] for c in cats]
    meta.thing_classes = [c["name"] for c in cats]
    if cat_ids and not (min(cat_ids) == 1 and max(cat_ids) == len(cat_ids)):
        if "coco" not in dataset_name:
            logger.warning(
                "Category ids in '%s' are not 1..%d (they are %s); mapping them to contiguous "
                "ids 0..%d for dataset '%s'.",
                json_file,
                len(cat_ids),
                format_examples(cat_ids, limit=10),
                len(cat_ids) - 1,
                dataset_name,
            )
    id_map = {cid: i for i, cid in enumerate(cat_ids)}
    meta.thing_dataset_id_to_contiguous_id = id_map
    for key, value in (
        ("json_file", json_file),
        ("image_root", image_root),
        ("evaluator_type", "coco"),
    ):
        if meta.get(key) is None:
            setattr(meta, key, value)
    return id_map


def load_coco_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    extra_annotation_keys: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """Load a COCO instances (or person keypoints) json file as Detectron2 dataset dicts.

    Args:
        json_file: path of the COCO-format json file.
        image_root: directory the images' ``file_name`` entries are relative to.
        dataset_name: when given, category ids are mapped to contiguous ids 0..K-1 (in order of
            category id) and the dataset's metadata gets ``thing_classes``,
            ``thing_dataset_id_to_contiguous_id`` and, where not yet set, ``json_file``,
            ``image_root`` and ``evaluator_type="coco"``. Without it category ids are kept.
        extra_annotation_keys: more annotation fields to copy (besides iscrowd, bbox,
            keypoints, category_id and segmentation).

    Returns:
        ``list[dict]``, one per image sorted by image id, each with ``file_name``, ``height``,
        ``width``, ``image_id`` and ``annotations`` (``bbox`` XYWH_ABS, ``bbox_mode``,
        ``category_id``, optional ``segmentation`` (polygons or compressed RLE), ``keypoints``
        (x/y shifted by +0.5: COCO stores pixel indices, Detectron2 uses continuous
        coordinates), ``iscrowd`` and the extra keys).

    Dropped, with a warning per reason: annotations with ``ignore: 1``, boxes with a NaN or
    infinite coordinate, boxes with width or height <= 0, boxes entirely outside their image,
    annotations whose polygons all have < 3 points (or a non-finite coordinate) or all lie
    outside the image. Raises ValueError for invalid JSON, missing ``images``/``categories``,
    an empty ``images`` list, duplicate image, category or annotation ids, unknown category
    ids, annotations of missing images, missing image files (``MissingImageFilesError``) and
    annotations without a bbox of 4 numbers; FileNotFoundError if ``json_file`` is missing.
    """
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    start = time.perf_counter()
    data = read_coco_json(json_file)
    check_coco_structure(data, json_file)
    check_coco_references(data, json_file)
    coco_api = _build_coco_api(data)
    seconds = time.perf_counter() - start
    if seconds > 1:
        logger.info("Loading %s took %.2f seconds.", json_file, seconds)

    id_map = None
    if dataset_name is not None:
        id_map = _set_metadata_from_json(
            dataset_name, coco_api.loadCats(coco_api.getCatIds()), json_file, image_root
        )

    img_ids = sorted(coco_api.imgs.keys())
    images = coco_api.loadImgs(img_ids)
    file_names = [os.path.join(image_root, im["file_name"]) for im in images]
    check_image_files_exist(file_names, image_root, json_file)

    ann_keys = list(_BASE_ANNOTATION_KEYS) + list(extra_annotation_keys or [])
    drops = DropCounter()
    bad_bbox: List[Any] = []
    dataset_dicts = []
    for image, file_name in zip(images, file_names):
        image_id = image["id"]
        record = {
            "file_name": file_name,
            "height": image["height"],
            "width": image["width"],
            "image_id": image_id,
        }
        objs = []
        for anno in coco_api.imgToAnns.get(image_id, []):
            ann_id = anno["id"]
            if anno.get("ignore", 0):
                drops.add(_DROP_IGNORE, ann_id)
                continue
            bbox = anno.get("bbox")
            if not bbox_is_well_formed(bbox):
                bad_bbox.append(ann_id)
                continue
            if not are_finite(bbox):
                drops.add(_DROP_NON_FINITE_BOX, ann_id)
                continue
            if bbox[2] <= 0 or bbox[3] <= 0:
                drops.add(_DROP_EMPTY_BOX, ann_id)
                continue
            if _box_outside(bbox, image["width"], image["height"]):
                drops.add(_DROP_BOX_OUTSIDE, ann_id)
                continue
            obj = {key: anno[key] for key in ann_keys if key in anno}
            segm = anno.get("segmentation")
            if segm:
                image_size = (image["height"], image["width"])
                segm = _convert_segmentation(segm, ann_id, json_file, drops, image_size)
                if segm is None:
                    continue
                obj["segmentation"] = segm
            keypoints = anno.get("keypoints")
            if keypoints:
                # Every third number is a visibility flag; the others are pixel indices, which
                # become continuous coordinates (pixel centres) by adding 0.5.
                obj["keypoints"] = [v if i % 3 == 2 else v + 0.5 for i, v in enumerate(keypoints)]
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            if id_map is not None:
                obj["category_id"] = id_map[anno["category_id"]]
            objs.append(obj)
        record["annotations"] = objs
        dataset_dicts.append(record)

    if bad_bbox:
        raise ValueError(
            f"{len(bad_bbox)} annotations in COCO json file '{json_file}' have a missing, empty "
            f"or malformed 'bbox' (annotation ids: {format_examples(bad_bbox)}). Every COCO "
            "annotation needs 'bbox': [x, y, width, height] (4 numbers); fix or remove those "
            "annotations."
        )
    drops.log(json_file)
    logger.info(
        "Loaded %d images in COCO format from %s (%d annotations kept).",
        len(dataset_dicts),
        json_file,
        sum(len(d["annotations"]) for d in dataset_dicts),
    )
    return dataset_dicts


def register_coco_instances(name: str, metadata: Dict[str, Any], json_file, image_root) -> None:
    """Register a COCO-format json file as dataset ``name`` (instances, keypoints, boxes).

    The json file is read only when ``DatasetCatalog.get(name)`` is called. The metadata gets
    ``json_file``, ``image_root``, ``evaluator_type="coco"`` and the entries of ``metadata``
    (e.g. ``thing_classes`` or ``{}``); ``thing_classes`` and the id map are added on load.

    Args:
        name: dataset name, e.g. ``"my_dataset_train"``.
        metadata: extra metadata fields (a dict, may be empty).
        json_file: path of the COCO json file (str or os.PathLike).
        image_root: directory holding the images (str or os.PathLike).
    """
    if not isinstance(name, str):
        raise TypeError(f"register_coco_instances: name must be a str, got {type(name).__name__}.")
    if not isinstance(metadata, dict):
        raise TypeError(
            f"register_coco_instances('{name}', ...): metadata must be a dict (use {{}} for "
            f"none), got {type(metadata).__name__}."
        )
    for arg, value in (("json_file", json_file), ("image_root", image_root)):
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(
                f"register_coco_instances('{name}', ...): {arg} must be a path (str or "
                f"os.PathLike), got {type(value).__name__} {value!r}. Check the argument order: "
                "(name, metadata, json_file, image_root)."
            )
    json_file = os.fspath(json_file)
    image_root = os.fspath(image_root)
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **metadata
    )


def _polygons_area(polygons: List[List[float]]) -> float:
    """Sum of the shoelace areas of the polygons of one instance (float64)."""
    total = 0.0
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        x, y = xy[:, 0], xy[:, 1]
        total += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return total


def _box_area(bbox: List[float], mode: BoxMode) -> float:
    """Area of an XYWH_ABS (via XYXY, in float32 like ``Boxes.area``) or XYWHA_ABS box."""
    if mode == BoxMode.XYWHA_ABS:
        return float(np.float32(bbox[2]) * np.float32(bbox[3]))
    x0, y0, x1, y1 = (np.float32(v) for v in BoxMode.convert(list(bbox), mode, BoxMode.XYXY_ABS))
    return float((x1 - x0) * (y1 - y0))


def _coco_segmentation(segm: Any, dataset_name: str, image_id: Any):
    """Return ``(json-serialisable segmentation, area)`` for one instance mask."""
    if isinstance(segm, list):
        return segm, _polygons_area(segm)
    if isinstance(segm, np.ndarray):
        if segm.ndim != 2:
            raise ValueError(
                f"Dataset '{dataset_name}', image {image_id}: a bitmask segmentation must be "
                f"2-D (H, W), got shape {segm.shape}."
            )
        segm = mask_util.encode(np.asfortranarray(segm.astype(np.uint8)))
    if isinstance(segm, dict):
        rle = dict(segm)
        if isinstance(rle.get("counts"), list):
            rle = mask_util.frPyObjects(rle, *rle["size"])
        area = float(mask_util.area(rle))
        if isinstance(rle["counts"], bytes):
            rle["counts"] = rle["counts"].decode("ascii")
        return rle, area
    raise TypeError(
        f"Dataset '{dataset_name}', image {image_id}: unknown segmentation type "
        f"{type(segm).__name__}; expected polygons (list[list[float]]), an RLE dict or a 2-D "
        "numpy mask."
    )


def convert_to_coco_dict(dataset_name: str) -> Dict[str, Any]:
    """Convert registered dataset ``dataset_name`` (standard dataset dicts) to a COCO dict.

    Boxes are converted to XYWH_ABS (XYWHA_ABS for 5-number rotated boxes) and rounded to 3
    decimals; ``area`` comes from the mask (polygon area or RLE pixel count) or else the box;
    contiguous category ids are mapped back through ``thing_dataset_id_to_contiguous_id`` when
    the metadata has it; keypoints get the 0.5 shift undone. Annotation ids are 1..N; image ids
    are the dicts' ``image_id`` (or their position). Returns a dict with ``info`` (including
    ``date_created``), ``images``, ``annotations``, ``categories`` and ``licenses``.
    """
    dataset_dicts = DatasetCatalog.get(dataset_name)
    metadata = MetadataCatalog.get(dataset_name)
    thing_classes = metadata.get("thing_classes")
    if thing_classes is None:
        raise AttributeError(
            f"convert_to_coco_dict('{dataset_name}'): the dataset's metadata has no "
            "thing_classes. Set them with MetadataCatalog.get(name).set(thing_classes=[...])."
        )
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map is not None:
        reverse = {contiguous: dataset_id for dataset_id, contiguous in id_map.items()}

        def to_dataset_id(contiguous_id):
            try:
                return reverse[contiguous_id]
            except KeyError:
                raise ValueError(
                    f"convert_to_coco_dict('{dataset_name}'): category_id {contiguous_id} is not "
                    "a value of the metadata's thing_dataset_id_to_contiguous_id "
                    f"({id_map}). Fix the annotations or the metadata."
                ) from None

    else:

        def to_dataset_id(contiguous_id):
            return contiguous_id

    categories = [{"id": to_dataset_id(i), "name": n} for i, n in enumerate(thing_classes)]
    logger.info("Converting dataset '%s' to COCO format.", dataset_name)
    images, annotations = [], []
    for position, record in enumerate(dataset_dicts):
        image = {
            "id": record.get("image_id", position),
            "width": int(record["width"]),
            "height": int(record["height"]),
            "file_name": str(record["file_name"]),
        }
        images.append(image)
        for ann in record.get("annotations", []):
            bbox = ann["bbox"]
            if isinstance(bbox, np.ndarray):
                if bbox.ndim != 1:
                    raise ValueError(
                        f"Dataset '{dataset_name}', image {image['id']}: bbox must be 1-D, got "
                        f"shape {bbox.shape}."
                    )
                bbox = bbox.tolist()
            if len(bbox) not in (4, 5):
                raise ValueError(
                    f"Dataset '{dataset_name}', image {image['id']}: bbox must have 4 numbers "
                    f"(or 5 for rotated boxes), got {bbox}."
                )
            to_mode = BoxMode.XYWH_ABS if len(bbox) == 4 else BoxMode.XYWHA_ABS
            bbox = [float(v) for v in BoxMode.convert(list(bbox), ann["bbox_mode"], to_mode)]

            coco_ann: Dict[str, Any] = {"id": len(annotations) + 1, "image_id": image["id"]}
            if "segmentation" in ann:
                segm, area = _coco_segmentation(ann["segmentation"], dataset_name, image["id"])
            else:
                segm, area = None, _box_area(bbox, to_mode)
            coco_ann["bbox"] = [round(v, 3) for v in bbox]
            coco_ann["area"] = float(area)
            coco_ann["iscrowd"] = int(ann.get("iscrowd", 0))
            coco_ann["category_id"] = int(to_dataset_id(ann["category_id"]))
            if "keypoints" in ann:
                kps = [v if i % 3 == 2 else v - 0.5 for i, v in enumerate(ann["keypoints"])]
                coco_ann["keypoints"] = kps
                coco_ann["num_keypoints"] = (
                    ann["num_keypoints"] if "num_keypoints" in ann else sum(v > 0 for v in kps[2::3])
                )
            if segm is not None:
                coco_ann["segmentation"] = segm
            annotations.append(coco_ann)

    logger.info(
        "Converted dataset '%s': %d images, %d annotations.",
        dataset_name,
        len(images),
        len(annotations),
    )
    info = {
        "date_created": str(datetime.datetime.now()),
        "description": f"COCO json generated by segtron from dataset '{dataset_name}'.",
    }
    return {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories,
        "licenses": None,
    }


def convert_to_coco_json(dataset_name: str, output_file: str, allow_cached: bool = True) -> None:
    """Write dataset ``dataset_name`` as a COCO json file at ``output_file``.

    With ``allow_cached`` an existing ``output_file`` is reused as is (logged: delete it when
    the dataset changed). The file is written to a temporary file in the same directory and
    moved into place with ``os.replace``, so readers never see a partial file; a file lock
    keeps concurrent processes from converting at the same time.
    """
    from iopath.common.file_io import file_lock

    output_file = os.fspath(output_file)
    out_dir = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(out_dir, exist_ok=True)
    with file_lock(output_file):
        if allow_cached and os.path.exists(output_file):
            logger.warning(
                "Using previously cached COCO annotations of '%s' at '%s'. Delete that file if "
                "the dataset has changed.",
                dataset_name,
                output_file,
            )
            return
        coco_dict = convert_to_coco_dict(dataset_name)
        logger.info("Caching COCO annotations of '%s' at '%s'.", dataset_name, output_file)
        fd, tmp_path = tempfile.mkstemp(
            prefix=os.path.basename(output_file) + ".", suffix=".tmp", dir=out_dir
        )
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(coco_dict, f)
            os.replace(tmp_path, output_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp_path)
            raise


def _files_by_stem(folder: str, ext: str) -> Dict[str, str]:
    """Map file stem -> path for the files of ``folder`` (not recursive) ending with ``ext``."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"load_sem_seg: directory '{folder}' does not exist.")
    out = {}
    for name in os.listdir(folder):
        if name.endswith(ext) and os.path.isfile(os.path.join(folder, name)):
            stem = name[: len(name) - len(ext)]
            out[stem[:-1] if stem.endswith(".") else stem] = os.path.join(folder, name)
    return out


def load_sem_seg(
    gt_root: str, image_root: str, gt_ext: str = "png", image_ext: str = "jpg"
) -> List[Dict[str, Any]]:
    """Pair images with semantic-segmentation label files by file stem.

    Args:
        gt_root: directory of label images (one integer class id per pixel).
        image_root: directory of the input images.
        gt_ext / image_ext: file name endings of the label and input files.

    Returns:
        ``list[dict]`` sorted by stem, each with ``file_name`` and ``sem_seg_file_name``.

    A label file without an image is a ValueError (listing them: check image_root/image_ext);
    images without labels are left out with a warning (as Detectron2, which uses the
    intersection so labels for a subset of a split work). No label files, or no pair at all,
    is a ValueError.
    """
    gt_root, image_root = os.fspath(gt_root), os.fspath(image_root)
    gts = _files_by_stem(gt_root, gt_ext)
    if not gts:
        raise ValueError(
            f"load_sem_seg: no label files ending with '{gt_ext}' in '{gt_root}'. Check gt_root "
            "and gt_ext."
        )
    imgs = _files_by_stem(image_root, image_ext)
    gt_only = sorted(set(gts) - set(imgs))
    if gt_only:
        raise ValueError(
            f"load_sem_seg: {len(gt_only)} of {len(gts)} label files in '{gt_root}' have no image "
            f"ending with '{image_ext}' in '{image_root}' (stems: {format_examples(gt_only)}). "
            "Check image_root and image_ext, or remove those label files."
        )
    img_only = sorted(set(imgs) - set(gts))
    if img_only:
        logger.warning(
            "load_sem_seg: %d of %d images in '%s' have no label in '%s' and are left out "
            "(stems: %s).",
            len(img_only),
            len(imgs),
            image_root,
            gt_root,
            format_examples(img_only),
        )
    stems = sorted(gts)
    logger.info("Loaded %d images with semantic segmentation from %s.", len(stems), image_root)
    return [{"file_name": imgs[s], "sem_seg_file_name": gts[s]} for s in stems]
