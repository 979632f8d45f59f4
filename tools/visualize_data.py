#!/usr/bin/env python
"""Draw the ground truth of the training datasets, as annotated or as the model is fed.

``--source annotation`` draws each raw dataset dict of ``DATASETS.TRAIN`` on its image
(polygons / RLE masks, boxes, class names, keypoints), and its segmentation ground truth:
semantic label maps (``sem_seg_file_name``, coloured by ``stuff_colors``), COCO panoptic
segments (``pan_seg_file_name`` + ``segments_info``) and, for Panoptic FPN's "separated"
datasets, the instances over their stuff label map. ``--source dataloader`` draws what
``build_detection_train_loader(cfg)`` yields: the augmented image (converted back to RGB from
``INPUT.FORMAT``) with its ``gt_boxes``, ``gt_masks``, ``gt_keypoints``, class names and, when
present, its ``sem_seg`` label map. One PNG per image goes to ``--output-dir``. Detectron2's
``tools/visualize_data.py``, plus ``--num`` and ``--scale``.

Label maps are drawn first and instances on top. In a "separated" dataset the stuff map gives
every thing pixel one merged label (``stuff_classes[0] == "things"``); that label is left out
where the instances themselves are drawn.

Example::

    python tools/visualize_data.py --source dataloader --output-dir vis/ --num 8 \\
        DATASETS.TRAIN "('shapes_train',)" MODEL.MASK_ON True INPUT.MASK_FORMAT bitmask
    python tools/visualize_data.py --source annotation --output-dir vis/panoptic --num 8 \\
        DATASETS.TRAIN "('shapes_panoptic_val',)"
"""

import argparse
import logging
import os
import sys
from collections import Counter
from itertools import chain
from typing import Any, Dict, List, Optional

import numpy as np
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable as `python tools/visualize_data.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

import train_net  # noqa: E402  (imports projects/: their datasets and config keys)
from segtron.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader  # noqa: E402
from segtron.data import detection_utils as utils  # noqa: E402
from segtron.data.build import filter_images_with_few_keypoints  # noqa: E402
from segtron.utils.file_io import PathManager  # noqa: E402
from segtron.utils.logger import setup_logger  # noqa: E402
from segtron.utils.visualizer import VisImage, Visualizer  # noqa: E402

logger = logging.getLogger("segtron.tools.visualize_data")

SEM_SEG_ALPHA = 0.5  # opacity of label-map fills (as Visualizer.draw_dataset_dict draws them)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Draw ground-truth training data to PNG files.")
    parser.add_argument("--source", choices=["annotation", "dataloader"], required=True,
                        help="'annotation': the raw dataset dicts; 'dataloader': what the "
                             "training loader feeds the model (after augmentation)")
    parser.add_argument("--config-file", default="", metavar="FILE",
                        help="config file (default: only the built-in defaults and the overrides)")
    parser.add_argument("--output-dir", default="./", help="where the PNG files are written")
    parser.add_argument("--show", action="store_true",
                        help="also show each picture in a window (needs a display)")
    parser.add_argument("--num", type=int, default=None,
                        help="stop after this many images (default: every annotated image; the "
                             "dataloader source runs until interrupted, as in Detectron2)")
    parser.add_argument("--scale", type=float, default=1.0, help="output size / image size")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. DATASETS.TRAIN "
                             "\"('shapes_train',)\"")
    return parser.parse_args(argv)


def setup(args: argparse.Namespace):
    """Build the frozen config as train_net.py does: defaults, every project's keys, then
    ``--config-file``, then ``opts``."""
    cfg = train_net.build_config(args)
    cfg.DATALOADER.NUM_WORKERS = 0  # read in this process: simpler, and errors show directly
    cfg.freeze()
    if not cfg.DATASETS.TRAIN:
        raise SystemExit(
            "DATASETS.TRAIN is empty: nothing to draw. Pass a --config-file that sets it, or "
            "add the override DATASETS.TRAIN \"('shapes_train',)\"."
        )
    return cfg


class _Writer:
    """Saves (and optionally shows) pictures; a name used twice gets a ``_<k>`` suffix."""

    def __init__(self, output_dir: str, show: bool):
        self.output_dir, self.show = output_dir, show
        self.used = Counter()
        self.count = 0
        os.makedirs(output_dir, exist_ok=True)

    def __call__(self, vis: VisImage, stem: str) -> None:
        k = self.used[stem]
        self.used[stem] += 1
        path = os.path.join(self.output_dir, f"{stem}.png" if k == 0 else f"{stem}_{k}.png")
        vis.save(path)
        self.count += 1
        logger.info("Saved %s", path)
        if self.show:
            import cv2

            cv2.imshow("segtron visualize_data", vis.get_image()[:, :, ::-1])
            cv2.waitKey()


def merged_things_label(metadata) -> Optional[int]:
    """The label a "separated" panoptic stuff map gives every thing pixel, else None.

    Panoptic FPN's semantic target (Detectron2's ``*_panoptic_separated`` datasets) merges all
    things into class 0, named ``"things"`` in ``stuff_classes``; the instances carry the
    actual classes.
    """
    stuff_classes = metadata.get("stuff_classes")
    if stuff_classes and stuff_classes[0] == "things" and metadata.get("thing_classes"):
        return 0
    return None


def draw_label_map(vis: Visualizer, sem_seg: Any, metadata, with_instances: bool) -> None:
    """Draw a semantic label map (HxW class ids, tensor or array) with ``draw_sem_seg``.

    With ``with_instances``, the merged "things" label of a separated dataset (see
    ``merged_things_label``) is not drawn: the instances drawn after it show those pixels.
    """
    if hasattr(sem_seg, "detach"):
        sem_seg = sem_seg.detach().cpu().numpy()
    sem_seg = np.asarray(sem_seg)
    things = merged_things_label(metadata) if with_instances else None
    if things is not None:
        sem_seg = np.where(sem_seg == things, -1, sem_seg.astype(np.int64))  # -1: not drawn
    vis.draw_sem_seg(sem_seg, area_threshold=0, alpha=SEM_SEG_ALPHA)


def read_label_map(dic: Dict[str, Any]) -> Optional[np.ndarray]:
    """The dict's ``sem_seg`` or the label png at ``sem_seg_file_name``; None without either."""
    if dic.get("sem_seg") is not None:
        return np.asarray(dic["sem_seg"])
    if "sem_seg_file_name" not in dic:
        return None
    with PathManager.open(dic["sem_seg_file_name"], "rb") as f:
        return np.asarray(Image.open(f), dtype=np.uint8)


def draw_ground_truth(vis: Visualizer, dic: Dict[str, Any], metadata) -> VisImage:
    """Draw one raw dataset dict: its label map first (``sem_seg_file_name`` or ``sem_seg``),
    then what ``Visualizer.draw_dataset_dict`` draws of the rest (instances, keypoints, COCO
    panoptic ``pan_seg_file_name`` + ``segments_info``).

    Returns:
        the output :class:`VisImage`.
    """
    sem_seg = read_label_map(dic)
    if sem_seg is not None:
        draw_label_map(vis, sem_seg, metadata, with_instances=bool(dic.get("annotations")))
    rest = {k: v for k, v in dic.items() if k not in ("sem_seg", "sem_seg_file_name")}
    return vis.draw_dataset_dict(rest)


def draw_dataloader(cfg, args, metadata, write: _Writer) -> None:
    """Draw the batches of the training loader: augmented images, their ``sem_seg`` label map
    when the mapper produced one, and their ``Instances``."""
    if args.num is None:
        logger.info("Drawing training batches until interrupted (Ctrl-C); use --num to stop.")
    for batch in build_detection_train_loader(cfg):
        for per_image in batch:
            if args.num is not None and write.count >= args.num:
                return
            img = per_image["image"].permute(1, 2, 0).cpu().numpy()  # CHW -> HWC
            img = utils.convert_image_to_rgb(img, cfg.INPUT.FORMAT)
            vis = Visualizer(img, metadata=metadata, scale=args.scale)
            instances = per_image.get("instances")
            has_instances = instances is not None and len(instances) > 0
            if per_image.get("sem_seg") is not None:
                draw_label_map(vis, per_image["sem_seg"], metadata, with_instances=has_instances)
            if has_instances:
                class_names = metadata.get("thing_classes")  # set once the dataset is loaded
                classes = instances.gt_classes.tolist() if instances.has("gt_classes") else None
                labels = ([class_names[c] for c in classes] if classes and class_names
                          else [str(c) for c in classes] if classes else None)
                vis.overlay_instances(
                    labels=labels,
                    boxes=instances.get("gt_boxes") if instances.has("gt_boxes") else None,
                    masks=instances.get("gt_masks") if instances.has("gt_masks") else None,
                    keypoints=(instances.get("gt_keypoints") if instances.has("gt_keypoints")
                               else None),
                )
            stem = str(per_image.get("image_id", os.path.splitext(
                os.path.basename(per_image["file_name"]))[0]))
            write(vis.get_output(), stem)


def draw_annotations(cfg, args, metadata, write: _Writer) -> None:
    """Draw the raw dataset dicts of ``DATASETS.TRAIN`` on their images."""
    dicts = list(chain.from_iterable(DatasetCatalog.get(name) for name in cfg.DATASETS.TRAIN))
    if cfg.MODEL.KEYPOINT_ON:
        dicts = filter_images_with_few_keypoints(dicts, 1)
    if args.num is not None:
        dicts = dicts[: args.num]
    for dic in dicts:
        img = utils.read_image(dic["file_name"], "RGB")
        vis = Visualizer(img, metadata=metadata, scale=args.scale)
        write(draw_ground_truth(vis, dic, metadata),
              os.path.splitext(os.path.basename(dic["file_name"]))[0])


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    setup_logger(name="segtron")
    logger.info("Arguments: %s", args)
    cfg = setup(args)
    write = _Writer(args.output_dir, args.show)
    draw = draw_dataloader if args.source == "dataloader" else draw_annotations
    metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    try:
        draw(cfg, args, metadata, write)
    except KeyboardInterrupt:
        logger.info("Interrupted.")
    logger.info("Wrote %d picture(s) to %s", write.count, os.path.abspath(args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
