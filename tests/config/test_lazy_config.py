"""LazyCall / instantiate / LazyConfig: Detectron2's Python configs."""

import logging
import textwrap

import pytest
import torch
from omegaconf import DictConfig

from segtron import model_zoo
from segtron.config import LazyCall as L
from segtron.config import LazyConfig, instantiate
from segtron.utils.testing import reload_lazy_config


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
