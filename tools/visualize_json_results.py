#!/usr/bin/env python
"""Draw saved predictions next to the ground truth, one PNG per image, or the predictions of
many images tiled into one PNG.

Reads one of three files, recognised from its content:

* COCO instance results (``coco_instances_results.json``, as written by ``COCOEvaluator``: a
  list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": RLE
  (optional)}``): predictions scoring above ``--conf-threshold`` are drawn as instances;
* semantic segmentation results (``sem_seg_predictions.json``, as written by
  ``SemSegEvaluator``: a list of ``{"file_name", "category_id", "segmentation": RLE}``, one per
  class per image): each image's RLEs are decoded into one label map, drawn with
  ``draw_sem_seg``;
* COCO panoptic predictions (``predictions.json``, as written by ``COCOPanopticEvaluator``: a
  dict whose ``annotations`` are ``{"image_id", "file_name", "segments_info"}``) with the
  folder of its pngs (default: the folder named after the json, beside it, e.g.
  ``predictions/``; ``--png-dir`` otherwise): drawn with ``draw_panoptic_seg``.

Dataset category ids are mapped back to contiguous class ids (hence names and colours) through
the metadata of ``--dataset``. Writes, for each image of the dataset, predictions (left) beside
the ground truth (right) into ``--output``. Detectron2's ``tools/visualize_json_results.py``,
plus ``--num`` and ``--scale`` and the semantic and panoptic formats.

With ``--grid PATH`` it instead writes one PNG tiling the predictions (no ground truth) of the
first ``--num`` images (default 16), ``--columns`` per row, each captioned with its image id.

Example::

    python tools/visualize_json_results.py --input output/inference/coco_instances_results.json \\
        --output vis_results/ --dataset shapes_val --conf-threshold 0.5 --num 20
    python tools/visualize_json_results.py --input output/inference/coco_instances_results.json \\
        --grid predictions.png --dataset shapes_val --num 12 --columns 4
    python tools/visualize_json_results.py --input output/inference/sem_seg_predictions.json \\
        --grid sem_seg.png --dataset shapes_sem_seg_val --num 8
    python tools/visualize_json_results.py --input output/inference/predictions.json \\
        --grid panoptic.png --dataset shapes_panoptic_val_separated --num 8
"""

import argparse
import json
import logging
import os
import sys
from collections import Counter, defaultdict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable as `python tools/visualize_json_results.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

from PIL import Image  # noqa: E402

import train_net  # noqa: E402, F401  (imports projects/, which may register datasets)
from segtron.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from segtron.data.detection_utils import read_image  # noqa: E402
from segtron.evaluation.panoptic_quality import read_panoptic_png  # noqa: E402
from segtron.structures import Boxes, BoxMode, Instances  # noqa: E402
from segtron.utils.file_io import PathManager  # noqa: E402
from segtron.utils.logger import setup_logger  # noqa: E402
from segtron.utils.visualizer import Visualizer  # noqa: E402
from segtron.utils.visualizer_grid import tile_images  # noqa: E402

logger = logging.getLogger("segtron.tools.visualize_json_results")

DEFAULT_GRID_NUM = 16  # images in a --grid picture without --num
GRID_GAP = 4  # white pixels between the tiles of a --grid picture
# Opacity of semantic and panoptic fills, predictions and ground truth alike (the value
# Visualizer.draw_dataset_dict draws label maps with), so the two halves compare directly.
FILL_ALPHA = 0.5

INSTANCES, SEM_SEG, PANOPTIC = "instances", "sem_seg", "panoptic"
KNOWN_FORMATS = (
    "COCO instance results (coco_instances_results.json: a list of {image_id, category_id, "
    "bbox, score, segmentation}), semantic segmentation results (sem_seg_predictions.json: a "
    "list of {file_name, category_id, segmentation}) and COCO panoptic predictions "
    "(predictions.json: a dict with annotations [{image_id, file_name, segments_info}])"
)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line (``argv``, default ``sys.argv[1:]``), checked."""
    parser = argparse.ArgumentParser(
        description="Draw predictions from a COCO instance, semantic or panoptic results json "
                    "beside the ground truth (one PNG per image, --output) or tiled into one "
                    "PNG (--grid).")
    parser.add_argument("--input", required=True,
                        help="coco_instances_results.json, sem_seg_predictions.json or a COCO "
                             "panoptic predictions.json (recognised from the content)")
    parser.add_argument("--output", default=None,
                        help="output directory for one PNG per image (predictions | ground truth)")
    parser.add_argument("--grid", metavar="PATH", default=None,
                        help="write one PNG tiling the predictions of the first --num images "
                             "(default 16), instead of or besides --output")
    parser.add_argument("--columns", type=int, default=4,
                        help="images per row of the --grid picture (default 4)")
    parser.add_argument("--dataset", default="coco_2017_val",
                        help="registered dataset the predictions were made on")
    parser.add_argument("--conf-threshold", type=float, default=0.5,
                        help="draw instance predictions scoring above this (instance results "
                             "only)")
    parser.add_argument("--png-dir", default=None, metavar="DIR",
                        help="folder of the pngs of a panoptic predictions json (default: the "
                             "folder named after the json, beside it: predictions/ for "
                             "predictions.json)")
    parser.add_argument("--num", type=int, default=None,
                        help="stop after this many images (default: all; 16 with --grid)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="size of each picture relative to the image")
    args = parser.parse_args(argv)
    if args.output is None and args.grid is None:
        parser.error("give --output DIR (one PNG per image) and/or --grid PATH (one tiled PNG)")
    if args.columns < 1:
        parser.error(f"--columns must be at least 1, got {args.columns}")
    if args.num is not None and args.num < 1:
        parser.error(f"--num must be at least 1, got {args.num}")
    return args


def detect_format(data: Any, source: str) -> str:
    """Which predictions ``data`` (the parsed json of file ``source``) holds: ``INSTANCES``,
    ``SEM_SEG`` or ``PANOPTIC``.

    Raises:
        ValueError: for content of none of these formats, naming ``source`` and the formats.
    """
    if isinstance(data, list):
        if not data:
            return INSTANCES  # an empty results file: nothing above any threshold
        first = data[0]
        if isinstance(first, dict):
            if {"image_id", "category_id"} <= first.keys() and ("bbox" in first
                                                                or "score" in first):
                return INSTANCES
            if {"file_name", "category_id", "segmentation"} <= first.keys():
                return SEM_SEG
        what = (f"a list whose first entry has keys {sorted(first)}" if isinstance(first, dict)
                else f"a list of {type(first).__name__}")
    elif isinstance(data, dict):
        annotations = data.get("annotations")
        if isinstance(annotations, list) and all(
                isinstance(a, dict) and "segments_info" in a for a in annotations[:1]):
            return PANOPTIC
        what = f"a dict with keys {sorted(data)[:8]}"
        if isinstance(annotations, list):
            what += " whose annotations have no segments_info (a COCO instances json?)"
    else:
        what = f"a JSON {type(data).__name__}"
    raise ValueError(f"{source} is {what}: not a predictions file this tool knows. It reads "
                     f"{KNOWN_FORMATS}.")


def _id_lookup(id_map: Mapping[Any, Any], dataset_name: str,
               what: str) -> Callable[[int], int]:
    """Function: a category id of ``what`` -> ``id_map[category_id]``, with an error that
    names the dataset and its known ids."""
    id_map = {int(k): int(v) for k, v in id_map.items()}

    def lookup(category_id: int) -> int:
        try:
            return id_map[int(category_id)]
        except KeyError:
            raise KeyError(
                f"Category id {category_id} of {what} is not a category of dataset "
                f"'{dataset_name}' (known ids: {sorted(id_map)}). Was the file made on another "
                "dataset? Pass that one with --dataset."
            ) from None

    return lookup


def dataset_id_mapper(dataset_name: str, metadata) -> Callable[[int], int]:
    """Function: dataset category id (as in the results file) -> contiguous class id."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map is not None:
        return _id_lookup(id_map, dataset_name, "the results file")
    if "lvis" in dataset_name:
        return lambda category_id: int(category_id) - 1  # LVIS ids are 1..N
    raise ValueError(
        f"Metadata of dataset '{dataset_name}' has no thing_dataset_id_to_contiguous_id, so the "
        "category ids of the results cannot be mapped to class names. Register the dataset with "
        "register_coco_instances (or set that field)."
    )


def create_instances(predictions: List[Dict[str, Any]], image_size: Tuple[int, int],
                     conf_threshold: float, to_contiguous: Callable[[int], int]) -> Instances:
    """``Instances`` (pred_boxes, scores, pred_classes, pred_masks as RLE) of one image.

    Args:
        predictions: the results-file entries of this image.
        image_size: (height, width).
        conf_threshold: keep entries with ``score > conf_threshold``.
        to_contiguous: dataset category id -> contiguous class id.
    """
    kept = [p for p in predictions if float(p["score"]) > conf_threshold]
    inst = Instances(image_size)
    boxes = np.array([p["bbox"] for p in kept], dtype=np.float64).reshape(-1, 4)
    inst.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
    inst.scores = np.array([float(p["score"]) for p in kept], dtype=np.float64)
    inst.pred_classes = np.array([to_contiguous(p["category_id"]) for p in kept], dtype=np.int64)
    if kept and all("segmentation" in p for p in kept):
        inst.pred_masks = [p["segmentation"] for p in kept]
    return inst


def _caption_count(count: int, noun: Tuple[str, str]) -> str:
    return f"{count} {noun[0] if count == 1 else noun[1]}"


def _image_name(dic: Mapping[str, Any]) -> str:
    """What a caption calls an image: its id, else its file name without extension."""
    if "image_id" in dic:
        return f"image {dic['image_id']}"
    return os.path.splitext(os.path.basename(dic["file_name"]))[0]


class _Predictions:
    """What the drawing loop asks of each kind of predictions file: ``draw`` (the predictions
    of one image and how many things were drawn, named by ``noun``: singular, plural),
    ``draw_ground_truth`` and ``unmatched`` (predictions of images the dataset lacks)."""

    noun = ("prediction", "predictions")
    metadata = None

    def draw_ground_truth(self, dic: Mapping[str, Any], img: np.ndarray,
                          scale: float) -> np.ndarray:
        """The dataset dict drawn on ``img`` (``Visualizer.draw_dataset_dict``)."""
        return Visualizer(img, self.metadata, scale=scale).draw_dataset_dict(dic).get_image()


class InstancePredictions(_Predictions):
    """COCO instance results, drawn with ``draw_instance_predictions``."""

    noun = ("prediction", "predictions")

    def __init__(self, results: List[Dict[str, Any]], dataset_name: str, metadata,
                 conf_threshold: float):
        self.metadata = metadata
        self.conf_threshold = conf_threshold
        self.to_contiguous = dataset_id_mapper(dataset_name, metadata)
        self.by_image: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)
        for p in results:
            self.by_image[p["image_id"]].append(p)

    def unmatched(self, dicts: Sequence[Mapping[str, Any]]) -> List[Any]:
        """Image ids of the results that no dataset dict has."""
        return sorted(set(self.by_image) - {d["image_id"] for d in dicts}, key=str)

    def draw(self, dic: Mapping[str, Any], img: np.ndarray, scale: float) -> Tuple[np.ndarray, int]:
        """The predictions of ``dic``'s image drawn on ``img``, and how many were drawn."""
        preds = create_instances(self.by_image.get(dic["image_id"], []), img.shape[:2],
                                 self.conf_threshold, self.to_contiguous)
        vis = Visualizer(img, self.metadata, scale=scale)
        return vis.draw_instance_predictions(preds).get_image(), len(preds)


def stuff_id_mapper(dataset_name: str, metadata) -> Callable[[int], int]:
    """Function: category id of a semantic results file -> contiguous class id.

    Through ``stuff_dataset_id_to_contiguous_id`` when the metadata has it; otherwise the ids
    are the labels themselves (``SemSegEvaluator`` writes them so without that map).
    """
    id_map = metadata.get("stuff_dataset_id_to_contiguous_id")
    if id_map is None:
        return int
    return _id_lookup(id_map, dataset_name, "the semantic results")


def decode_label_map(entries: Sequence[Mapping[str, Any]], image_size: Tuple[int, int],
                     to_contiguous: Callable[[int], int], fill: int,
                     where: str = "") -> np.ndarray:
    """One image's label map from its semantic results (one RLE per class).

    Args:
        entries: the results-file entries of this image (``category_id``, ``segmentation``).
        image_size: (height, width); every RLE must have this ``size``.
        to_contiguous: dataset category id -> contiguous class id.
        fill: label of pixels no entry covers (the dataset's ignore label: not drawn).
        where: the image, for error messages.

    Returns:
        (H, W) int64 contiguous class ids; where RLEs overlap, the later entry wins.
    """
    height, width = image_size
    labels = np.full((height, width), fill, dtype=np.int64)
    for entry in entries:
        rle = dict(entry["segmentation"])
        if [int(v) for v in rle.get("size", ())] != [height, width]:
            raise ValueError(
                f"{where}: the RLE of category {entry['category_id']} is "
                f"{rle.get('size')} (height, width) but the image is {[height, width]}. Were "
                "the predictions made on another dataset? Pass that one with --dataset."
            )
        if isinstance(rle.get("counts"), list):  # uncompressed RLE
            rle = mask_util.frPyObjects(rle, height, width)
        labels[mask_util.decode(rle).astype(bool)] = to_contiguous(entry["category_id"])
    return labels


class SemSegPredictions(_Predictions):
    """Semantic segmentation results, decoded per image and drawn with ``draw_sem_seg``; the
    ground truth is the dataset dict's label png.

    Results are matched to dataset dicts by ``file_name`` (the same path, else the same base
    name when that is unambiguous: the dataset may have been moved since).
    """

    noun = ("class", "classes")

    def __init__(self, results: List[Dict[str, Any]], dataset_name: str, metadata, source: str):
        self.metadata = metadata
        self.source = source
        self.to_contiguous = stuff_id_mapper(dataset_name, metadata)
        self.fill = int(metadata.get("ignore_label", 255))
        self.by_file: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
        for r in results:
            self.by_file[os.path.normpath(r["file_name"])].append(r)
        bases = Counter(os.path.basename(f) for f in self.by_file)
        self.by_base = {os.path.basename(f): f for f in self.by_file
                        if bases[os.path.basename(f)] == 1}

    def _key(self, dic: Mapping[str, Any]) -> Optional[str]:
        path = os.path.normpath(dic["file_name"])
        if path in self.by_file:
            return path
        return self.by_base.get(os.path.basename(path))

    def unmatched(self, dicts: Sequence[Mapping[str, Any]]) -> List[str]:
        """File names of the results that no dataset dict has."""
        return sorted(set(self.by_file) - {self._key(d) for d in dicts})

    def draw(self, dic: Mapping[str, Any], img: np.ndarray, scale: float) -> Tuple[np.ndarray, int]:
        """The predicted label map of ``dic``'s image drawn on ``img``, and its class count."""
        key = self._key(dic)
        entries = self.by_file.get(key, []) if key is not None else []
        labels = decode_label_map(entries, img.shape[:2], self.to_contiguous, self.fill,
                                  where=f"{self.source}, {dic['file_name']}")
        vis = Visualizer(img, self.metadata, scale=scale)
        num_classes = len(set(np.unique(labels).tolist()) - {self.fill})
        return vis.draw_sem_seg(labels, alpha=FILL_ALPHA).get_image(), num_classes


class PanopticSegments:
    """A COCO panoptic json (predictions or ground truth) with its png folder, read back into
    what ``draw_panoptic_seg`` takes: segment ids and segments with contiguous categories."""

    def __init__(self, data: Mapping[str, Any], png_dir: str, dataset_name: str, metadata,
                 source: str):
        self.png_dir = PathManager.get_local_path(png_dir)
        self.source = source
        self.by_image = {a["image_id"]: a for a in data["annotations"]}
        self.isthing = {int(c["id"]): bool(c.get("isthing", 0))
                        for c in data.get("categories") or [] if "id" in c}
        self.thing_map = {int(k): int(v) for k, v in
                          (metadata.get("thing_dataset_id_to_contiguous_id") or {}).items()}
        self.stuff_map = {int(k): int(v) for k, v in
                          (metadata.get("stuff_dataset_id_to_contiguous_id") or {}).items()}
        self.dataset_name = dataset_name
        if not self.thing_map and not self.stuff_map:
            raise ValueError(
                f"Metadata of dataset '{dataset_name}' has neither "
                "thing_dataset_id_to_contiguous_id nor stuff_dataset_id_to_contiguous_id, so the "
                f"category ids of {source} cannot be mapped to class names. Pass the panoptic "
                "dataset the predictions were made on with --dataset."
            )

    def _segment(self, segment: Mapping[str, Any], image_id: Any) -> Dict[str, Any]:
        category_id = int(segment["category_id"])
        isthing = self.isthing.get(category_id)
        if isthing is None:  # no categories in the json: whichever map knows the id
            isthing = category_id in self.thing_map
        id_map = self.thing_map if isthing else self.stuff_map
        if category_id not in id_map:
            kind = "thing" if isthing else "stuff"
            raise KeyError(
                f"{self.source}: image {image_id}: segment {segment.get('id')} has {kind} "
                f"category id {category_id}, which {kind}_dataset_id_to_contiguous_id of dataset "
                f"'{self.dataset_name}' does not have (known ids: {sorted(id_map)}). Was the "
                "file made on another dataset? Pass that one with --dataset."
            )
        converted = {"id": int(segment["id"]), "category_id": id_map[category_id],
                     "isthing": isthing}
        for key in ("score", "iscrowd"):
            if key in segment:
                converted[key] = segment[key]
        return converted

    def has(self, image_id: Any) -> bool:
        """Whether the json has an annotation for ``image_id``."""
        return image_id in self.by_image

    def read(self, image_id: Any,
             image_size: Tuple[int, int]) -> Tuple[torch.Tensor, List[Dict[str, Any]]]:
        """(H, W) segment ids and the converted ``segments_info`` of one image (no segment
        when the json has no annotation for it)."""
        ann = self.by_image.get(image_id)
        if ann is None:
            return torch.zeros(image_size, dtype=torch.int64), []
        path = os.path.join(self.png_dir, ann["file_name"])
        ids = read_panoptic_png(path)
        if ids.shape != tuple(image_size):
            raise ValueError(
                f"{path} (image {image_id} of {self.source}) is {ids.shape[0]} x {ids.shape[1]} "
                f"but the image is {image_size[0]} x {image_size[1]}. Were the predictions made "
                "on another dataset? Pass that one with --dataset."
            )
        segments = [self._segment(s, image_id) for s in ann["segments_info"]]
        return torch.from_numpy(ids), segments


def default_png_dir(json_file: str) -> str:
    """panopticapi's convention: the pngs of ``X.json`` live in folder ``X`` beside it."""
    return os.path.splitext(json_file)[0]


class PanopticPredictions(_Predictions):
    """COCO panoptic predictions (json + pngs), drawn with ``draw_panoptic_seg``; the ground
    truth side comes from the dataset's own COCO panoptic json and pngs (its metadata's
    ``panoptic_json`` / ``panoptic_root``) when it has them, else from its dataset dicts."""

    noun = ("segment", "segments")

    def __init__(self, data: Mapping[str, Any], dataset_name: str, metadata, source: str,
                 png_dir: Optional[str]):
        self.metadata = metadata
        png_dir = png_dir if png_dir is not None else default_png_dir(source)
        if not PathManager.isdir(png_dir):
            raise FileNotFoundError(
                f"Folder {png_dir} of the panoptic prediction pngs of {source} does not exist. "
                "COCOPanopticEvaluator keeps them in <output_dir>/predictions/ beside "
                "predictions.json; for pngs elsewhere pass --png-dir DIR."
            )
        self.predictions = PanopticSegments(data, png_dir, dataset_name, metadata, source)
        self.ground_truth = None
        gt_json, gt_root = metadata.get("panoptic_json"), metadata.get("panoptic_root")
        if gt_json and gt_root:
            with PathManager.open(gt_json, "r") as f:
                self.ground_truth = PanopticSegments(json.load(f), gt_root, dataset_name,
                                                     metadata, gt_json)

    def unmatched(self, dicts: Sequence[Mapping[str, Any]]) -> List[Any]:
        """Image ids of the predictions that no dataset dict has."""
        return sorted(set(self.predictions.by_image) - {d["image_id"] for d in dicts}, key=str)

    def draw(self, dic: Mapping[str, Any], img: np.ndarray, scale: float) -> Tuple[np.ndarray, int]:
        """The predicted segments of ``dic``'s image drawn on ``img``, and how many."""
        ids, segments = self.predictions.read(dic["image_id"], img.shape[:2])
        vis = Visualizer(img, self.metadata, scale=scale)
        return vis.draw_panoptic_seg(ids, segments, alpha=FILL_ALPHA).get_image(), len(segments)

    def draw_ground_truth(self, dic: Mapping[str, Any], img: np.ndarray,
                          scale: float) -> np.ndarray:
        """The image's ground-truth segments drawn on ``img``."""
        vis = Visualizer(img, self.metadata, scale=scale)
        if self.ground_truth is not None and self.ground_truth.has(dic["image_id"]):
            ids, segments = self.ground_truth.read(dic["image_id"], img.shape[:2])
            return vis.draw_panoptic_seg(ids, segments, alpha=FILL_ALPHA).get_image()
        return vis.draw_dataset_dict(dic).get_image()


def read_predictions_file(path: str) -> Tuple[Any, str]:
    """The parsed json of ``path`` and its format (``detect_format``); exits with a message
    naming the file and the known formats when it is none of them."""
    with PathManager.open(path, "r") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{path} is not valid JSON ({e}). This tool reads "
                             f"{KNOWN_FORMATS}.") from None
    try:
        kind = detect_format(data, path)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    logger.info("%s holds %s predictions.", path, kind)
    return data, kind


def build_predictions(data: Any, kind: str, args: argparse.Namespace, metadata):
    """The predictions object of format ``kind`` (``InstancePredictions``,
    ``SemSegPredictions`` or ``PanopticPredictions``) for dataset ``args.dataset``."""
    if kind == INSTANCES:
        return InstancePredictions(data, args.dataset, metadata, args.conf_threshold)
    if kind == SEM_SEG:
        return SemSegPredictions(data, args.dataset, metadata, args.input)
    return PanopticPredictions(data, args.dataset, metadata, args.input, args.png_dir)


def _save_png(path: str, picture: np.ndarray) -> None:
    directory = os.path.dirname(path)
    if directory:
        PathManager.mkdirs(directory)
    with PathManager.open(path, "wb") as f:
        Image.fromarray(picture).save(f, format="PNG")


def main(argv: Optional[List[str]] = None) -> int:
    """Run the tool on ``argv``; returns the exit status (0)."""
    args = parse_args(argv)
    setup_logger(name="segtron")
    logger.info("Arguments: %s", args)

    data, kind = read_predictions_file(args.input)
    dicts = DatasetCatalog.get(args.dataset)  # loading it also fills in its metadata
    metadata = MetadataCatalog.get(args.dataset)
    try:
        predictions = build_predictions(data, kind, args, metadata)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    unknown = predictions.unmatched(dicts)
    if unknown:
        logger.warning("%d image(s) of %s are not in dataset '%s' (e.g. %s); they are skipped.",
                       len(unknown), args.input, args.dataset, unknown[:5])
    num_files = (len(dicts) if args.num is None else args.num) if args.output else 0
    num_grid = (DEFAULT_GRID_NUM if args.num is None else args.num) if args.grid else 0
    dicts = dicts[: max(num_files, num_grid)]

    if args.output:
        os.makedirs(args.output, exist_ok=True)
    tiles: List[np.ndarray] = []
    captions: List[str] = []
    for index, dic in enumerate(dicts):
        img = read_image(dic["file_name"], "RGB")
        pred_image, count = predictions.draw(dic, img, args.scale)
        drawn = _caption_count(count, predictions.noun)
        if index < num_grid:
            tiles.append(pred_image)
            captions.append(f"{_image_name(dic)} \u00b7 {drawn}")
        if index < num_files:
            gt_image = predictions.draw_ground_truth(dic, img, args.scale)
            stem = os.path.splitext(os.path.basename(dic["file_name"]))[0]
            path = os.path.join(args.output, f"{stem}.png")
            _save_png(path, np.concatenate([pred_image, gt_image], axis=1))
            logger.info("Saved %s (%s)", path, drawn)
    if args.output:
        logger.info("Wrote %d picture(s) to %s", min(num_files, len(dicts)),
                    os.path.abspath(args.output))
    if args.grid:
        if not tiles:
            raise SystemExit(f"Dataset '{args.dataset}' has no images: nothing to tile.")
        sheet = tile_images(tiles, args.columns, captions=captions, gap=GRID_GAP)
        _save_png(args.grid, sheet)
        logger.info("Wrote a grid of %d image(s) (%dx%d pixels) to %s", len(tiles),
                    sheet.shape[1], sheet.shape[0], os.path.abspath(args.grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
