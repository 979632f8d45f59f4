#!/usr/bin/env python
"""Generate the synthetic "shapes" dataset (train and val splits) and print a summary.

    python datasets/prepare_shapes.py                      # <datasets root>/shapes, defaults
    python datasets/prepare_shapes.py --num-train 500 --workers 2
    python datasets/prepare_shapes.py --force              # regenerate even if complete
    python datasets/prepare_shapes.py --panoptic           # <datasets root>/shapes_panoptic

The data goes to ``<root>/shapes`` where ``--root`` defaults to ``$SEGTRON_DATASETS``, then
``$DETECTRON2_DATASETS``, then ``./datasets``. With ``--panoptic`` it is the variant with stuff
regions, in ``<root>/shapes_panoptic``, which the ``shapes_sem_seg_*`` and ``shapes_panoptic_*``
datasets read. A split that is already complete with the same parameters is kept; with other
parameters it is regenerated. The train split uses ``--seed``, the val split ``--seed + 1``.
The registered datasets use whatever complete split they find there (and generate the
defaults when there is none).
"""

import argparse
import logging
import os
import sys
import time
from typing import Optional, Tuple

try:
    import segtron  # noqa: F401
except ImportError:  # run from a checkout without installing: use the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from segtron.data.datasets.root import get_datasets_root  # noqa: E402
from segtron.data.datasets.shapes import (  # noqa: E402
    SHAPES_SPLITS,
    prepare_shapes_split,
    shapes_dataset_summary,
)
from segtron.data.datasets.shapes_panoptic import (  # noqa: E402
    prepare_shapes_panoptic_split,
    shapes_panoptic_summary,
)


def _parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None,
                        help="datasets root; data goes to <root>/shapes (default: "
                             "$SEGTRON_DATASETS, $DETECTRON2_DATASETS or ./datasets)")
    parser.add_argument("--num-train", type=int, default=SHAPES_SPLITS["shapes_train"][1],
                        help="number of training images (default: %(default)s)")
    parser.add_argument("--num-val", type=int, default=SHAPES_SPLITS["shapes_val"][1],
                        help="number of validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=SHAPES_SPLITS["shapes_train"][2],
                        help="seed of the train split; val uses seed + 1 (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default: usable cores, at most 8)")
    parser.add_argument("--force", action="store_true",
                        help="regenerate even when a complete split with these parameters exists")
    parser.add_argument("--panoptic", action="store_true",
                        help="prepare the variant with textured stuff regions (semantic and "
                             "panoptic labels) in <root>/shapes_panoptic instead")
    args = parser.parse_args(argv)
    for name in ("num_train", "num_val"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    return args


def _print_summary(split: str, json_file: str, image_root: str) -> None:
    s = shapes_dataset_summary(json_file)
    lo, mean, hi = s["objects_per_image"]
    n = max(s["num_objects"], 1)
    print(f"\n{split}: {s['num_images']} images in {image_root}")
    print(f"  annotations: {json_file}")
    print(f"  objects: {s['num_objects']} ({lo}-{hi} per image, mean {mean:.2f})")
    print("  per class:  " + ", ".join(f"{k} {v}" for k, v in s["per_class"].items()))
    print("  per size:   " + ", ".join(f"{k} {v} ({100 * v / n:.0f}%)"
                                       for k, v in s["per_size"].items())
          + "   [COCO buckets of the visible area: small < 32^2 <= medium < 96^2 <= large]")
    print(f"  occlusion:  {s['num_rle']} objects partly covered, stored as RLE "
          f"({100 * s['num_rle'] / n:.0f}%), in {s['images_with_occlusion']} images; "
          "the others are unoccluded polygons")


def _print_stuff_summary(panoptic_json: str) -> None:
    s = shapes_panoptic_summary(panoptic_json)
    lo, mean, hi = s["stuff_per_image"]
    print(f"  panoptic:   {panoptic_json}, {s['num_segments']} segments; stuff regions "
          f"{lo}-{hi} per image (mean {mean:.2f})")
    print("  pixels:     " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in s["pixel_share"].items()))


def _prepare(root_dir: str, split: str, num_images: int, seed: int,
             args: argparse.Namespace) -> Tuple[str, str, Optional[str]]:
    """Prepare one split; return its instances json, image root and panoptic json (if any)."""
    if args.panoptic:
        paths = prepare_shapes_panoptic_split(
            root_dir, split, num_images, seed, num_workers=args.workers, force=args.force,
            require_same_params=True)
        return paths["instances_json"], paths["image_root"], paths["panoptic_json"]
    json_file, image_root = prepare_shapes_split(
        root_dir, split, num_images, seed, num_workers=args.workers, force=args.force,
        require_same_params=True)
    return json_file, image_root, None


def main(argv=None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    root_dir = os.path.join(get_datasets_root() if args.root is None else args.root,
                            "shapes_panoptic" if args.panoptic else "shapes")
    splits = [("train", args.num_train, args.seed), ("val", args.num_val, args.seed + 1)]
    results = []
    start = time.perf_counter()
    for split, num_images, seed in splits:
        results.append((split, *_prepare(root_dir, split, num_images, seed, args)))
    for split, json_file, image_root, panoptic_json in results:
        _print_summary(split, json_file, image_root)
        if panoptic_json is not None:
            _print_stuff_summary(panoptic_json)
    print(f"\nDone in {time.perf_counter() - start:.1f} s. Delete {root_dir} or pass --force to "
          "regenerate.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
