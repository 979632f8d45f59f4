"""LazyCall / instantiate / LazyConfig: Detectron2's Python configs."""

import functools
import importlib.util
import logging
import os
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from segtron import model_zoo
from segtron.config import LazyCall as L
from segtron.config import LazyConfig, instantiate
from segtron.utils.testing import reload_lazy_config

REPO = Path(__file__).resolve().parents[2]


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _bag(**kwargs):
    return kwargs


def _model_cfg():
    return DictConfig(
        {
            "model": L(torch.nn.Sequential)(),
            "train": {"lr": 0.1, "steps": [3, 5], "name": "run", "half_lr": "${.lr}"},
        },
        flags={"allow_objects": True},
    )


def test_lazycall_makes_an_editable_dict_config():
    cfg = L(torch.nn.Conv2d)(in_channels=3, out_channels=8, kernel_size=3)
    assert isinstance(cfg, DictConfig)
    assert cfg._target_ is torch.nn.Conv2d
    cfg.out_channels = 4
    conv = instantiate(cfg)
    assert isinstance(conv, torch.nn.Conv2d) and conv.out_channels == 4
    assert L("torch.nn.ReLU")()._target_ == "torch.nn.ReLU"
    with pytest.raises(TypeError, match="callable"):
        L(3)


def test_instantiate_builds_nested_objects_and_lists():
    cfg = L(torch.nn.ModuleList)(
        modules=[L("torch.nn.Linear")(in_features=2, out_features=3),
                 L(torch.nn.Sequential)(),
                 L(torch.nn.LayerNorm)(normalized_shape=[3])],
    )
    layers = instantiate(cfg)
    assert isinstance(layers, torch.nn.ModuleList) and len(layers) == 3
    assert isinstance(layers[0], torch.nn.Linear) and layers[0].out_features == 3
    assert tuple(layers[2].normalized_shape) == (3,)
    assert instantiate({"x": 1}) == {"x": 1}  # no _target_: returned as is


def test_instantiate_error_names_config_path_and_target():
    cfg = L(_bag)(model=L(_bag)(backbone=L(_bag)(
        bottom_up=L(torch.nn.Linear)(in_features=2),  # out_features missing
    )))
    with pytest.raises(TypeError, match=r"torch\.nn.*Linear for config "
                                        r"'model\.backbone\.bottom_up'.*out_features"):
        instantiate(cfg)
    cfg = {"_target_": _bag, "heads": [1, {"_target_": "torch.nn.NoSuchLayer"}]}
    with pytest.raises(ImportError, match=r"torch\.nn\.NoSuchLayer.*config 'heads\[1\]'"):
        instantiate(cfg)
    with pytest.raises(TypeError, match="not callable"):
        instantiate({"_target_": "math.pi"})


def test_load_py_with_relative_imports_and_override(tmp_path):
    _write(tmp_path / "common" / "optim.py", """
        SGD = dict(lr=0.02, momentum=0.9)
        """)
    _write(tmp_path / "common.py", """
        train = dict(max_iter=100, output_dir="out")
        """)
    _write(tmp_path / "base" / "models.py", """
        import torch
        from segtron.config import LazyCall as L
        from ..common.optim import SGD as optimizer
        model = L(torch.nn.Linear)(in_features=2, out_features=3)
        """)
    main = _write(tmp_path / "exp" / "main.py", """
        from ..base.models import model, optimizer
        from ..common import train
        model.out_features = 7
        optimizer.lr = 0.01
        _private = dict(a=1)
        not_a_dict = 3
        """)
    cfg = LazyConfig.load(str(main))
    assert sorted(cfg.keys()) == ["model", "optimizer", "train"]
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0.9
    assert cfg.train.max_iter == 100
    assert instantiate(cfg.model).out_features == 7
    assert LazyConfig.load(str(main), "train").output_dir == "out"
    model, train = LazyConfig.load(str(main), ("model", "train"))
    assert model.out_features == 7 and train.max_iter == 100
    # Reloading re-executes the files: edits to one loaded config do not leak into the next.
    cfg.train.max_iter = 5
    assert LazyConfig.load(str(main)).train.max_iter == 100


def test_load_errors_name_the_file(tmp_path):
    bad = _write(tmp_path / "bad.py", "x = dict(a=1\n")
    with pytest.raises(SyntaxError, match=f"{bad}"):
        LazyConfig.load(str(bad))
    missing = _write(tmp_path / "imp.py", "from .nope import x\n")
    with pytest.raises(ImportError, match=r"imp\.py.*nope\.py does not exist"):
        LazyConfig.load(str(missing))
    (tmp_path / "pkg").mkdir()
    from_dir = _write(tmp_path / "dir.py", "from .pkg import x\n")
    with pytest.raises(ImportError, match="directory"):
        LazyConfig.load(str(from_dir))
    with pytest.raises(ValueError, match=r"cfg\.txt.*\.py"):
        LazyConfig.load(str(_write(tmp_path / "cfg.txt", "")))
    good = _write(tmp_path / "good.py", "a = dict(x=1)\n")
    with pytest.raises(KeyError, match="good.py.*'b'"):
        LazyConfig.load(str(good), "b")


def test_apply_overrides_parses_literals_and_nested_keys(caplog):
    cfg = _model_cfg()
    LazyConfig.apply_overrides(cfg, [
        "train.lr=0.5", "train.name='exp 1'", "train.steps=[1, 2, 3]", "model.size=(4, 5)",
        "train.device=cuda", "train.flag=true", "train.ckpt=null", "train.expr=a=b",
    ])
    assert cfg.train.lr == 0.5 and isinstance(cfg.train.lr, float)
    assert cfg.train.name == "exp 1"
    assert list(cfg.train.steps) == [1, 2, 3]
    assert list(cfg.model.size) == [4, 5]
    assert cfg.train.device == "cuda" and cfg.train.flag is True and cfg.train.ckpt is None
    assert cfg.train.expr == "a=b"
    assert cfg.train.half_lr == 0.5  # interpolation follows the override
    with caplog.at_level(logging.WARNING, logger="segtron.config.lazy"):
        LazyConfig.apply_overrides(cfg, ["train.lrr=1"])
    assert "train.lrr" in caplog.text and "did you mean 'lr'" in caplog.text
    with pytest.raises(KeyError, match=r"train\.lr.*not a config"):
        LazyConfig.apply_overrides(cfg, ["train.lr.x=1"])
    with pytest.raises(ValueError, match="key.sub=value"):
        LazyConfig.apply_overrides(cfg, ["train.lr"])


def test_save_load_round_trip(tmp_path):
    cfg = _model_cfg()
    cfg.model.extra = L("torch.nn.Identity")()
    path = tmp_path / "saved.yaml"
    LazyConfig.save(cfg, str(path))
    assert cfg.model._target_ is torch.nn.Sequential  # the caller's config is untouched
    loaded = LazyConfig.load(str(path))
    assert loaded.model._target_ == "torch.nn.Sequential"
    # A partial as a target stays a partial (it has no dotted path) and builds as one.
    cfg.linear = L(functools.partial(torch.nn.Linear, bias=False))(in_features=2, out_features=3)
    for rebuilt in (reload_lazy_config(cfg), LazyConfig.load(
            str(_write(tmp_path / "target.py", LazyConfig.to_py(cfg, prefix=""))))):
        linear = instantiate(rebuilt.linear)
        assert isinstance(linear, torch.nn.Linear) and linear.bias is None
        assert linear.weight.shape == (3, 2)
    assert loaded.model.extra._target_ == "torch.nn.Identity"
    assert loaded.train == cfg.train
    assert loaded.train.half_lr == 0.1
    assert isinstance(instantiate(loaded.model.extra), torch.nn.Identity)
    assert reload_lazy_config(cfg).train.steps == [3, 5]


def test_save_warns_on_unserializable_values(tmp_path, caplog):
    cfg = DictConfig({"x": lambda: 3, "y": 1}, flags={"allow_objects": True})
    path = tmp_path / "bad.yaml"
    with caplog.at_level(logging.WARNING, logger="segtron.config.lazy"):
        LazyConfig.save(cfg, str(path))
    assert "cannot reproduce x" in caplog.text
    loaded = LazyConfig.load(str(path))
    assert loaded.y == 1 and loaded.x.startswith("<unserializable:")


def _partials_cfg():
    """Partials as Python configs hold them: of a class, of a function with positional
    arguments, one holding another partial, a list, a dict and a class, and one flattened
    from a partial of a partial."""
    ln = functools.partial(torch.nn.LayerNorm, eps=1e-6)
    nested = functools.partial(
        os.path.join, "a", "b", norm=functools.partial(torch.nn.GroupNorm, 4, affine=False),
        sizes=[1, 2], table={"x": 1.5}, act=torch.nn.ReLU)
    flat = functools.partial(functools.partial(os.path.join, "a"), "b")
    return DictConfig({"model": L(torch.nn.Sequential)(norm_layer=ln),
                       "other": {"nested": nested, "many": [ln, {"flat": flat}]}},
                      flags={"allow_objects": True})


def _check_partials(cfg):
    """The values of ``_partials_cfg`` in ``cfg``, compared field by field."""
    ln = cfg.model.norm_layer
    assert isinstance(ln, functools.partial) and ln.func is torch.nn.LayerNorm
    assert ln.args == () and ln.keywords == {"eps": 1e-6}
    assert ln(8).eps == 1e-6 and ln(8).normalized_shape == (8,)  # builds what it describes
    nested = cfg.other.nested
    assert nested.func is os.path.join and nested.args == ("a", "b")
    assert set(nested.keywords) == {"norm", "sizes", "table", "act"}
    norm = nested.keywords["norm"]
    assert isinstance(norm, functools.partial) and norm.func is torch.nn.GroupNorm
    assert norm.args == (4,) and norm.keywords == {"affine": False}
    assert nested.keywords["sizes"] == [1, 2] and nested.keywords["table"] == {"x": 1.5}
    assert nested.keywords["act"] is torch.nn.ReLU
    many = cfg.other.many
    assert many[0].func is torch.nn.LayerNorm and many[0].keywords == {"eps": 1e-6}
    flat = many[1].flat
    assert flat.func is os.path.join and flat.args == ("a", "b") and flat() == "a/b"


def test_save_and_to_py_keep_partials(tmp_path, caplog):
    """A partial of a named callable with savable arguments survives ``save``/``load`` (as a
    ``!!python/partial`` mapping, without a warning) and ``to_py``."""
    cfg = _partials_cfg()
    path = tmp_path / "partials.yaml"
    with caplog.at_level(logging.WARNING, logger="segtron.config.lazy"):
        LazyConfig.save(cfg, str(path))
    assert "cannot reproduce" not in caplog.text
    text = path.read_text()
    assert "norm_layer: !!python/partial" in text and "unserializable" not in text
    assert "&id" not in text  # shared values are written out, not anchored
    assert "func: !!python/name:torch.nn.LayerNorm" in text
    loaded = LazyConfig.load(str(path))
    _check_partials(loaded)
    assert loaded.model._target_ == "torch.nn.Sequential"
    # A partial as a target stays a partial (it has no dotted path) and builds as one.
    cfg.linear = L(functools.partial(torch.nn.Linear, bias=False))(in_features=2, out_features=3)
    for rebuilt in (reload_lazy_config(cfg), LazyConfig.load(
            str(_write(tmp_path / "target.py", LazyConfig.to_py(cfg, prefix=""))))):
        linear = instantiate(rebuilt.linear)
        assert isinstance(linear, torch.nn.Linear) and linear.bias is None
        assert linear.weight.shape == (3, 2)
    LazyConfig.save(loaded, str(tmp_path / "again.yaml"))
    assert (tmp_path / "again.yaml").read_text() == text

    code = LazyConfig.to_py(cfg, prefix="")
    assert "from functools import partial" in code
    assert "norm_layer=partial(LayerNorm, eps=1e-06)" in code
    _check_partials(LazyConfig.load(str(_write(tmp_path / "partials.py", code))))


def test_to_py_partial_of_a_name_taken_by_another_import(tmp_path):
    """Two classes named ``LayerNorm`` (torch's and segtron's channels-first one): the partial
    of the second is written with ``__import__`` and still rebuilds."""
    from segtron.layers import LayerNorm as ChannelsFirstLayerNorm

    cfg = DictConfig({"norms": {"a": functools.partial(torch.nn.LayerNorm, eps=1e-3),
                                "b": functools.partial(ChannelsFirstLayerNorm, eps=1e-5),
                                "c": ChannelsFirstLayerNorm}}, flags={"allow_objects": True})
    code = LazyConfig.to_py(cfg, prefix="")
    assert "__import__(" in code
    rebuilt = LazyConfig.load(str(_write(tmp_path / "clash.py", code))).norms
    assert rebuilt.a.func is torch.nn.LayerNorm and rebuilt.a.keywords == {"eps": 1e-3}
    assert rebuilt.b.func is ChannelsFirstLayerNorm and rebuilt.b.keywords == {"eps": 1e-5}
    assert rebuilt.c is ChannelsFirstLayerNorm


def test_save_warns_on_partials_it_cannot_write(tmp_path, caplog):
    """A partial of a lambda, or holding a lambda or an object among its arguments, is written
    as an ``<unserializable>`` string with the warning naming its path."""
    cfg = DictConfig({
        "of_lambda": functools.partial(lambda x: x, 1),
        "model": {"norm": functools.partial(torch.nn.LayerNorm, eps=lambda: 1e-6)},
        "deep": [functools.partial(os.path.join, functools.partial(os.path.join, object()))],
        "ok": functools.partial(torch.nn.LayerNorm, eps=1e-6),
    }, flags={"allow_objects": True})
    path = tmp_path / "bad.yaml"
    with caplog.at_level(logging.WARNING, logger="segtron.config.lazy"):
        LazyConfig.save(cfg, str(path))
    assert "cannot reproduce of_lambda, model.norm, deep[0]" in caplog.text
    loaded = LazyConfig.load(str(path))
    assert loaded.of_lambda.startswith("<unserializable: functools.partial(<function")
    assert loaded.model.norm.startswith("<unserializable:")
    assert loaded.deep[0].startswith("<unserializable:")
    assert loaded.ok.func is torch.nn.LayerNorm


def test_loading_a_partial_calls_nothing(tmp_path):
    """Loading builds the partial without calling its function; only calling it does. Other
    Python tags stay refused, and a malformed partial names what is wrong."""
    victim = tmp_path / "victim.txt"
    victim.write_text("still here")
    cfg = DictConfig({"cleanup": functools.partial(os.remove, str(victim))},
                     flags={"allow_objects": True})
    LazyConfig.save(cfg, str(tmp_path / "saved.yaml"))
    loaded = LazyConfig.load(str(tmp_path / "saved.yaml"))
    assert victim.exists()
    assert loaded.cleanup.func is os.remove and loaded.cleanup.args == (str(victim),)
    hand = _write(tmp_path / "hand.yaml", f"""
        x: !!python/partial {{func: !!python/name:os.remove '', args: ['{victim}']}}
        """)
    assert LazyConfig.load(str(hand)).x.keywords == {} and victim.exists()
    loaded.cleanup()  # calling it is what runs the function
    assert not victim.exists()

    victim.write_text("again")
    apply = _write(tmp_path / "apply.yaml", f"x: !!python/object/apply:os.remove ['{victim}']\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        LazyConfig.load(str(apply))
    assert victim.exists()
    for body, problem in (("{func: 3}", "callable 'func'"),
                          ("{func: !!python/name:os.remove '', kw: {}}", r"unknown keys \['kw'\]"),
                          ("{func: !!python/name:os.remove '', args: 1}", "list as 'args'"),
                          ("[1, 2]", "must be a mapping")):
        bad = _write(tmp_path / "bad.yaml", f"x: !!python/partial {body}\n")
        with pytest.raises(ValueError, match=f"bad.yaml.*{problem}"):
            LazyConfig.load(str(bad))


def test_saved_vitdet_tiny_config_builds_the_same_model(tmp_path, caplog):
    """``tools/lazyconfig_train_net.py`` loads the tiny ViTDet config and ``default_setup``
    writes it with ``LazyConfig.save``: that config.yaml builds the .py config's model (same
    state-dict keys and shapes, the ViT's LayerNorm eps from its partial)."""
    spec = importlib.util.spec_from_file_location(
        "lazyconfig_train_net", REPO / "tools" / "lazyconfig_train_net.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = REPO / "projects" / "ViTDet" / "configs" / "Shapes" / "mask_rcnn_vitdet_tiny.py"
    cfg = tool.load_config(tool.argument_parser().parse_args(["--config-file", str(config)]))
    with caplog.at_level(logging.WARNING, logger="segtron.config.lazy"):
        LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    assert "cannot reproduce" not in caplog.text
    saved = LazyConfig.load(str(tmp_path / "config.yaml"))
    with torch.device("meta"):
        ours, reference = instantiate(saved.model), instantiate(cfg.model)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert shapes["backbone.net.patch_embed.proj.weight"] == (96, 3, 8, 8)
    norms = [m for m in ours.backbone.net.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.eps == 1e-6 for m in norms)


@pytest.mark.parametrize("prefix", ["cfg.", ""])
def test_to_py_reproduces_the_config(tmp_path, prefix):
    cfg = _model_cfg()
    cfg.model.norm = torch.nn.BatchNorm2d  # a callable value, not a target
    cfg.model.layers = [L(torch.nn.Linear)(in_features=i, out_features=2) for i in range(1, 4)]
    cfg["weird key"] = {"a-b": 1}
    if not prefix:
        del cfg["weird key"]
    code = LazyConfig.to_py(cfg, prefix=prefix)
    assert all(len(line) <= 100 for line in code.splitlines())
    assert "from torch.nn import Linear" in code
    if prefix:
        rebuilt = DictConfig({}, flags={"allow_objects": True})
        exec(code, {"cfg": rebuilt})
    else:
        rebuilt = LazyConfig.load(str(_write(tmp_path / "gen.py", code)))
    assert rebuilt == cfg
    assert rebuilt.model.layers[2]._target_ is torch.nn.Linear
    assert rebuilt.model.norm is torch.nn.BatchNorm2d
    assert rebuilt.train.half_lr == 0.1


def test_model_zoo_py_config_not_shipped_is_a_clear_error():
    with pytest.raises(RuntimeError, match="not available.*mask_rcnn_R_50_FPN_100ep_LSJ.py"):
        model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_1000ep_LSJ.py")
