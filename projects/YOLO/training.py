"""YOLOX's training recipe plugged into segtron's ``DefaultTrainer`` from the config (no
trainer of its own): the mosaic / mix-up loader and the switch of the last iterations.

- ``DATALOADER.TRAIN_LOADER: "YOLOXMosaicLoader"`` (``TRAIN_LOADER_REGISTRY``): DATASETS.TRAIN
  wrapped in a :class:`~projects.YOLO.mosaic.MosaicDataset` configured by the ``INPUT.MOSAIC``
  keys, mapped by :class:`~projects.YOLO.mosaic.MosaicDatasetMapper` (so INPUT.MIN_SIZE_TRAIN /
  RANDOM_FLIP still resize and flip each sample), batched as ``build_detection_train_loader``
  does. The loader carries the dataset as ``loader.mosaic_dataset``.
- ``SOLVER.HOOKS: ["YOLOXModeSwitch"]`` (``HOOK_REGISTRY``): from iteration
  ``MAX_ITER - MODEL.YOLOX.NO_AUG_ITERS`` on, mosaic and mix-up are off and the L1 box loss is
  on (YOLOX's last 15 epochs), also after a ``--resume`` past that point.
- ``MODEL_EMA`` (core keys): YOLOX's weight average, 0.9998 with a 2000-update ramp.
"""

import logging
from typing import Optional

from segtron.config import CfgNode
from segtron.data import DatasetFromList, build_detection_train_loader, get_detection_dataset_dicts
from segtron.engine import HOOK_REGISTRY, TRAIN_LOADER_REGISTRY, HookBase, unwrap_model

from .mosaic import MosaicDataset, MosaicDatasetMapper

__all__ = ["YOLOXModeSwitchHook", "build_mosaic_dataset", "YOLOXMosaicLoader", "YOLOXModeSwitch"]

logger = logging.getLogger(__name__)


def build_mosaic_dataset(cfg: CfgNode) -> MosaicDataset:
    """DATASETS.TRAIN's dicts (empty images filtered per DATALOADER.FILTER_EMPTY_ANNOTATIONS)
    in a ``MosaicDataset`` with the INPUT.MOSAIC settings and INPUT.FORMAT's channel order."""
    mosaic = cfg.INPUT.MOSAIC
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    )
    return MosaicDataset(
        DatasetFromList(dicts, copy=False),
        tuple(mosaic.SIZE),
        image_format=cfg.INPUT.FORMAT,
        mosaic_prob=mosaic.PROB,
        mixup_prob=mosaic.MIXUP_PROB,
        scale_range=tuple(mosaic.SCALE),
        translate=mosaic.TRANSLATE,
        mixup_scale=tuple(mosaic.MIXUP_SCALE),
        min_box_size=mosaic.MIN_BOX_SIZE,
        fill=mosaic.FILL,
    )


@TRAIN_LOADER_REGISTRY.register()
def YOLOXMosaicLoader(cfg: CfgNode):
    """The training loader of DATALOADER.TRAIN_LOADER "YOLOXMosaicLoader": mosaic / mix-up
    samples (:func:`build_mosaic_dataset`) through ``MosaicDatasetMapper(cfg, is_train=True)``,
    ``SOLVER.IMS_PER_BATCH`` per iteration. Returns the loader, with the dataset as its
    ``mosaic_dataset`` attribute (for :class:`YOLOXModeSwitchHook`).

    Raises:
        ValueError: DATALOADER.SAMPLER_TRAIN other than "TrainingSampler" (the repeat-factor
            samplers weigh source images, not mosaics).
    """
    if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
        raise ValueError(
            f"DATALOADER.TRAIN_LOADER 'YOLOXMosaicLoader' samples uniformly; "
            f"DATALOADER.SAMPLER_TRAIN '{cfg.DATALOADER.SAMPLER_TRAIN}' is not supported with "
            "it. Set DATALOADER.SAMPLER_TRAIN 'TrainingSampler'."
        )
    dataset = build_mosaic_dataset(cfg)
    loader = build_detection_train_loader(
        cfg, dataset=dataset, mapper=MosaicDatasetMapper(cfg, is_train=True)
    )
    loader.mosaic_dataset = dataset
    return loader


class YOLOXModeSwitchHook(HookBase):
    """Before the step of iteration ``switch_iter`` (or the first step of a run resumed past
    it), turns mosaic / mix-up off in ``mosaic_dataset`` (when given) and sets the model's
    ``use_l1_loss``. Logs the switch once."""

    def __init__(self, switch_iter: int, mosaic_dataset: Optional[MosaicDataset] = None):
        self.switch_iter = int(switch_iter)
        self.mosaic_dataset = mosaic_dataset
        self.switched = False

    def before_step(self) -> None:
        if self.switched or self.trainer.iter < self.switch_iter:
            return
        if self.mosaic_dataset is not None:
            self.mosaic_dataset.enable(False)
        unwrap_model(self.trainer.model).use_l1_loss = True
        self.switched = True
        logger.info(
            "YOLOX: from iteration %d on, no mosaic / mix-up%s and the L1 box loss on.",
            self.trainer.iter, "" if self.mosaic_dataset is not None else " (none was on)",
        )


@HOOK_REGISTRY.register()
def YOLOXModeSwitch(cfg: CfgNode, trainer) -> Optional[YOLOXModeSwitchHook]:
    """The hook of SOLVER.HOOKS "YOLOXModeSwitch": switch at ``SOLVER.MAX_ITER -
    MODEL.YOLOX.NO_AUG_ITERS``; None when NO_AUG_ITERS is 0.

    Raises:
        ValueError: NO_AUG_ITERS negative or above MAX_ITER.
        RuntimeError: DATALOADER.TRAIN_LOADER is "YOLOXMosaicLoader" but the trainer's loader
            has no ``mosaic_dataset`` (a subclass built another loader).
    """
    no_aug = int(cfg.MODEL.YOLOX.NO_AUG_ITERS)
    if not 0 <= no_aug <= cfg.SOLVER.MAX_ITER:
        raise ValueError(
            f"MODEL.YOLOX.NO_AUG_ITERS must be in [0, SOLVER.MAX_ITER = {cfg.SOLVER.MAX_ITER}], "
            f"got {no_aug}."
        )
    if no_aug == 0:
        return None
    dataset = getattr(trainer.data_loader, "mosaic_dataset", None)
    if dataset is None and cfg.DATALOADER.TRAIN_LOADER == "YOLOXMosaicLoader":
        raise RuntimeError(
            "SOLVER.HOOKS 'YOLOXModeSwitch': the trainer's data loader has no mosaic_dataset, "
            "although DATALOADER.TRAIN_LOADER is 'YOLOXMosaicLoader'; build it with "
            "projects.YOLO.training.YOLOXMosaicLoader(cfg) (or set loader.mosaic_dataset)."
        )
    return YOLOXModeSwitchHook(cfg.SOLVER.MAX_ITER - no_aug, dataset)
