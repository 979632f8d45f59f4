"""Checkpointing: save / resume training and load Detectron2, Caffe2 and torchvision weights.

``DetectionCheckpointer`` is the entry point; ``Checkpointer`` and ``PeriodicCheckpointer`` are
fvcore's. Importing this package registers the ``catalog://`` path handler.
"""

from fvcore.common.checkpoint import Checkpointer, PeriodicCheckpointer

from . import catalog as _catalog  # noqa: F401  (registers catalog:// in PathManager)
from .detection_checkpoint import DetectionCheckpointer

__all__ = ["Checkpointer", "PeriodicCheckpointer", "DetectionCheckpointer"]
