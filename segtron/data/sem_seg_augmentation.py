"""Training augmentations for semantic segmentation: resize, then crop, then flip
(:func:`build_sem_seg_train_augmentation`; segtron's, after Detectron2's DeepLab project)."""

from typing import List

from . import transforms as T
from .detection_utils import build_augmentation

__all__ = ["build_sem_seg_train_augmentation"]


def build_sem_seg_train_augmentation(cfg) -> List["T.Augmentation"]:
    """Training augmentations for semantic segmentation (what ``train_net.py`` uses for a
    ``SemanticSegmentor``, as Detectron2's DeepLab project does).

    The resize of :func:`~segtron.data.detection_utils.build_augmentation`; then, when
    INPUT.CROP.ENABLED, a crop of INPUT.CROP.TYPE / SIZE taken *after* the resize (so it has a fixed size in network pixels)
    and retried until no category covers more than INPUT.CROP.SINGLE_CATEGORY_MAX_AREA of its
    labelled pixels (a DeepLab key; 1.0, any crop, when the config lacks it), the
    MODEL.SEM_SEG_HEAD.IGNORE_VALUE label not counting; then the flip.
    (:class:`~segtron.data.DatasetMapper`'s default crop comes before the resize.)
    """
    augs = build_augmentation(cfg, is_train=True)
    crop = cfg.INPUT.CROP
    if crop.ENABLED:
        augs.insert(1, T.RandomCrop_CategoryAreaConstraint(
            crop.TYPE, crop.SIZE, crop.get("SINGLE_CATEGORY_MAX_AREA", 1.0),
            cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
        ))
    return augs
