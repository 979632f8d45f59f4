"""Anchor-generator registry (Detectron2 path: detectron2.modeling.anchor_generator)."""

from .registries import ANCHOR_GENERATOR_REGISTRY  # noqa: F401
