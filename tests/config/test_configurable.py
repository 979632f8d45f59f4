"""@configurable: the same class or function built from a config or from plain arguments."""

import pytest

from segtron.config import configurable, get_cfg


class Head:
    @configurable
    def __init__(self, *, in_channels, num_classes=80, name="head"):
        self.in_channels, self.num_classes, self.name = in_channels, num_classes, name

    @classmethod
    def from_config(cls, cfg, in_channels):
        return {"in_channels": in_channels, "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES}


def _cfg(num_classes=7):
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


def test_class_from_config_and_from_args():
    a = Head(_cfg(), 256)
    assert (a.in_channels, a.num_classes, a.name) == (256, 7, "head")
    b = Head(cfg=_cfg(), in_channels=64)
    assert (b.in_channels, b.num_classes) == (64, 7)
    c = Head(in_channels=32, num_classes=3)
    assert (c.in_channels, c.num_classes) == (32, 3)


def test_explicit_kwargs_override_config():
    h = Head(_cfg(), 256, num_classes=2, name="custom")
    assert (h.num_classes, h.name) == (2, "custom")


def test_subclass_inherits_and_can_extend_from_config():
    class Bigger(Head):
        @classmethod
        def from_config(cls, cfg, in_channels):
            out = super().from_config(cfg, in_channels)
            out["name"] = "bigger"
            return out

    h = Bigger(_cfg(4), 8)
    assert (h.num_classes, h.name) == (4, "bigger")


def _fn_from_config(cfg, scale=1):
    return {"lr": cfg.SOLVER.BASE_LR * scale}


@configurable(from_config=_fn_from_config)
def make_lr(*, lr, warmup=0):
    return lr, warmup


def test_function_from_config_and_args():
    assert make_lr(get_cfg()) == (0.001, 0)
    assert make_lr(get_cfg(), scale=10, warmup=5) == (0.01, 5)
    assert make_lr(lr=3.0) == (3.0, 0)
    assert make_lr.from_config is _fn_from_config


def test_misuse_fails_clearly():
    with pytest.raises(TypeError, match="from_config"):
        @configurable
        def not_init(x):
            return x

    class NoFromConfig:
        @configurable
        def __init__(self, a=1):
            self.a = a

    with pytest.raises(AttributeError, match="no classmethod from_config"):
        NoFromConfig(get_cfg())

    class BadReturn:
        @configurable
        def __init__(self, a=1):
            self.a = a

        @classmethod
        def from_config(cls, cfg):
            return [1]

    with pytest.raises(TypeError, match="must return a dict"):
        BadReturn(get_cfg())
