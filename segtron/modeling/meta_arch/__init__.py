"""Meta-architectures (Detectron2 path: ``detectron2.modeling.meta_arch``): whole models, built
by ``build_model(cfg)`` from ``META_ARCH_REGISTRY`` by MODEL.META_ARCHITECTURE."""

from .build import META_ARCH_REGISTRY, build_model
from .dense_detector import DenseDetector
from .fcos import FCOS, FCOSHead
from .rcnn import GeneralizedRCNN, ProposalNetwork
from .retinanet import RetinaNet, RetinaNetHead

__all__ = [
    "META_ARCH_REGISTRY",
    "build_model",
    "DenseDetector",
    "FCOS",
    "FCOSHead",
    "GeneralizedRCNN",
    "ProposalNetwork",
    "RetinaNet",
    "RetinaNetHead",
]
