#!/usr/bin/env python3
"""Write Cityscapes *_gtFine_labelTrainIds.png next to every *_gtFine_labelIds.png.

Each label id becomes its trainId (0..18; 255 for classes not trained on), which is what
cityscapesScripts' createTrainIdLabelImgs.py produces, without installing cityscapesScripts.
Usage, from the repository root:
    PYTHONPATH=. python datasets/prepare_cityscapes_sem_seg.py [--root DIR]
"""

import argparse
import logging
import os
import sys

import numpy as np
from PIL import Image

logger = logging.getLogger("prepare_cityscapes_sem_seg")

_SUFFIX = "_gtFine_labelIds.png"


def convert(src: str, dst: str, lut: np.ndarray) -> None:
    """Write ``dst``: the label-id png ``src`` mapped through ``lut`` (label id -> trainId)."""
    with Image.open(src) as im:
        ids = np.asarray(im)
    if ids.dtype != np.uint8:
        raise ValueError(f"{src}: expected an 8-bit labelIds png, got dtype {ids.dtype}.")
    Image.fromarray(lut[ids]).save(dst)


def prepare(gt_root: str) -> int:
    """Convert every labelIds png under ``gt_root`` (cityscapes/gtFine); returns #files."""
    from segtron.data.datasets.cityscapes import _train_id_lut

    if not os.path.isdir(gt_root):
        raise FileNotFoundError(
            f"{gt_root} does not exist; unzip gtFine_trainvaltest.zip into cityscapes/ "
            "(see datasets/README.md#cityscapes).")
    lut = _train_id_lut()
    count = 0
    for dirpath, _, filenames in sorted(os.walk(gt_root)):
        for name in sorted(filenames):
            if name.endswith(_SUFFIX):
                src = os.path.join(dirpath, name)
                convert(src, src[: -len(_SUFFIX)] + "_gtFine_labelTrainIds.png", lut)
                count += 1
    logger.info("wrote %d labelTrainIds pngs under %s", count, gt_root)
    return count


def main(argv=None) -> int:
    from segtron.data.datasets.root import get_datasets_root

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=get_datasets_root(), help="datasets root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepare(os.path.join(args.root, "cityscapes", "gtFine"))
    except FileNotFoundError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
