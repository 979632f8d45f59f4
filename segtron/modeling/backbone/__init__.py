"""Backbones: the ``Backbone`` interface, ResNet/ResNeXt and FPN, built by ``BACKBONE_REGISTRY``."""

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
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "build_fcos_resnet_fpn_backbone",
]
