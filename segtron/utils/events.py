"""``EventStorage``: where training code records scalars, images and histograms per iteration.

The trainer opens ``with EventStorage(start_iter) as storage:`` around the loop; any code inside
fetches it with ``get_event_storage()`` and calls ``put_scalar`` etc. Writers (JSON, TensorBoard,
console; in ``segtron.engine``) read the storage periodically.
"""

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from fvcore.common.history_buffer import HistoryBuffer

__all__ = [
    "EventStorage",
    "get_event_storage",
    "has_event_storage",
    "EventStorageError",
    "put_scalars_if_recording",
    # Writers live in event_writers.py; Detectron2 exports them from this module.
    "JSONWriter",
    "TensorboardXWriter",
    "CommonMetricPrinter",
]

_CURRENT_STORAGE_STACK: List["EventStorage"] = []


class EventStorageError(AssertionError):
    """Raised by ``get_event_storage()`` outside any ``with EventStorage(...)`` block.

    Subclasses AssertionError, the type Detectron2 raises there.
    """


def get_event_storage() -> "EventStorage":
    """Return the innermost ``EventStorage`` being used as a context manager.

    Raises EventStorageError (an AssertionError) when called outside ``with EventStorage(...)``.
    """
    if not _CURRENT_STORAGE_STACK:
        raise EventStorageError(
            "get_event_storage() has to be called inside a 'with EventStorage(...)' context! "
            "Wrap the training loop (or the test) in `with EventStorage(start_iter):`."
        )
    return _CURRENT_STORAGE_STACK[-1]


def has_event_storage() -> bool:
    """Return True inside a ``with EventStorage(...)`` block (``get_event_storage()`` would
    succeed), False outside any."""
    return bool(_CURRENT_STORAGE_STACK)


def put_scalars_if_recording(**scalars: float) -> bool:
    """``get_event_storage().put_scalars(**scalars)`` inside a training loop; outside one
    (e.g. a unit test calling a loss directly) nothing is recorded. Returns whether it was."""
    if not _CURRENT_STORAGE_STACK:
        return False
    _CURRENT_STORAGE_STACK[-1].put_scalars(**scalars)
    return True


class EventStorage:
    """Per-iteration metrics storage: scalar histories, images and histograms.

    Args:
        start_iter: the iteration number the storage starts at (``storage.iter``).
    """

    def __init__(self, start_iter: int = 0) -> None:
        self._history: Dict[str, HistoryBuffer] = {}
        self._smoothing_hints: Dict[str, bool] = {}
        self._latest_scalars: Dict[str, Tuple[float, int]] = {}
        self._iter = int(start_iter)
        self._current_prefix = ""
        self._vis_data: List[Tuple[str, Any, int]] = []
        self._histograms: List[Dict[str, Any]] = []

    # -- scalars ---------------------------------------------------------------------------

    def put_scalar(
        self, name: str, value: Any, smoothing_hint: bool = True, cur_iter: Optional[int] = None
    ) -> None:
        """Record ``value`` (anything ``float()`` accepts, e.g. a 1-element tensor) for ``name``.

        Args:
            name: metric name; the current ``name_scope`` prefix is prepended.
            value: the value.
            smoothing_hint: whether writers should smooth it (median over a window) when
                printing; must be the same every time a name is put.
            cur_iter: the iteration it belongs to; defaults to ``self.iter``.
        """
        name = self._current_prefix + name
        cur_iter = self._iter if cur_iter is None else int(cur_iter)
        value = float(value)
        known_hint = self._smoothing_hints.get(name)
        if known_hint is not None and known_hint != smoothing_hint:
            raise ValueError(
                f"Scalar '{name}' was put with smoothing_hint={known_hint} before and "
                f"smoothing_hint={smoothing_hint} now; use one hint per scalar name."
            )
        self._smoothing_hints[name] = smoothing_hint
        buffer = self._history.get(name)
        if buffer is None:
            buffer = self._history[name] = HistoryBuffer()
        buffer.update(value, cur_iter)
        self._latest_scalars[name] = (value, cur_iter)

    def put_scalars(
        self, *, smoothing_hint: bool = True, cur_iter: Optional[int] = None, **kwargs: Any
    ) -> None:
        """``put_scalar(name, value, smoothing_hint, cur_iter)`` for every ``name=value`` given."""
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def history(self, name: str) -> HistoryBuffer:
        """The fvcore ``HistoryBuffer`` of scalar ``name``; KeyError listing known names if none."""
        buffer = self._history.get(name)
        if buffer is None:
            raise KeyError(
                f"No history metric available for '{name}'. Recorded scalars: "
                f"{sorted(self._history) or '(none)'}."
            )
        return buffer

    def histories(self) -> Dict[str, HistoryBuffer]:
        """All scalar histories, ``{name: HistoryBuffer}``."""
        return self._history

    def latest(self) -> Dict[str, Tuple[float, int]]:
        """The last value put for each scalar: ``{name: (value, iteration)}``."""
        return self._latest_scalars

    def latest_with_smoothing_hint(self, window_size: int = 20) -> Dict[str, Tuple[float, int]]:
        """Like ``latest()``, but scalars with ``smoothing_hint=True`` report the median of their
        last ``window_size`` values. Returns ``{name: (value, iteration)}``."""
        result = {}
        for name, (value, itr) in self._latest_scalars.items():
            if self._smoothing_hints[name]:
                value = self._history[name].median(window_size)
            result[name] = (value, itr)
        return result

    def smoothing_hints(self) -> Dict[str, bool]:
        """``{name: smoothing_hint}`` for every scalar put so far."""
        return self._smoothing_hints

    # -- images and histograms -------------------------------------------------------------

    def put_image(self, img_name: str, img_tensor: torch.Tensor) -> None:
        """Queue an image for the writers.

        Args:
            img_name: tag to show it under.
            img_tensor: a (C, H, W) RGB float tensor in [0, 1] (or uint8-range values in
                [0, 255]); recorded with the current iteration.
        """
        self._vis_data.append((img_name, img_tensor, self._iter))

    def put_histogram(self, hist_name: str, hist_tensor: torch.Tensor, bins: int = 1000) -> None:
        """Queue a histogram of ``hist_tensor``'s values (``bins`` equal bins between its min and
        max) for the writers, in the fields TensorBoard's ``add_histogram_raw`` takes."""
        values = hist_tensor.detach().reshape(-1).float()
        low, high = values.min().item(), values.max().item()
        counts = torch.histc(values, bins=bins)
        edges = torch.linspace(low, high, steps=bins + 1, dtype=torch.float32)
        self._histograms.append(
            {
                "tag": hist_name,
                "min": low,
                "max": high,
                "num": values.numel(),
                "sum": float(values.sum()),
                "sum_squares": float((values * values).sum()),
                "bucket_limits": edges[1:].tolist(),
                "bucket_counts": counts.tolist(),
                "global_step": self._iter,
            }
        )

    @property
    def vis_data(self) -> List[Tuple[str, Any, int]]:
        """Queued images: a list of ``(name, tensor, iteration)``."""
        return self._vis_data

    def clear_images(self) -> None:
        """Drop queued images (writers call it after writing them)."""
        self._vis_data = []

    def clear_histograms(self) -> None:
        """Drop queued histograms (writers call it after writing them)."""
        self._histograms = []

    # -- iteration and scoping -------------------------------------------------------------

    def step(self) -> None:
        """Advance the iteration counter by one."""
        self._iter += 1

    @property
    def iter(self) -> int:
        """The current iteration (read/write)."""
        return self._iter

    @iter.setter
    def iter(self, value: int) -> None:
        self._iter = int(value)

    @property
    def iteration(self) -> int:
        """Alias of ``iter`` (older Detectron2 name)."""
        return self._iter

    @contextmanager
    def name_scope(self, name: str) -> Iterator[None]:
        """Within the block, scalar names get the prefix ``"<name>/"``.

        As in Detectron2, a nested scope replaces the outer prefix rather than extending it.
        """
        saved = self._current_prefix
        self._current_prefix = name.rstrip("/") + "/"
        try:
            yield
        finally:
            self._current_prefix = saved

    def __enter__(self) -> "EventStorage":
        _CURRENT_STORAGE_STACK.append(self)
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        if not _CURRENT_STORAGE_STACK or _CURRENT_STORAGE_STACK[-1] is not self:
            raise RuntimeError(
                "EventStorage contexts were exited out of order; nest `with EventStorage()` "
                "blocks properly."
            )
        _CURRENT_STORAGE_STACK.pop()

from .event_writers import EventWriter, JSONWriter, TensorboardXWriter, CommonMetricPrinter
