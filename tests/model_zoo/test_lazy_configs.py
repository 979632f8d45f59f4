"""Detectron2's Python (LazyConfig) model-zoo configs: configs/common/, the .py twins of YAML
configs and new_baselines/ load, round-trip, build the YAML twins' models, and train."""

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

import segtron.data.transforms as T
from segtron import model_zoo
from segtron.config import LazyConfig, instantiate
from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.shapes import register_shapes_instances
from segtron.engine import AMPTrainer, SimpleTrainer, hooks
from segtron.evaluation import COCOEvaluator
from segtron.modeling import build_model
from segtron.solver import LRMultiplier, WarmupParamScheduler

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
D2 = "https://dl.fbaipublicfiles.com/detectron2/"
R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
FPN_1X = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py"
LSJ = "new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py"

# This module's configs (configs/Shapes/*.py are tested with the Shapes configs).
PORTED = sorted(
    p.relative_to(CONFIGS).as_posix()
    for folder in ("common", "new_baselines", "COCO-InstanceSegmentation", "COCO-Detection",
                   "COCO-Keypoints", "COCO-PanopticSegmentation", "Misc")
    for p in (CONFIGS / folder).rglob("*.py")
)
# Configs no saved form can rebuild (as in Detectron2, which pickles such configs):
# torchvision_imagenet_R_50's model, loaders and evaluator are classes defined inside the config
# file itself.
NOT_SAVABLE = {"Misc/torchvision_imagenet_R_50.py"}

# (.py config, the YAML config building the same model, its key in Detectron2's
# d2_state_dict_shapes.json or None). mask_rcnn_R_50_FPN_1x and _3x differ in schedule only.
TWINS = [
    (FPN_1X, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
     "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.py",
     "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
     "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"),
    ("COCO-Detection/retinanet_R_50_FPN_1x.py", "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
     "COCO-Detection/retinanet_R_50_FPN_1x.yaml"),
    ("COCO-Detection/fcos_R_50_FPN_1x.py", "COCO-Detection/fcos_R_50_FPN_1x.yaml", None),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.py", "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
     "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml"),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.py",
     "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml",
     "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"),
    ("common/models/cascade_rcnn.py", "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
     "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"),
]

# Detectron2's model zoo (detectron2/model_zoo/model_zoo.py): its LazyConfig new baselines.
NEW_BASELINE_URLS = {
    "mask_rcnn_R_50_FPN_100ep_LSJ": "42047764/model_final_bb69de.pkl",
    "mask_rcnn_R_50_FPN_200ep_LSJ": "42047638/model_final_89a8d3.pkl",
    "mask_rcnn_R_50_FPN_400ep_LSJ": "42019571/model_final_14d201.pkl",
    "mask_rcnn_R_101_FPN_100ep_LSJ": "42025812/model_final_4f7b58.pkl",
    "mask_rcnn_R_101_FPN_200ep_LSJ": "42131867/model_final_0bb7ae.pkl",
    "mask_rcnn_R_101_FPN_400ep_LSJ": "42073830/model_final_f96b26.pkl",
    "mask_rcnn_regnetx_4gf_dds_FPN_100ep_LSJ": "42047771/model_final_b7fbab.pkl",
    "mask_rcnn_regnetx_4gf_dds_FPN_200ep_LSJ": "42132721/model_final_5d87c1.pkl",
    "mask_rcnn_regnetx_4gf_dds_FPN_400ep_LSJ": "42025447/model_final_f1362d.pkl",
    "mask_rcnn_regnety_4gf_dds_FPN_100ep_LSJ": "42047784/model_final_6ba57e.pkl",
    "mask_rcnn_regnety_4gf_dds_FPN_200ep_LSJ": "42047642/model_final_27b9c1.pkl",
    "mask_rcnn_regnety_4gf_dds_FPN_400ep_LSJ": "42045954/model_final_ef3a80.pkl",
}


def _meta_model(model_cfg):
    with torch.device("meta"):
        return instantiate(model_cfg)


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


class _SamePartial:
    """A ``functools.partial`` that compares equal to another with the same function,
    arguments and keywords (partials themselves compare by identity)."""

    def __init__(self, p):
        self.key = (_comparable_value(p.func), [_comparable_value(a) for a in p.args],
                    {k: _comparable_value(v) for k, v in p.keywords.items()})

    def __eq__(self, other):
        return isinstance(other, _SamePartial) and self.key == other.key

    __hash__ = None

    def __repr__(self):
        return f"_SamePartial{self.key!r}"


def _comparable_value(value):
    """``value`` with each partial in it (also inside lists, tuples, dicts) a ``_SamePartial``."""
    if isinstance(value, functools.partial):
        return _SamePartial(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_comparable_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _comparable_value(v) for k, v in value.items()}
    return value


def _comparable(cfg):
    """A copy of the config ``cfg`` whose partials compare by value; for comparing configs with
    ``==``, which is unchanged for configs without partials."""
    cfg = copy.deepcopy(cfg)
    nodes = [cfg]
    while nodes:
        node = nodes.pop()
        for key in (node.keys() if isinstance(node, DictConfig) else range(len(node))):
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                nodes.append(child)
            elif isinstance(child._value(), functools.partial):
                node[key] = _SamePartial(child._value())
    return cfg


def test_ported_config_list():
    """Detectron2's configs/common (ViTDet's model included), the twins, 13 new baselines."""
    assert len([c for c in PORTED if c.startswith("common/")]) == 15
    assert len([c for c in PORTED if c.startswith("new_baselines/")]) == 13
    assert len(PORTED) == 15 + 13 + 7


@pytest.mark.parametrize("py,yaml,d2_key", TWINS, ids=[t[0] for t in TWINS])
def test_py_twin_builds_the_yaml_model(py, yaml, d2_key, compat_dir):
    """Same state-dict keys and shapes as the YAML build (and as Detectron2's), and the same
    frozen parameters (freeze_at=2: stem and res2)."""
    cfg = model_zoo.get_config(py)
    ours = _meta_model(cfg.model)
    yaml_cfg = model_zoo.get_config(yaml)
    yaml_cfg.MODEL.DEVICE = "meta"
    with torch.device("meta"):
        reference = build_model(yaml_cfg)
    assert type(ours) is type(reference)
    assert _shapes(ours) == _shapes(reference)
    if "freeze_at" in str(cfg.model):  # the twins, not the common/ model
        assert _trainable(ours) == _trainable(reference)
        assert not any(n.startswith(("backbone.bottom_up.stem", "backbone.stem", "backbone.res2",
                                     "backbone.bottom_up.res2")) for n in _trainable(ours))
    if d2_key is not None:
        d2 = json.loads((compat_dir / "d2_state_dict_shapes.json").read_text())[d2_key]
        assert _shapes(ours) == {k: tuple(v) for k, v in d2.items()}


@pytest.mark.parametrize("config", PORTED)
def test_config_loads_round_trips_and_builds(config, tmp_path):
    """Loads through the model zoo; ``to_py`` and ``save`` give configs that load back equal
    (save: with targets as dotted strings) and build the same model."""
    cfg = model_zoo.get_config(config)
    assert len(cfg) > 0
    model = _meta_model(cfg.model) if "model" in cfg else None
    if config in NOT_SAVABLE:
        return
    code_file = tmp_path / "cfg.py"
    code_file.write_text(LazyConfig.to_py(cfg, prefix=""))
    assert _comparable(LazyConfig.load(str(code_file))) == _comparable(cfg)

    LazyConfig.save(cfg, str(tmp_path / "cfg.yaml"))
    saved = LazyConfig.load(str(tmp_path / "cfg.yaml"))
    LazyConfig.save(saved, str(tmp_path / "again.yaml"))
    assert (tmp_path / "again.yaml").read_text() == (tmp_path / "cfg.yaml").read_text()
    if model is not None:
        assert _shapes(_meta_model(saved.model)) == _shapes(model)
    if config == "common/models/mask_rcnn_vitdet.py":  # a partial survives both forms
        for rebuilt in (saved, LazyConfig.load(str(code_file))):
            norm_layer = rebuilt.model.backbone.net.norm_layer
            assert isinstance(norm_layer, functools.partial)
            assert norm_layer.func is torch.nn.LayerNorm and norm_layer.keywords == {"eps": 1e-6}


def test_comparable_tells_partials_apart_by_value():
    """The round trip's comparison: equal partials match, any change to one does not."""
    def cfg(*args, **keywords):
        return OmegaConf.create({"m": {"norms": [functools.partial(*args, **keywords)]}},
                                flags={"allow_objects": True})

    ln = (torch.nn.LayerNorm,)
    assert cfg(*ln, eps=1e-6) != cfg(*ln, eps=1e-6)  # why the helper exists
    assert _comparable(cfg(*ln, eps=1e-6)) == _comparable(cfg(*ln, eps=1e-6))
    for other in (cfg(*ln, eps=1e-5), cfg(torch.nn.GroupNorm, eps=1e-6), cfg(*ln, 4, eps=1e-6),
                  cfg(*ln, eps=functools.partial(float, 1e-6))):
        assert _comparable(cfg(*ln, eps=1e-6)) != _comparable(other)
    assert _comparable(cfg(*ln, eps=[1, 2])) != _comparable(cfg(*ln, eps=(1, 2)))


@pytest.mark.parametrize("name", sorted(NEW_BASELINE_URLS))
def test_new_baselines_checkpoint_urls(name):
    config = f"new_baselines/{name}.py"
    url = D2 + f"new_baselines/{name}/" + NEW_BASELINE_URLS[name]
    assert model_zoo.get_checkpoint_url(config) == url
    assert model_zoo.get_checkpoint_url(f"new_baselines/{name}") == url
    cfg = model_zoo.get_config(config, trained=True)
    assert cfg.train.init_checkpoint == url
    assert model_zoo.get_config(config).train.init_checkpoint == ""  # trained from scratch


def test_py_twin_shares_the_yaml_weights_and_errors_name_py_configs():
    url = model_zoo.get_checkpoint_url(FPN_1X)
    assert url == model_zoo.get_checkpoint_url(FPN_1X.replace(".py", ".yaml"))
    assert model_zoo.get_config(FPN_1X, trained=True).train.init_checkpoint == url
    assert model_zoo.get_config(FPN_1X).train.init_checkpoint == R50
    with pytest.raises(RuntimeError, match=r"No pretrained.*new_baselines/mask_rcnn_R_50_FPN_"
                                           r"\d+ep_LSJ\.py"):
        model_zoo.get_checkpoint_url("new_baselines/mask_rcnn_R_50_FPN_800ep_LSJ.py")


def test_get_py_config_loads_init_checkpoint(monkeypatch):
    """``get`` of a .py config instantiates ``model`` and loads ``train.init_checkpoint``."""
    from segtron.checkpoint import DetectionCheckpointer

    loaded = []
    monkeypatch.setattr(DetectionCheckpointer, "load", lambda self, path, *a, **k: loaded.append(
        (type(self.model).__name__, path)))
    model = model_zoo.get("COCO-Detection/retinanet_R_50_FPN_1x.py", trained=True, device="cpu")
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert loaded == [("RetinaNet", model_zoo.get_checkpoint_url(
        "COCO-Detection/retinanet_R_50_FPN_1x.yaml"))]


def test_new_baselines_schedules_and_backbones():
    """Detectron2's values: 100 epochs of 64 images = 184375 iterations, LR steps near the
    end, longer schedules scaled; R-101 and the RegNet 4GF "dds" backbones."""
    base = model_zoo.get_config(LSJ)
    assert base.train.max_iter == 184375 and base.train.amp.enabled
    assert list(base.lr_multiplier.scheduler.milestones) == [163889, 177546]
    assert base.optimizer.lr == 0.1 and base.optimizer.weight_decay == 4e-5
    assert base.dataloader.train.total_batch_size == 64
    assert base.model.backbone.bottom_up.freeze_at == 0
    for epochs, factor in ((50, 0.5), (200, 2), (400, 4)):
        cfg = model_zoo.get_config(f"new_baselines/mask_rcnn_R_50_FPN_{epochs}ep_LSJ.py")
        assert cfg.train.max_iter == int(184375 * factor)
        assert cfg.lr_multiplier.scheduler.num_updates == cfg.train.max_iter
        assert list(cfg.lr_multiplier.scheduler.milestones) == [
            int(163889 * factor), int(177546 * factor)]
    r101 = model_zoo.get_config("new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py")
    assert r101.model.backbone.bottom_up.stages.depth == 101 and r101.train.max_iter == 737500
    for kind, depth, se in (("x", 23, None), ("y", 22, 0.25)):
        cfg = model_zoo.get_config(f"new_baselines/mask_rcnn_regnet{kind}_4gf_dds_FPN_200ep_LSJ.py")
        bottom_up = _meta_model(cfg.model).backbone.bottom_up
        assert type(bottom_up).__name__ == "RegNet"
        assert cfg.model.backbone.bottom_up.depth == depth
        assert cfg.model.backbone.bottom_up.get("se_ratio") == se
        assert list(cfg.model.pixel_std) == [57.375, 57.120, 58.395] and cfg.train.cudnn_benchmark
        assert cfg.train.max_iter == 368750


def test_optimizer_and_lr_multiplier_of_mask_rcnn_R_50_FPN_1x():
    cfg = model_zoo.get_config(FPN_1X)
    model = _meta_model(cfg.model)
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, torch.optim.SGD)
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(g["lr"] == 0.02 and g["momentum"] == 0.9 for g in optimizer.param_groups)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {1e-4}  # no norm params

    multiplier = instantiate(cfg.lr_multiplier)
    assert isinstance(multiplier, WarmupParamScheduler)
    # 1x: linear warmup from 0.001 over 1000 of 90000 iterations, x0.1 at 60k and 80k.
    assert multiplier(0.0) == pytest.approx(0.001)
    assert multiplier(500 / 90000) == pytest.approx(0.001 + 0.999 * 0.5, rel=1e-3)
    assert multiplier(30000 / 90000) == pytest.approx(1.0)
    assert multiplier(70000 / 90000) == pytest.approx(0.1)
    assert multiplier(85000 / 90000) == pytest.approx(0.01)


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    """A registered 2-image shapes dataset (instances with RLE masks)."""
    name = "_test_lazy_configs_shapes"
    register_shapes_instances(name, str(tmp_path_factory.mktemp("shapes")), "train", 2, 7)
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _on_dataset(cfg, name, batch_size):
    LazyConfig.apply_overrides(cfg, [
        f"dataloader.train.dataset.names={name}", f"dataloader.test.dataset.names={name}",
        f"dataloader.train.total_batch_size={batch_size}",
        "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
        # shapes masks are RLE, COCO's polygons
        "dataloader.train.mapper.instance_mask_format=bitmask",
    ])
    return cfg


def test_dataloaders_and_evaluator_of_mask_rcnn_R_50_FPN_1x(tiny_shapes, tmp_path):
    cfg = _on_dataset(model_zoo.get_config(FPN_1X), tiny_shapes, 2)
    batch = next(iter(instantiate(cfg.dataloader.train)))
    assert len(batch) == 2
    for d in batch:
        h, w = d["image"].shape[-2:]
        assert min(h, w) in (640, 672, 704, 736, 768, 800) or max(h, w) == 1333
        assert d["instances"].has("gt_masks") and len(d["instances"]) > 0
    (test_input,) = next(iter(instantiate(cfg.dataloader.test)))
    assert min(test_input["image"].shape[-2:]) == 800
    cfg.dataloader.evaluator.output_dir = str(tmp_path)
    evaluator = instantiate(cfg.dataloader.evaluator)
    assert isinstance(evaluator, COCOEvaluator)


def test_lsj_config_trains_on_shapes(tiny_shapes):
    """new_baselines' LSJ Mask R-CNN (SyncBN, 4conv1fc head, AMP) takes 3 training steps on
    shapes, through its own loader (ResizeScale + FixedSizeCrop, boxes recomputed), optimizer
    and LR schedule. Shrunk to run on a CPU: 128 px crops, fewer ROIs."""
    cfg = _on_dataset(model_zoo.get_config(LSJ), tiny_shapes, 2)
    for aug in cfg.dataloader.train.mapper.augmentations:
        if aug._target_ is T.ResizeScale:
            aug.target_height = aug.target_width = 128
        if aug._target_ is T.FixedSizeCrop:
            aug.crop_size = (128, 128)
    LazyConfig.apply_overrides(cfg, [
        "model.roi_heads.batch_size_per_image=32", "model.proposal_generator.post_nms_topk=[64,64]",
    ])
    model = instantiate(cfg.model).train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    loader = instantiate(cfg.dataloader.train)
    for d in next(iter(loader)):  # scaled by 0.1-2.0, then cropped / padded to 128 x 128
        assert tuple(d["image"].shape[-2:]) == (128, 128)
        boxes = d["instances"].gt_boxes.tensor
        assert len(boxes) == 0 or (boxes.min() >= 0 and boxes.max() <= 128)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, loader, optimizer)
    assert isinstance(trainer, AMPTrainer)
    lrs = []
    trainer.register_hooks([
        # Over the config's max_iter, as a training script does (we run 3 of its iterations).
        hooks.LRScheduler(scheduler=LRMultiplier(
            optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)),
        hooks.CallbackHook(before_step=lambda t: lrs.append(optimizer.param_groups[0]["lr"])),
    ])
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.train(0, 3)
    # As scheduled over the config's 184375 iterations: warmup from 0.067 x 0.1.
    step = 0.1 * (1 - 0.067) / 500  # linear warmup over 500 iterations
    assert lrs == pytest.approx([0.1 * 0.067 + i * step for i in range(3)], rel=1e-3)
    latest = trainer.storage.latest()
    losses = {k for k in latest if k.startswith("loss_")}
    assert losses == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(torch.tensor(latest[k][0])) for k in losses)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.bottom_up.stem") for k in changed)  # not frozen
    assert any(k.startswith("roi_heads.mask_head") for k in changed)
    assert OmegaConf.is_config(cfg.model)  # the config itself was not consumed


def test_save_writes_classes_as_importable_names(tmp_path):
    """Class values (``block_class`` of mask_rcnn_c4.py's res5) survive ``save``; a lambda
    cannot and is still flagged."""
    from segtron.modeling.backbone import BottleneckBlock

    cfg = model_zoo.get_config("common/models/mask_rcnn_c4.py")
    cfg.model.roi_heads.res5.norm = lambda c: torch.nn.GroupNorm(32, c)
    path = tmp_path / "c4.yaml"
    LazyConfig.save(cfg, str(path))
    assert "!!python/name:segtron." in path.read_text()
    res5 = LazyConfig.load(str(path)).model.roi_heads.res5
    assert res5.block_class is BottleneckBlock
    assert res5.norm.startswith("<unserializable:")
