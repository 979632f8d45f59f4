"""Logging set-up and rate-limited logging helpers with Detectron2's behaviour.

``setup_logger`` configures one named logger (``"segtron"`` by default) with a console handler on
the main process and a plain-text log file per rank. ``log_first_n`` / ``log_every_n`` /
``log_every_n_seconds`` limit how often a call site logs, and ``create_small_table`` /
``create_table_with_header`` format result dicts the way Detectron2's evaluators print them.
"""

import atexit
import functools
import itertools
import logging
import os
import sys
import time
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from tabulate import tabulate
from termcolor import colored

from segtron.utils.file_io import PathManager

__all__ = [
    "setup_logger",
    "log_first_n",
    "log_every_n",
    "log_every_n_seconds",
    "create_small_table",
    "create_table_with_header",
    "D2_LOG_BUFFER_SIZE_KEY",
    "DEFAULT_LOG_BUFFER_SIZE",
]

# Short names shown in console lines instead of the root package name.
_DEFAULT_ABBREVIATIONS = {"segtron": "st", "detectron2": "d2"}

_DATE_FORMAT = "%m/%d %H:%M:%S"
_PLAIN_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"

# Tag set on the handlers installed by setup_logger, so a repeated call replaces them.
_HANDLER_TAG = "_segtron_setup_logger_key"

# Buffer size used for log files on remote storage (``scheme://`` paths); local files keep
# Python's default buffering so every line is on disk as soon as the handler flushes it.
DEFAULT_LOG_BUFFER_SIZE: int = 1024 * 1024
# Environment variable overriding that size (Detectron2's name; SEGTRON_LOG_BUFFER_SIZE wins).
D2_LOG_BUFFER_SIZE_KEY: str = "D2_LOG_BUFFER_SIZE"
_REMOTE_LOG_BUFFER_SIZE = DEFAULT_LOG_BUFFER_SIZE
_LOG_BUFFER_SIZE_ENV = ("SEGTRON_LOG_BUFFER_SIZE", D2_LOG_BUFFER_SIZE_KEY)


class _ColorfulFormatter(logging.Formatter):
    """Console formatter: abbreviates the root logger name and colours WARNING/ERROR tags."""

    def __init__(self, fmt: str, datefmt: str, root_name: str, abbrev_name: str) -> None:
        super().__init__(fmt, datefmt=datefmt)
        self._root_prefix = root_name + "."
        self._abbrev_prefix = abbrev_name + "." if abbrev_name else ""
        self._root_name = root_name
        self._abbrev_name = abbrev_name

    def formatMessage(self, record: logging.LogRecord) -> str:
        shown = record.name
        if shown == self._root_name:
            shown = self._abbrev_name or shown
        elif shown.startswith(self._root_prefix):
            shown = self._abbrev_prefix + shown[len(self._root_prefix) :]
        # Format a copy so other handlers (the log file) still see the full name.
        record = logging.makeLogRecord({**record.__dict__, "name": shown})
        text = super().formatMessage(record)
        if record.levelno >= logging.ERROR:
            return colored("ERROR", "red", attrs=["blink", "underline"]) + " " + text
        if record.levelno == logging.WARNING:
            return colored("WARNING", "red", attrs=["blink"]) + " " + text
        return text


def _log_buffer_size(filename: str) -> int:
    """Buffer size for ``open``: default (-1) locally, 1 MiB (or the env override) remotely."""
    if "://" not in filename:
        return -1
    for key in _LOG_BUFFER_SIZE_ENV:
        if key in os.environ:
            return int(os.environ[key])
    return _REMOTE_LOG_BUFFER_SIZE


@functools.lru_cache(maxsize=None)
def _cached_log_stream(filename: str):
    """Open ``filename`` for appending once per process; later calls reuse the same stream."""
    stream = PathManager.open(filename, "a", buffering=_log_buffer_size(filename))
    atexit.register(stream.close)
    return stream


def _log_file_path(output: str, distributed_rank: int) -> str:
    """The log file for ``output``: itself if it ends in .txt/.log, else ``output/log.txt``."""
    if output.endswith((".txt", ".log")):
        path = output
    else:
        path = os.path.join(output, "log.txt")
    if distributed_rank > 0:
        path = f"{path}.rank{distributed_rank}"
    return path


def _install(logger: logging.Logger, handler: logging.Handler, key: str) -> None:
    """Add ``handler`` under ``key``, removing a handler a previous setup installed there."""
    for old in list(logger.handlers):
        if getattr(old, _HANDLER_TAG, None) == key:
            logger.removeHandler(old)
    setattr(handler, _HANDLER_TAG, key)
    logger.addHandler(handler)


def setup_logger(
    output: Optional[str] = None,
    distributed_rank: int = 0,
    *,
    color: bool = True,
    name: str = "segtron",
    abbrev_name: Optional[str] = None,
    enable_propagation: bool = False,
    configure_stdout: bool = True,
) -> logging.Logger:
    """Configure the logger ``name`` for console and file output, and return it.

    Args:
        output: a file path ending in ``.txt``/``.log``, or a directory (the file is then
            ``<output>/log.txt``). Ranks above 0 write ``<file>.rank<r>``. None: no file.
        distributed_rank: rank of this process; only rank 0 logs to the console.
        color: colour the console's timestamp/name and WARNING/ERROR tags.
        name: the logger to configure (its children inherit the handlers).
        abbrev_name: shown on the console instead of ``name``; defaults to ``"st"`` for
            ``"segtron"``, ``"d2"`` for ``"detectron2"``, else ``name`` itself.
        enable_propagation: whether records also propagate to the parent (root) logger.
        configure_stdout: whether to add the console handler at all.

    Returns:
        The configured ``logging.Logger`` (level DEBUG). Calling again for the same name
        replaces the handlers this function installed before instead of adding duplicates, and a
        given log file is only opened once per process.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    logger.propagate = enable_propagation

    if abbrev_name is None:
        abbrev_name = _DEFAULT_ABBREVIATIONS.get(name, name)

    plain_formatter = logging.Formatter(_PLAIN_FORMAT, datefmt=_DATE_FORMAT)

    if configure_stdout and distributed_rank == 0:
        console = logging.StreamHandler(stream=sys.stdout)
        console.setLevel(logging.INFO)
        if color:
            console.setFormatter(
                _ColorfulFormatter(
                    colored("[%(asctime)s %(name)s]: ", "green") + "%(message)s",
                    datefmt=_DATE_FORMAT,
                    root_name=name,
                    abbrev_name=str(abbrev_name),
                )
            )
        else:
            console.setFormatter(plain_formatter)
        _install(logger, console, "console")

    if output is not None:
        filename = _log_file_path(os.fspath(output), distributed_rank)
        directory = os.path.dirname(filename)
        if directory:
            PathManager.mkdirs(directory)
        file_handler = logging.StreamHandler(_cached_log_stream(filename))
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(plain_formatter)
        _install(logger, file_handler, "file:" + filename)

    return logger


# ---------------------------------------------------------------------------------------------
# Rate-limited logging, keyed by the call site.

_LOG_COUNTER: Counter = Counter()
_LOG_TIMER: Dict[Tuple, float] = {}
_THIS_FILE = os.path.normcase(os.path.abspath(__file__))


def _find_caller() -> Tuple[str, Tuple[str, int, str]]:
    """Return (module name, (file, line, function)) of the first frame outside this file."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if os.path.normcase(os.path.abspath(code.co_filename)) != _THIS_FILE:
            module = frame.f_globals.get("__name__", "segtron")
            if module == "__main__":
                module = "segtron"
            return module, (code.co_filename, frame.f_lineno, code.co_name)
        frame = frame.f_back
    return "segtron", ("<unknown>", 0, "<unknown>")


def log_first_n(
    lvl: int,
    msg: str,
    n: int = 1,
    *,
    name: Optional[str] = None,
    key: Union[str, Sequence[str]] = "caller",
) -> None:
    """Log ``msg`` at level ``lvl`` only the first ``n`` times.

    Args:
        lvl: logging level, e.g. ``logging.WARNING``.
        msg: the message.
        n: how many times to log it.
        name: logger name; defaults to the calling module's ``__name__``.
        key: what counts as "the same" call: ``"caller"`` (the call site), ``"message"`` (the
            text), or a tuple of both.
    """
    keys = (key,) if isinstance(key, str) else tuple(key)
    unknown = set(keys) - {"caller", "message"}
    if not keys or unknown:
        raise ValueError(
            f"log_first_n: key must be 'caller', 'message' or a tuple of them, got {key!r}."
        )
    module, caller = _find_caller()
    counter_key: Tuple = ()
    if "caller" in keys:
        counter_key += caller
    if "message" in keys:
        counter_key += (msg,)
    _LOG_COUNTER[counter_key] += 1
    if _LOG_COUNTER[counter_key] <= n:
        logging.getLogger(name or module).log(lvl, msg)


def log_every_n(lvl: int, msg: str, n: int = 1, *, name: Optional[str] = None) -> None:
    """Log ``msg`` at level ``lvl`` on the 1st, (n+1)-th, (2n+1)-th ... call from this call site.

    ``name`` is the logger name (default: the calling module's ``__name__``).
    """
    module, caller = _find_caller()
    _LOG_COUNTER[caller] += 1
    if n <= 1 or (_LOG_COUNTER[caller] - 1) % n == 0:
        logging.getLogger(name or module).log(lvl, msg)


def log_every_n_seconds(lvl: int, msg: str, n: float = 1, *, name: Optional[str] = None) -> None:
    """Log ``msg`` at level ``lvl`` at most once every ``n`` seconds from this call site.

    ``name`` is the logger name (default: the calling module's ``__name__``).
    """
    module, caller = _find_caller()
    now = time.time()
    last = _LOG_TIMER.get(caller)
    if last is None or now - last >= n:
        logging.getLogger(name or module).log(lvl, msg)
        _LOG_TIMER[caller] = now


# ---------------------------------------------------------------------------------------------
# Tables.


def create_small_table(small_dict: Dict[str, Any]) -> str:
    """Format ``{column: value}`` as a one-row pipe table (floats with 3 decimals, centred).

    Returns the table as a string, e.g. the ``AP | AP50 | ...`` line evaluators log.
    """
    if not small_dict:
        raise ValueError("create_small_table: got an empty dict; pass at least one column.")
    return tabulate(
        [list(small_dict.values())],
        headers=list(small_dict.keys()),
        tablefmt="pipe",
        floatfmt=".3f",
        stralign="center",
        numalign="center",
    )


def create_table_with_header(
    header_dict: Dict[str, Any],
    headers: Sequence[str] = ("category", "AP"),
    min_cols: int = 6,
) -> str:
    """Lay out ``{key: value}`` pairs side by side in a pipe table, several pairs per row.

    Args:
        header_dict: e.g. ``{"person": 51.2, "car": 40.3, ...}``.
        headers: the header of one (key, value) group; repeated across the row.
        min_cols: the number of columns per row (a multiple of ``len(headers)``), or fewer when
            there are not enough items to fill one row.

    Returns:
        The table as a string (floats with 3 decimals, left-aligned numbers).
    """
    headers = list(headers)
    if not headers or min_cols % len(headers) != 0:
        raise ValueError(
            f"create_table_with_header: min_cols={min_cols} must be a multiple of the number of "
            f"headers ({len(headers)}: {headers})."
        )
    cells: List[Any] = list(itertools.chain.from_iterable(header_dict.items()))
    num_cols = min(min_cols, max(len(cells), len(headers)))
    rows = [cells[start : start + num_cols] for start in range(0, len(cells), num_cols)]
    if rows and len(rows[-1]) < num_cols:
        rows[-1] = rows[-1] + [None] * (num_cols - len(rows[-1]))
    return tabulate(
        rows,
        tablefmt="pipe",
        floatfmt=".3f",
        headers=headers * (num_cols // len(headers)),
        numalign="left",
    )


def _log_api_usage(identifier: str) -> None:
    """Record that component ``identifier`` (e.g. ``"modeling.meta_arch.GeneralizedRCNN"``) was
    used, through PyTorch's API-usage logger (a no-op unless a logging handler is installed).

    Detectron2 calls this from its constructors; it is kept for code that does the same.
    Returns None.
    """
    import torch  # here, not at the top: this module is imported before anything needs torch

    torch._C._log_api_usage_once("segtron." + identifier)
