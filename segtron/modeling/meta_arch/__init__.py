"""Meta-architectures (Detectron2 path: ``detectron2.modeling.meta_arch``): whole models, built
by ``build_model(cfg)`` from ``META_ARCH_REGISTRY`` by MODEL.META_ARCHITECTURE."""

from .build import META_ARCH_REGISTRY, build_model
from .dense_detector import DenseDetector
from .fcn_head import FCNHead
from .fcos import FCOS, FCOSHead
from .panoptic_fpn import PanopticFPN, combine_semantic_and_instance_outputs
from .rcnn import GeneralizedRCNN, ProposalNetwork
from .retinanet import RetinaNet, RetinaNetHead
from .semantic_seg import (
    SEM_SEG_HEADS_REGISTRY,
    SemanticSegmentor,
    SemSegFPNHead,
    build_sem_seg_head,
)

__all__ = [
    "META_ARCH_REGISTRY",
    "build_model",
    "DenseDetector",
    "FCNHead",
    "FCOS",
    "FCOSHead",
    "GeneralizedRCNN",
    "PanopticFPN",
    "combine_semantic_and_instance_outputs",
    "ProposalNetwork",
    "RetinaNet",
    "RetinaNetHead",
    "SEM_SEG_HEADS_REGISTRY",
    "SemanticSegmentor",
    "SemSegFPNHead",
    "build_sem_seg_head",
]
