"""add_missing_keys: adds absent keys and nodes, keeps present values, copies list defaults."""

from segtron.config import CfgNode, add_missing_keys, get_cfg

TABLE = (("MODEL.NEW_HEAD.SIZES", [[1, 2]], "a nested list"),
         ("MODEL.NEW_HEAD.ON", True, "a flag"),
         ("SOLVER.BASE_LR", 123.0, "already there"))


def test_adds_missing_keys_and_nodes_and_keeps_existing_values():
    cfg = get_cfg()
    add_missing_keys(cfg, TABLE)
    assert isinstance(cfg.MODEL.NEW_HEAD, CfgNode)
    assert cfg.MODEL.NEW_HEAD.SIZES == [[1, 2]] and cfg.MODEL.NEW_HEAD.ON is True
    assert cfg.SOLVER.BASE_LR == get_cfg().SOLVER.BASE_LR
    cfg.MODEL.NEW_HEAD.ON = False
    add_missing_keys(cfg, TABLE)  # twice: nothing changes
    assert cfg.MODEL.NEW_HEAD.ON is False


def test_list_defaults_are_not_shared_between_configs():
    first, second = get_cfg(), get_cfg()
    add_missing_keys(first, TABLE)
    add_missing_keys(second, TABLE)
    first.MODEL.NEW_HEAD.SIZES[0].append(3)
    assert second.MODEL.NEW_HEAD.SIZES == [[1, 2]]
    assert TABLE[0][1] == [[1, 2]]
