"""Panoptic Quality (PQ, SQ, RQ) of COCO-format panoptic predictions, in plain numpy.

The metric of Kirillov et al., "Panoptic Segmentation" (CVPR 2019), computed exactly as the
COCO panoptic API (``panopticapi.evaluation.pq_compute``) computes it, but in one process and
with one ``np.unique`` per image instead of Python loops over segment pairs:

* a predicted and a ground-truth segment of the same category *match* when their IoU is
  above 0.5 (which makes matches unique). The IoU leaves out of the union the predicted
  segment's pixels that fall on ground-truth void (id 0):
  ``union = pred_area + gt_area - intersection - pred_on_void``;
* ground-truth segments with ``iscrowd == 1`` are never matched and never false negatives;
* an unmatched predicted segment is a false positive unless more than half of its pixels lie
  on void or on the crowd segment of its own category (as in panopticapi, the last crowd
  segment of that category listed for the image);
* an unmatched non-crowd ground-truth segment is a false negative;
* per category: ``PQ = sum(IoU of TPs) / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU) / TP`` (0 when
  TP == 0), ``RQ = TP / (TP + FP/2 + FN/2)``; a category with TP + FP + FN == 0 is left out of
  the averages, and "All" / "Things" / "Stuff" are plain means over the categories counted.

Ground-truth areas come from the json's ``area`` field when it has one (as in panopticapi;
a mismatch with the png is logged), predicted areas from the png.

Panoptic pngs encode segment ids as ``id = R + 256 * G + 256 * 256 * B`` (``rgb2id`` /
``id2rgb``); id 0 is void.
"""

import json
import logging
import os
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

__all__ = [
    "VOID_ID",
    "PQStat",
    "id2rgb",
    "rgb2id",
    "read_panoptic_png",
    "pq_compute",
]

logger = logging.getLogger(__name__)

# Segment id of unlabelled pixels, in ground truth and predictions alike.
VOID_ID = 0
# Segment ids must fit in the 24 bits of an RGB png.
_MAX_ID = 256 ** 3

JsonLike = Union[str, os.PathLike, Mapping[str, Any]]


# ---------------------------------------------------------------------------------------------
# Png id encoding.


def rgb2id(color: np.ndarray) -> np.ndarray:
    """Decode an (H, W, 3) RGB panoptic image into (H, W) int64 segment ids (R + 256 G + 65536 B).

    A 2-D array is taken to hold ids already and is returned as int64.
    """
    color = np.asarray(color)
    if color.ndim == 2:
        return color.astype(np.int64)
    if color.ndim != 3 or color.shape[2] < 3:
        raise ValueError(
            f"rgb2id expects an (H, W, 3) RGB array or (H, W) ids, got shape {color.shape}."
        )
    color = color[:, :, :3].astype(np.int64)
    return color[:, :, 0] + 256 * color[:, :, 1] + 65536 * color[:, :, 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Encode (H, W) segment ids (0 <= id < 2**24) as an (H, W, 3) uint8 RGB image."""
    ids = np.asarray(ids).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= _MAX_ID):
        raise ValueError(
            f"id2rgb: segment ids must lie in [0, {_MAX_ID}) to fit an RGB png; got "
            f"[{ids.min()}, {ids.max()}]."
        )
    rgb = np.empty(ids.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = (ids // 256) % 256
    rgb[..., 2] = ids // 65536
    return rgb


def read_panoptic_png(path: str) -> np.ndarray:
    """Read a COCO panoptic png as (H, W) int64 segment ids.

    RGB(A) pngs are decoded with ``rgb2id``; single-channel (grey or 16/32-bit) pngs are taken
    to store ids directly.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Panoptic png '{path}' does not exist.")
    with Image.open(path) as img:
        if img.mode in ("L", "I", "I;16", "I;16B", "I;16L"):
            return np.asarray(img).astype(np.int64)
        if img.mode not in ("RGB", "RGBA"):
            img = img.convert("RGB")
        return rgb2id(np.asarray(img))


# ---------------------------------------------------------------------------------------------
# Accumulation.


def _segment_table(segments: Sequence[Mapping[str, Any]], cat_index: Mapping[int, int],
                   what: str, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """(segment ids, dense category indices) of a json ``segments_info`` list, validated."""
    seg_ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
    if np.any(seg_ids == VOID_ID):
        raise ValueError(
            f"{where}: the {what} segments_info lists a segment with id {VOID_ID}, which is "
            "reserved for void pixels. Give every segment a non-zero id."
        )
    uniq, counts = np.unique(seg_ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(
            f"{where}: the {what} segments_info lists segment id(s) "
            f"{uniq[counts > 1].tolist()} more than once."
        )
    cats = []
    for s in segments:
        cat = int(s["category_id"])
        if cat not in cat_index:
            raise ValueError(
                f"{where}: {what} segment {int(s['id'])} has category_id {cat}, which is not "
                f"among the ground-truth json's categories ({len(cat_index)} categories)."
            )
        cats.append(cat_index[cat])
    return seg_ids, np.array(cats, dtype=np.int64)


def _lookup(labels: np.ndarray, seg_ids: np.ndarray) -> np.ndarray:
    """Position + 1 in ``seg_ids`` of every label (0 for void, -1 for unknown labels)."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    out[labels == VOID_ID] = 0
    if seg_ids.size:
        order = np.argsort(seg_ids, kind="stable")
        sorted_ids = seg_ids[order]
        pos = np.clip(np.searchsorted(sorted_ids, labels), 0, len(sorted_ids) - 1)
        found = (sorted_ids[pos] == labels) & (labels != VOID_ID)
        out[found] = order[pos[found]] + 1
    return out


class PQStat:
    """Per-category sums of matched IoU and counts of TP / FP / FN, over any number of images.

    Build it with the ground-truth json's ``categories`` (each a dict with ``id``, ``isthing``
    and usually ``name``), feed it images with ``add_image`` (or merge another ``PQStat`` with
    ``+=``), then read ``pq_average`` / ``results``.
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]):
        """Args:
            categories: the ground-truth json's ``categories`` list.
        """
        self.categories = [dict(c) for c in categories]
        self.category_ids = [int(c["id"]) for c in self.categories]
        self._cat_index = {cat_id: i for i, cat_id in enumerate(self.category_ids)}
        if len(self._cat_index) != len(self.category_ids):
            raise ValueError(f"PQStat: duplicate category ids in {self.category_ids}.")
        self.isthing = np.array([c.get("isthing", 0) == 1 for c in self.categories], dtype=bool)
        num = len(self.categories)
        self.iou = np.zeros(num, dtype=np.float64)
        self.tp = np.zeros(num, dtype=np.int64)
        self.fp = np.zeros(num, dtype=np.int64)
        self.fn = np.zeros(num, dtype=np.int64)
        # Ground-truth segments whose json area differs from their pixel count in the png.
        self.num_area_mismatches = 0

    def __iadd__(self, other: "PQStat") -> "PQStat":
        """Add the sums of another ``PQStat`` built on the same categories."""
        if other.category_ids != self.category_ids:
            raise ValueError("PQStat: cannot add statistics computed on different categories.")
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.num_area_mismatches += other.num_area_mismatches
        return self

    def add_image(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
        *,
        image_id: Any = None,
        gt_file: Optional[str] = None,
        pred_file: Optional[str] = None,
    ) -> None:
        """Match one image's segments and add its TP / FP / FN / IoU to the per-category sums.

        Args:
            gt_ids, pred_ids: (H, W) integer segment ids (0 = void), same size.
            gt_segments: the ground-truth json's ``segments_info`` of the image (``id``,
                ``category_id``, ``iscrowd``, optionally ``area``).
            pred_segments: the prediction's ``segments_info`` (``id``, ``category_id``).
            image_id, gt_file, pred_file: only used to say where bad data came from.

        Raises:
            ValueError: sizes differ; a non-zero id of the gt png is not in ``gt_segments``; an
                id of the prediction png is not in ``pred_segments``, or a listed predicted
                segment has no pixel; unknown category ids; duplicate or zero segment ids.
        """
        where = f"image {image_id}" if image_id is not None else "image"
        gt_ids = np.asarray(gt_ids)
        pred_ids = np.asarray(pred_ids)
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(
                f"{where}: the ground-truth png {gt_file or ''} is {_size(gt_ids)} (H x W) but "
                f"the prediction {pred_file or ''} is {_size(pred_ids)}. Predictions must be at "
                "the original image resolution."
            )
        checks = ((gt_ids, "ground-truth", gt_file), (pred_ids, "predicted", pred_file))
        for arr, what, path in checks:
            if arr.size and (arr.min() < 0 or arr.max() >= _MAX_ID):
                raise ValueError(
                    f"{where}: {what} segment ids {path or ''} must lie in [0, {_MAX_ID}), got "
                    f"[{arr.min()}, {arr.max()}]."
                )

        gt_seg_ids, gt_cat = _segment_table(gt_segments, self._cat_index, "ground-truth", where)
        pred_seg_ids, pred_cat = _segment_table(pred_segments, self._cat_index, "predicted", where)
        num_gt, num_pred = len(gt_seg_ids), len(pred_seg_ids)

        # One sort of the combined (gt, pred) id per pixel gives every intersection at once.
        pairs, counts = np.unique(
            gt_ids.astype(np.int64).ravel() * _MAX_ID + pred_ids.astype(np.int64).ravel(),
            return_counts=True,
        )
        gt_labels, pred_labels = pairs // _MAX_ID, pairs % _MAX_ID
        gt_pos = _lookup(gt_labels, gt_seg_ids)
        pred_pos = _lookup(pred_labels, pred_seg_ids)
        if np.any(gt_pos < 0):
            unknown = np.unique(gt_labels[gt_pos < 0]).tolist()
            raise ValueError(
                f"{where}: the ground-truth png {gt_file or ''} contains segment id(s) {unknown} "
                "that its json segments_info does not list. The png and the json do not belong "
                "together (or the png was not decoded as R + 256*G + 256*256*B)."
            )
        if np.any(pred_pos < 0):
            unknown = np.unique(pred_labels[pred_pos < 0]).tolist()
            raise ValueError(
                f"{where}: the prediction {pred_file or ''} contains segment id(s) {unknown} "
                "that its segments_info does not list. Every non-void id of the panoptic "
                "prediction needs a segments_info entry."
            )

        # inter[i, j]: pixels of gt segment i-1 on pred segment j-1; row / column 0 is void.
        inter = np.zeros((num_gt + 1, num_pred + 1), dtype=np.int64)
        np.add.at(inter, (gt_pos, pred_pos), counts)
        pred_area = inter.sum(axis=0)[1:]
        gt_png_area = inter.sum(axis=1)[1:]

        missing = pred_area == 0
        if np.any(missing):
            raise ValueError(
                f"{where}: predicted segment id(s) {pred_seg_ids[missing].tolist()} are listed "
                f"in segments_info but have no pixel in {pred_file or 'the prediction'}."
            )
        gt_area = np.array(
            [int(s["area"]) if "area" in s else int(a) for s, a in zip(gt_segments, gt_png_area)],
            dtype=np.int64,
        )
        self.num_area_mismatches += int(np.count_nonzero(gt_area != gt_png_area))
        gt_crowd = np.array([int(s.get("iscrowd", 0)) == 1 for s in gt_segments], dtype=bool)

        seg_inter = inter[1:, 1:]
        pred_on_void = inter[0, 1:]

        # Matching: same category, gt not crowd, IoU > 0.5 (unique by construction).
        candidate = (
            (gt_cat[:, None] == pred_cat[None, :]) & ~gt_crowd[:, None] & (seg_inter > 0)
        )
        union = gt_area[:, None] + pred_area[None, :] - seg_inter - pred_on_void[None, :]
        iou = np.zeros(seg_inter.shape, dtype=np.float64)
        np.divide(seg_inter, union, out=iou, where=candidate)
        matched = candidate & (iou > 0.5)
        gi, pj = np.nonzero(matched)
        np.add.at(self.tp, gt_cat[gi], 1)
        np.add.at(self.iou, gt_cat[gi], iou[gi, pj])

        gt_matched = matched.any(axis=1)
        pred_matched = matched.any(axis=0)
        np.add.at(self.fn, gt_cat[~gt_matched & ~gt_crowd], 1)

        # The crowd segment of each category (the last one listed wins, as in panopticapi).
        crowd_of_cat = np.full(len(self.category_ids), -1, dtype=np.int64)
        for i in np.flatnonzero(gt_crowd):
            crowd_of_cat[gt_cat[i]] = i
        pred_crowd = crowd_of_cat[pred_cat]
        on_crowd = np.where(
            pred_crowd >= 0,
            seg_inter[np.clip(pred_crowd, 0, None), np.arange(num_pred)] if num_gt else 0,
            0,
        )
        ignored = pred_on_void + on_crowd
        # Unmatched predictions mostly (> half) on void or same-class crowd are not counted.
        false_pos = ~pred_matched & ~(ignored / pred_area > 0.5)
        np.add.at(self.fp, pred_cat[false_pos], 1)

    def per_category(self) -> Dict[int, Dict[str, float]]:
        """``{category id: {"pq", "sq", "rq", "iou", "tp", "fp", "fn"}}``; NaN metrics for a
        category with TP + FP + FN == 0 (it is left out of the averages)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        counted = (self.tp + self.fp + self.fn) > 0
        out = {}
        for k, cat_id in enumerate(self.category_ids):
            if counted[k]:
                pq = self.iou[k] / denom[k]
                sq = self.iou[k] / self.tp[k] if self.tp[k] > 0 else 0.0
                rq = self.tp[k] / denom[k]
            else:
                pq = sq = rq = float("nan")
            out[cat_id] = {
                "pq": float(pq), "sq": float(sq), "rq": float(rq), "iou": float(self.iou[k]),
                "tp": int(self.tp[k]), "fp": int(self.fp[k]), "fn": int(self.fn[k]),
            }
        return out

    def pq_average(self, isthing: Optional[bool] = None) -> Dict[str, float]:
        """Mean PQ / SQ / RQ over the counted categories (things only, stuff only, or all).

        Returns:
            ``{"pq", "sq", "rq", "n"}`` with ``n`` the number of categories averaged; the means
            are NaN when ``n`` is 0.
        """
        per_cat = self.per_category()
        selected = [
            per_cat[cat_id]
            for k, cat_id in enumerate(self.category_ids)
            if isthing is None or bool(self.isthing[k]) == isthing
        ]
        counted = [r for r in selected if r["tp"] + r["fp"] + r["fn"] > 0]
        n = len(counted)
        if n == 0:
            return {"pq": float("nan"), "sq": float("nan"), "rq": float("nan"), "n": 0}
        return {
            "pq": float(sum(r["pq"] for r in counted) / n),
            "sq": float(sum(r["sq"] for r in counted) / n),
            "rq": float(sum(r["rq"] for r in counted) / n),
            "n": n,
        }

    def results(self) -> Dict[str, Any]:
        """panopticapi's result layout: ``{"All", "Things", "Stuff": {"pq", "sq", "rq", "n"},
        "per_class": {category id: {...}}}`` (fractions in [0, 1], not percentages)."""
        return {
            "All": self.pq_average(None),
            "Things": self.pq_average(True),
            "Stuff": self.pq_average(False),
            "per_class": self.per_category(),
        }


def _size(arr: np.ndarray) -> str:
    return " x ".join(str(s) for s in arr.shape)


# ---------------------------------------------------------------------------------------------
# Files.


def _load_json(source: JsonLike) -> Tuple[Mapping[str, Any], Optional[str]]:
    if isinstance(source, Mapping):
        return source, None
    path = os.fspath(source)
    with open(path) as f:
        return json.load(f), path


def pq_compute(
    gt_json: JsonLike,
    pred_json: JsonLike,
    gt_folder: Optional[str] = None,
    pred_folder: Optional[str] = None,
) -> Dict[str, Any]:
    """PQ of COCO-format panoptic predictions against COCO-format ground truth (one process).

    Args:
        gt_json: the ground-truth panoptic json (path or loaded dict) with ``categories``
            (``id``, ``isthing``) and ``annotations`` (``image_id``, ``file_name``,
            ``segments_info``).
        pred_json: the predictions in the same format (path or dict); only its
            ``annotations`` are read. Every ground-truth image needs one; predictions for other
            images are ignored.
        gt_folder, pred_folder: where the pngs are; default: the json path without ``.json``
            (as in panopticapi; required when a dict is passed).

    Returns:
        ``PQStat.results()``: ``{"All" / "Things" / "Stuff": {"pq", "sq", "rq", "n"},
        "per_class": {category id: {"pq", "sq", "rq", "iou", "tp", "fp", "fn"}}}``.
    """
    start = time.perf_counter()
    gt_data, gt_path = _load_json(gt_json)
    pred_data, pred_path = _load_json(pred_json)
    gt_folder = _default_folder(gt_folder, gt_path, "gt_folder")
    pred_folder = _default_folder(pred_folder, pred_path, "pred_folder")
    for folder, what in ((gt_folder, "ground-truth"), (pred_folder, "prediction")):
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"pq_compute: the {what} png folder '{folder}' does not exist.")

    stat = PQStat(gt_data["categories"])
    pred_by_image = {ann["image_id"]: ann for ann in pred_data["annotations"]}
    gt_anns: List[Mapping[str, Any]] = list(gt_data["annotations"])
    missing = [ann["image_id"] for ann in gt_anns if ann["image_id"] not in pred_by_image]
    if missing:
        raise ValueError(
            f"pq_compute: {len(missing)} of {len(gt_anns)} ground-truth images have no "
            f"prediction (image ids {missing[:10]}{' ...' if len(missing) > 10 else ''}). "
            "Run the model on the whole dataset."
        )

    for gt_ann in gt_anns:
        image_id = gt_ann["image_id"]
        pred_ann = pred_by_image[image_id]
        gt_file = os.path.join(gt_folder, gt_ann["file_name"])
        pred_file = os.path.join(pred_folder, pred_ann["file_name"])
        stat.add_image(
            read_panoptic_png(gt_file),
            gt_ann["segments_info"],
            read_panoptic_png(pred_file),
            pred_ann["segments_info"],
            image_id=image_id,
            gt_file=gt_file,
            pred_file=pred_file,
        )

    if stat.num_area_mismatches:
        logger.warning(
            "%d ground-truth segments have a json 'area' that differs from their pixel count in "
            "the png; PQ uses the json areas (as panopticapi does).",
            stat.num_area_mismatches,
        )
    logger.info("PQ computed on %d images in %.2fs.", len(gt_anns), time.perf_counter() - start)
    return stat.results()


def _default_folder(folder: Optional[str], json_path: Optional[str], arg: str) -> str:
    if folder is not None:
        return folder
    if json_path is None:
        raise ValueError(f"pq_compute: pass {arg} when the json is given as a dict.")
    return json_path[: -len(".json")] if json_path.endswith(".json") else json_path
