"""Merging YAML files (with _BASE_ chains) and command-line overrides, and their errors."""

import textwrap

import pytest
import yaml

from segtron.config import CfgNode, get_cfg


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def chain(tmp_path):
    """base.yaml <- mid/mid.yaml <- exp/top.yaml, each _BASE_ relative to its own file."""
    _write(tmp_path / "base.yaml", """
        MODEL:
          MASK_ON: true
          RPN: {IN_FEATURES: [p2, p3, p4, p5, p6], NMS_THRESH: 0.6}
        INPUT: {MIN_SIZE_TRAIN: [640, 672, 704]}
        SOLVER: {BASE_LR: 0.02, STEPS: [100, 200], MAX_ITER: 300}
    """)
    _write(tmp_path / "mid" / "mid.yaml", """
        _BASE_: ../base.yaml
        MODEL: {RPN: {NMS_THRESH: 0.65}}
        INPUT: {MIN_SIZE_TRAIN: [800]}
        SOLVER: {MAX_ITER: 400}
    """)
    return _write(tmp_path / "exp" / "top.yaml", """
        _BASE_: "../mid/mid.yaml"
        SOLVER: {MAX_ITER: 500, STEPS: [450]}
    """)


def test_three_file_chain_later_wins_lists_replace(chain):
    cfg = get_cfg()
    cfg.merge_from_file(str(chain))
    assert cfg.MODEL.MASK_ON is True                                # only in base
    assert cfg.MODEL.RPN.IN_FEATURES == ["p2", "p3", "p4", "p5", "p6"]
    assert cfg.MODEL.RPN.NMS_THRESH == 0.65                         # mid overrides base
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (800,)                # replaced, not appended
    assert cfg.SOLVER.MAX_ITER == 500                               # top overrides mid
    assert tuple(cfg.SOLVER.STEPS) == (450,)
    assert cfg.SOLVER.BASE_LR == 0.02
    assert cfg.SOLVER.GAMMA == 0.1                                  # untouched default


def test_cli_overrides_win_over_files(chain):
    cfg = get_cfg()
    cfg.merge_from_file(str(chain))
    cfg.merge_from_list(["SOLVER.MAX_ITER", "7", "INPUT.MIN_SIZE_TRAIN", "(512, 544)",
                         "MODEL.RPN.IN_FEATURES", "['p3']", "OUTPUT_DIR", "/tmp/x"])
    assert cfg.SOLVER.MAX_ITER == 7
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (512, 544)
    assert cfg.MODEL.RPN.IN_FEATURES == ["p3"]
    assert cfg.OUTPUT_DIR == "/tmp/x"
    # Defaults keep their sequence type so code comparing against tuples keeps working.
    assert isinstance(cfg.INPUT.MIN_SIZE_TRAIN, tuple)
    assert isinstance(cfg.MODEL.RPN.IN_FEATURES, list)


def test_list_of_bases_merges_left_to_right(tmp_path):
    _write(tmp_path / "a.yaml", "SOLVER: {BASE_LR: 0.1, MAX_ITER: 10}\n")
    _write(tmp_path / "b.yaml", "SOLVER: {BASE_LR: 0.2}\n")
    top = _write(tmp_path / "c.yaml", "_BASE_: [a.yaml, b.yaml]\nSOLVER: {GAMMA: 0.5}\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(top))
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER, cfg.SOLVER.GAMMA) == (0.2, 10, 0.5)


def test_unknown_cli_key_names_the_closest_key():
    cfg = get_cfg()
    with pytest.raises(KeyError) as e:
        cfg.merge_from_list(["SOLVER.BASE_LRR", "0.1"])
    message = str(e.value)
    assert "SOLVER.BASE_LRR" in message and "SOLVER.BASE_LR," in message
    assert "command line" in message
    assert cfg.SOLVER.BASE_LR == 0.001


def test_unknown_key_in_base_file_names_the_file(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "MODEL: {ROI_HEADS: {NUM_CLASSSES: 3}}\n")
    top = _write(tmp_path / "top.yaml", "_BASE_: bad.yaml\n")
    with pytest.raises(KeyError) as e:
        get_cfg().merge_from_file(str(top))
    assert "MODEL.ROI_HEADS.NUM_CLASSES" in str(e.value)
    assert str(top) in str(e.value)
    del bad


def test_type_mismatch_is_explained():
    cfg = get_cfg()
    with pytest.raises(ValueError, match=r"SOLVER\.BASE_LR.*expects float.*'abc'"):
        cfg.merge_from_list(["SOLVER.BASE_LR", "abc"])
    with pytest.raises(ValueError, match=r"MODEL\.MASK_ON.*expects bool"):
        cfg.merge_from_list(["MODEL.MASK_ON", "1"])
    with pytest.raises(ValueError, match="group of keys"):
        cfg.merge_from_list(["SOLVER", "1"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        cfg.merge_from_list(["SOLVER.BASE_LR"])


def test_int_accepted_for_float_and_none_replaceable():
    cfg = get_cfg()
    cfg.merge_from_list(["SOLVER.BASE_LR", "1", "SOLVER.WEIGHT_DECAY_BIAS", "0.0"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.0
    cfg.merge_from_list(["SOLVER.WEIGHT_DECAY_BIAS", "None"])
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS is None


def test_base_cycle_and_missing_base_are_reported(tmp_path):
    _write(tmp_path / "x.yaml", "_BASE_: y.yaml\n")
    _write(tmp_path / "y.yaml", "_BASE_: x.yaml\n")
    with pytest.raises(ValueError, match="Cycle in _BASE_"):
        get_cfg().merge_from_file(str(tmp_path / "x.yaml"))
    orphan = _write(tmp_path / "orphan.yaml", "_BASE_: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml.*named as _BASE_ in .*orphan\.yaml"):
        get_cfg().merge_from_file(str(orphan))


def test_old_config_version_is_refused(tmp_path):
    old = _write(tmp_path / "old.yaml", "VERSION: 1\n")
    with pytest.raises(ValueError, match="VERSION 1"):
        get_cfg().merge_from_file(str(old))


def test_frozen_config_refuses_merge():
    cfg = get_cfg()
    cfg.freeze()
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_list(["SOLVER.BASE_LR", "0.1"])


def test_dump_round_trips(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_list([
        "SOLVER.BASE_LR", "0.0125", "INPUT.MIN_SIZE_TRAIN", "(640, 800)",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32]]", "SOLVER.WEIGHT_DECAY_BIAS", "0.5",
        "DATASETS.TRAIN", "('shapes_train',)", "MODEL.WEIGHTS", "a b.pth",
    ])
    text = cfg.dump()
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    again = get_cfg()
    again.merge_from_file(str(path))
    assert again == cfg
    assert yaml.safe_load(text)["SOLVER"]["BASE_LR"] == 0.0125


def test_new_allowed_node_accepts_new_keys():
    cfg = get_cfg()
    cfg.MODEL.MY_HEAD = CfgNode(new_allowed=True)
    cfg.merge_from_list(["MODEL.MY_HEAD.DEPTH", "3"])
    assert cfg.MODEL.MY_HEAD.DEPTH == 3


def test_yaml_strings_are_read_as_literals_for_non_string_keys(tmp_path):
    """Detectron2's YAML writes tuples as strings; yacs reads them as Python literals."""
    path = _write(tmp_path / "d2.yaml", """
        DATASETS:
          TRAIN: ("coco_2017_train",)
        SOLVER:
          STEPS: (60000, 80000)
          WEIGHT_DECAY_BIAS: "0.5"
        OUTPUT_DIR: "(not a tuple)"
    """)
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",)
    assert cfg.SOLVER.STEPS == (60000, 80000)
    assert cfg.SOLVER.WEIGHT_DECAY_BIAS == 0.5
    assert cfg.OUTPUT_DIR == "(not a tuple)"
