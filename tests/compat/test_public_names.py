"""Every public name of Detectron2 exists at the same path in segtron, or is listed with a reason.

The facts: ``detectron2_public_names.json`` (module -> names, with how they were chosen). The
exceptions: ``deliberately_absent.yaml``, keyed ``<module>`` (the whole module is missing) or
``<module>.<name>``, each with a non-empty reason. The list must stay true: an entry for
something segtron now provides fails, so does an entry naming nothing in the facts.
"""

import importlib
import json
import os

import pytest
import yaml

from segtron import compat

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load_facts():
    with open(os.path.join(_HERE, "detectron2_public_names.json")) as f:
        return json.load(f)["modules"]


def _load_absent():
    with open(os.path.join(_HERE, "deliberately_absent.yaml")) as f:
        return yaml.safe_load(f) or {}


FACTS = _load_facts()
ABSENT = _load_absent()


def _segtron_path(d2_module: str) -> str:
    return "segtron" + d2_module[len("detectron2"):]


def _import_or_none(name: str):
    """The module, or None when it does not exist (any other import error propagates)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and name.startswith(e.name):
            return None
        raise


def test_facts_are_well_formed():
    assert FACTS, "detectron2_public_names.json lists no modules"
    for module, names in FACTS.items():
        assert module == "detectron2" or module.startswith("detectron2."), module
        assert names == sorted(set(names)), f"{module}: names must be sorted and unique"
        assert all(n and not n.startswith("_") for n in names), f"{module}: private name"


def test_absent_entries_name_known_things_with_reasons():
    known = set(FACTS) | {f"{m}.{n}" for m, names in FACTS.items() for n in names}
    unknown = sorted(k for k in ABSENT if k not in known)
    assert not unknown, (
        f"deliberately_absent.yaml names things not in detectron2_public_names.json: {unknown}. "
        "Fix the key (<module> or <module>.<name>)."
    )
    empty = sorted(k for k, reason in ABSENT.items()
                   if not isinstance(reason, str) or not reason.strip())
    assert not empty, f"deliberately_absent.yaml entries without a reason: {empty}"
    redundant = sorted(k for k in ABSENT if k not in FACTS and k.rsplit(".", 1)[0] in ABSENT)
    assert not redundant, (
        f"{redundant}: the whole module is already listed as absent; drop these name entries."
    )


@pytest.mark.parametrize("d2_module", sorted(FACTS))
def test_module_provides_detectron2_names(d2_module):
    module = _import_or_none(_segtron_path(d2_module))
    if d2_module in ABSENT:
        assert module is None, (
            f"{_segtron_path(d2_module)} exists now: remove '{d2_module}' from "
            "deliberately_absent.yaml (and list any of its names still missing)."
        )
        return
    assert module is not None, (
        f"segtron has no module {_segtron_path(d2_module)} (Detectron2's {d2_module}); add it "
        "or list the module in deliberately_absent.yaml with the reason."
    )
    names = FACTS[d2_module]
    missing = [n for n in names if not hasattr(module, n) and f"{d2_module}.{n}" not in ABSENT]
    assert not missing, (
        f"{_segtron_path(d2_module)} lacks Detectron2's {missing}: add them, or list each as "
        f"'{d2_module}.<name>: <reason>' in deliberately_absent.yaml."
    )
    stale = [n for n in names if hasattr(module, n) and f"{d2_module}.{n}" in ABSENT]
    assert not stale, (
        f"{_segtron_path(d2_module)} now provides {stale}: remove them from "
        "deliberately_absent.yaml."
    )


def test_alias_resolves_every_present_module():
    """``import detectron2.X`` (through segtron.compat) gives segtron.X for each mirrored module."""
    present = [m for m in sorted(FACTS) if m not in ABSENT]
    compat.install_detectron2_alias()
    try:
        for d2_module in present:
            aliased = importlib.import_module(d2_module)
            assert aliased is importlib.import_module(_segtron_path(d2_module)), d2_module
    finally:
        compat.uninstall_detectron2_alias()
