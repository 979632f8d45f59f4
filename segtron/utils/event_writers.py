"""Event writers: turn what ``EventStorage`` recorded into a metrics file, TensorBoard events
or a console line.

Every writer reads the current storage (``get_event_storage()``) in ``write()``, so it must be
called inside ``with EventStorage(...)``; the trainer's ``PeriodicWriter`` hook does this every
few iterations. The classes are re-exported from ``segtron.utils.events`` as in Detectron2.

* ``JSONWriter``: appends one JSON object per iteration to a file (``metrics.json``); a run
  that resumes at iteration k first drops the rows of k and later, which it writes again.
* ``TensorboardXWriter``: scalars, images and histograms through
  ``torch.utils.tensorboard.SummaryWriter``.
* ``CommonMetricPrinter``: Detectron2's console line (ETA, iteration, losses, timing, lr,
  peak GPU memory).
"""

import datetime
import json
import logging
import os
import time
from collections import defaultdict
from typing import Any, Dict, List, Optional, Tuple

import torch

from segtron.utils.file_io import PathManager

__all__ = ["EventWriter", "JSONWriter", "TensorboardXWriter", "CommonMetricPrinter"]

logger = logging.getLogger(__name__)


def _current_storage():
    # Imported here, not at module level: segtron.utils.events imports this module at its end.
    from segtron.utils.events import get_event_storage

    return get_event_storage()


def _samples_in_last_iterations(storage, name: str, window_size: int) -> int:
    """How many values of scalar ``name`` were put within the last ``window_size`` iterations
    (counted back from its newest value); Detectron2 smooths the console over these."""
    values = storage.history(name).values()
    if not values:
        return 0
    newest_iter = values[-1][1]
    count = 0
    for _, itr in reversed(values):
        if itr <= newest_iter - window_size:
            break
        count += 1
    return count


class EventWriter:
    """Base class of writers that read an ``EventStorage`` and write its content somewhere.

    Subclasses implement ``write()`` (called periodically within the storage context) and may
    override ``close()`` to release files or handles.
    """

    def write(self) -> None:
        """Write what the current storage holds; to be implemented by subclasses."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement write(), the method PeriodicWriter calls."
        )

    def close(self) -> None:
        """Release resources; the default does nothing."""

    def discard_from(self, iteration: int) -> None:
        """Forget what was written for ``iteration`` and later, which the run about to start
        there writes again (``PeriodicWriter`` calls it before training); the default does
        nothing."""


def _split_rows(text: str, first_dropped: int) -> Tuple[List[str], int, int]:
    """Split the JSON lines of ``text`` into those to keep, the number of rows of iteration
    ``first_dropped`` or later, and the number of unreadable lines (a line cut short when the
    writing process was killed)."""
    kept: List[str] = []
    dropped = unreadable = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            unreadable += 1
            continue
        row_iteration = row.get("iteration") if isinstance(row, dict) else None
        if isinstance(row_iteration, int) and row_iteration >= first_dropped:
            dropped += 1
            continue
        kept.append(line)
    return kept, dropped, unreadable


def _replace_file(path: str, lines: List[str]) -> None:
    """Make ``path`` hold ``lines`` (one per line) all at once: a local file is written to a
    temporary file beside it, synced and renamed over it, so a crash leaves either the old or
    the new content; other ``PathManager`` paths are rewritten in place."""
    text = "".join(line + "\n" for line in lines)
    if "://" in path:
        with PathManager.open(path, "w") as f:
            f.write(text)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class JSONWriter(EventWriter):
    """Append scalars to a file as JSON lines, one object per iteration.

    Each line holds ``"iteration"`` and the scalars put at that iteration since the previous
    ``write()``; scalars with ``smoothing_hint=True`` are the median of their last
    ``window_size`` values. Read a file back with::

        [json.loads(line) for line in open("metrics.json")]

    A run that resumes at iteration k after a crash wrote rows up to its last write, past its
    last checkpoint; ``discard_from(k)`` (called by ``PeriodicWriter`` before training) drops
    the rows of k and later, so each iteration appears once, with the resumed run's values.

    Args:
        json_file: path of the file; opened for appending (any ``PathManager`` path).
        window_size: number of values to smooth over.
    """

    def __init__(self, json_file: str, window_size: int = 20) -> None:
        self._json_file = json_file
        self._file_handle = PathManager.open(json_file, "a")
        self._window_size = window_size
        self._last_write = -1

    def discard_from(self, iteration: int) -> None:
        """Remove the rows of ``iteration`` and later (and lines cut short by a crash) from the
        file, replacing it atomically; logs how many rows were dropped."""
        self._file_handle.flush()
        with PathManager.open(self._json_file, "r") as f:
            text = f.read()
        kept, dropped, unreadable = _split_rows(text, iteration)
        self._last_write = min(self._last_write, iteration - 1)
        if not dropped and not unreadable and (not text or text.endswith("\n")):
            return
        self._file_handle.close()
        _replace_file(self._json_file, kept)
        self._file_handle = PathManager.open(self._json_file, "a")
        cut_short = f" and {unreadable} line(s) cut short by a crash" if unreadable else ""
        logger.warning(
            "%s: dropped %d row(s) of iterations >= %d%s, written by an earlier run; this run "
            "starts at iteration %d and writes them again.", self._json_file, dropped, iteration,
            cut_short, iteration)

    def write(self) -> None:
        """Append one line per iteration that has scalars newer than the last write."""
        storage = _current_storage()
        by_iteration: Dict[int, Dict[str, Any]] = defaultdict(dict)
        for name, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr <= self._last_write:
                continue  # already written
            by_iteration[itr][name] = value
        if not by_iteration:
            return
        self._last_write = max(by_iteration)
        for itr in sorted(by_iteration):
            record = dict(by_iteration[itr])
            record["iteration"] = itr
            self._file_handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._file_handle.flush()
        try:
            os.fsync(self._file_handle.fileno())
        except (AttributeError, OSError, ValueError):
            pass  # not a local file; flushed as far as its handler allows

    def close(self) -> None:
        """Close the file."""
        self._file_handle.close()


class TensorboardXWriter(EventWriter):
    """Write scalars, queued images and histograms as TensorBoard events.

    The ``SummaryWriter`` (``torch.utils.tensorboard``, needs the ``tensorboard`` package) is
    created on the first ``write()``, so constructing this writer on every rank costs nothing.

    Args:
        log_dir: directory for the event files.
        window_size: number of values to smooth over for scalars with ``smoothing_hint=True``.
        **kwargs: passed to ``SummaryWriter`` (e.g. ``flush_secs``).
    """

    def __init__(self, log_dir: str, window_size: int = 20, **kwargs: Any) -> None:
        self._window_size = window_size
        self._writer_args = {"log_dir": log_dir, **kwargs}
        self._writer = None
        self._last_write = -1

    def _summary_writer(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    "TensorboardXWriter needs the 'tensorboard' package: pip install tensorboard "
                    "(or drop this writer from the trainer's writers)."
                ) from e
            self._writer = SummaryWriter(**self._writer_args)
        return self._writer

    def write(self) -> None:
        """Add scalars newer than the last write, then all queued images and histograms."""
        storage = _current_storage()
        writer = self._summary_writer()
        newest = self._last_write
        for name, (value, itr) in storage.latest_with_smoothing_hint(self._window_size).items():
            if itr > self._last_write:
                writer.add_scalar(name, value, itr)
                newest = max(newest, itr)
        self._last_write = newest

        if storage.vis_data:
            for img_name, img, step in storage.vis_data:
                writer.add_image(img_name, img, step)
            # Images are large: drop them once written (only one writer should show images).
            storage.clear_images()

        histograms = getattr(storage, "_histograms", [])
        if histograms:
            for params in histograms:
                writer.add_histogram_raw(**params)
            storage.clear_histograms()

    def discard_from(self, iteration: int) -> None:
        """Make TensorBoard drop the events of ``iteration`` and later that earlier runs wrote
        into ``log_dir`` (a resumed run writes those iterations again): the event file opened
        next starts with a purge marker at ``iteration`` (``SummaryWriter(purge_step=...)``),
        so the curves show each iteration once, from the newest run. Nothing is deleted."""
        if self._writer is not None:
            logger.warning("TensorboardXWriter.discard_from(%d) after the event file was opened: "
                           "the earlier events stay visible.", iteration)
            return
        self._writer_args["purge_step"] = int(iteration)

    def close(self) -> None:
        """Flush and close the event file (if one was opened)."""
        if self._writer is not None:
            self._writer.close()


class CommonMetricPrinter(EventWriter):
    """Log Detectron2's one-line training summary to the console (the ``segtron.utils.events``
    logger), e.g.::

        eta: 0:12:34  iter: 19  total_loss: 1.234  loss_cls: 0.6  time: 0.5012  last_time: 0.4990
        data_time: 0.0100  last_data_time: 0.0090   lr: 0.0025  max_mem: 1234M

    Losses (every scalar with ``loss`` in its name) are medians over the values put in the last
    ``window_size`` iterations; scalars with ``[metric]`` in their name are shown the same way.
    ``time`` is the mean step time since timing started, ``data_time`` the mean over the window.
    The ETA uses the median of the last 1000 step times, or, while no ``time`` has been
    recorded yet (the first iterations), the rate between two writes. Peak memory is shown
    only on CUDA. Nothing is printed for ``iter == max_iter`` (the extra write after training).

    Args:
        max_iter: the number of training iterations; without it no ETA is shown.
        window_size: number of iterations to smooth losses and data time over.
    """

    def __init__(self, max_iter: Optional[int] = None, window_size: int = 20) -> None:
        self.logger = logging.getLogger("segtron.utils.events")
        self._max_iter = max_iter
        self._window_size = window_size
        self._last_write: Optional[Tuple[int, float]] = None  # (iteration, perf_counter time)

    def _get_eta(self, storage) -> Optional[str]:
        if self._max_iter is None:
            return ""
        iteration = storage.iter
        remaining = self._max_iter - iteration - 1
        try:
            eta_seconds = storage.history("time").median(1000) * remaining
        except KeyError:
            # No step times yet: estimate from the time between two writes (noisier).
            now = time.perf_counter()
            eta = None
            if self._last_write is not None and iteration > self._last_write[0]:
                per_iter = (now - self._last_write[1]) / (iteration - self._last_write[0])
                eta = str(datetime.timedelta(seconds=int(per_iter * remaining)))
            self._last_write = (iteration, now)
            return eta
        storage.put_scalar("eta_seconds", eta_seconds, smoothing_hint=False)
        return str(datetime.timedelta(seconds=int(eta_seconds)))

    def _smoothed(self, storage, name: str) -> float:
        count = max(1, _samples_in_last_iterations(storage, name, self._window_size))
        return storage.history(name).median(count)

    def write(self) -> None:
        """Log the summary line for the current iteration."""
        storage = _current_storage()
        iteration = storage.iter
        if iteration == self._max_iter:
            # Called once more after training; this printer reports progress only.
            return

        try:
            count = max(1, _samples_in_last_iterations(storage, "data_time", self._window_size))
            avg_data_time = storage.history("data_time").avg(count)
            last_data_time = storage.history("data_time").latest()
        except KeyError:  # not recorded on this rank / in this loop
            avg_data_time = last_data_time = None
        try:
            avg_iter_time = storage.history("time").global_avg()
            last_iter_time = storage.history("time").latest()
        except KeyError:  # IterationTimer not used, or still warming up
            avg_iter_time = last_iter_time = None
        try:
            lr = "{:.5g}".format(storage.history("lr").latest())
        except KeyError:
            lr = "N/A"
        eta = self._get_eta(storage)
        max_mem_mb = (
            torch.cuda.max_memory_allocated() / 1024.0 / 1024.0
            if torch.cuda.is_available()
            else None
        )

        histories = storage.histories()
        losses = "  ".join(
            f"{name}: {self._smoothed(storage, name):.4g}" for name in histories if "loss" in name
        )
        metrics = "  ".join(
            f"{name}: {self._smoothed(storage, name):.4g}"
            for name in histories
            if "[metric]" in name
        )
        parts = [
            f" eta: {eta}  " if eta else " ",
            f"iter: {iteration}  ",
            f"{losses}  " if losses else "",
            f"{metrics}  " if metrics else "",
            f"time: {avg_iter_time:.4f}  " if avg_iter_time is not None else "",
            f"last_time: {last_iter_time:.4f}  " if last_iter_time is not None else "",
            f"data_time: {avg_data_time:.4f}  " if avg_data_time is not None else "",
            f"last_data_time: {last_data_time:.4f}  " if last_data_time is not None else "",
            f"lr: {lr}  ",
            f"max_mem: {max_mem_mb:.0f}M" if max_mem_mb is not None else "",
        ]
        self.logger.info("".join(parts).rstrip())
