"""Backbones: the ``Backbone`` interface, ResNet/ResNeXt, RegNet, any timm model and FPN, built
by ``BACKBONE_REGISTRY``."""

from .backbone import Backbone
from .build import BACKBONE_REGISTRY, build_backbone
from .fpn import (
    FPN,
    LastLevelMaxPool,
    LastLevelP6P7,
    build_resnet_fpn_backbone,
    build_fcos_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from .regnet import RegNet
from .resnet import (
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
    ResNetBlockBase,
    build_resnet_backbone,
    make_stage,
)
from .timm_backbone import (
    TimmBackbone,
    build_timm_backbone,
    build_timm_fpn_backbone,
    build_timm_retinanet_fpn_backbone,
)

__all__ = [
    "Backbone",
    "BACKBONE_REGISTRY",
    "build_backbone",
    "ResNet",
    "ResNetBlockBase",
    "BasicStem",
    "BasicBlock",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "make_stage",
    "build_resnet_backbone",
    "RegNet",
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "build_fcos_resnet_fpn_backbone",
    "TimmBackbone",
    "build_timm_backbone",
    "build_timm_fpn_backbone",
    "build_timm_retinanet_fpn_backbone",
]
