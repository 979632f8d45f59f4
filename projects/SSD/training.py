"""SSD's training data pipeline from a config: ``DATALOADER.TRAIN_LOADER: "SSDAugmentedLoader"``
(segtron's ``TRAIN_LOADER_REGISTRY``) trains with the paper's augmentations, configured by the
``INPUT.SSD_AUG`` keys (:mod:`projects.SSD.config`), in this order:

1. ``SSDPhotometricDistortion`` (INPUT.SSD_AUG.PHOTOMETRIC) in INPUT.FORMAT's channel order;
2. ``SSDExpand`` (zoom out; INPUT.SSD_AUG.EXPAND_PROB, EXPAND_MAX_RATIO) onto a canvas of
   MODEL.PIXEL_MEAN;
3. ``SSDMinIoURandomCrop`` (zoom in; INPUT.SSD_AUG.MIN_IOU_CROP);
4. the config's usual training resize and flip (``build_augmentation``; SSD configs turn the
   resize off with ``INPUT.MIN_SIZE_TRAIN: (0,)`` as the model resizes to its square).

This is torchvision's ``--data-augmentation ssd`` pipeline, with the image as segtron reads it.
"""

from typing import List

from segtron.config import CfgNode
from segtron.data import DatasetMapper, build_detection_train_loader
from segtron.data import transforms as T
from segtron.data.detection_utils import build_augmentation
from segtron.engine import TRAIN_LOADER_REGISTRY

from .augmentations import SSDExpand, SSDMinIoURandomCrop, SSDPhotometricDistortion

__all__ = ["build_ssd_train_augmentation", "SSDAugmentedLoader"]


def build_ssd_train_augmentation(cfg: CfgNode) -> List[T.Augmentation]:
    """The training augmentations listed in the module docstring, from ``cfg``."""
    aug = cfg.INPUT.SSD_AUG
    augs: List[T.Augmentation] = []
    if aug.PHOTOMETRIC:
        augs.append(SSDPhotometricDistortion(image_format=cfg.INPUT.FORMAT))
    if aug.EXPAND_PROB > 0:
        augs.append(SSDExpand(pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
                              max_ratio=aug.EXPAND_MAX_RATIO, prob=aug.EXPAND_PROB))
    if aug.MIN_IOU_CROP:
        augs.append(SSDMinIoURandomCrop())
    return augs + build_augmentation(cfg, is_train=True)


@TRAIN_LOADER_REGISTRY.register()
def SSDAugmentedLoader(cfg: CfgNode):
    """The training loader of DATALOADER.TRAIN_LOADER "SSDAugmentedLoader":
    ``build_detection_train_loader(cfg)`` with a ``DatasetMapper`` applying
    :func:`build_ssd_train_augmentation` (the mapper passes the boxes the IoU crop needs)."""
    mapper = DatasetMapper(cfg, is_train=True, augmentations=build_ssd_train_augmentation(cfg))
    return build_detection_train_loader(cfg, mapper=mapper)
