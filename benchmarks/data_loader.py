"""Throughput of the default training data loader (images/s), with 0 and 2 workers.

Uses the Detectron2 default config with ``DATASETS.TRAIN=("shapes_train",)`` and a small
``SOLVER.IMS_PER_BATCH``: DatasetMapper (read PNG, ResizeShortestEdge 800/1333, horizontal
flip, annotations -> Instances), aspect-ratio grouping, TrainingSampler. For each worker count
the loader is warmed up (worker start-up, page cache), then several windows of batches are timed
and the median window rate is reported.

Run from the repository root::

    python benchmarks/data_loader.py [--workers 0 2] [--batch 4] [--mask-on] [-- KEY VALUE ...]

e.g. ``--mask-on -- INPUT.MASK_FORMAT bitmask`` (shapes stores occluded masks as RLE, which
needs bitmask).

The shapes dataset is generated under the datasets root on first use (see
``segtron/data/datasets/shapes.py``).
"""

import argparse
import logging
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tabulate import tabulate  # noqa: E402

from segtron.config import get_cfg  # noqa: E402
from segtron.data.build import build_detection_train_loader  # noqa: E402
from segtron.data.catalog import DatasetCatalog  # noqa: E402


def _ensure_shapes_registered() -> None:
    if "shapes_train" not in DatasetCatalog:
        from segtron.data.datasets.shapes import register_shapes

        register_shapes()


def measure(cfg, warmup: int, windows: int, window_batches: int) -> dict:
    """Time the loader built from ``cfg``; returns images/s per window and their median."""
    loader = build_detection_train_loader(cfg)
    batch = cfg.SOLVER.IMS_PER_BATCH
    it = iter(loader)
    start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    warmup_s = time.perf_counter() - start
    rates = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(window_batches):
            next(it)
        rates.append(window_batches * batch / (time.perf_counter() - t0))
    del it, loader  # shut the workers down before the next configuration
    return {"rates": rates, "median": statistics.median(rates), "warmup_s": warmup_s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch", type=int, default=4, help="SOLVER.IMS_PER_BATCH")
    parser.add_argument("--warmup", type=int, default=3, help="batches before timing")
    parser.add_argument("--windows", type=int, default=7, help="timed windows")
    parser.add_argument("--window-batches", type=int, default=5, help="batches per window")
    parser.add_argument("--mask-on", action="store_true", help="MODEL.MASK_ON=True (masks too)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE overrides")
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    logging.basicConfig(level=logging.WARNING)

    _ensure_shapes_registered()
    DatasetCatalog.get("shapes_train")  # generate the data (first run) outside the timing

    rows = []
    for workers in args.workers:
        cfg = get_cfg()
        cfg.DATASETS.TRAIN = ("shapes_train",)
        cfg.SOLVER.IMS_PER_BATCH = args.batch
        cfg.DATALOADER.NUM_WORKERS = workers
        cfg.MODEL.MASK_ON = args.mask_on
        if args.opts:
            cfg.merge_from_list(args.opts)
        result = measure(cfg, args.warmup, args.windows, args.window_batches)
        rows.append(
            [
                workers,
                cfg.SOLVER.IMS_PER_BATCH,
                f"{result['median']:.1f}",
                f"{min(result['rates']):.1f}-{max(result['rates']):.1f}",
                f"{result['warmup_s']:.1f}",
            ]
        )
    print(
        f"Default train loader on shapes_train (MASK_ON={args.mask_on}, "
        f"{args.windows} windows x {args.window_batches} batches, median); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end:"
    )
    print(
        tabulate(
            rows,
            headers=["workers", "batch", "images/s", "range", "warm-up s"],
            tablefmt="pipe",
        )
    )


if __name__ == "__main__":
    main()
