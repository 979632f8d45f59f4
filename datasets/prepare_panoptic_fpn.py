#!/usr/bin/env python3
"""Make coco/panoptic_stuff_{train,val}2017/ (semantic pngs for Panoptic FPN) from the COCO
panoptic annotations.

In the output, every pixel of a "thing" segment is 0, a stuff segment of the k-th COCO stuff
category (COCO_CATEGORIES order) is k (1..53), and unlabeled pixels are 255 — the ids of the
"coco_panoptic_separated" metadata. No panopticapi install is needed.
Usage, from the repository root:
    PYTHONPATH=. python datasets/prepare_panoptic_fpn.py [--root DIR] [--workers N]
"""

import argparse
import functools
import json
import logging
import multiprocessing as mp
import os
import sys
from typing import Dict, List

import numpy as np
from PIL import Image

logger = logging.getLogger("prepare_panoptic_fpn")


def semantic_id_map() -> Dict[int, int]:
    """COCO category id -> semantic id: things 0, stuff 1..53, 0 (unlabeled) -> 255."""
    from segtron.data.datasets.builtin_meta import COCO_CATEGORIES

    id_map = {c["id"]: 0 for c in COCO_CATEGORIES if c["isthing"]}
    stuff = [c for c in COCO_CATEGORIES if not c["isthing"]]
    id_map.update({c["id"]: i + 1 for i, c in enumerate(stuff)})
    id_map[0] = 255
    return id_map


def convert(panoptic_png: str, semantic_png: str, segments: List[dict],
            id_map: Dict[int, int]) -> None:
    """Write ``semantic_png`` from one panoptic png and its ``segments_info``."""
    with Image.open(panoptic_png) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint32)
    # COCO panoptic encodes a segment id as R + 256 * G + 256^2 * B.
    segment_ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    out = np.full(segment_ids.shape, 255, dtype=np.uint8)
    for seg in segments:
        out[segment_ids == seg["id"]] = id_map[seg["category_id"]]
    Image.fromarray(out).save(semantic_png)


def _convert_one(ann: dict, panoptic_root: str, sem_seg_root: str, id_map: Dict[int, int]):
    convert(os.path.join(panoptic_root, ann["file_name"]),
            os.path.join(sem_seg_root, ann["file_name"]), ann["segments_info"], id_map)


def prepare(panoptic_json: str, panoptic_root: str, sem_seg_root: str, workers: int = 1) -> int:
    """Convert all images of ``panoptic_json``; returns the number of pngs written."""
    for path in (panoptic_json, panoptic_root):
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} does not exist; unzip panoptic_annotations_trainval2017.zip and its "
                "inner panoptic_*2017.zip into coco/ (see datasets/README.md#coco-panoptic).")
    with open(panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    os.makedirs(sem_seg_root, exist_ok=True)
    work = functools.partial(_convert_one, panoptic_root=panoptic_root,
                             sem_seg_root=sem_seg_root, id_map=semantic_id_map())
    if workers > 1:
        with mp.Pool(processes=workers) as pool:
            pool.map(work, annotations, chunksize=64)
    else:
        for ann in annotations:
            work(ann)
    logger.info("wrote %d pngs to %s", len(annotations), sem_seg_root)
    return len(annotations)


def main(argv=None) -> int:
    from segtron.data.datasets.root import get_datasets_root

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=get_datasets_root(), help="datasets root")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        coco = os.path.join(args.root, "coco")
        for split in ("train2017", "val2017"):
            prepare(os.path.join(coco, "annotations", f"panoptic_{split}.json"),
                    os.path.join(coco, f"panoptic_{split}"),
                    os.path.join(coco, f"panoptic_stuff_{split}"), workers=args.workers)
    except FileNotFoundError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
