"""segtron.compat: `import detectron2.X` resolves to segtron.X, and refuses to hide a real one."""

import subprocess
import sys
import textwrap

import pytest

import segtron
from segtron import compat


@pytest.fixture
def alias():
    compat.install_detectron2_alias()
    yield
    compat.uninstall_detectron2_alias()


def test_structures_import_through_alias(alias):
    from detectron2.structures import Boxes, Instances

    import segtron.structures

    assert Boxes is segtron.structures.Boxes
    assert Instances is segtron.structures.Instances
    import detectron2
    import detectron2.config as d2config

    assert detectron2 is segtron
    assert d2config.get_cfg().MODEL.META_ARCHITECTURE == "GeneralizedRCNN"
    # segtron's modules keep their own identity.
    assert segtron.structures.__spec__.name == "segtron.structures"


def test_missing_module_is_explained(alias):
    with pytest.raises(ModuleNotFoundError, match="does not provide"):
        import detectron2.no_such_module  # noqa: F401


def test_uninstall_removes_alias(alias):
    import detectron2  # noqa: F401

    compat.uninstall_detectron2_alias()
    assert "detectron2" not in sys.modules
    assert not compat.is_detectron2_alias_installed()
    compat.install_detectron2_alias()  # for the fixture's teardown


def test_refuses_to_hide_a_real_detectron2(tmp_path):
    fake = tmp_path / "detectron2"
    fake.mkdir()
    (fake / "__init__.py").write_text("REAL = True\n")
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from segtron import compat
        try:
            compat.install_detectron2_alias()
        except RuntimeError as e:
            assert "real Detectron2 is installed" in str(e), e
        else:
            raise SystemExit("alias installed over a real detectron2")
        compat.install_detectron2_alias(force=True)
        import detectron2
        assert not hasattr(detectron2, "REAL")
        from detectron2.structures import Boxes
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"PYTHONPATH": str(__import__("pathlib").Path(segtron.__file__).parents[1])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_library_never_imports_detectron2():
    from pathlib import Path

    root = Path(segtron.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "compat.py" and path.parent == root:
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import detectron2", "from detectron2")):
                offenders.append(f"{path}: {stripped}")
    assert not offenders, offenders


def test_importing_a_submodule_does_not_replace_a_same_named_function():
    """``detectron2.layers.nms`` is both a module and the function the package exports; an
    aliased import of the module must leave the package attribute the function."""
    import importlib

    import segtron.layers

    compat.install_detectron2_alias()
    try:
        module = importlib.import_module("detectron2.layers.nms")
        assert module is importlib.import_module("segtron.layers.nms")
        assert callable(segtron.layers.nms) and segtron.layers.nms is module.nms
        from detectron2.layers import nms

        assert nms is module.nms
    finally:
        compat.uninstall_detectron2_alias()
