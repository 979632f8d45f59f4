#!/usr/bin/env python
"""Measure how fast a config trains, infers or loads data: Detectron2's ``tools/benchmark.py``.

The config is built as ``train_net.py`` builds it (every project under ``projects/`` loaded,
``--config-file``, then the ``KEY VALUE`` overrides), with ``SOLVER.BASE_LR`` 0.001 unless an
override sets it (the losses do not matter here, and a high rate can make them diverge).
``--max-iter`` sets how many iterations are timed (default: Detectron2's count for the task).
Each task ends with one line per measurement, starting with ``[benchmark]``.

``--task``:

* ``train``: training speed. ``SimpleTrainer`` (``AMPTrainer`` with ``SOLVER.AMP.ENABLED``)
  runs ``--max-iter`` steps on up to 100 batches of train_net.py's training loader, read
  beforehand and repeated, so loading is left out; ``MODEL.WEIGHTS`` is loaded when set. The
  engine's ``CommonMetricPrinter`` (every 20 iterations) and ``IterationTimer`` log as in
  training; the speed line covers the steps the timer times (all but the first 2). Several
  processes (``--num-gpus``, ``--num-machines``) train with DistributedDataParallel.
* ``eval``: inference speed, in one process: the model in eval mode on up to 100 batches of
  ``DATASETS.TEST[0]``'s test loader, read beforehand and repeated; 5 warm-up iterations, then
  ``--max-iter`` through ``inference_on_dataset`` (which logs its own per-iteration times).
* ``data``: the training loader train_net.py builds, in every process: the time to its first
  batch, 10 warm-up batches, then ``--max-iter`` batches timed (batches and images per second,
  one line per process), and the machine's RAM use.
* ``data_advanced``: where loading time goes, in the first process: reading the dataset dicts
  of ``DATASETS.TRAIN``, the mapper alone on them, then the training loader with 0 and 1
  worker and ``DATALOADER.NUM_WORKERS``; with several processes, ``data``'s measurement after.

Examples::

    python tools/benchmark.py --task train --config-file configs/Shapes/tiny_mask_rcnn_R_50_FPN.yaml
    python tools/benchmark.py --task eval --max-iter 100 \\
        --config-file configs/Shapes/tiny_mask_rcnn_R_50_FPN.yaml MODEL.WEIGHTS out/model_final.pth
    python tools/benchmark.py --task data --num-gpus 2 \\
        --config-file configs/Shapes/tiny_mask_rcnn_R_50_FPN.yaml DATALOADER.NUM_WORKERS 4
"""

import argparse
import itertools
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable as `python tools/benchmark.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

import train_net  # noqa: E402  (imports projects/: their components and config keys)
from segtron.checkpoint import DetectionCheckpointer  # noqa: E402
from segtron.config import CfgNode  # noqa: E402
from segtron.data import get_detection_dataset_dicts  # noqa: E402
from segtron.engine import (  # noqa: E402
    AMPTrainer,
    IterationTimer,
    PeriodicWriter,
    SimpleTrainer,
    create_ddp_model,
    default_argument_parser,
    launch,
)
from segtron.evaluation import inference_on_dataset  # noqa: E402
from segtron.modeling import build_model  # noqa: E402
from segtron.solver import build_optimizer  # noqa: E402
from segtron.utils import comm  # noqa: E402
from segtron.utils.collect_env import collect_env_info  # noqa: E402
from segtron.utils.event_writers import CommonMetricPrinter  # noqa: E402
from segtron.utils.logger import setup_logger  # noqa: E402

logger = logging.getLogger("segtron.tools.benchmark")

TASKS = ("train", "eval", "data", "data_advanced")
DEFAULT_MAX_ITER = {"train": 400, "eval": 300, "data": 250, "data_advanced": 100}
CACHED_BATCHES = 100  # train / eval: batches read once, then repeated
EVAL_WARMUP = 5
DATA_WARMUP = 10
TIMER_WARMUP = 3  # IterationTimer's default: it times the steps after the first 2


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """The command line: ``train_net.py``'s flags plus ``--task`` and ``--max-iter``; fills in
    the task's default ``max_iter``. Raises ValueError for flags the task cannot use."""
    parser = default_argument_parser(epilog=__doc__.split("Examples::", 1)[1])
    parser.add_argument("--task", choices=TASKS, required=True, help="what to measure")
    parser.add_argument("--max-iter", type=int, default=None,
                        help="iterations to time; default: " + ", ".join(
                            f"{k} {v}" for k, v in DEFAULT_MAX_ITER.items()))
    args = parser.parse_args(argv)
    if args.eval_only or args.resume:
        raise ValueError("benchmark.py takes neither --eval-only nor --resume; use --task eval "
                         "to measure inference.")
    if args.max_iter is None:
        args.max_iter = DEFAULT_MAX_ITER[args.task]
    minimum = TIMER_WARMUP if args.task == "train" else 1
    if args.max_iter < minimum:
        raise ValueError(f"--max-iter {args.max_iter} is too small for --task {args.task}: "
                         f"give at least {minimum}.")
    if args.task == "eval" and args.num_gpus * args.num_machines != 1:
        raise ValueError("--task eval measures one process: drop --num-gpus / --num-machines "
                         f"(got {args.num_gpus} x {args.num_machines}).")
    return args


def setup(args: argparse.Namespace) -> CfgNode:
    """train_net.py's config for ``args`` with SOLVER.BASE_LR 0.001 before the overrides;
    sets up the ``segtron`` logger (console on the first process)."""
    cfg = train_net.build_config(argparse.Namespace(**{**vars(args), "opts": []}))
    cfg.SOLVER.BASE_LR = 0.001
    cfg.merge_from_list(list(args.opts or []))
    setup_logger(distributed_rank=comm.get_rank())
    return cfg


def ram_message() -> str:
    """The machine's memory use, ``RAM Usage: <used>/<total> GB`` (from psutil, else
    /proc/meminfo), or a note that neither is available."""
    try:
        import psutil

        memory = psutil.virtual_memory()
        total, available = memory.total, memory.available
    except ImportError:
        try:
            with open("/proc/meminfo", encoding="utf-8") as f:
                fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            total, available = fields["MemTotal"], fields["MemAvailable"]
        except (OSError, KeyError, ValueError, IndexError):
            return "RAM Usage: unknown (install psutil)"
    return f"RAM Usage: {(total - available) / 1024 ** 3:.2f}/{total / 1024 ** 3:.2f} GB"


def report(what: str, iterations: int, seconds: float, extra: str = "") -> str:
    """Print (and return) the speed line ``[benchmark] what: N iterations in S s: R
    iterations/s (T s/iteration)extra``."""
    seconds = max(seconds, 1e-9)
    line = (f"[benchmark] {what}: {iterations} iterations in {seconds:.3f} s: "
            f"{iterations / seconds:.2f} iterations/s ({seconds / iterations:.4f} s/iteration)"
            f"{extra}")
    print(line, flush=True)
    return line


def repeated(batches: List[Any]):
    """An endless iterator over ``batches``, in order."""
    return itertools.cycle(batches)


def benchmark_train(args: argparse.Namespace) -> None:
    """Time ``args.max_iter`` training steps on cached batches (see the module docstring)."""
    cfg = setup(args)
    model = build_model(cfg)
    logger.info("Model:\n%s", model)
    model = create_ddp_model(model, broadcast_buffers=False)
    optimizer = build_optimizer(cfg, model)
    DetectionCheckpointer(model, optimizer=optimizer).load(cfg.MODEL.WEIGHTS)
    loader = train_net.Trainer.build_train_loader(cfg)
    batches = list(itertools.islice(loader, min(CACHED_BATCHES, args.max_iter)))
    del loader

    trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
    trainer = trainer_class(model, repeated(batches), optimizer)
    trainer.register_hooks([
        IterationTimer(warmup_iter=TIMER_WARMUP),
        PeriodicWriter([CommonMetricPrinter(args.max_iter)]),
    ])
    trainer.train(0, args.max_iter)

    step_times = [value for value, _ in trainer.storage.history("time").values()]
    data_times = [value for value, _ in trainer.storage.history("data_time").values()]
    data_time = sum(data_times[-len(step_times):]) / len(step_times)
    if comm.is_main_process():
        report("train", len(step_times), sum(step_times),
               f", data_time {data_time:.4f} s/iteration, {comm.get_world_size()} process(es)")


def benchmark_eval(args: argparse.Namespace) -> None:
    """Time ``args.max_iter`` inference iterations on cached test batches (one process)."""
    cfg = setup(args)
    if not cfg.DATASETS.TEST:
        raise ValueError("--task eval reads DATASETS.TEST[0], but DATASETS.TEST is empty; set "
                         "it, e.g. DATASETS.TEST \"('shapes_val',)\".")
    model = build_model(cfg)
    model.eval()
    logger.info("Model:\n%s", model)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    loader = train_net.Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
    cached = list(itertools.islice(loader, min(CACHED_BATCHES, args.max_iter)))
    with torch.no_grad():
        for batch in itertools.islice(repeated(cached), EVAL_WARMUP):
            model(batch)
    timed = list(itertools.islice(repeated(cached), args.max_iter))
    start = time.perf_counter()
    inference_on_dataset(model, timed, None)
    report("eval", len(timed), time.perf_counter() - start,
           f" after {EVAL_WARMUP} warm-up iterations")


def _batch_size(batch: Any) -> Optional[int]:
    return len(batch) if isinstance(batch, (list, tuple)) else None


def time_loader(loader, max_iter: int, warmup: int = DATA_WARMUP) -> Dict[str, Any]:
    """Draw ``warmup`` then ``max_iter`` batches from ``loader``.

    Returns:
        ``{"startup": seconds to the first batch, "iterations": max_iter, "seconds": time of
        the timed batches, "images": images in them (None when a batch is not a list)}``.
    """
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    startup = time.perf_counter() - start
    for _ in range(warmup - 1):
        next(iterator)
    images: Optional[int] = 0
    start = time.perf_counter()
    for _ in range(max_iter):
        size = _batch_size(next(iterator))
        images = None if images is None or size is None else images + size
    seconds = time.perf_counter() - start
    del iterator  # stops the loader's workers
    return {"startup": startup, "iterations": max_iter, "seconds": seconds, "images": images}


def _report_loader(what: str, timing: Dict[str, Any]) -> None:
    images = timing["images"]
    extra = ("" if images is None else
             f", {images} images: {images / max(timing['seconds'], 1e-9):.2f} images/s")
    report(what, timing["iterations"], timing["seconds"],
           f"{extra}; first batch after {timing['startup']:.3f} s")


def _data_loader_speed(cfg: CfgNode, args: argparse.Namespace) -> None:
    """Time train_net.py's training loader in every process; the first reports each one."""
    timing = time_loader(train_net.Trainer.build_train_loader(cfg), args.max_iter)
    timings = comm.gather((comm.get_rank(), timing))
    if comm.is_main_process():
        for rank, each in timings:
            _report_loader("data" if len(timings) == 1 else f"data (process {rank})", each)
        logger.info(ram_message())


def benchmark_data(args: argparse.Namespace) -> None:
    """Time the training loader (see the module docstring)."""
    cfg = setup(args)
    logger.info("Before the loader: %s", ram_message())
    _data_loader_speed(cfg, args)


def _time_calls(function, items: List[Any], iterations: int) -> float:
    start = time.perf_counter()
    for item in itertools.islice(itertools.cycle(items), iterations):
        function(item)
    return time.perf_counter() - start


def benchmark_data_advanced(args: argparse.Namespace) -> None:
    """Time the loading stages one by one (see the module docstring)."""
    cfg = setup(args)
    if comm.is_main_process():
        start = time.perf_counter()
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        print(f"[benchmark] dataset: {len(dicts)} dataset dicts of {tuple(cfg.DATASETS.TRAIN)} "
              f"read in {time.perf_counter() - start:.3f} s", flush=True)
        mapper = train_net.train_mapper(cfg)
        _time_calls(mapper, dicts, DATA_WARMUP)
        report("mapper", args.max_iter, _time_calls(mapper, dicts, args.max_iter),
               " (one image each, in this process)")
        for workers in sorted({0, 1, cfg.DATALOADER.NUM_WORKERS}):
            loader_cfg = cfg.clone()
            loader_cfg.DATALOADER.NUM_WORKERS = workers
            timing = time_loader(train_net.Trainer.build_train_loader(loader_cfg), args.max_iter)
            _report_loader(f"loader with {workers} worker(s)", timing)
        logger.info(ram_message())
    if comm.get_world_size() > 1:
        comm.synchronize()
        _data_loader_speed(cfg, args)


TASK_FUNCTIONS = {
    "train": benchmark_train,
    "eval": benchmark_eval,
    "data": benchmark_data,
    "data_advanced": benchmark_data_advanced,
}


def run_task(args: argparse.Namespace) -> None:
    """Run ``args.task`` in this process (``launch`` calls it in every process)."""
    TASK_FUNCTIONS[args.task](args)


def main(argv: Optional[List[str]] = None) -> None:
    """Parse the command line, then run the task in every process of the job (as train_net.py
    launches training: gloo processes when MODEL.DEVICE is the CPU)."""
    args = parse_args(argv)
    setup_logger()
    logger.info("Environment info:\n%s", collect_env_info())
    cfg = train_net.build_config(args)
    launch(
        run_task,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=train_net.collective_timeout(cfg, args),
        backend=train_net.launch_backend(cfg),
    )


if __name__ == "__main__":
    main()
