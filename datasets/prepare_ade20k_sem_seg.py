#!/usr/bin/env python3
"""Make ADEChallengeData2016/annotations_detectron2/ from ADEChallengeData2016/annotations/.

The SceneParsing pngs store 0 for "other" and k + 1 for class k. segtron (like Detectron2)
trains on 0..149 with 255 ignored, so every value is shifted down by one and 0 becomes 255.
Usage, from the repository root:
    PYTHONPATH=. python datasets/prepare_ade20k_sem_seg.py [--root DIR]
"""

import argparse
import logging
import os
import sys

import numpy as np
from PIL import Image

logger = logging.getLogger("prepare_ade20k_sem_seg")


def convert(src: str, dst: str) -> None:
    """Write ``dst``: the uint8 label png ``src`` with values shifted by -1 (0 -> 255)."""
    with Image.open(src) as im:
        labels = np.asarray(im)
    if labels.dtype != np.uint8:
        raise ValueError(f"{src}: expected an 8-bit label png, got dtype {labels.dtype}.")
    Image.fromarray((labels.astype(np.int16) - 1).astype(np.uint8)).save(dst)


def prepare(dataset_dir: str) -> int:
    """Convert both splits under ``dataset_dir`` (ADEChallengeData2016); returns #files."""
    count = 0
    for split in ("training", "validation"):
        src_dir = os.path.join(dataset_dir, "annotations", split)
        if not os.path.isdir(src_dir):
            raise FileNotFoundError(
                f"{src_dir} does not exist; unzip ADEChallengeData2016.zip at the datasets root "
                "(see datasets/README.md#ade20k).")
        dst_dir = os.path.join(dataset_dir, "annotations_detectron2", split)
        os.makedirs(dst_dir, exist_ok=True)
        names = sorted(n for n in os.listdir(src_dir) if n.endswith(".png"))
        for name in names:
            convert(os.path.join(src_dir, name), os.path.join(dst_dir, name))
        logger.info("%s: wrote %d pngs to %s", split, len(names), dst_dir)
        count += len(names)
    return count


def main(argv=None) -> int:
    from segtron.data.datasets.root import get_datasets_root

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=get_datasets_root(), help="datasets root")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        prepare(os.path.join(args.root, "ADEChallengeData2016"))
    except FileNotFoundError as e:
        logger.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
