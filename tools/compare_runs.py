#!/usr/bin/env python
"""Compare training runs: final metrics side by side, the config keys that differ, and the
training curves in one picture.

Each argument is a training OUTPUT_DIR (with ``metrics.json`` and ``config.yaml``, as
``train_net.py`` writes them). Prints one row per run with its final evaluation results
(by default bbox and segm AP, AP50, AP75, APs, APm, APl, and F1max: F1 at the best score
threshold), last validation loss, training time and iterations, then the config keys whose
values differ between the runs. With ``--plot`` also writes the curves (losses, learning rate,
AP, F1max) of all runs into one PNG. With ``--cost`` the table gains each trained model's
inference cost (parameters, GFLOPs, CPU ms per image; ``segtron.utils.model_cost``), and
``--cost-plot`` draws AP against CPU time. ``--markdown`` also writes the table as GitHub
Markdown.

Example::

    python tools/compare_runs.py output/baseline output/lr0.02 --plot curves.png
    python tools/compare_runs.py output/run1 --metrics segm/AP segm/AP-circle
    python tools/compare_runs.py output/run1 --metrics bbox/F1max bbox/P@F1max bbox/R@F1max \
        bbox/thresh@F1max
    python tools/compare_runs.py output/shapes_faster output/shapes_retinanet --cost \
        --markdown ablation.md --cost-plot ablation.png
"""

import argparse
import datetime
import logging
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable as `python tools/compare_runs.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

from tabulate import tabulate  # noqa: E402

from segtron.utils import run_analysis  # noqa: E402

# Per task: COCO AP, then F1 at the score threshold that maximises it (COCOEvaluator's
# operating point, pooled over classes; "thresh@F1max" is that threshold).
DEFAULT_METRICS = [f"{task}/{name}" for task in ("bbox", "segm")
                   for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "F1max")]
MAX_VALUE_WIDTH = 40  # config values longer than this are shortened in the table
COST_HEADERS = ["params (M)", "GFLOPs", "CPU ms/img"]
COST_PLOT_METRIC = "bbox/AP"  # else the first metric shown
WARMUP_CALLS = 2  # untimed calls per model before the timed rounds


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare training runs: final metrics, differing config keys, curves.",
        epilog="Example: python tools/compare_runs.py output/run1 output/run2 --plot curves.png")
    parser.add_argument("output_dirs", nargs="+", metavar="OUTPUT_DIR",
                        help="training output directories (with metrics.json, config.yaml)")
    parser.add_argument("--plot", metavar="PNG", default=None,
                        help="also draw the training curves of all runs into this PNG")
    parser.add_argument("--metrics", nargs="+", metavar="KEY", default=None,
                        help="evaluation keys to show, as in metrics.json (default: AP, AP50, "
                             "AP75, APs, APm, APl, F1max of bbox and segm; also e.g. "
                             "bbox/thresh@F1max, bbox/F1max-<class>)")
    parser.add_argument("--smoothing", type=int, default=20,
                        help="moving-average window of the plotted losses, in metrics.json "
                             "lines (default 20; 1 turns smoothing off)")
    parser.add_argument("--tablefmt", default="simple",
                        help="tabulate table format, e.g. simple, github (Markdown), grid")
    parser.add_argument("--markdown", metavar="FILE", default=None,
                        help="also write the metrics table as GitHub Markdown to FILE")
    cost = parser.add_argument_group(
        "inference cost", "rebuild each run's model from config.yaml and model_final.pth (else "
        "its newest checkpoint) on the CPU and measure it on the first images of its "
        "DATASETS.TEST[0], at its test size")
    cost.add_argument("--cost", action="store_true",
                      help="add columns: params (M), GFLOPs (fvcore: 1 multiply-add = 1 flop) "
                           "and CPU ms per image (batch 1, median, runs measured interleaved)")
    cost.add_argument("--cost-images", type=int, default=20, metavar="N",
                      help="test images per run to time (default 20; GFLOPs: the mean over "
                           "the first 5 of them)")
    cost.add_argument("--cost-repeats", type=int, default=3, metavar="R",
                      help="timed passes over the images (default 3)")
    cost.add_argument("--threads", type=int, default=2, metavar="T",
                      help="torch CPU threads while timing (default 2)")
    cost.add_argument("--cost-plot", metavar="PNG", default=None,
                      help="draw bbox/AP (else the first metric shown) against CPU ms per "
                           "image, one point per run, into this PNG (implies --cost)")
    args = parser.parse_args(argv)
    args.cost = args.cost or bool(args.cost_plot)
    if args.cost_images < 1 or args.cost_repeats < 1 or args.threads < 1:
        parser.error("--cost-images, --cost-repeats and --threads must be at least 1")
    return args


def _format_duration(seconds: Optional[float], source: str) -> str:
    if seconds is None:
        return "-"
    text = str(datetime.timedelta(seconds=int(round(seconds))))
    return f"~{text}" if source == "estimate" else text


def _format_number(value: Optional[float], digits: int) -> str:
    if value is None:
        return "-"
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}f}"


def _format_config_value(value: Any) -> str:
    text = "(missing)" if value is None else str(value)
    return text if len(text) <= MAX_VALUE_WIDTH else text[: MAX_VALUE_WIDTH - 3] + "..."


def shown_metrics(finals: Sequence[Dict[str, float]],
                  metrics: Optional[Sequence[str]]) -> List[str]:
    """The metric columns: ``metrics``, or the defaults some run has; notes on stderr the
    requested metrics no run has."""
    if metrics is None:
        return [m for m in DEFAULT_METRICS if any(m in final for final in finals)]
    for metric in metrics:
        if not any(metric in final for final in finals):
            known = sorted(set().union(*finals))
            hint = f" Keys found: {', '.join(known[:12])}" if known else ""
            print(f"note: no run has the metric '{metric}'.{hint}", file=sys.stderr)
    return list(metrics)


def _cost_cells(cost) -> List[str]:
    return [f"{cost.params / 1e6:.2f}", f"{cost.gflops:.2f}", f"{cost.ms_per_image:.1f}"]


def metrics_rows(output_dirs: Sequence[str], all_records: Sequence[List[dict]],
                 finals: Sequence[Dict[str, float]], shown: Sequence[str],
                 costs: Optional[Sequence[Any]] = None) -> Tuple[List[str], List[List[str]]]:
    """(headers, rows) of the metrics table: one row per run, the ``shown`` metrics of its
    ``finals``, then the cost columns when ``costs`` (``model_cost.RunCost``, one per run)."""
    names = run_analysis.run_names(output_dirs)
    rows = []
    for output_dir, name, records, final in zip(output_dirs, names, all_records, finals):
        last = run_analysis.last_iteration(records)
        seconds, source = run_analysis.training_time(output_dir, records)
        rows.append([name, "-" if last is None else last + 1, _format_duration(seconds, source),
                     _format_number(final.get("val_total_loss"), 4),
                     *(_format_number(final.get(m), 2) for m in shown)])
    headers = ["run", "iters", "train time", "val loss", *shown]
    if costs is not None:
        headers.extend(COST_HEADERS)
        for row, cost in zip(rows, costs):
            row.extend(_cost_cells(cost))
    return headers, rows


def render_metrics_table(headers: Sequence[str], rows: Sequence[Sequence[Any]],
                         no_results: bool, tablefmt: str, markdown: bool = False) -> str:
    """The metrics table as text in ``tablefmt``, with its notes below it (estimated training
    times; ``no_results``: no evaluation results to show); ``markdown``: GitHub Markdown, the
    notes as paragraphs of their own."""
    table = tabulate(rows, headers=headers, tablefmt="github" if markdown else tablefmt,
                     disable_numparse=True, colalign=["left"] + ["right"] * (len(headers) - 1))
    notes = []
    if any(str(row[2]).startswith("~") for row in rows):
        notes.append("~ train time estimated from the step times in metrics.json (no 'Total "
                     "training time' in log.txt: the run is unfinished or its log is elsewhere)")
    if no_results:
        notes.append("(no evaluation results yet: they are written every TEST.EVAL_PERIOD "
                     "iterations and at the end of training)")
    return ("\n\n" if markdown else "\n").join([table, *notes])


def differences_table(output_dirs: Sequence[str], tablefmt: str) -> str:
    """The config keys that differ between the runs, as text (one row per key)."""
    differences = run_analysis.config_differences(output_dirs)
    if not differences:
        return "The runs' configs are identical (OUTPUT_DIR aside)."
    names = run_analysis.run_names(output_dirs)
    rows = [[key, *map(_format_config_value, values)] for key, values in differences.items()]
    return tabulate(rows, headers=["config key", *names], tablefmt=tablefmt,
                    disable_numparse=True)


def measure_costs(args: argparse.Namespace) -> List[Any]:
    """``model_cost.measure_runs`` of the runs with the options' images, repeats and threads."""
    import torch  # only here: the tool without --cost imports no torch

    from segtron.utils import model_cost

    torch.set_num_threads(args.threads)
    print(f"Measuring the inference cost of {len(args.output_dirs)} run(s) on the CPU "
          f"({args.threads} threads, {args.cost_images} images, {args.cost_repeats} repeats)...",
          file=sys.stderr)
    return model_cost.measure_runs(args.output_dirs, num_images=args.cost_images,
                                   repeats=args.cost_repeats, warmup=WARMUP_CALLS)


def cost_plot_metric(finals: Sequence[Dict[str, float]], shown: Sequence[str]) -> str:
    """The metric ``--cost-plot`` draws: ``COST_PLOT_METRIC`` if shown, else the first shown
    metric some run has."""
    available = [m for m in shown if any(m in final for final in finals)]
    if not available:
        raise ValueError("--cost-plot: no metric to plot (no run has a value of the metrics "
                         "shown; choose one with --metrics).")
    return COST_PLOT_METRIC if COST_PLOT_METRIC in available else available[0]


def write_markdown(path: str, table: str) -> None:
    """Write ``table`` (Markdown text) to ``path``, creating its directory."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(table + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # The library logs (e.g. a truncated metrics.json line); show its warnings on stderr.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    missing = [d for d in args.output_dirs if not os.path.isdir(d)]
    if missing:
        print(f"error: not a directory: {', '.join(missing)} (pass training OUTPUT_DIRs)",
              file=sys.stderr)
        return 2

    try:
        all_records = [run_analysis.load_metrics(d) for d in args.output_dirs]
        finals = [run_analysis.final_results(records) for records in all_records]
        shown = shown_metrics(finals, args.metrics)
        plot_metric = cost_plot_metric(finals, shown) if args.cost_plot else None
        costs = measure_costs(args) if args.cost else None
        headers, rows = metrics_rows(args.output_dirs, all_records, finals, shown, costs)
        no_results = not shown and args.metrics is None
        print(render_metrics_table(headers, rows, no_results, args.tablefmt))
        if args.markdown:
            write_markdown(args.markdown, render_metrics_table(headers, rows, no_results,
                                                               args.tablefmt, markdown=True))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    if len(args.output_dirs) > 1:
        print()
        try:
            print(differences_table(args.output_dirs, args.tablefmt))
        except (FileNotFoundError, ValueError) as e:
            print(f"Config comparison skipped: {e}", file=sys.stderr)

    try:
        if args.plot:
            run_analysis.plot_runs(args.output_dirs, args.plot, smoothing=args.smoothing,
                                   records=all_records)
            print(f"\nCurves written to {os.path.abspath(args.plot)}")
        if args.cost_plot:
            run_analysis.plot_cost_accuracy(
                run_analysis.run_names(args.output_dirs), [c.ms_per_image for c in costs],
                [final.get(plot_metric) for final in finals], plot_metric, args.cost_plot)
            print(f"\n{plot_metric} against CPU time written to "
                  f"{os.path.abspath(args.cost_plot)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.markdown:
        print(f"\nMarkdown table written to {os.path.abspath(args.markdown)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
