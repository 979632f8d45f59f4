"""Where builtin datasets live on disk."""

import os

__all__ = ["get_datasets_root"]


def get_datasets_root() -> str:
    """Return the directory holding builtin datasets.

    ``$SEGTRON_DATASETS`` if set, else ``$DETECTRON2_DATASETS`` (so an existing Detectron2 data
    layout works unchanged), else ``datasets`` relative to the current directory.
    """
    for var in ("SEGTRON_DATASETS", "DETECTRON2_DATASETS"):
        value = os.environ.get(var)
        if value:
            return os.path.expanduser(value)
    return "datasets"
