"""DeepLab (v3 and v3+) as a segtron project: Detectron2's ``projects/DeepLab``.

Importing it registers ``DeepLabV3Head`` and ``DeepLabV3PlusHead`` (SEM_SEG_HEADS_REGISTRY),
``build_resnet_deeplab_backbone`` (BACKBONE_REGISTRY) and the "WarmupPolyLR" schedule
(segtron.solver.LR_SCHEDULER_REGISTRY); ``add_deeplab_config(cfg)`` (also ``add_config``, which
``train_net.py`` calls) adds its keys. ``ASPP`` itself is a core layer (``segtron.layers``).
Importable as ``projects.DeepLab``, ``segtron.projects.deeplab`` and, with the Detectron2 alias,
``detectron2.projects.deeplab``. Configs: ``projects/DeepLab/configs``; see README.md here.
"""

from .build_solver import build_lr_scheduler
from .config import add_deeplab_config
from .loss import DeepLabCE
from .lr_scheduler import WarmupPolyLR
from .resnet import DeepLabStem, build_resnet_deeplab_backbone
from .semantic_seg import DeepLabV3Head, DeepLabV3PlusHead

add_config = add_deeplab_config

__all__ = [
    "add_config",
    "add_deeplab_config",
    "build_lr_scheduler",
    "build_resnet_deeplab_backbone",
    "DeepLabCE",
    "DeepLabStem",
    "DeepLabV3Head",
    "DeepLabV3PlusHead",
    "WarmupPolyLR",
]
