"""The projects' training plug-ins built from config keys: YOLOX's mode switch (bounds, the
switch itself, resuming past it) and SSD's augmentation list."""

from types import SimpleNamespace

import pytest
from torch import nn

from projects.SSD import SSDExpand, SSDMinIoURandomCrop, SSDPhotometricDistortion
from projects.SSD.training import build_ssd_train_augmentation
from projects.YOLO.training import YOLOXModeSwitch, YOLOXModeSwitchHook
from segtron.config import get_cfg
from segtron.data import transforms as T

import train_net  # noqa: F401  (imports every project, as train_net.py does)


def _cfg():
    cfg = get_cfg()
    for project in train_net.PROJECTS:
        if hasattr(project, "add_config"):
            project.add_config(cfg)
    return cfg


class _FakeMosaic:
    def __init__(self):
        self.enabled = True

    def enable(self, on=True):
        self.enabled = on


def _fake_trainer(iteration, loader=None):
    model = nn.Linear(1, 1)
    model.use_l1_loss = False
    return SimpleNamespace(iter=iteration, model=model, data_loader=loader or [])


def test_mode_switch_bounds_name_the_key():
    cfg = _cfg()
    cfg.SOLVER.MAX_ITER = 100
    cfg.MODEL.YOLOX.NO_AUG_ITERS = 101
    with pytest.raises(ValueError, match="MODEL.YOLOX.NO_AUG_ITERS"):
        YOLOXModeSwitch(cfg, _fake_trainer(0))
    cfg.MODEL.YOLOX.NO_AUG_ITERS = 0
    assert YOLOXModeSwitch(cfg, _fake_trainer(0)) is None
    cfg.MODEL.YOLOX.NO_AUG_ITERS = 10
    cfg.DATALOADER.TRAIN_LOADER = "YOLOXMosaicLoader"
    with pytest.raises(RuntimeError, match="mosaic_dataset"):
        YOLOXModeSwitch(cfg, _fake_trainer(0))


def test_mode_switch_turns_mosaic_off_and_l1_on_once():
    mosaic = _FakeMosaic()
    hook = YOLOXModeSwitchHook(switch_iter=5, mosaic_dataset=mosaic)
    hook.trainer = _fake_trainer(4)
    hook.before_step()
    assert mosaic.enabled and not hook.trainer.model.use_l1_loss
    hook.trainer.iter = 5
    hook.before_step()
    assert not mosaic.enabled and hook.trainer.model.use_l1_loss
    mosaic.enabled = True  # a second call does not switch again
    hook.trainer.iter = 6
    hook.before_step()
    assert mosaic.enabled


def test_mode_switch_after_resume_past_the_point_switches_at_once():
    mosaic = _FakeMosaic()
    hook = YOLOXModeSwitchHook(switch_iter=5, mosaic_dataset=mosaic)
    hook.trainer = _fake_trainer(80)
    hook.before_step()
    assert not mosaic.enabled and hook.trainer.model.use_l1_loss


def test_ssd_augmentations_follow_the_keys_in_paper_order():
    cfg = _cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)
    kinds = [type(a) for a in build_ssd_train_augmentation(cfg)]
    assert kinds == [SSDPhotometricDistortion, SSDExpand, SSDMinIoURandomCrop,
                     T.ResizeShortestEdge, T.RandomFlip]
    cfg.INPUT.SSD_AUG.PHOTOMETRIC = False
    cfg.INPUT.SSD_AUG.EXPAND_PROB = 0.0
    cfg.INPUT.SSD_AUG.MIN_IOU_CROP = False
    kinds = [type(a) for a in build_ssd_train_augmentation(cfg)]
    assert kinds == [T.ResizeShortestEdge, T.RandomFlip]
