"""upgrade_config / downgrade_config: identity at Detectron2's config VERSION 2, else explained."""

import pytest

from segtron.config import downgrade_config, get_cfg, upgrade_config


def test_same_version_gives_a_copy():
    cfg = get_cfg()
    for converted in (upgrade_config(cfg), upgrade_config(cfg, 2), downgrade_config(cfg, 2)):
        assert converted == cfg and converted is not cfg
        assert converted.VERSION == 2
    upgraded = upgrade_config(cfg)
    upgraded.MODEL.WEIGHTS = "changed"
    assert cfg.MODEL.WEIGHTS != "changed"


def test_other_versions_are_refused_with_the_fix():
    cfg = get_cfg()
    with pytest.raises(ValueError, match="segtron only knows VERSION 2"):
        downgrade_config(cfg, 1)
    with pytest.raises(ValueError, match="use downgrade_config"):
        upgrade_config(cfg, 1)
    old = get_cfg()
    old.VERSION = 1
    with pytest.raises(ValueError, match="Rename the old keys"):
        upgrade_config(old)
    with pytest.raises(ValueError, match="use upgrade_config"):
        downgrade_config(old, 2)
