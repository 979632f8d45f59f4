"""Backbones: the ``Backbone`` interface, ResNet/ResNeXt, RegNet, the transformers (ViT with
SimpleFeaturePyramid, MViTv2, Swin), any timm model and FPN, built by ``BACKBONE_REGISTRY``."""

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
from .mvit import MViT
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
from .swin import SwinTransformer
from .timm_backbone import (
    TimmBackbone,
    build_timm_backbone,
    build_timm_fpn_backbone,
    build_timm_retinanet_fpn_backbone,
)
from .vit import SimpleFeaturePyramid, ViT, get_vit_lr_decay_rate

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
    "ViT",
    "SimpleFeaturePyramid",
    "get_vit_lr_decay_rate",
    "MViT",
    "SwinTransformer",
]
