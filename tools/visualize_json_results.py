#!/usr/bin/env python
"""Draw saved instance predictions next to the ground truth, one PNG per image, or the
predictions of many images tiled into one PNG.

Reads a COCO-format results file (``coco_instances_results.json``, as written by
``COCOEvaluator``: a list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score",
"segmentation": RLE (optional)}``), keeps the predictions scoring above ``--conf-threshold``,
maps their dataset category ids back to contiguous class ids through the dataset's metadata and
writes, for each image of ``--dataset``, predictions (left) beside the ground truth (right) into
``--output``. Detectron2's ``tools/visualize_json_results.py``, plus ``--num`` and ``--scale``.

With ``--grid PATH`` it instead writes one PNG tiling the predictions (no ground truth) of the
first ``--num`` images (default 16), ``--columns`` per row, each captioned with its image id.

Example::

    python tools/visualize_json_results.py --input output/inference/coco_instances_results.json \\
        --output vis_results/ --dataset shapes_val --conf-threshold 0.5 --num 20
    python tools/visualize_json_results.py --input output/inference/coco_instances_results.json \\
        --grid predictions.png --dataset shapes_val --num 12 --columns 4
"""

import argparse
import json
import logging
import os
import sys
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable as `python tools/visualize_json_results.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

from PIL import Image  # noqa: E402

import train_net  # noqa: E402, F401  (imports projects/, which may register datasets)
from segtron.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from segtron.data.detection_utils import read_image  # noqa: E402
from segtron.structures import Boxes, BoxMode, Instances  # noqa: E402
from segtron.utils.file_io import PathManager  # noqa: E402
from segtron.utils.logger import setup_logger  # noqa: E402
from segtron.utils.visualizer import Visualizer  # noqa: E402
from segtron.utils.visualizer_grid import tile_images  # noqa: E402

logger = logging.getLogger("segtron.tools.visualize_json_results")

DEFAULT_GRID_NUM = 16  # images in a --grid picture without --num
GRID_GAP = 4  # white pixels between the tiles of a --grid picture


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Draw predictions from a COCO results JSON beside the ground truth (one "
                    "PNG per image, --output) or tiled into one PNG (--grid).")
    parser.add_argument("--input", required=True, help="COCO results json (list of predictions)")
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
                        help="draw predictions scoring above this")
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


def dataset_id_mapper(dataset_name: str, metadata) -> Callable[[int], int]:
    """Function: dataset category id (as in the results file) -> contiguous class id."""
    id_map = metadata.get("thing_dataset_id_to_contiguous_id")
    if id_map is not None:
        id_map = {int(k): int(v) for k, v in id_map.items()}

        def lookup(category_id: int) -> int:
            try:
                return id_map[int(category_id)]
            except KeyError:
                raise KeyError(
                    f"Category id {category_id} of the results file is not a category of dataset "
                    f"'{dataset_name}' (known ids: {sorted(id_map)}). Was the file made on another "
                    "dataset? Pass that one with --dataset."
                ) from None

        return lookup
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


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger(name="segtron")
    logger.info("Arguments: %s", args)

    with PathManager.open(args.input, "r") as f:
        predictions = json.load(f)
    if not isinstance(predictions, list):
        raise SystemExit(
            f"{args.input} is not a COCO results file: expected a JSON list of predictions, got "
            f"a {type(predictions).__name__}."
        )
    by_image: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)
    for p in predictions:
        by_image[p["image_id"]].append(p)

    dicts = DatasetCatalog.get(args.dataset)  # loading it also fills in its metadata
    metadata = MetadataCatalog.get(args.dataset)
    to_contiguous = dataset_id_mapper(args.dataset, metadata)
    unknown = set(by_image) - {d["image_id"] for d in dicts}
    if unknown:
        logger.warning("%d image id(s) of %s are not in dataset '%s' (e.g. %s); they are skipped.",
                       len(unknown), args.input, args.dataset, sorted(unknown, key=str)[:5])
    num_files = (len(dicts) if args.num is None else args.num) if args.output else 0
    num_grid = (DEFAULT_GRID_NUM if args.num is None else args.num) if args.grid else 0
    dicts = dicts[: max(num_files, num_grid)]

    if args.output:
        os.makedirs(args.output, exist_ok=True)
    tiles: List[np.ndarray] = []
    captions: List[str] = []
    for index, dic in enumerate(dicts):
        img = read_image(dic["file_name"], "RGB")
        preds = create_instances(by_image.get(dic["image_id"], []), img.shape[:2],
                                 args.conf_threshold, to_contiguous)
        pred_image = Visualizer(img, metadata, scale=args.scale).draw_instance_predictions(
            preds).get_image()
        if index < num_grid:
            tiles.append(pred_image)
            captions.append(f"image {dic['image_id']} \u00b7 {len(preds)} prediction"
                            + ("" if len(preds) == 1 else "s"))
        if index < num_files:
            gt_vis = Visualizer(img, metadata, scale=args.scale).draw_dataset_dict(dic)
            both = np.concatenate([pred_image, gt_vis.get_image()], axis=1)
            stem = os.path.splitext(os.path.basename(dic["file_name"]))[0]
            path = os.path.join(args.output, f"{stem}.png")
            with PathManager.open(path, "wb") as f:
                Image.fromarray(both).save(f, format="PNG")
            logger.info("Saved %s (%d predictions above %.2f)", path, len(preds),
                        args.conf_threshold)
    if args.output:
        logger.info("Wrote %d picture(s) to %s", min(num_files, len(dicts)),
                    os.path.abspath(args.output))
    if args.grid:
        if not tiles:
            raise SystemExit(f"Dataset '{args.dataset}' has no images: nothing to tile.")
        sheet = tile_images(tiles, args.columns, captions=captions, gap=GRID_GAP)
        directory = os.path.dirname(args.grid)
        if directory:
            PathManager.mkdirs(directory)
        with PathManager.open(args.grid, "wb") as f:
            Image.fromarray(sheet).save(f, format="PNG")
        logger.info("Wrote a grid of %d image(s) (%dx%d pixels) to %s", len(tiles),
                    sheet.shape[1], sheet.shape[0], os.path.abspath(args.grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
