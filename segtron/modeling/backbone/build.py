"""``build_backbone`` and ``BACKBONE_REGISTRY`` (Detectron2 path: ``modeling.backbone.build``)."""

from typing import Optional

from ...layers import ShapeSpec
from ..registries import BACKBONE_REGISTRY
from .backbone import Backbone

__all__ = ["BACKBONE_REGISTRY", "build_backbone"]


def build_backbone(cfg, input_shape: Optional[ShapeSpec] = None) -> Backbone:
    """Build the backbone named by ``cfg.MODEL.BACKBONE.NAME`` from ``BACKBONE_REGISTRY``.

    Args:
        cfg: a config (``segtron.config.get_cfg()`` layout).
        input_shape: shape of the input images; by default
            ``ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))``.

    Returns:
        the :class:`Backbone` returned by ``builder(cfg, input_shape)``.
    """
    if input_shape is None:
        input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    name = cfg.MODEL.BACKBONE.NAME
    backbone = BACKBONE_REGISTRY.get(name)(cfg, input_shape)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"MODEL.BACKBONE.NAME={name!r} built a {type(backbone).__name__}, not a Backbone. "
            "Backbone builders must return an instance of "
            "segtron.modeling.backbone.Backbone (subclass it and implement forward and the "
            "_out_features/_out_feature_channels/_out_feature_strides attributes)."
        )
    return backbone
