"""The registries through which configs name model components.

Each registry maps a name (the value of a config key) to a class or function. Register your own
component with the decorator and select it in the config::

    from segtron.modeling import ROI_MASK_HEAD_REGISTRY

    @ROI_MASK_HEAD_REGISTRY.register()
    class MyMaskHead(nn.Module): ...

    # YAML: MODEL.ROI_MASK_HEAD.NAME: MyMaskHead

The registries are defined here, in one light module, and re-exported at Detectron2's module
paths (e.g. ``segtron.modeling.proposal_generator.rpn.RPN_HEAD_REGISTRY``).
"""

from ..utils.registry import Registry

META_ARCH_REGISTRY = Registry("META_ARCH")
META_ARCH_REGISTRY.__doc__ = """Meta-architectures (the whole model), selected by MODEL.META_ARCHITECTURE.
Called as ``obj(cfg)``; returns an ``nn.Module`` taking ``list[dict]`` batched inputs."""

BACKBONE_REGISTRY = Registry("BACKBONE")
BACKBONE_REGISTRY.__doc__ = """Backbone builders, selected by MODEL.BACKBONE.NAME.
Called as ``obj(cfg, input_shape: ShapeSpec)``; returns a ``Backbone``."""

PROPOSAL_GENERATOR_REGISTRY = Registry("PROPOSAL_GENERATOR")
PROPOSAL_GENERATOR_REGISTRY.__doc__ = """Proposal generators, selected by MODEL.PROPOSAL_GENERATOR.NAME.
Called as ``obj(cfg, input_shape: dict[str, ShapeSpec])``."""

RPN_HEAD_REGISTRY = Registry("RPN_HEAD")
RPN_HEAD_REGISTRY.__doc__ = """RPN heads, selected by MODEL.RPN.HEAD_NAME.
Called as ``obj(cfg, input_shape: list[ShapeSpec])``; maps features to objectness and deltas."""

ANCHOR_GENERATOR_REGISTRY = Registry("ANCHOR_GENERATOR")
ANCHOR_GENERATOR_REGISTRY.__doc__ = """Anchor generators, selected by MODEL.ANCHOR_GENERATOR.NAME.
Called as ``obj(cfg, input_shape: list[ShapeSpec])``."""

ROI_HEADS_REGISTRY = Registry("ROI_HEADS")
ROI_HEADS_REGISTRY.__doc__ = """Region-of-interest heads, selected by MODEL.ROI_HEADS.NAME.
Called as ``obj(cfg, input_shape: dict[str, ShapeSpec])``."""

ROI_BOX_HEAD_REGISTRY = Registry("ROI_BOX_HEAD")
ROI_BOX_HEAD_REGISTRY.__doc__ = """Box heads (pooled features -> box features), selected by
MODEL.ROI_BOX_HEAD.NAME. Called as ``obj(cfg, input_shape: ShapeSpec)``."""

ROI_MASK_HEAD_REGISTRY = Registry("ROI_MASK_HEAD")
ROI_MASK_HEAD_REGISTRY.__doc__ = """Mask heads, selected by MODEL.ROI_MASK_HEAD.NAME.
Called as ``obj(cfg, input_shape: ShapeSpec)``."""

ROI_KEYPOINT_HEAD_REGISTRY = Registry("ROI_KEYPOINT_HEAD")
ROI_KEYPOINT_HEAD_REGISTRY.__doc__ = """Keypoint heads, selected by MODEL.ROI_KEYPOINT_HEAD.NAME.
Called as ``obj(cfg, input_shape: ShapeSpec)``."""

SEM_SEG_HEADS_REGISTRY = Registry("SEM_SEG_HEADS")
SEM_SEG_HEADS_REGISTRY.__doc__ = """Semantic-segmentation heads, selected by MODEL.SEM_SEG_HEAD.NAME.
Called as ``obj(cfg, input_shape: dict[str, ShapeSpec])``."""

__all__ = [
    "META_ARCH_REGISTRY",
    "BACKBONE_REGISTRY",
    "PROPOSAL_GENERATOR_REGISTRY",
    "RPN_HEAD_REGISTRY",
    "ANCHOR_GENERATOR_REGISTRY",
    "ROI_HEADS_REGISTRY",
    "ROI_BOX_HEAD_REGISTRY",
    "ROI_MASK_HEAD_REGISTRY",
    "ROI_KEYPOINT_HEAD_REGISTRY",
    "SEM_SEG_HEADS_REGISTRY",
]
