"""Semantic-segmentation-head registry (Detectron2 path: detectron2.modeling.meta_arch.semantic_seg)."""

from ..registries import SEM_SEG_HEADS_REGISTRY  # noqa: F401
