"""``tools/lazyconfig_train_net.py`` and ``configs/Shapes/mask_rcnn_R_18_FPN.py``.

The .py shapes config is checked against its YAML twin (same model, data, optimiser and
schedule); the script trains it on tiny shapes splits (8 / 4 images of 128 px, prepared under
a temporary ``SEGTRON_DATASETS``), resumes, evaluates, applies and checks ``key=value``
overrides; Detectron2's new-baselines LSJ config trains a few iterations on a tiny split.
"""

import argparse
import importlib.util
import json
import logging
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from segtron.config import LazyConfig, get_cfg, instantiate
from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.shapes import prepare_shapes_split, register_shapes_instances
from segtron.data.detection_utils import build_augmentation
from segtron.engine.defaults import default_setup
from segtron.modeling import build_model
from segtron.solver import LRMultiplier, build_lr_scheduler, build_optimizer
from segtron.structures import BitMasks, Boxes, Instances
from segtron.utils.events import EventStorage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "lazyconfig_train_net.py")
PY_CONFIG = os.path.join(REPO, "configs", "Shapes", "mask_rcnn_R_18_FPN.py")
YAML_CONFIG = os.path.join(REPO, "configs", "Shapes", "mask_rcnn_R_18_FPN_demo.yaml")
LSJ_CONFIG = os.path.join(REPO, "configs", "new_baselines", "mask_rcnn_R_50_FPN_100ep_LSJ.py")
TINY = "lazyconfig_shapes_tiny"


def _load_tool():
    spec = importlib.util.spec_from_file_location("lazyconfig_train_net", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


@pytest.fixture(scope="module")
def shapes_env(tmp_path_factory):
    """Environment for the script's subprocesses: shapes_train / shapes_val as 8 and 4 images
    of 128 px under a temporary datasets root."""
    root = tmp_path_factory.mktemp("datasets")
    prepare_shapes_split(str(root / "shapes"), "train", 8, 0, image_size=128, num_workers=1)
    prepare_shapes_split(str(root / "shapes"), "val", 4, 1, image_size=128, num_workers=1)
    env = dict(os.environ, SEGTRON_DATASETS=str(root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    """A registered 6-image shapes split of 128 px (5 classes), for in-process training."""
    root = tmp_path_factory.mktemp("tiny_shapes")
    register_shapes_instances(TINY, str(root), "train", 6, 5, image_size=128)
    try:
        yield TINY
    finally:
        DatasetCatalog.remove(TINY)
        MetadataCatalog.remove(TINY)


def _run(argv, env, cwd, expect_ok=True):
    result = subprocess.run([sys.executable, TOOL, "--config-file", PY_CONFIG, *argv],
                            cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    if expect_ok:
        assert result.returncode == 0, f"{argv} failed:\n{result.stdout[-3000:]}\n" \
                                       f"{result.stderr[-6000:]}"
    return result


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _copypaste(text):
    """{task: {metric: value}} from print_csv_format's "copypaste:" lines."""
    lines = [line.split("copypaste:", 1)[1].strip() for line in text.splitlines()
             if "copypaste:" in line]
    results = {}
    for i in range(0, len(lines), 3):
        task = lines[i].split("Task:", 1)[1].strip()
        names, values = lines[i + 1].split(","), [float(v) for v in lines[i + 2].split(",")]
        results[task] = dict(zip(names, values))
    return results


def _args(*argv):
    return tool.argument_parser().parse_args(["--config-file", PY_CONFIG, *argv])


# ----------------------------------------------------------------------------- the .py twin


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_py_config_is_the_yaml_quickstart():
    """Same architecture, weights layout and outputs, data pipeline, optimiser and LR curve
    as mask_rcnn_R_18_FPN_demo.yaml."""
    lazy = LazyConfig.load(PY_CONFIG)
    yaml_cfg = get_cfg()
    yaml_cfg.merge_from_file(YAML_CONFIG)

    torch.manual_seed(0)
    lazy_model = instantiate(lazy.model)
    yaml_model = build_model(yaml_cfg)
    assert str(lazy_model) == str(yaml_model)
    lazy_model.load_state_dict(yaml_model.state_dict())  # strict: same names and shapes
    image = torch.randint(0, 256, (3, 150, 170), dtype=torch.uint8)
    boxes = torch.tensor([[20.0, 30.0, 90.0, 100.0], [100.0, 40.0, 160.0, 120.0]])
    masks = torch.zeros(2, 150, 170, dtype=torch.bool)
    masks[0, 30:100, 20:90] = masks[1, 40:120, 100:160] = True
    gt = Instances((150, 170), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 3]),
                   gt_masks=BitMasks(masks))
    batch = [{"image": image, "instances": gt}]
    losses = []
    for model in (lazy_model, yaml_model):
        torch.manual_seed(1)  # same proposal / ROI sampling
        with EventStorage(0):
            losses.append({k: v.item() for k, v in model(batch).items()})
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)
    with torch.no_grad():
        outputs = [m.eval()([{"image": image}])[0]["instances"] for m in (lazy_model,
                                                                         yaml_model)]
    assert 0 < len(outputs[0]) == len(outputs[1]) <= 50  # TEST.DETECTIONS_PER_IMAGE
    assert torch.allclose(outputs[0].pred_boxes.tensor, outputs[1].pred_boxes.tensor,
                          atol=1e-3)

    train = lazy.dataloader.train
    assert repr(instantiate(train.mapper.augmentations)) == repr(
        build_augmentation(yaml_cfg, True))
    assert repr(instantiate(lazy.dataloader.test.mapper.augmentations)) == repr(
        build_augmentation(yaml_cfg, False))
    assert train.total_batch_size == yaml_cfg.SOLVER.IMS_PER_BATCH
    assert train.mapper.instance_mask_format == yaml_cfg.INPUT.MASK_FORMAT
    assert (train.dataset.names, lazy.dataloader.test.dataset.names) == ("shapes_train",
                                                                          "shapes_val")
    assert lazy.train.max_iter == yaml_cfg.SOLVER.MAX_ITER
    assert lazy.train.eval_period == yaml_cfg.TEST.EVAL_PERIOD
    assert lazy.train.checkpointer.period == yaml_cfg.SOLVER.CHECKPOINT_PERIOD
    assert lazy.train.seed == yaml_cfg.SEED

    lazy.optimizer.params.model = lazy_model
    lazy_opt, yaml_opt = instantiate(lazy.optimizer), build_optimizer(yaml_cfg, yaml_model)
    assert type(lazy_opt).__mro__[1] is type(yaml_opt).__mro__[1] is torch.optim.AdamW
    assert type(lazy_opt).__name__ == type(yaml_opt).__name__ == "AdamWWithGradientClip"
    for key in ("lr", "betas", "weight_decay", "eps"):
        assert lazy_opt.defaults[key] == yaml_opt.defaults[key], key
    assert sorted(g["weight_decay"] for g in lazy_opt.param_groups) == sorted(
        g["weight_decay"] for g in yaml_opt.param_groups)
    # The LR of every iteration, as the LRScheduler hook steps it.
    lazy_sched = LRMultiplier(lazy_opt, instantiate(lazy.lr_multiplier), lazy.train.max_iter)
    yaml_sched = build_lr_scheduler(yaml_cfg, yaml_opt)
    for it in range(lazy.train.max_iter):
        assert lazy_opt.param_groups[0]["lr"] == pytest.approx(
            yaml_opt.param_groups[0]["lr"], rel=1e-9, abs=1e-12), it
        lazy_sched.step()
        yaml_sched.step()


def test_py_config_round_trips_through_saved_yaml(tmp_path):
    """The config.yaml a run writes rebuilds the same model and the clipped optimizer."""
    cfg = LazyConfig.load(PY_CONFIG)
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))
    again = LazyConfig.load(str(tmp_path / "config.yaml"))
    model = instantiate(again.model)
    assert str(model) == str(instantiate(cfg.model))
    again.optimizer.params.model = model
    assert type(instantiate(again.optimizer)).__name__ == "AdamWWithGradientClip"


# ----------------------------------------------------------------------------- the script


def test_trains_resumes_and_evaluates(shapes_env, tmp_path):
    """Train 4 iterations with key=value overrides, resume to 6, evaluate the final model."""
    out = tmp_path / "run"
    opts = [f"train.output_dir='{out}'", "dataloader.train.total_batch_size=2",
            "train.checkpointer.period=2", "train.eval_period=0", "train.log_period=1",
            "train.seed=3", "model.roi_heads.box_predictor.test_score_thresh=0.0"]
    first = _run([*opts, "train.max_iter=4"], shapes_env, tmp_path)
    assert "eta:" in first.stderr + first.stdout  # progress as train_net.py logs it
    assert [m["iteration"] for m in _metrics(out) if "total_loss" in m] == [0, 1, 2, 3]
    assert {"model_0000001.pth", "model_final.pth", "last_checkpoint",
            "config.yaml"} <= set(os.listdir(out))
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out))
    saved = LazyConfig.load(str(out / "config.yaml"))
    assert saved.train.max_iter == 4 and saved.dataloader.train.total_batch_size == 2
    trained_eval = _metrics(out)[-1]
    assert {"bbox/AP", "segm/AP"} <= set(trained_eval)

    resumed = _run(["--resume", *opts, "train.max_iter=6"], shapes_env, tmp_path)
    assert "Starting training from iteration 4" in resumed.stderr + resumed.stdout
    assert [m["iteration"] for m in _metrics(out) if "total_loss" in m] == [0, 1, 2, 3, 4, 5]
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 5 and "optimizer" in ckpt and "trainer" in ckpt

    # The checkpoint of iteration 3 (the first run's final model) evaluated on its own gives
    # the evaluation that ran after the first run's training.
    evaluated = _run(["--eval-only", f"train.init_checkpoint='{out / 'model_0000003.pth'}'",
                      f"train.output_dir='{tmp_path / 'eval'}'",
                      "model.roi_heads.box_predictor.test_score_thresh=0.0"],
                     shapes_env, tmp_path)
    results = _copypaste(evaluated.stderr + evaluated.stdout)
    assert set(results) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        for name in ("AP", "AP50", "AP75"):
            assert results[task][name] == pytest.approx(trained_eval[f"{task}/{name}"],
                                                         abs=1e-4), (task, name)


def test_bad_override_key_fails_naming_it():
    with pytest.raises(KeyError, match=r"train\.max_iterr.*Did you mean 'train\.max_iter'"):
        tool.load_config(_args("train.max_iterr=3"))
    with pytest.raises(KeyError, match=r"model\.roi_heads\.num_clases.*'model\.roi_heads\."
                                       r"num_classes'"):
        tool.load_config(_args("model.roi_heads.num_clases=3"))
    with pytest.raises(KeyError, match=r"trian\.max_iter.*Did you mean 'train'"):
        tool.load_config(_args("trian.max_iter=3"))
    with pytest.raises(ValueError, match="key.sub=value"):
        tool.load_config(_args("train.max_iter", "3"))  # YAML-style KEY VALUE


def test_overrides_take_effect_and_new_keys_need_a_reader():
    cfg = tool.load_config(_args(
        "train.max_iter=3", "dataloader.train.total_batch_size=2", "train.amp.enabled=true",
        "model.roi_heads.box_predictor.smooth_l1_beta=0.5",  # an argument it takes
        "train.float32_precision='high'", "+custom.flag=1",
    ))
    assert cfg.train.max_iter == 3 and cfg.dataloader.train.total_batch_size == 2
    assert cfg.train.amp.enabled is True and cfg.custom.flag == 1
    assert instantiate(cfg.model.roi_heads.box_predictor).smooth_l1_beta == 0.5


def test_train_compile_compiles_the_named_submodules_in_place():
    """train.compile (MODEL.COMPILE for Python configs), dynamo's "eager" backend: what it
    names is compiled, nothing else; parameter names stay; bad keys say which key."""
    cfg = tool.load_config(_args("train.device=cpu", "train.compile.enabled=true",
                                 "train.compile.backend='eager'"))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    names = list(model.state_dict())
    try:
        assert tool.compile_model(cfg, model) == ["backbone"]
        assert model.backbone._compiled_call_impl is not None
        assert getattr(model.roi_heads, "_compiled_call_impl", None) is None
        assert list(model.state_dict()) == names
    finally:
        torch._dynamo.reset()
    cfg.train.compile.enabled = False
    plain = instantiate(cfg.model)
    assert tool.compile_model(cfg, plain) == []
    assert getattr(plain.backbone, "_compiled_call_impl", None) is None
    del cfg.train["compile"]  # a config of its own without the key: nothing compiled
    assert tool.compile_model(cfg, plain) == []
    bad_name = tool.load_config(_args("train.compile.enabled=true",
                                      "train.compile.modules=['neck']"))
    with pytest.raises(KeyError, match=r"train\.compile\.modules: .*'neck'"):
        tool.compile_model(bad_name, plain)
    bad_mode = tool.load_config(_args("train.compile.enabled=true", "train.compile.mode='fast'"))
    with pytest.raises(ValueError, match=r"train\.compile\.mode: mode 'fast'"):
        tool.compile_model(bad_mode, plain)
    with pytest.raises(KeyError, match=r"compile\.modes.*Did you mean 'train\.compile\.mode"):
        tool.load_config(_args("train.compile.modes='default'"))


def test_cuda_without_cuda_stops_before_anything_runs(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(tool, "launch", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(RuntimeError, match=r"train\.device = 'cuda'.*train\.device=cpu"):
        tool.invoke_main(["--config-file", PY_CONFIG, "train.device=cuda"])
    with pytest.raises(RuntimeError, match=r"train\.device=cpu"):
        tool.main(_args("--eval-only", "train.device=cuda"))


def test_yaml_config_is_refused_with_the_right_script():
    with pytest.raises(ValueError, match="train_net.py"):
        tool.load_config(argparse.Namespace(config_file=YAML_CONFIG, opts=[], eval_only=False))


def test_default_setup_reads_a_lazy_config(tmp_path, restore_logging, monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", "0")  # default_setup's seeding sets it: undone after
    cfg = OmegaConf.create({"train": {"output_dir": str(tmp_path / "out"), "seed": 7,
                                      "cudnn_benchmark": True}, "model": {"depth": 18}})
    saved_benchmark = torch.backends.cudnn.benchmark
    try:
        default_setup(cfg, None)
        assert torch.initial_seed() == 7
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = saved_benchmark
        logging.getLogger("segtron").handlers.clear()
    assert LazyConfig.load(str(tmp_path / "out" / "config.yaml")) == cfg


# ----------------------------------------------------------------------------- new baselines


def test_lsj_new_baseline_takes_list_index_overrides(tiny_split):
    """The command line reaches into lists (``augmentations.0.target_height``) and tuples of
    Detectron2's R-50 FPN LSJ recipe, as a run on 128-px shapes crops needs; its SyncBN model
    builds in one process (torch's SyncBatchNorm is plain batch norm there). Training it is
    tests/model_zoo/test_lazy_configs.py::test_lsj_config_trains_on_shapes."""
    size = 128
    num_classes = len(MetadataCatalog.get(tiny_split).thing_classes)
    opts = [
        f"dataloader.train.dataset.names='{tiny_split}'",
        f"dataloader.train.mapper.augmentations.0.target_height={size}",
        f"dataloader.train.mapper.augmentations.0.target_width={size}",
        f"dataloader.train.mapper.augmentations.1.crop_size=({size}, {size})",
        "dataloader.train.mapper.instance_mask_format='bitmask'",
        f"model.roi_heads.num_classes={num_classes}",
        "train.device=cpu", "train.amp.enabled=false",
    ]
    args = tool.argument_parser().parse_args(["--config-file", LSJ_CONFIG, *opts])
    cfg = tool.load_config(args)
    resize, crop = cfg.dataloader.train.mapper.augmentations[:2]
    assert (resize.target_height, resize.target_width) == (size, size)
    assert tuple(crop.crop_size) == (size, size)
    assert cfg.dataloader.train.dataset.names == tiny_split
    assert cfg.train.amp.enabled is False
    with torch.device("meta"):
        model = instantiate(cfg.model)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert model.roi_heads.box_predictor.cls_score.out_features == num_classes + 1
