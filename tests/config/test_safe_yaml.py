"""Config files are read with ``yaml.safe_load``: a Python tag never runs unless asked for."""

import pytest

from segtron.config import get_cfg


def _hostile_yaml(tmp_path, marker):
    path = tmp_path / "hostile.yaml"
    path.write_text(
        "MODEL:\n"
        "  DEVICE: cpu\n"
        f"OUTPUT_DIR: !!python/object/apply:os.mkdir ['{marker}']\n"
    )
    return path


def test_python_tag_is_refused_naming_file_line_and_tag(tmp_path):
    marker = tmp_path / "code_ran"
    path = _hostile_yaml(tmp_path, marker)
    with pytest.raises(ValueError) as info:
        get_cfg().merge_from_file(str(path))
    assert not marker.exists()
    message = str(info.value)
    assert str(path) in message and "line 3" in message
    assert "python/object/apply:os.mkdir" in message
    assert "allow_unsafe=True" in message and "--allow-unsafe-yaml" in message


def test_python_tag_in_a_base_file_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    _hostile_yaml(tmp_path, marker)
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: hostile.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    with pytest.raises(ValueError, match="hostile.yaml"):
        get_cfg().merge_from_file(str(child))
    assert not marker.exists()


def test_allow_unsafe_is_an_explicit_opt_in(tmp_path, caplog):
    marker = tmp_path / "code_ran"
    path = tmp_path / "trusted.yaml"
    path.write_text(f"SOLVER:\n  MAX_ITER: !!python/object/apply:len [[1, 2, 3]]\n")
    cfg = get_cfg()
    cfg.merge_from_file(str(path), allow_unsafe=True)
    assert cfg.SOLVER.MAX_ITER == 3
    assert "unsafe_load" in caplog.text
    assert not marker.exists()


def test_plain_yaml_tags_still_load(tmp_path):
    """Standard YAML (anchors, aliases, explicit !!int / !!float) is safe and still reads."""
    path = tmp_path / "plain.yaml"
    path.write_text(
        "SOLVER:\n  BASE_LR: !!float 0.5\n  MAX_ITER: !!int 7\n"
        "  STEPS: &steps [2, 4]\nTEST:\n  AUG:\n    MIN_SIZES: *steps\n"
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert cfg.SOLVER.BASE_LR == 0.5 and cfg.SOLVER.MAX_ITER == 7
    assert tuple(cfg.TEST.AUG.MIN_SIZES) == (2, 4)
