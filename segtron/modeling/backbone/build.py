"""Backbone registry (Detectron2 path: detectron2.modeling.backbone.build)."""

from ..registries import BACKBONE_REGISTRY  # noqa: F401
