"""``PathManager``: one iopath path manager for local files, URLs and the Detectron2 model zoo.

Paths such as ``detectron2://ImageNetPretrained/MSRA/R-50.pkl`` resolve to Detectron2's public
model-zoo storage (``https://dl.fbaipublicfiles.com/detectron2/...``); ``segtron://`` is an alias
for the same storage, so configs written for either project load the same weights.
"""

from typing import Any, List

from iopath.common.file_io import HTTPURLHandler, OneDrivePathHandler, PathHandler
from iopath.common.file_io import PathManager as _IopathPathManager

__all__ = ["PathManager", "PathHandler", "Detectron2Handler"]

PathManager = _IopathPathManager()
"""The process-wide path manager (an ``iopath.common.file_io.PathManager`` instance)."""


class Detectron2Handler(PathHandler):
    """Resolve ``detectron2://X`` (and its alias ``segtron://X``) to the Detectron2 model zoo.

    ``X`` is looked up under ``https://dl.fbaipublicfiles.com/detectron2/``; reading, caching
    and ``get_local_path`` are then done by the HTTP handler of ``PathManager``.
    """

    PREFIX = "detectron2://"
    ALIAS_PREFIXES = ("segtron://",)
    S3_DETECTRON2_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"

    def _get_supported_prefixes(self) -> List[str]:
        return [self.PREFIX, *self.ALIAS_PREFIXES]

    def to_url(self, path: str) -> str:
        """Return the https URL that the model-zoo ``path`` (``detectron2://X``) stands for."""
        for prefix in self._get_supported_prefixes():
            if path.startswith(prefix):
                return self.S3_DETECTRON2_PREFIX + path[len(prefix) :]
        raise ValueError(
            f"'{path}' is not a model-zoo path: it must start with one of "
            f"{self._get_supported_prefixes()}."
        )

    def _get_local_path(self, path: str, **kwargs: Any) -> str:
        return PathManager.get_local_path(self.to_url(path), **kwargs)

    def _open(self, path: str, mode: str = "r", **kwargs: Any):
        return PathManager.open(self.to_url(path), mode, **kwargs)


PathManager.register_handler(HTTPURLHandler())
PathManager.register_handler(OneDrivePathHandler())
PathManager.register_handler(Detectron2Handler())
