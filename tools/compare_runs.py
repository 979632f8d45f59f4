#!/usr/bin/env python
"""Compare training runs: final metrics side by side, the config keys that differ, and the
training curves in one picture.

Each argument is a training OUTPUT_DIR (with ``metrics.json`` and ``config.yaml``, as
``train_net.py`` writes them). Prints one row per run with its final evaluation results
(bbox and segm AP, AP50, AP75, APs, APm, APl by default), last validation loss, training time
and iterations, then the config keys whose values differ between the runs. With ``--plot``
also writes the curves (losses, learning rate, AP) of all runs into one PNG.

Example::

    python tools/compare_runs.py output/baseline output/lr0.02 --plot curves.png
    python tools/compare_runs.py output/run1 --metrics segm/AP segm/AP-circle
"""

import argparse
import datetime
import logging
import math
import os
import sys
from typing import Any, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable as `python tools/compare_runs.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

from tabulate import tabulate  # noqa: E402

from segtron.utils import run_analysis  # noqa: E402

DEFAULT_METRICS = [f"{task}/{name}" for task in ("bbox", "segm")
                   for name in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
MAX_VALUE_WIDTH = 40  # config values longer than this are shortened in the table


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
                             "AP75, APs, APm, APl of bbox and segm)")
    parser.add_argument("--smoothing", type=int, default=20,
                        help="moving-average window of the plotted losses, in metrics.json "
                             "lines (default 20; 1 turns smoothing off)")
    parser.add_argument("--tablefmt", default="simple",
                        help="tabulate table format, e.g. simple, github (Markdown), grid")
    return parser.parse_args(argv)


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


def metrics_table(output_dirs: Sequence[str], all_records: Sequence[List[dict]],
                  metrics: Optional[Sequence[str]], tablefmt: str) -> str:
    """The metrics table of the runs (``all_records``: their metrics.json records) as text,
    one row per run."""
    names = run_analysis.run_names(output_dirs)
    rows, finals = [], []
    for output_dir, name, records in zip(output_dirs, names, all_records):
        final = run_analysis.final_results(records)
        finals.append(final)
        last = run_analysis.last_iteration(records)
        seconds, source = run_analysis.training_time(output_dir, records)
        rows.append([name, "-" if last is None else last + 1, _format_duration(seconds, source),
                     _format_number(final.get("val_total_loss"), 4)])
    headers = ["run", "iters", "train time", "val loss"]

    if metrics is None:  # the defaults: only those some run has
        shown = [m for m in DEFAULT_METRICS if any(m in final for final in finals)]
    else:
        shown = list(metrics)
        for metric in shown:
            if not any(metric in final for final in finals):
                known = sorted(set().union(*finals))
                hint = f" Keys found: {', '.join(known[:12])}" if known else ""
                print(f"note: no run has the metric '{metric}'.{hint}", file=sys.stderr)
    for row, final in zip(rows, finals):
        row.extend(_format_number(final.get(m), 2) for m in shown)
    headers.extend(shown)
    table = tabulate(rows, headers=headers, tablefmt=tablefmt, disable_numparse=True,
                     colalign=["left"] + ["right"] * (len(headers) - 1))
    if any(row[2].startswith("~") for row in rows):
        table += ("\n~ train time estimated from the step times in metrics.json (no 'Total "
                  "training time' in log.txt: the run is unfinished or its log is elsewhere)")
    if not shown and metrics is None:
        table += ("\n(no evaluation results yet: they are written every TEST.EVAL_PERIOD "
                  "iterations and at the end of training)")
    return table


def differences_table(output_dirs: Sequence[str], tablefmt: str) -> str:
    """The config keys that differ between the runs, as text (one row per key)."""
    differences = run_analysis.config_differences(output_dirs)
    if not differences:
        return "The runs' configs are identical (OUTPUT_DIR aside)."
    names = run_analysis.run_names(output_dirs)
    rows = [[key, *map(_format_config_value, values)] for key, values in differences.items()]
    return tabulate(rows, headers=["config key", *names], tablefmt=tablefmt,
                    disable_numparse=True)


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
        print(metrics_table(args.output_dirs, all_records, args.metrics, args.tablefmt))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    if len(args.output_dirs) > 1:
        print()
        try:
            print(differences_table(args.output_dirs, args.tablefmt))
        except (FileNotFoundError, ValueError) as e:
            print(f"Config comparison skipped: {e}", file=sys.stderr)

    if args.plot:
        try:
            run_analysis.plot_runs(args.output_dirs, args.plot, smoothing=args.smoothing,
                                   records=all_records)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"\nCurves written to {os.path.abspath(args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
