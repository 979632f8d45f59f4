"""COCO evaluation speed: ``COCOEvaluator`` (faster-coco-eval fast path) vs plain pycocotools.

A synthetic COCO ground truth (default 500 images, a few objects each, polygons and RLE masks,
sizes spanning small/medium/large) and 100 detections per image (jittered
copies of most objects, sometimes with the wrong class, plus false positives, every one with a
mask) are generated with the seeded generator of the evaluation tests. Both sides then score
bbox and segm from the same ground-truth json and the same detections:

* ``COCOEvaluator``: a fresh evaluator (reads the json) whose predictions were collected by
  ``process`` beforehand, then ``evaluate()`` (category-id mapping, ``loadRes``, COCOeval
  for bbox and segm, result tables), with ``use_fast_impl=True``;
* ``pycocotools``: ``COCO(json)``, then ``loadRes`` + ``COCOeval`` evaluate/accumulate/summarize
  for bbox and segm, on the results file the evaluator wrote.

Runs are interleaved; the medians of ``--repeats`` runs of wall-clock and of CPU time (all
threads of the process: faster-coco-eval computes mask IoUs on a few threads) are reported, and
the speed-up is pycocotools' median over the evaluator's (goal: >= 3x). On a shared, loaded
machine the CPU-time ratio is the steadier of the two. The summary numbers of both are
compared as well.
``--official`` adds ``COCOEvaluator(use_fast_impl=False)`` (the evaluator's own overhead).

The ratio depends on the number of categories: pycocotools' Python loops run over every
(image, category) pair, so it is run with the tests' 4 categories and with COCO's 80.

Run from the repository root::

    python benchmarks/coco_eval.py [--images 500] [--dets 100] [--categories 4 80]
                                   [--repeats 3] [--official]
"""

import argparse
import contextlib
import gc
import io
import json
import logging
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

from tabulate import tabulate  # noqa: E402

from benchmarks.peer_timing import machine_line  # noqa: E402
from segtron.data.catalog import MetadataCatalog  # noqa: E402
from segtron.evaluation import COCOEvaluator  # noqa: E402
from segtron.structures import Boxes, Instances  # noqa: E402
from tests.evaluation.synthetic_coco import (  # noqa: E402
    make_detections,
    make_synthetic_coco,
    strip_private,
)

DATASET = "benchmark_coco_eval"
FAST = "COCOEvaluator (faster-coco-eval)"
REFERENCE = "pycocotools COCOeval"
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def build_inputs(args, num_categories, dataset, work_dir):
    """Write the ground truth json and register it as ``dataset``.

    Returns ``(gt_file, predictions collected by COCOEvaluator.process)``.
    """
    start = time.perf_counter()
    coco = make_synthetic_coco(args.images, seed=args.seed, min_size=args.min_size,
                               max_size=args.max_size, max_objects=args.max_objects,
                               num_categories=num_categories)
    gt_file = os.path.join(work_dir, "instances_benchmark.json")
    with open(gt_file, "w") as f:
        json.dump(strip_private(coco), f)
    id_map = {c["id"]: i for i, c in enumerate(coco["categories"])}
    MetadataCatalog.get(dataset).set(
        json_file=gt_file,
        thing_classes=[c["name"] for c in coco["categories"]],
        thing_dataset_id_to_contiguous_id=id_map,
    )

    # Collect the predictions once with process() (RLE-encodes the masks); the timed runs
    # start from them, as evaluate() does after a real inference pass.
    collector = COCOEvaluator(dataset, distributed=False, output_dir=work_dir)
    for image_id, dets in make_detections(coco, seed=args.seed + 1,
                                          dets_per_image=args.dets):
        inst = Instances(dets["masks"].shape[1:])
        inst.pred_boxes = Boxes(torch.as_tensor(dets["boxes"]))
        inst.scores = torch.as_tensor(dets["scores"])
        inst.pred_classes = torch.as_tensor([id_map[int(c)] for c in dets["category_ids"]])
        inst.pred_masks = torch.as_tensor(dets["masks"])
        collector.process([{"image_id": image_id}], [{"instances": inst}])
    predictions = collector._predictions
    # One untimed evaluate() writes coco_instances_results.json (dataset category ids).
    collector.evaluate()
    num_dets = sum(len(p["instances"]) for p in predictions)
    print(f"\n{len(coco['categories'])} categories: generated {args.images} images, "
          f"{len(coco['annotations'])} ground-truth objects, {num_dets} detections with masks "
          f"in {time.perf_counter() - start:.1f} s.")
    return gt_file, predictions


def evaluator_run(dataset, predictions, use_fast_impl, out):
    """A fresh COCOEvaluator scoring ``predictions`` (bbox + segm); results go to ``out``."""

    def run():
        evaluator = COCOEvaluator(dataset, distributed=False, use_fast_impl=use_fast_impl)
        evaluator._predictions = predictions  # what process() collected, see build_inputs
        out["results"] = evaluator.evaluate()

    return run


def pycocotools_run(gt_file, results, out):
    """Plain pycocotools on the same files: bbox with boxes, segm from the masks alone."""
    per_task = {
        "bbox": results,
        # As COCOEvaluator does: without boxes, COCO takes mask AP areas from the masks.
        "segm": [{k: v for k, v in r.items() if k != "bbox"} for r in results],
    }

    def run():
        stats = {}
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(gt_file)
            for task, task_results in per_task.items():
                coco_dt = coco_gt.loadRes([dict(r) for r in task_results])
                coco_eval = COCOeval(coco_gt, coco_dt, task)
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
                stats[task] = coco_eval.stats
        out["stats"] = stats

    return run


def time_runs(candidates, repeats):
    """Interleaved runs; name -> {"wall": [s, ...], "cpu": [s, ...]} (CPU: all threads)."""
    times = {name: {"wall": [], "cpu": []} for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            gc.collect()
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def report(times, reference, target):
    """Print median wall/CPU seconds; return ``target``'s wall-clock speed-up over ``reference``."""
    med = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    rows = [
        [name, f"{m['wall']:.2f}", f"{min(times[name]['wall']):.2f}-{max(times[name]['wall']):.2f}",
         f"{m['cpu']:.2f}", f"{med[reference]['wall'] / m['wall']:.2f}x"]
        for name, m in med.items()
    ]
    print(tabulate(rows, headers=["implementation", "median wall s", "wall range s",
                                  "median CPU s", f"speed-up vs {reference} (wall)"],
                   tablefmt="github"))
    wall = med[reference]["wall"] / med[target]["wall"]
    cpu = med[reference]["cpu"] / med[target]["cpu"]
    print(f"speed-up of COCOEvaluator's fast path over pycocotools: {wall:.2f}x wall-clock, "
          f"{cpu:.2f}x CPU time (goal >= 3x)")
    return wall


def benchmark(args, num_categories) -> float:
    """Generate, time and report one configuration; returns the wall-clock speed-up."""
    dataset = f"{DATASET}_{num_categories}"
    with tempfile.TemporaryDirectory(prefix="segtron_coco_eval_") as work_dir:
        gt_file, predictions = build_inputs(args, num_categories, dataset, work_dir)
        with open(os.path.join(work_dir, "coco_instances_results.json")) as f:
            results = json.load(f)

        outputs = {"fast": {}, "official": {}, "pycocotools": {}}
        candidates = {FAST: evaluator_run(dataset, predictions, True, outputs["fast"])}
        if args.official:
            candidates["COCOEvaluator (pycocotools)"] = evaluator_run(
                dataset, predictions, False, outputs["official"]
            )
        candidates[REFERENCE] = pycocotools_run(gt_file, results, outputs["pycocotools"])
        times = time_runs(candidates, args.repeats)

    print(f"bbox + segm evaluation, {args.images} images x {args.dets} detections, "
          f"{num_categories} categories, median of {args.repeats} interleaved runs; "
          f"{machine_line()}, {os.cpu_count()} CPUs")
    speedup = report(times, REFERENCE, FAST)

    worst = 0.0
    for task in ("bbox", "segm"):
        for i, metric in enumerate(METRICS):
            ref = outputs["pycocotools"]["stats"][task][i]
            ref = ref * 100 if ref >= 0 else float("nan")
            got = outputs["fast"]["results"][task][metric]
            if not (np.isnan(ref) and np.isnan(got)):
                worst = max(worst, abs(got - ref))
    print(f"largest difference of the 12 reported AP numbers (bbox + segm): {worst:.2e} points; "
          f"bbox AP {outputs['fast']['results']['bbox']['AP']:.3f}, "
          f"segm AP {outputs['fast']['results']['segm']['AP']:.3f}")
    return speedup


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--max-objects", type=int, default=10, help="ground truth per image")
    parser.add_argument("--categories", type=int, nargs="+", default=[4, 80],
                        help="category counts to run (the tests use 4; COCO has 80)")
    parser.add_argument("--min-size", type=int, default=240, help="smallest image side")
    parser.add_argument("--max-size", type=int, default=320, help="largest image side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--official", action="store_true",
                        help="also time COCOEvaluator(use_fast_impl=False)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    speedups = {n: benchmark(args, n) for n in args.categories}
    print("\nsummary, wall-clock speed-up of COCOEvaluator (faster-coco-eval) over pycocotools: "
          + ", ".join(f"{n} categories {x:.2f}x" for n, x in speedups.items())
          + " (goal >= 3x)")


if __name__ == "__main__":
    main()
