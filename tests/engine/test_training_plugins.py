"""DATALOADER.TRAIN_LOADER and SOLVER.HOOKS: registered loaders and hooks reach
DefaultTrainer from a config; unknown names and wrong return types fail naming the key."""

import pytest

from segtron.engine import (
    HOOK_REGISTRY,
    TRAIN_LOADER_REGISTRY,
    DefaultTrainer,
    HookBase,
    hooks,
)
from segtron.engine.training_plugins import build_registered_hooks

from .defaults_toys import ToyTrainer, _batches, restored_process_state, toy_cfg


@pytest.fixture(autouse=True)
def _process_state():
    """DefaultTrainer sets up the segtron logger; undo it for the tests that follow."""
    with restored_process_state():
        yield


class _Marker(HookBase):
    def __init__(self, label):
        self.label = label
        self.steps = 0

    def after_step(self):
        self.steps += 1


@pytest.fixture
def registered():
    """Registers a loader and three hook builders for one test, then removes them."""
    made = []

    def toy_loader(cfg):
        made.append(cfg.SOLVER.MAX_ITER)
        return _batches(seed=3)

    def two_hooks(cfg, trainer):
        return [_Marker("a"), _Marker(trainer.max_iter)]

    def no_hook(cfg, trainer):
        return None

    def not_a_hook(cfg, trainer):
        return "oops"

    entries = [(TRAIN_LOADER_REGISTRY, "TestToyLoader", toy_loader),
               (HOOK_REGISTRY, "TestTwoHooks", two_hooks),
               (HOOK_REGISTRY, "TestNoHook", no_hook),
               (HOOK_REGISTRY, "TestNotAHook", not_a_hook)]
    for registry, name, fn in entries:
        registry._do_register(name, fn)
    yield made
    for registry, name, _ in entries:
        registry._obj_map.pop(name)


class _DefaultLoaderToy(ToyTrainer):
    """ToyTrainer that keeps DefaultTrainer's build_train_loader (the registry lookup)."""

    build_train_loader = DefaultTrainer.build_train_loader


def test_registered_loader_and_hooks_are_used(tmp_path, registered):
    cfg = toy_cfg(tmp_path, MAX_ITER=4)
    cfg.DATALOADER.TRAIN_LOADER = "TestToyLoader"
    cfg.SOLVER.HOOKS = ["TestNoHook", "TestTwoHooks"]
    trainer = _DefaultLoaderToy(cfg)
    assert registered == [4]  # the registered loader was built from the config
    kinds = [type(h) for h in trainer._hooks]
    first = kinds.index(_Marker)
    assert kinds[first - 1] is hooks.LRScheduler
    assert kinds[first + 2] is hooks.PeriodicCheckpointer
    markers = [h for h in trainer._hooks if isinstance(h, _Marker)]
    assert [m.label for m in markers] == ["a", 4]
    trainer.train()
    assert [m.steps for m in markers] == [4, 4]


def test_unknown_names_fail_naming_the_key(tmp_path, registered):
    cfg = toy_cfg(tmp_path)
    cfg.DATALOADER.TRAIN_LOADER = "NoSuchLoader"
    with pytest.raises(KeyError, match="DATALOADER.TRAIN_LOADER.*NoSuchLoader.*TestToyLoader"):
        _DefaultLoaderToy(cfg)
    cfg.DATALOADER.TRAIN_LOADER = ""
    cfg.SOLVER.HOOKS = ["NoSuchHook"]
    with pytest.raises(KeyError, match="SOLVER.HOOKS.*NoSuchHook"):
        ToyTrainer(cfg)


def test_a_builder_returning_a_non_hook_is_named(tmp_path, registered):
    cfg = toy_cfg(tmp_path)
    cfg.SOLVER.HOOKS = ["TestNotAHook"]
    with pytest.raises(TypeError, match="TestNotAHook.*str"):
        build_registered_hooks(cfg, trainer=None)
