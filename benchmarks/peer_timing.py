"""Timing two implementations side by side in one process, for ratio benchmarks.

Runs are interleaved (A, B, A, B, ...) so both see the same machine conditions; each reports the
median of its runs. Speed claims in segtron are ratios measured this way, never absolute times.
"""

import gc
import os
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional

import torch
from tabulate import tabulate

__all__ = ["time_interleaved", "ratio_table", "machine_line"]


def time_interleaved(candidates: Dict[str, Callable[[], object]], repeats: int = 5,
                     warmup: int = 1,
                     synchronize: Optional[Callable[[], None]] = None) -> Dict[str, List[float]]:
    """Call each candidate ``warmup`` times, then ``repeats`` times interleaved.

    Args:
        candidates: name -> zero-argument callable doing one unit of work.
        synchronize: called before each run's clock starts and before it stops (e.g.
            ``torch.cuda.synchronize``: without it, a CUDA run would time only its launches).
    Returns:
        name -> list of ``repeats`` wall-clock durations in seconds.
    """
    wait = synchronize or (lambda: None)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            gc.collect()
            wait()
            start = time.perf_counter()
            fn()
            wait()
            times[name].append(time.perf_counter() - start)
    return times


def ratio_table(times: Dict[str, List[float]], reference: str, target: float = None) -> str:
    """A table per candidate: median (ms), range, the ratio of its median to ``reference``'s
    median, and the median and range of its per-round ratios (run i / reference's run i; the
    runs of a round are back to back, so this spread shows how far machine noise moves a
    ratio). Returns the table as GitHub markdown, plus the target line when ``target`` is given.
    """
    ref_runs = times[reference]
    ref = statistics.median(ref_runs)
    rows = []
    for name, runs in times.items():
        med = statistics.median(runs)
        per_round = [a / b for a, b in zip(runs, ref_runs)]
        rows.append([name, f"{med * 1e3:.0f}", f"{min(runs) * 1e3:.0f}-{max(runs) * 1e3:.0f}",
                     f"{med / ref:.3f}",
                     f"{statistics.median(per_round):.3f} ({min(per_round):.2f}-"
                     f"{max(per_round):.2f})"])
    table = tabulate(rows, headers=["implementation", "median ms", "range ms",
                                    f"ratio to {reference}", "per-round ratio (range)"],
                     tablefmt="github", disable_numparse=True)
    if target is not None:
        table += f"\ntarget ratio <= {target}"
    return table


def machine_line(device: Optional[torch.device] = None) -> str:
    """One line describing the run: CPU, threads, torch version, load, and the GPU's name
    when ``device`` is a CUDA device."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    line = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, load average {load:.1f}")
    if device is not None and device.type == "cuda":
        line = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}; " + line
    return line
