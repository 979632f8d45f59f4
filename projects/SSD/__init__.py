"""SSD (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016) as a segtron project:
SSD300 / SSD512 with the VGG-16 backbone, equivalent to torchvision's ``ssd300_vgg16``.

Importing it registers the "SSD" meta-architecture (META_ARCH_REGISTRY),
``build_ssd_vgg_backbone`` and ``build_ssd_resnet_backbone`` (BACKBONE_REGISTRY);
``add_ssd_config(cfg)`` (also ``add_config``, which ``train_net.py`` calls) adds the MODEL.SSD
keys. ``load_torchvision_ssd300_vgg16`` loads torchvision's weights;
``SSDPhotometricDistortion``, ``SSDExpand`` and ``SSDMinIoURandomCrop`` are the paper's
training augmentations, which ``DATALOADER.TRAIN_LOADER: "SSDAugmentedLoader"`` applies
(``training.py``). Importable as ``projects.SSD``, ``segtron.projects.ssd`` and
``detectron2.projects.ssd``. Configs: ``projects/SSD/configs``; see README.md here.
"""

from .augmentations import SSDExpand, SSDMinIoURandomCrop, SSDPhotometricDistortion
from .config import add_ssd_config
from .head import SSDHead
from .l2_norm import L2Norm
from .loss import hard_negative_mask, ssd_losses
from .matching import match_priors
from .prior_boxes import PriorBoxGenerator, grid_prior_boxes, prior_scales, prior_shapes
from .resnet import SSDExtraBlock, SSDResNetBackbone, build_ssd_resnet_backbone
from .ssd import SSD
from .training import build_ssd_train_augmentation
from .torchvision_weights import (
    load_torchvision_ssd300_vgg16,
    load_torchvision_vgg16_features,
    torchvision_ssd_key_map,
)
from .vgg import SSDVGGBackbone, build_ssd_vgg_backbone

add_config = add_ssd_config

__all__ = [
    "add_config",
    "add_ssd_config",
    "build_ssd_resnet_backbone",
    "build_ssd_train_augmentation",
    "build_ssd_vgg_backbone",
    "grid_prior_boxes",
    "hard_negative_mask",
    "L2Norm",
    "load_torchvision_ssd300_vgg16",
    "load_torchvision_vgg16_features",
    "match_priors",
    "prior_scales",
    "prior_shapes",
    "PriorBoxGenerator",
    "SSD",
    "ssd_losses",
    "SSDExpand",
    "SSDExtraBlock",
    "SSDHead",
    "SSDMinIoURandomCrop",
    "SSDPhotometricDistortion",
    "SSDResNetBackbone",
    "SSDVGGBackbone",
    "torchvision_ssd_key_map",
]
