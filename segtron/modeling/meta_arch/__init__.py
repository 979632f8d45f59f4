"""Meta-architectures (Detectron2 path: ``detectron2.modeling.meta_arch``): whole models, built
by ``build_model(cfg)`` from ``META_ARCH_REGISTRY`` by MODEL.META_ARCHITECTURE."""

from .build import META_ARCH_REGISTRY, build_model
from .rcnn import GeneralizedRCNN, ProposalNetwork

__all__ = ["META_ARCH_REGISTRY", "build_model", "GeneralizedRCNN", "ProposalNetwork"]
