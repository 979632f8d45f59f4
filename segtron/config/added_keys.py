"""Adding a project's config keys from a table: :func:`add_missing_keys`."""

import copy
from typing import Any, Iterable, Tuple

from .config import CfgNode

__all__ = ["add_missing_keys"]


def add_missing_keys(cfg: CfgNode, keys: Iterable[Tuple[str, Any, str]]) -> None:
    """Add the keys of ``keys``, ``(dotted key, default, comment)`` rows such as
    ``("MODEL.YOLOX.WIDTH", 0.5, "...")``, to ``cfg`` in place.

    Only missing keys are added: a key ``cfg`` already has keeps its value, so calling it twice,
    or after a merge, changes nothing. Missing intermediate nodes are created as ``CfgNode``.
    Defaults are deep-copied (a list default is never shared between configs). The comment is
    documentation only.
    """
    for dotted, default, _ in keys:
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            if part not in node:
                node[part] = CfgNode()
            node = node[part]
        if leaf not in node:
            node[leaf] = copy.deepcopy(default)
