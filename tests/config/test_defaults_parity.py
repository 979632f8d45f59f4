"""get_cfg() holds every Detectron2 key with Detectron2's default (from Detectron2's own dump)."""

import yaml

from segtron.config import get_cfg
from segtron.config.defaults import SEGTRON_ADDED_KEYS
from segtron.config.merge import iter_full_keys


def _flatten(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _normalise(value):
    """YAML has no tuples: compare sequences as nested lists."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def test_every_detectron2_key_exists_with_equal_default(compat_dir):
    d2 = dict(_flatten(yaml.safe_load((compat_dir / "d2_default_config.yaml").read_text())))
    ours = dict(iter_full_keys(get_cfg()))
    missing = sorted(set(d2) - set(ours))
    assert not missing, f"keys of Detectron2 missing from get_cfg(): {missing}"
    different = {
        k: (ours[k], d2[k]) for k in d2 if _normalise(ours[k]) != _normalise(d2[k])
    }
    assert not different, f"defaults differ from Detectron2 (ours, theirs): {different}"
    # Same Python kind (bool vs int vs float vs str) so type checks on overrides behave alike.
    kinds = {k: (type(ours[k]).__name__, type(d2[k]).__name__) for k in d2
             if d2[k] is not None and not isinstance(d2[k], list)
             and type(ours[k]) is not type(d2[k])}
    assert not kinds, f"default types differ: {kinds}"


def test_added_keys_are_declared(compat_dir):
    d2 = dict(_flatten(yaml.safe_load((compat_dir / "d2_default_config.yaml").read_text())))
    extra = sorted(set(dict(iter_full_keys(get_cfg()))) - set(d2))
    assert extra == sorted(SEGTRON_ADDED_KEYS), (
        "keys beyond Detectron2's must be listed in SEGTRON_ADDED_KEYS: " + str(extra)
    )


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.BASE_LR = 0.5
    a.MODEL.RPN.IN_FEATURES.append("p9")
    assert b.SOLVER.BASE_LR == 0.001
    assert b.MODEL.RPN.IN_FEATURES == ["res4"]


def test_golden_fixture_config_loads(compat_dir):
    cfg = get_cfg()
    cfg.merge_from_file(str(compat_dir / "golden" / "mask_rcnn_R50_FPN_thin" / "config.yaml"))
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3
    assert cfg.MODEL.FPN.OUT_CHANNELS == 32
    assert list(cfg.MODEL.ANCHOR_GENERATOR.SIZES) == [[32], [64], [128], [256], [512]]
