"""Read back what training runs wrote to their OUTPUT_DIR and compare runs.

A training run (``train_net.py ... OUTPUT_DIR out/run1``) leaves in its output directory:

* ``metrics.json``: one JSON object per line (``JSONWriter``). Training lines hold
  ``iteration``, ``total_loss``, ``loss_*``, ``lr``, ``time``, ``data_time``, ...; evaluation
  results (``bbox/AP``, ``segm/AP50``, ``segm/AP-circle``, ...) and validation losses
  (``val_total_loss``, ``val_loss_*``) appear on the line of the iteration they were computed at.
* ``config.yaml``: the full config of the run.
* ``log.txt``: the log, with ``Total training time: H:MM:SS`` at the end of a finished run.

The functions here turn those into Python values (``load_metrics``, ``training_curves``,
``final_results``, ``training_time``, ``config_differences``) and a picture of several runs'
curves side by side (``plot_runs``), and a picture of their accuracy against their inference
time (``plot_cost_accuracy``). ``tools/compare_runs.py`` is the command line for them.

Example::

    records = load_metrics("output/run1")
    iters, losses = training_curves(records)["total_loss"]
    print(final_results(records).get("segm/AP"))
    plot_runs(["output/run1", "output/run2"], "curves.png")
"""

import json
import logging
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from segtron.utils.file_io import PathManager

__all__ = [
    "EVALUATION_TASKS",
    "EVALUATION_PANELS",
    "load_metrics",
    "training_curves",
    "is_evaluation_key",
    "final_results",
    "last_iteration",
    "training_time",
    "load_config",
    "config_differences",
    "run_names",
    "smooth",
    "plot_runs",
    "plot_cost_accuracy",
]

logger = logging.getLogger(__name__)

# First component(s) of the metric names the evaluators produce (``flatten_results_dict`` of
# ``{"bbox": {"AP": ...}}``); with several test datasets the names gain a dataset prefix
# (``shapes_val/bbox/AP``), so any component may name the task.
EVALUATION_TASKS = ("bbox", "segm", "keypoints", "sem_seg", "panoptic_seg", "box_proposals")

# Evaluation results drawn as panels of their own when a run has them (key, y label): COCO AP
# and F1 at the best score threshold (``COCOEvaluator``'s operating point).
EVALUATION_PANELS = (("bbox/AP", "AP (%)"), ("segm/AP", "AP (%)"), ("bbox/F1max", "F1 (%)"),
                     ("segm/F1max", "F1 (%)"))

_TOTAL_TIME_RE = re.compile(r"Total training time: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)")


def _metrics_path(output_dir: str) -> str:
    if output_dir.endswith(".json") and not PathManager.isdir(output_dir):
        return output_dir  # the metrics file itself
    return os.path.join(output_dir, "metrics.json")


def _decode_line(line: str) -> Optional[Dict[str, Any]]:
    """The JSON object of one line, or None. A line that starts with the partial record of a
    killed run followed by the first record of its resumed continuation (no newline in
    between) yields that second record."""
    try:
        record = json.loads(line)
        return record if isinstance(record, dict) else None
    except ValueError:
        pass
    start = line.find("{", 1)
    while start != -1:
        try:
            record = json.loads(line[start:])
            return record if isinstance(record, dict) else None
        except ValueError:
            start = line.find("{", start + 1)
    return None


def load_metrics(output_dir: str) -> List[Dict[str, Any]]:
    """Read the ``metrics.json`` of a run.

    Args:
        output_dir: the run's OUTPUT_DIR (or the path of a metrics ``.json`` file itself).

    Returns:
        The records in file order, one dict per line. A line that is not a JSON object (the
        last line of a run killed while writing, or of a run still writing) is skipped with a
        warning; blank lines are ignored.

    Raises:
        FileNotFoundError: when there is no metrics file, naming the path looked at.
    """
    path = _metrics_path(os.fspath(output_dir))
    if not PathManager.isfile(path):
        raise FileNotFoundError(
            f"No metrics file at {path}. Pass a training OUTPUT_DIR: train_net.py writes "
            "metrics.json there every 20 iterations (a run that crashed before its first write "
            "has none)."
        )
    with PathManager.open(path, "r") as f:
        lines = f.read().splitlines()
    last_nonblank = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: List[Dict[str, Any]] = []
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        record = _decode_line(line)
        if record is None:
            if number == last_nonblank:
                logger.warning(
                    "%s: the last line (line %d) is truncated or not a JSON object; ignoring it "
                    "(the run crashed while writing, or is still writing).", path, number + 1)
            else:
                logger.warning("%s: line %d is not a JSON object; ignoring it.", path, number + 1)
            continue
        records.append(record)
    return records


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def training_curves(records: Sequence[Mapping[str, Any]]) -> Dict[str, Tuple[np.ndarray,
                                                                               np.ndarray]]:
    """Every scalar of the records as a curve over iterations.

    Args:
        records: ``load_metrics`` output.

    Returns:
        ``{name: (iterations, values)}`` (int64 and float64 arrays of equal length, sorted by
        iteration) for every numeric key except ``iteration``. A curve only has the iterations
        its key was recorded at (evaluation keys have a few points). When an iteration
        appears twice (a run resumed from a checkpoint older than its last write), the later
        record wins. Records without ``iteration`` are ignored.
    """
    by_key: Dict[str, Dict[int, float]] = {}
    for record in records:
        itr = record.get("iteration")
        if not _is_number(itr):
            continue
        for key, value in record.items():
            if key != "iteration" and _is_number(value):
                by_key.setdefault(key, {})[int(itr)] = float(value)
    curves = {}
    for key in sorted(by_key):
        points = sorted(by_key[key].items())
        curves[key] = (np.array([p[0] for p in points], dtype=np.int64),
                       np.array([p[1] for p in points], dtype=np.float64))
    return curves


def is_evaluation_key(key: str) -> bool:
    """Whether ``key`` is an evaluation result (``bbox/AP``, ``segm/AP-circle``,
    ``shapes_val/segm/AP``, ...) rather than a training statistic (``rpn/num_pos_anchors``)."""
    parts = key.split("/")
    return len(parts) > 1 and any(part in EVALUATION_TASKS for part in parts[:-1])


def final_results(records: Sequence[Mapping[str, Any]]) -> Dict[str, float]:
    """The final evaluation results and validation losses of a run.

    Args:
        records: ``load_metrics`` output.

    Returns:
        ``{key: value}``: for every evaluation key (see ``is_evaluation_key``) and every
        ``val_*`` key (``val_total_loss``, ``val_loss_cls``, ...), its value at the last
        iteration it was recorded at. Empty when the run has evaluated nothing.
    """
    results = {}
    for key, (_, values) in training_curves(records).items():
        if is_evaluation_key(key) or key.startswith("val_"):
            results[key] = float(values[-1])
    return results


def last_iteration(records: Sequence[Mapping[str, Any]]) -> Optional[int]:
    """The last training iteration (0-based) with a ``total_loss``, or None if there is none."""
    iters = [int(r["iteration"]) for r in records
             if _is_number(r.get("iteration")) and "total_loss" in r]
    return max(iters) if iters else None


def training_time(output_dir: str,
                  records: Optional[Sequence[Mapping[str, Any]]] = None
                  ) -> Tuple[Optional[float], str]:
    """How long a run trained, in seconds, and where that number comes from.

    The ``Total training time`` lines of ``<output_dir>/log.txt`` are summed when there are any
    (one per training session: a resumed run has several), giving ``(seconds, "log")``.
    Otherwise the time is estimated from the step times of ``metrics.json`` (each line's
    ``time``, the median seconds per iteration since the previous line, times the iterations in
    between; hooks such as evaluation are not counted), giving ``(seconds, "estimate")``.
    Without either: ``(None, "")``.

    Args:
        output_dir: the run's OUTPUT_DIR.
        records: its ``load_metrics`` output, if already read (else read when needed).
    """
    log_path = os.path.join(os.fspath(output_dir), "log.txt")
    if PathManager.isfile(log_path):
        total, found = 0.0, False
        with PathManager.open(log_path, "r") as f:
            for line in f:
                match = _TOTAL_TIME_RE.search(line)
                if match:
                    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
                    total += ((days * 24 + hours) * 60 + minutes) * 60 + seconds
                    found = True
        if found:
            return total, "log"
    if records is None:
        try:
            records = load_metrics(output_dir)
        except FileNotFoundError:
            return None, ""
    curve = training_curves(records).get("time")
    if curve is None or len(curve[0]) == 0:
        return None, ""
    iters, step_times = curve
    steps = np.diff(np.concatenate([[-1], iters]))  # iterations covered by each line
    return float(np.sum(steps * step_times)), "estimate"


# ------------------------------------------------------------------------------------- configs


def load_config(output_dir: str) -> Dict[str, Any]:
    """The ``config.yaml`` of a run as a flat ``{"SOLVER.BASE_LR": 0.02, ...}`` dict.

    Nested sections are joined with ``.``; lists stay values (compared as a whole).

    Raises:
        FileNotFoundError: when ``<output_dir>/config.yaml`` does not exist, naming it.
        ValueError: when it is not a YAML mapping.
    """
    path = os.path.join(os.fspath(output_dir), "config.yaml")
    if not PathManager.isfile(path):
        raise FileNotFoundError(
            f"No config at {path}. train_net.py writes config.yaml into OUTPUT_DIR when a run "
            "starts; pass a training output directory."
        )
    with PathManager.open(path, "r") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} should hold a YAML mapping of config keys, got "
                         f"{type(data).__name__}.")
    flat: Dict[str, Any] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                walk(value, name + ".")
            else:
                flat[name] = value

    walk(data, "")
    return flat


_IGNORED_CONFIG_KEYS = ("OUTPUT_DIR",)


def config_differences(output_dirs: Sequence[str]) -> Dict[str, List[Any]]:
    """The config keys whose values differ between runs.

    Args:
        output_dirs: the runs' OUTPUT_DIRs (each with a ``config.yaml``).

    Returns:
        ``{key: [value in run 0, value in run 1, ...]}`` for every flattened key (see
        ``load_config``) whose values are not all equal, sorted by key; a key a run lacks
        has the value None there. ``OUTPUT_DIR`` is ignored. Empty for a single run.

    Raises:
        FileNotFoundError: when a run has no ``config.yaml``.
    """
    configs = [load_config(d) for d in output_dirs]
    keys = sorted(set().union(*configs)) if configs else []
    differences = {}
    for key in keys:
        if key in _IGNORED_CONFIG_KEYS:
            continue
        values = [config.get(key) for config in configs]
        if any(key not in config for config in configs) or any(v != values[0] for v in values):
            differences[key] = values
    return differences


def run_names(output_dirs: Sequence[str]) -> List[str]:
    """Short, distinct names of runs: the directory basenames (``out/run1`` -> ``run1``), with
    more of the path where two basenames are equal (``a/out``, ``b/out``)."""
    paths = [os.path.normpath(os.path.abspath(os.fspath(d))) for d in output_dirs]
    for depth in range(1, 1 + max((p.count(os.sep) for p in paths), default=1)):
        names = [os.path.join(*p.split(os.sep)[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return paths  # the same directory given twice


# ------------------------------------------------------------------------------------ plotting


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over ``window`` points, with a straight-line fit where the window
    is cut short by the ends, so the curve neither lags nor bends towards the inside values at
    the last points of a falling loss.

    Each point gets the value at its own index of the least-squares line through the (index,
    value) pairs of its window; in a full window that is exactly the window's mean. Returns an
    array of the input's length; ``window <= 1`` returns the values unchanged. NaNs are left
    out (a window with one valid value gives that value, with none NaN).
    """
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if window <= 1 or n == 0:
        return values.copy()
    valid = np.isfinite(values)
    index = np.arange(n, dtype=np.float64)
    y = np.where(valid, values, 0.0)
    x = np.where(valid, index, 0.0)

    def window_sums(a):
        sums = np.concatenate([[0.0], np.cumsum(a)])
        return sums[hi] - sums[lo]

    start = np.arange(n) - window // 2
    lo, hi = np.clip(start, 0, n), np.clip(start + window, 0, n)
    count = window_sums(valid.astype(np.float64))
    sx, sy = window_sums(x), window_sums(y)
    sxx, sxy = window_sums(x * x), window_sums(x * y)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x, mean_y = sx / count, sy / count
        spread = sxx - sx * mean_x
        slope = np.where(spread > 1e-9 * np.maximum(sxx, 1.0), (sxy - sx * mean_y) / spread, 0.0)
        return np.where(count > 0, mean_y + slope * (index - mean_x), np.nan)


def _panels(all_curves: Sequence[Mapping[str, Any]]) -> List[Tuple[str, str, List[str]]]:
    """``(title, y label, keys)`` of each panel, from the keys the runs have."""
    keys = set().union(*all_curves) if all_curves else set()
    panels: List[Tuple[str, str, List[str]]] = []
    if "total_loss" in keys:
        panels.append(("total loss", "loss", ["total_loss"]))
    components = sorted(k for k in keys if k.startswith("loss_"))
    panels.extend((name, "loss", [name]) for name in components)
    if "lr" in keys:
        panels.append(("learning rate", "lr", ["lr"]))
    for metric, ylabel in EVALUATION_PANELS:
        if metric in keys:
            panels.append((metric, ylabel, [metric]))
    return panels


def plot_runs(output_dirs: Sequence[str], path: str, smoothing: int = 20,
              records: Optional[Sequence[Sequence[Mapping[str, Any]]]] = None) -> str:
    """Draw the training curves of one or more runs into one PNG.

    Panels: total loss (centred moving average over ``smoothing`` points, or a quarter of the
    run's points if fewer, see :func:`smooth`; as a line, the raw values faint behind it,
    validation loss dashed with markers when the run has one), each ``loss_*`` component
    (smoothed, validation dashed), the learning rate, and ``bbox/AP`` / ``segm/AP`` (and
    ``bbox/F1max`` / ``segm/F1max``, F1 at the best score threshold) against the iteration
    (markers) when a run has those evaluation results. Each run has one colour throughout;
    the legend at the top names the runs by directory.

    Args:
        output_dirs: the runs' OUTPUT_DIRs (each with a ``metrics.json``).
        path: the PNG to write (its directory is created).
        smoothing: moving-average window, in metrics.json lines (1: no smoothing).
        records: the runs' ``load_metrics`` output when already read (one list per run, in
            the order of ``output_dirs``); read from the directories when None.

    Returns:
        ``path``.

    Raises:
        FileNotFoundError: when a run has no metrics.json.
        ValueError: when no run has any curve to draw.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # off-screen: no display needed
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    names = run_names(output_dirs)
    if records is None:
        records = [load_metrics(d) for d in output_dirs]
    elif len(records) != len(output_dirs):
        raise ValueError(f"plot_runs: {len(records)} record lists for {len(output_dirs)} runs; "
                         "pass one per output directory.")
    all_curves = [training_curves(r) for r in records]
    panels = _panels(all_curves)
    if not panels:
        raise ValueError(
            f"Nothing to plot: the metrics.json of {', '.join(map(str, output_dirs))} has no "
            "total_loss, loss_*, lr or bbox/AP / segm/AP values."
        )

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig = Figure(figsize=(5.2 * columns, 3.6 * rows + 0.7), dpi=100)
    FigureCanvasAgg(fig)
    palette = matplotlib.colormaps["tab10"].colors
    colors = [palette[i % len(palette)] for i in range(len(names))]
    has_val = False

    for index, (title, ylabel, keys) in enumerate(panels):
        ax = fig.add_subplot(rows, columns, index + 1)
        key = keys[0]
        for curves, color in zip(all_curves, colors):
            if key not in curves:
                continue
            iters, values = curves[key]
            if key in dict(EVALUATION_PANELS):
                ax.plot(iters, values, color=color, marker="o", markersize=5, linewidth=1.5)
                continue
            if key == "lr":
                ax.plot(iters, values, color=color, linewidth=1.5)
                continue
            # At most a quarter of the points: a short run is smoothed, not flattened.
            window = min(smoothing, max(1, len(values) // 4))
            if key == "total_loss":
                ax.plot(iters, values, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(iters, smooth(values, window), color=color, linewidth=1.8)
            val = curves.get(f"val_{key}")
            if val is not None:
                has_val = True
                ax.plot(val[0], val[1], color=color, linestyle="--", marker="D", markersize=4,
                        linewidth=1.2)
        ax.set_title(title, fontsize=12)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if key == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
        ax.set_xlim(left=0)
        if key != "lr":
            ax.margins(y=0.08)

    handles = [Line2D([], [], color=c, linewidth=2.5, label=n) for n, c in zip(names, colors)]
    if has_val:
        handles.append(Line2D([], [], color="0.35", linestyle="--", marker="D", markersize=4,
                              label="validation loss"))
    smoothing_note = ("losses: not smoothed" if smoothing <= 1
                      else f"losses: centred moving mean over \u2264{smoothing} points")
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), frameon=False,
               fontsize=11, bbox_to_anchor=(0.5, 1.0))
    fig.text(0.995, 0.995, smoothing_note, ha="right", va="top", fontsize=8, color="0.4")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))

    directory = os.path.dirname(os.fspath(path))
    if directory:
        PathManager.mkdirs(directory)
    with PathManager.open(os.fspath(path), "wb") as f:
        fig.savefig(f, format="png")
    logger.info("Wrote the curves of %d run(s) to %s", len(names), path)
    return path


def plot_cost_accuracy(names: Sequence[str], ms_per_image: Sequence[float],
                       values: Sequence[Optional[float]], metric: str, path: str) -> str:
    """Draw one run per point: ``metric`` (e.g. ``bbox/AP``) against CPU milliseconds per image,
    each point labelled with its run's name, on linear axes starting at 0 ms, into a PNG.

    Args:
        names: the runs' names (``run_names``).
        ms_per_image: their CPU milliseconds per image (``model_cost.measure_ms_per_image``).
        values: their final value of ``metric``; a run with None or NaN is left out.
        metric: the y axis' metric name, for the labels and title.
        path: the PNG to write (its directory is created).

    Returns:
        ``path``.

    Raises:
        ValueError: when the lengths differ or no run has a value of ``metric``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # off-screen: no display needed
    from matplotlib.figure import Figure

    if not len(names) == len(ms_per_image) == len(values):
        raise ValueError(f"plot_cost_accuracy: {len(names)} names, {len(ms_per_image)} times "
                         f"and {len(values)} values; pass one of each per run.")
    points = [(n, float(ms), float(v)) for n, ms, v in zip(names, ms_per_image, values)
              if v is not None and math.isfinite(v)]
    left_out = [n for n, v in zip(names, values) if v is None or not math.isfinite(v)]
    if not points:
        raise ValueError(f"Nothing to plot: no run has a value of '{metric}' (choose another "
                         "with --metrics).")
    if left_out:
        logger.warning("No %s for %s: left out of the plot.", metric, ", ".join(left_out))

    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for index, (name, ms, value) in enumerate(points):
        ax.scatter([ms], [value], s=40, zorder=3)
        below = index % 2 == 1  # alternate above / below: close points keep readable labels
        ax.annotate(name, (ms, value), xytext=(5, -6 if below else 6), textcoords="offset points",
                    va="top" if below else "bottom", fontsize=10)
    ax.set_xlim(left=0, right=max(ms for _, ms, _ in points) * 1.25)
    ax.margins(y=0.15)
    ax.set_xlabel("CPU ms / image (batch 1)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} against CPU inference time")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()

    directory = os.path.dirname(os.fspath(path))
    if directory:
        PathManager.mkdirs(directory)
    with PathManager.open(os.fspath(path), "wb") as f:
        fig.savefig(f, format="png")
    logger.info("Wrote %s against CPU time of %d run(s) to %s", metric, len(points), path)
    return path
