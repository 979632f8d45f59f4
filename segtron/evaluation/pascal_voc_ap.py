"""PASCAL VOC average precision of one class (the VOC devkit's rules, in Python).

* ``parse_rec``: the objects of one ``Annotations/<id>.xml`` file;
* ``voc_ap``: AP from a precision/recall curve, VOC2007's 11-point interpolation or VOC2010+'s
  area under the monotone precision envelope;
* ``match_class_detections``: match one class's detections to the ground truth at one IoU
  threshold (true positive, false positive or ignored, per detection);
* ``class_ap`` / ``eval_class_detections``: recall, precision and AP of that matching;
* ``voc_eval``: the same from devkit-style files (a result file per class, the XML files, the
  image-set list), as Detectron2's function of that name.

Boxes are VOC pixel indices: 1-based, inclusive, so a box's width is ``xmax - xmin + 1``.
"""

import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Mapping, NamedTuple, Sequence, Tuple

import numpy as np

from ..utils.file_io import PathManager

__all__ = [
    "ClassMatches",
    "class_ap",
    "eval_class_detections",
    "match_class_detections",
    "parse_rec",
    "voc_ap",
    "voc_eval",
]

# A detection line of a devkit result file: image id, score, xmin, ymin, xmax, ymax.
Detection = Tuple[str, float, float, float, float, float]


def parse_rec(filename: str) -> List[Dict[str, Any]]:
    """The objects of one VOC annotation file.

    Args:
        filename: path of an ``Annotations/<id>.xml`` file.

    Returns:
        One dict per ``<object>``: ``name``, ``pose``, ``truncated`` (int), ``difficult``
        (int, 0 when absent) and ``bbox`` (``[xmin, ymin, xmax, ymax]``, ints, 1-based).
    """
    with PathManager.open(filename, "r") as f:
        tree = ET.parse(f)
    objects = []
    for obj in tree.findall("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{filename}: object '{obj.findtext('name')}' has no <bndbox>.")
        objects.append({
            "name": (obj.findtext("name") or "").strip(),
            "pose": obj.findtext("pose"),
            "truncated": int(obj.findtext("truncated") or 0),
            "difficult": int(obj.findtext("difficult") or 0),
            "bbox": [int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")],
        })
    return objects


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False) -> float:
    """Average precision of a precision/recall curve.

    Args:
        rec: recall after each detection, in decreasing score order (non-decreasing).
        prec: precision after each detection, same length.
        use_07_metric: VOC2007's 11-point metric: the mean over recall levels
            0, 0.1, ..., 1 of the highest precision reached at a recall >= that level (0 when
            none). Otherwise VOC2010+'s: the area under the curve after making precision
            non-increasing in recall (each precision replaced by the highest at any larger
            recall).

    Returns:
        AP in [0, 1] (0 for an empty curve).
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        total = 0.0
        for level in range(11):
            reached = prec[rec >= level / 10.0]
            total += reached.max() if reached.size else 0.0
        return total / 11.0
    # Sentinels: the curve starts at recall 0 and ends at recall 1 with precision 0.
    recall = np.concatenate(([0.0], rec, [1.0]))
    precision = np.concatenate(([0.0], prec, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def _iou_with_boxes(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes`` ((N, 4)), in inclusive pixel coordinates."""
    inter_w = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + 1, 0)
    inter_h = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + 1, 0)
    inter = inter_w * inter_h
    area = (box[2] - box[0] + 1.0) * (box[3] - box[1] + 1.0)
    areas = (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0)
    return inter / (area + areas - inter)


def _class_ground_truth(annotations: Mapping[str, Sequence[Mapping[str, Any]]],
                        classname: str) -> Tuple[Dict[str, Dict[str, np.ndarray]], int]:
    """Per image: the boxes and difficult flags of ``classname``; and the number of
    non-difficult objects (the positives recall is measured against)."""
    per_image = {}
    num_positives = 0
    for image_id, objects in annotations.items():
        objs = [o for o in objects if o["name"] == classname]
        difficult = np.array([bool(o.get("difficult", 0)) for o in objs], dtype=bool)
        per_image[image_id] = {
            "bbox": np.array([o["bbox"] for o in objs], dtype=np.float64).reshape(-1, 4),
            "difficult": difficult,
        }
        num_positives += int((~difficult).sum())
    return per_image, num_positives


class ClassMatches(NamedTuple):
    """The VOC matching of one class's detections at one IoU threshold.

    Attributes:
        scores: (N,) the detections' scores, in decreasing order (ties in their given order).
        true_pos: (N,) bool, the true positives.
        false_pos: (N,) bool, the false positives; a detection that is neither (matched to a
            difficult object) is ignored.
        num_positives: the number of non-difficult objects of the class.
    """

    scores: np.ndarray
    true_pos: np.ndarray
    false_pos: np.ndarray
    num_positives: int


def match_class_detections(detections: Sequence[Detection],
                           annotations: Mapping[str, Sequence[Mapping[str, Any]]],
                           classname: str, ovthresh: float = 0.5) -> ClassMatches:
    """Match one class's detections to its ground truth with the VOC devkit's rules.

    Detections are taken in decreasing score order (ties keep their given order). Each is
    matched to the ground-truth object of its image with the highest IoU. It is a true
    positive when that IoU is above ``ovthresh`` and the object is not difficult and not yet
    matched; it is ignored (neither true nor false) when the object is difficult; otherwise
    (low IoU, or an object already matched: a duplicate) it is a false positive.

    Args:
        detections: ``(image_id, score, xmin, ymin, xmax, ymax)`` in VOC pixel indices.
        annotations: image id -> its objects (``parse_rec`` dicts; only ``name``, ``bbox``
            and ``difficult`` are read), for every image of the evaluated set.
        classname: the class evaluated.
        ovthresh: IoU a match must exceed.

    Returns:
        The ``ClassMatches``.

    Raises:
        KeyError: a detection on an image that is not in ``annotations``.
    """
    per_image, num_positives = _class_ground_truth(annotations, classname)
    matched = {image_id: np.zeros(len(gt["difficult"]), dtype=bool)
               for image_id, gt in per_image.items()}
    scores = np.array([float(d[1]) for d in detections], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    true_pos = np.zeros(len(detections), dtype=bool)
    false_pos = np.zeros(len(detections), dtype=bool)
    for rank, index in enumerate(order):
        image_id, _, *box = detections[index]
        if image_id not in per_image:
            raise KeyError(
                f"A '{classname}' detection is on image '{image_id}', which is not in the "
                "evaluated image set. Evaluate only the images listed in the split's "
                "ImageSets/Main/<split>.txt."
            )
        gt = per_image[image_id]
        if len(gt["bbox"]) == 0:
            false_pos[rank] = True
            continue
        overlaps = _iou_with_boxes(np.asarray(box, dtype=np.float64), gt["bbox"])
        best = int(np.argmax(overlaps))
        if overlaps[best] <= ovthresh:
            false_pos[rank] = True
        elif gt["difficult"][best]:
            continue
        elif not matched[image_id][best]:
            true_pos[rank] = True
            matched[image_id][best] = True
        else:
            false_pos[rank] = True
    return ClassMatches(scores[order], true_pos, false_pos, num_positives)


def class_ap(matches: ClassMatches,
             use_07_metric: bool = False) -> Tuple[np.ndarray, np.ndarray, float]:
    """Recall, precision and AP of one class's ``match_class_detections`` result.

    Returns:
        ``(rec, prec, ap)`` as ``eval_class_detections``.
    """
    true_pos = np.cumsum(matches.true_pos.astype(np.float64))
    false_pos = np.cumsum(matches.false_pos.astype(np.float64))
    prec = true_pos / np.maximum(true_pos + false_pos, np.finfo(np.float64).eps)
    if matches.num_positives == 0:
        return np.full_like(true_pos, np.nan), prec, float("nan")
    rec = true_pos / matches.num_positives
    return rec, prec, voc_ap(rec, prec, use_07_metric)


def eval_class_detections(detections: Sequence[Detection],
                          annotations: Mapping[str, Sequence[Mapping[str, Any]]],
                          classname: str, ovthresh: float = 0.5,
                          use_07_metric: bool = False) -> Tuple[np.ndarray, np.ndarray, float]:
    """Recall, precision and AP of one class's detections, with the VOC devkit's matching.

    The matching is ``match_class_detections``'s (ignored detections, matched to difficult
    objects, add to neither count); the AP is ``voc_ap``'s.

    Args:
        detections: ``(image_id, score, xmin, ymin, xmax, ymax)`` in VOC pixel indices.
        annotations: image id -> its objects (``parse_rec`` dicts; only ``name``, ``bbox``
            and ``difficult`` are read), for every image of the evaluated set.
        classname: the class evaluated.
        ovthresh: IoU a match must exceed.
        use_07_metric: see ``voc_ap``.

    Returns:
        ``(rec, prec, ap)``: recall and precision after each detection (NaN recall when the
        class has no non-difficult object) and the AP (NaN in that case).

    Raises:
        KeyError: a detection on an image that is not in ``annotations``.
    """
    matches = match_class_detections(detections, annotations, classname, ovthresh)
    return class_ap(matches, use_07_metric)


def _read_detections(detfile: str) -> List[Detection]:
    with PathManager.open(detfile, "r") as f:
        rows = [line.split() for line in f if line.strip()]
    return [(r[0], float(r[1]), *(float(v) for v in r[2:6])) for r in rows]


def voc_eval(detpath: str, annopath: str, imagesetfile: str, classname: str,
             ovthresh: float = 0.5, use_07_metric: bool = False):
    """VOC evaluation of one class from files (Detectron2's ``voc_eval``).

    Args:
        detpath: result-file path template; ``detpath.format(classname)`` holds lines
            ``image_id score xmin ymin xmax ymax`` (VOC pixel indices).
        annopath: annotation path template; ``annopath.format(image_id)`` is its XML file.
        imagesetfile: the image-id list (one id per line, first token).
        classname: the class evaluated.
        ovthresh, use_07_metric: see ``eval_class_detections``.

    Returns:
        ``(rec, prec, ap)`` as ``eval_class_detections``.
    """
    with PathManager.open(imagesetfile, "r") as f:
        image_ids = [line.split()[0] for line in f if line.strip()]
    annotations = {image_id: parse_rec(annopath.format(image_id)) for image_id in image_ids}
    return eval_class_detections(_read_detections(detpath.format(classname)), annotations,
                                 classname, ovthresh, use_07_metric)
