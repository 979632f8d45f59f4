"""Reading pickled files (checkpoints, model-zoo ``.pkl`` weights, proposal files) without
running code from them.

A pickle names Python callables that are called while it loads, so a hostile file can name
``os.system``. segtron therefore resolves only an allowlist of globals (``SAFE_GLOBALS``):
PyTorch's own tensor types (through ``torch.load(weights_only=True)``) plus the numpy and
standard-library types that Detectron2, Caffe2 and pycls weight files and Detectron2 proposal
files hold. A file that names anything else is refused with :class:`UnsafePickleError`, naming
the file and the global.

Full unpickling is an explicit opt-in, for files you trust: pass ``allow_unsafe=True``, or set
the environment variable ``SEGTRON_ALLOW_UNSAFE_UNPICKLING=1`` (what ``train_net.py
--allow-unsafe-unpickling`` does, so that every process of a run inherits it).

A file that is not a pickle at all (random bytes, a truncated copy, an HTML error page saved
as ``.pth``) fails with :class:`UnreadableFileError`, naming the file and what was wrong.
"""

import _compat_pickle
import logging
import os
import pickle
import re
from typing import IO, Any, Callable, List, Optional, Tuple

import torch

__all__ = [
    "SAFE_GLOBALS",
    "UNSAFE_UNPICKLING_ENV",
    "UnreadableFileError",
    "UnsafePickleError",
    "load_pickle",
    "torch_load",
    "unsafe_unpickling_allowed",
]

logger = logging.getLogger(__name__)

UNSAFE_UNPICKLING_ENV = "SEGTRON_ALLOW_UNSAFE_UNPICKLING"

# (module, name) of every global a pickle may name, besides torch's own tensor machinery.
# numpy arrays and scalars (both numpy 1 and numpy 2 module names), Python 2 byte strings
# (``_codecs.encode``) and ordered dicts are all that weight and proposal files need.
SAFE_GLOBALS: Tuple[Tuple[str, str], ...] = (
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
    ("collections", "OrderedDict"),
)
_SAFE_MODULES_OF_CLASSES = ("numpy.dtypes",)  # every ``numpy.dtypes.<X>DType`` class

# torch's weights-only errors name a refused global as "... GLOBAL module.name ...".
_REFUSED_GLOBAL = re.compile(r"\bGLOBAL ([\w.]+)", re.IGNORECASE)
_TORCH_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


class UnsafePickleError(pickle.UnpicklingError):
    """A pickled file names a global outside the allowlist; nothing from it was run.

    Attributes: ``filename`` (the file), ``global_name`` ("module.name" it asked for).
    """

    def __init__(self, filename: str, global_name: str) -> None:
        self.filename = filename
        self.global_name = global_name
        super().__init__(
            f"Refusing to load {filename}: it names the Python global '{global_name}', which "
            "would be called while loading and could run arbitrary code. segtron only loads "
            "tensors, numpy arrays and plain containers from pickled files. If you trust this "
            f"file, opt in to full unpickling: set {UNSAFE_UNPICKLING_ENV}=1 (train_net.py: "
            "--allow-unsafe-unpickling), or pass allow_unsafe_unpickling=True to "
            "DetectionCheckpointer. Better: re-save only the weights, "
            "torch.save({'model': model.state_dict()}, path)."
        )


class UnreadableFileError(ValueError):
    """A file meant to be a checkpoint or pickle cannot be decoded (corrupt, truncated, empty,
    or not that format). Attributes: ``filename``, ``reason`` (the decoder's message)."""

    def __init__(self, filename: str, reason: str, what: str = "checkpoint") -> None:
        self.filename = filename
        self.reason = reason
        size = _file_size(filename)
        super().__init__(
            f"Cannot read {what} {filename}{size}: {reason}. The file is truncated or corrupt "
            "(a copy or download that did not finish, a disk that filled up while saving) or "
            f"is not a {what} at all. Replace it with a complete copy."
        )


def _file_size(filename: str) -> str:
    try:
        return f" ({os.path.getsize(filename)} bytes)"
    except OSError:
        return ""


def unsafe_unpickling_allowed(allow_unsafe: Optional[bool] = None) -> bool:
    """Whether full unpickling is allowed: ``allow_unsafe`` when given, else whether the
    environment variable ``SEGTRON_ALLOW_UNSAFE_UNPICKLING`` is set to 1 / true / yes."""
    if allow_unsafe is not None:
        return bool(allow_unsafe)
    return os.environ.get(UNSAFE_UNPICKLING_ENV, "").strip().lower() in ("1", "true", "yes")


def _python3_name(module: str, name: str) -> Tuple[str, str]:
    """The Python 3 name of a global written by Python 2 (``copy_reg`` -> ``copyreg``, ...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _is_safe_global(module: str, name: str) -> bool:
    if (module, name) in SAFE_GLOBALS or _python3_name(module, name) in SAFE_GLOBALS:
        return True
    return module in _SAFE_MODULES_OF_CLASSES and name.endswith("DType")


class _AllowlistUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` that resolves only the globals of ``SAFE_GLOBALS``."""

    def __init__(self, file: IO[bytes], filename: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._filename = filename

    def find_class(self, module: str, name: str) -> Any:
        if not _is_safe_global(module, name):
            raise UnsafePickleError(self._filename, f"{module}.{name}")
        return super().find_class(module, name)


def _warn_unsafe(filename: str) -> None:
    logger.warning(
        "Loading %s with full unpickling (%s / allow_unsafe): only do this for files you trust.",
        filename, UNSAFE_UNPICKLING_ENV,
    )


def _decode(load: Callable[[], Any], filename: str, what: str) -> Any:
    """Run ``load()``, turning decoder failures into ``UnreadableFileError`` naming the file."""
    try:
        return load()
    except (UnsafePickleError, MemoryError):
        raise
    except Exception as e:  # any decoder failure means the bytes are not a valid file
        refused = _REFUSED_GLOBAL.search(str(e))
        if refused:
            raise UnsafePickleError(filename, refused.group(1)) from None
        reason = f"{type(e).__name__}: {_decoder_reason(e)}"
        raise UnreadableFileError(filename, reason, what) from None


def _decoder_reason(error: BaseException) -> str:
    """The informative line of a decoder error (torch wraps its reason in paragraphs of
    advice about ``weights_only``)."""
    text = str(error).strip()
    detail = _TORCH_DETAIL.search(text)
    if detail:
        return detail.group(1).strip()
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if text.startswith("Weights only load failed") and len(paragraphs) > 1:
        return paragraphs[1].splitlines()[-1]
    first_line = text.splitlines()[0] if text else "no details"
    return first_line.split(". ")[0]  # torch's miniz errors go on with generic advice


def load_pickle(f: IO[bytes], filename: str, *, allow_unsafe: Optional[bool] = None,
                encoding: str = "latin1", what: str = "pickle file") -> Any:
    """Unpickle the open binary file ``f`` (named ``filename`` in errors).

    Only ``SAFE_GLOBALS`` are resolved unless full unpickling is allowed (see
    :func:`unsafe_unpickling_allowed`). ``encoding`` decodes Python 2 byte strings ("latin1"
    reads Caffe2 / Detectron numpy pickles). Raises ``UnsafePickleError`` or
    ``UnreadableFileError``.
    """
    if unsafe_unpickling_allowed(allow_unsafe):
        _warn_unsafe(filename)
        return _decode(lambda: pickle.load(f, encoding=encoding), filename, what)
    unpickler = _AllowlistUnpickler(f, filename, encoding=encoding)
    return _decode(unpickler.load, filename, what)


def _torch_safe_globals() -> List[Tuple[Any, str]]:
    """``SAFE_GLOBALS`` as (object, "module.name") pairs for ``torch.serialization``."""
    import importlib

    import numpy.dtypes

    pairs = []
    for module, name in SAFE_GLOBALS:
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # e.g. numpy._core under numpy 1
            continue
        pairs.append((obj, f"{module}.{name}"))
    for name in dir(numpy.dtypes):
        if name.endswith("DType"):
            pairs.append((getattr(numpy.dtypes, name), f"numpy.dtypes.{name}"))
    return pairs


def torch_load(f: IO[bytes], filename: str, *, allow_unsafe: Optional[bool] = None,
               what: str = "checkpoint") -> Any:
    """``torch.load`` the open binary file ``f`` to CPU (``filename`` names it in errors).

    Loads with ``weights_only=True`` plus the numpy / standard types of ``SAFE_GLOBALS``, so
    Detectron2 checkpoints holding numpy arrays load; full unpickling only when allowed (see
    :func:`unsafe_unpickling_allowed`). Raises ``UnsafePickleError`` (naming the global) or
    ``UnreadableFileError`` (corrupt, truncated or empty file).
    """
    if unsafe_unpickling_allowed(allow_unsafe):
        _warn_unsafe(filename)
        return _decode(lambda: torch.load(f, map_location="cpu", weights_only=False),
                       filename, what)

    def load() -> Any:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(f, map_location="cpu", weights_only=True)

    return _decode(load, filename, what)
