"""Every YAML under configs/ (and projects/*/configs/) merges and builds its model; the shipped
configs hold Detectron2's values; every shapes config trains and predicts."""

import argparse
from pathlib import Path

import pytest
import torch

import train_net
from segtron import model_zoo
from segtron.config import LazyConfig, get_cfg, instantiate
from segtron.config.merge import iter_full_keys
from segtron.data import DatasetMapper
from segtron.data.datasets.coco import load_coco_json
from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.shapes import generate_shapes_dataset
from segtron.data.datasets.shapes_panoptic import (
    register_shapes_panoptic_split,
    register_shapes_sem_seg,
)
from segtron.modeling import build_model
from segtron.utils.events import EventStorage

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
ALL_YAML = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))
PROJECT_YAML = sorted(
    p.relative_to(REPO).as_posix() for p in (REPO / "projects").glob("*/configs/**/*.yaml")
)
R50 = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
ALL_PY = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.py"))
PROJECT_PY = sorted(
    p.relative_to(REPO).as_posix() for p in (REPO / "projects").glob("*/configs/**/*.py")
)


def _load(rel: str):
    """The config of ``configs/<rel>``, with the projects' keys (configs/Shapes/Detectors
    inherits project configs)."""
    return train_net.build_config(argparse.Namespace(config_file=str(CONFIGS / rel), opts=[]))


def _value(cfg, full_key: str):
    for part in full_key.split("."):
        cfg = cfg[part]
    return cfg


def test_configs_exist():
    assert len(ALL_YAML) >= 112  # Detectron2's 92 YAML configs and segtron's own


@pytest.mark.parametrize("rel", ALL_YAML)
def test_every_config_merges(rel):
    cfg = _load(rel)
    assert cfg.VERSION == 2


@pytest.mark.parametrize("path", [f"configs/{rel}" for rel in ALL_YAML] + PROJECT_YAML)
def test_every_shipped_config_builds_its_model(path):
    """What ``train_net.py --config-file <path>`` builds (projects' keys and components
    included): a config naming a missing component or key is a bug.

    Built on the meta device: every module and parameter shape is constructed exactly as on
    the CPU, only no weight storage is allocated or initialised. Allocating and initialising
    all ~110 full-size models (DC5 and X-152 ones reach 180M parameters) would take ~45 s of
    the suite; real initialisation is exercised by the shapes configs below and by
    tests/model_zoo (one full CPU build per config family)."""
    cfg = train_net.build_config(
        argparse.Namespace(config_file=str(REPO / path), opts=["MODEL.DEVICE", "meta"])
    )
    with torch.device("meta"):
        model = build_model(cfg)
    params = list(model.parameters())
    assert params and all(p.is_meta for p in params)
    assert sum(p.numel() for p in params) > 0


@pytest.mark.parametrize("path", [f"configs/{rel}" for rel in ALL_PY] + PROJECT_PY)
def test_every_shipped_py_config_loads_and_builds_its_model(path):
    """Every LazyConfig (.py) under configs/ and projects/*/configs/ loads; its ``model``, if
    it has one, instantiates (on the meta device, as above). Files of a ``common/`` folder
    without a model (data, optim, schedules, train) only load."""
    cfg = LazyConfig.load(str(REPO / path))
    assert len(cfg) > 0, path
    if "model" not in cfg:
        assert "/common/" in path, f"{path} has no model"
        return
    with torch.device("meta"):
        model = instantiate(cfg.model)
    params = list(model.parameters())
    assert params and all(p.is_meta for p in params)


def test_every_model_zoo_entry_is_a_shipped_config():
    """The model-zoo entries are built by the tests above: each is a config under configs/
    (YAML, or .py for Detectron2's LazyConfig new baselines)."""
    from segtron.model_zoo.model_zoo import _ModelZooUrls

    for config in _ModelZooUrls.config_files():
        assert config in ALL_YAML or config in ALL_PY, config
        cfg = model_zoo.get_config(config, trained=True)
        weights = cfg.MODEL.WEIGHTS if config.endswith(".yaml") else cfg.train.init_checkpoint
        assert weights.startswith("https"), config


# Facts from Detectron2's configs: (config, key, value).
EXPECTED = [
    ("Base-RCNN-FPN.yaml", "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone"),
    ("Base-RCNN-FPN.yaml", "MODEL.ANCHOR_GENERATOR.SIZES", [[32], [64], [128], [256], [512]]),
    ("Base-RCNN-FPN.yaml", "MODEL.RPN.IN_FEATURES", ["p2", "p3", "p4", "p5", "p6"]),
    ("Base-RCNN-FPN.yaml", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 2000),
    ("Base-RCNN-FPN.yaml", "MODEL.RPN.POST_NMS_TOPK_TEST", 1000),
    ("Base-RCNN-FPN.yaml", "MODEL.ROI_HEADS.NAME", "StandardROIHeads"),
    ("Base-RCNN-FPN.yaml", "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", 14),
    ("Base-RCNN-FPN.yaml", "DATASETS.TRAIN", ("coco_2017_train",)),
    ("Base-RCNN-FPN.yaml", "SOLVER.STEPS", (60000, 80000)),
    ("Base-RCNN-FPN.yaml", "INPUT.MIN_SIZE_TRAIN", (640, 672, 704, 736, 768, 800)),
    ("Base-RCNN-C4.yaml", "MODEL.RPN.PRE_NMS_TOPK_TEST", 6000),
    ("Base-RCNN-C4.yaml", "MODEL.ROI_HEADS.NAME", "Res5ROIHeads"),
    ("Base-RCNN-C4.yaml", "MODEL.BACKBONE.NAME", "build_resnet_backbone"),
    ("Base-RetinaNet.yaml", "MODEL.META_ARCHITECTURE", "RetinaNet"),
    ("Base-RetinaNet.yaml", "MODEL.BACKBONE.NAME", "build_retinanet_resnet_fpn_backbone"),
    ("Base-RetinaNet.yaml", "MODEL.RESNETS.OUT_FEATURES", ["res3", "res4", "res5"]),
    ("Base-RetinaNet.yaml", "MODEL.RETINANET.IOU_THRESHOLDS", [0.4, 0.5]),
    ("Base-RetinaNet.yaml", "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA", 0.0),
    ("Base-RetinaNet.yaml", "SOLVER.BASE_LR", 0.01),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "MODEL.WEIGHTS", R50),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "MODEL.MASK_ON", True),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "SOLVER.MAX_ITER", 90000),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "SOLVER.STEPS", (210000, 250000)),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "SOLVER.MAX_ITER", 270000),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml", "MODEL.ROI_HEADS.NAME", "Res5ROIHeads"),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml", "MODEL.MASK_ON", True),
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "MODEL.MASK_ON", False),
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", "MODEL.WEIGHTS", R50),
    ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "MODEL.WEIGHTS", R50),
    ("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "MODEL.RESNETS.DEPTH", 50),
    ("Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml", "MODEL.ROI_HEADS.NAME", "CascadeROIHeads"),
    ("Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True),
    ("Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml", "MODEL.RPN.POST_NMS_TOPK_TRAIN", 2000),
    ("Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml", "SOLVER.MAX_ITER", 270000),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "MODEL.KEYPOINT_ON", True),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 1),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", 0.5),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "MODEL.RPN.POST_NMS_TOPK_TRAIN", 1500),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "DATASETS.TEST", ("keypoints_coco_2017_val",)),
    ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", "MODEL.WEIGHTS", R50),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "MODEL.META_ARCHITECTURE", "PanopticFPN"),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", 0.5),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "MODEL.MASK_ON", True),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "DATALOADER.FILTER_EMPTY_ANNOTATIONS", False),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "DATASETS.TRAIN",
     ("coco_2017_train_panoptic_separated",)),
    ("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", "MODEL.WEIGHTS", R50),
    ("COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml", "MODEL.PROPOSAL_GENERATOR.NAME",
     "PrecomputedProposals"),
    ("COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml", "MODEL.LOAD_PROPOSALS", True),
    ("COCO-Detection/rpn_R_50_C4_1x.yaml", "MODEL.META_ARCHITECTURE", "ProposalNetwork"),
    ("COCO-Detection/rpn_R_50_C4_1x.yaml", "MODEL.RPN.PRE_NMS_TOPK_TEST", 12000),
    ("COCO-Detection/faster_rcnn_R_101_DC5_3x.yaml", "MODEL.RESNETS.RES5_DILATION", 2),
    ("COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml", "MODEL.RESNETS.STRIDE_IN_1X1", False),
    ("COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml", "MODEL.PIXEL_STD",
     [57.375, 57.120, 58.395]),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml", "MODEL.RPN.BBOX_REG_LOSS_WEIGHT",
     2.0),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml",
     "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou"),
    ("LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "MODEL.ROI_HEADS.NUM_CLASSES",
     1230),
    ("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 1203),
    ("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "DATALOADER.SAMPLER_TRAIN",
     "RepeatFactorTrainingSampler"),
    ("Cityscapes/mask_rcnn_R_50_FPN.yaml", "MODEL.ROI_HEADS.NUM_CLASSES", 8),
    ("PascalVOC-Detection/faster_rcnn_R_50_C4.yaml", "DATASETS.TRAIN",
     ("voc_2007_trainval", "voc_2012_trainval")),
    ("Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml", "MODEL.ROI_MASK_HEAD.POOLER_TYPE",
     "ROIAlign"),
    ("Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml", "MODEL.RESNETS.STRIDE_IN_1X1", True),
    ("Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn.yaml", "MODEL.RESNETS.NORM", "SyncBN"),
    ("Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn.yaml", "MODEL.RESNETS.STRIDE_IN_1X1", False),
    ("Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml", "MODEL.BACKBONE.FREEZE_AT", 0),
    ("Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml", "MODEL.RESNETS.DEPTH", 152),
    ("Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml", "MODEL.ROI_MASK_HEAD.NUM_CONV",
     8),
    ("Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml", "MODEL.RESNETS.DEFORM_ON_PER_STAGE",
     [False, True, True, True]),
    ("quick_schedules/mask_rcnn_R_50_C4_GCV_instant_test.yaml", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE",
     "value"),
    ("quick_schedules/fast_rcnn_R_50_FPN_instant_test.yaml", "DATASETS.TRAIN",
     ("coco_2017_val_100",)),
    ("quick_schedules/mask_rcnn_R_50_FPN_inference_acc_test.yaml", "FLOAT32_PRECISION", "highest"),
]


@pytest.mark.parametrize("rel,key,value", EXPECTED, ids=[f"{c}:{k}" for c, k, _ in EXPECTED])
def test_detectron2_values(rel, key, value):
    got = _value(_load(rel), key)
    if isinstance(value, (list, tuple)):
        assert list(got) == list(value)
    else:
        assert got == value


def test_retinanet_anchor_sizes_are_three_octave_scales():
    sizes = _load("COCO-Detection/retinanet_R_50_FPN_1x.yaml").MODEL.ANCHOR_GENERATOR.SIZES
    assert [list(s) for s in sizes] == [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_mask_rcnn_3x_equals_detectron2_dump_except_the_thin_overrides(compat_dir):
    """The golden fixture's config is Detectron2's dump of mask_rcnn_R_50_FPN_3x, made thin."""
    golden = get_cfg()
    golden.merge_from_file(str(compat_dir / "golden" / "mask_rcnn_R50_FPN_thin" / "config.yaml"))
    ours = get_cfg()  # the core's keys only, as Detectron2's dump
    ours.merge_from_file(str(CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"))
    g, o = dict(iter_full_keys(golden)), dict(iter_full_keys(ours))
    differing = {k for k in set(g) | set(o) if _plain(g.get(k)) != _plain(o.get(k))}
    thin_overrides = {
        "INPUT.MAX_SIZE_TEST", "INPUT.MIN_SIZE_TEST", "MODEL.DEVICE", "MODEL.FPN.OUT_CHANNELS",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.RESNETS.STEM_OUT_CHANNELS",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_HEADS.NUM_CLASSES",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "MODEL.RPN.POST_NMS_TOPK_TEST", "MODEL.WEIGHTS",
    }
    assert differing <= thin_overrides, sorted(differing - thin_overrides)


def test_detectron2_tuple_strings_in_yaml(tmp_path):
    """Detectron2 configs write tuples as strings, e.g. ("a",) and (1, 2): read as literals."""
    path = tmp_path / "c.yaml"
    path.write_text(
        'DATASETS:\n  TRAIN: ("a", "b")\n  TEST: ()\nSOLVER:\n  STEPS: (10,)\n'
        'MODEL:\n  WEIGHTS: "(not a tuple)"\n'
    )
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    assert cfg.DATASETS.TRAIN == ("a", "b") and cfg.DATASETS.TEST == ()
    assert cfg.SOLVER.STEPS == (10,)
    assert cfg.MODEL.WEIGHTS == "(not a tuple)"  # string keys keep strings


SHAPES_YAML = [f"configs/{rel}" for rel in ALL_YAML if rel.startswith("Shapes/")] + [
    path for path in PROJECT_YAML if "/configs/Shapes/" in path
]


def _load_shipped(path: str):
    """The config of ``path`` (relative to the repository) as train_net.py builds it."""
    return train_net.build_config(argparse.Namespace(config_file=str(REPO / path), opts=[]))


@pytest.fixture(scope="module")
def shapes_dicts(tmp_path_factory):
    """Two small training images of each kind of shapes data, keyed by the builtin dataset
    names the shapes configs train on: instances (``shapes_train``), semantic labels
    (``shapes_sem_seg_train``) and Panoptic FPN's separated form
    (``shapes_panoptic_train_separated``)."""
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_shapes_dataset(root, "train", num_images=2, seed=3, num_workers=1)
    # dataset_name maps the json's category ids 1..5 to the contiguous class ids 0..4.
    instances = load_coco_json(f"{root}/annotations/instances_train.json", f"{root}/train",
                               dataset_name="_test_configs_shapes")
    stuff_root = str(tmp_path_factory.mktemp("shapes_panoptic"))
    register_shapes_sem_seg("_test_configs_sem_seg", stuff_root, "train", 2, 3)
    register_shapes_panoptic_split("_test_configs_panoptic", stuff_root, "train", 2, 3)
    names = ["_test_configs_sem_seg", "_test_configs_panoptic", "_test_configs_panoptic_separated",
             "_test_configs_panoptic_stuffonly"]
    try:
        yield {
            "shapes_train": instances,
            "shapes_sem_seg_train": DatasetCatalog.get("_test_configs_sem_seg"),
            "shapes_panoptic_train_separated": DatasetCatalog.get(
                "_test_configs_panoptic_separated"),
        }
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_shapes_configs_write_to_their_own_output_dirs():
    """The demo and its ablation variants can be trained one after the other and compared."""
    output_dirs = [_load_shipped(path).OUTPUT_DIR for path in SHAPES_YAML]
    assert len(SHAPES_YAML) >= 13
    assert len(set(output_dirs)) == len(output_dirs), dict(zip(SHAPES_YAML, output_dirs))


# Detectron2's loss names per meta-architecture of the shapes configs.
LOSS_KEYS = {
    "GeneralizedRCNN": {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"},
    "RetinaNet": {"loss_cls", "loss_box_reg"},
    "FCOS": {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"},
    "SSD": {"loss_cls", "loss_box_reg"},
    "YOLOX": {"loss_iou", "loss_obj", "loss_cls"},
    "SemanticSegmentor": {"loss_sem_seg"},
    "PanopticFPN": {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask",
                    "loss_sem_seg"},
}


@pytest.mark.parametrize("path", SHAPES_YAML)
def test_shapes_config_trains_and_predicts(path, shapes_dicts):
    """Each shapes config builds its model, takes a training step's forward/backward on images
    of the kind it trains on, mapped by train_net.py's training loader's mapper (augmentations
    of the config included), and predicts in eval mode: instances (masks too when
    MODEL.MASK_ON), semantic logits, panoptic ids."""
    cfg = _load_shipped(path)
    dicts = shapes_dicts[cfg.DATASETS.TRAIN[0]]
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = train_net.train_mapper(cfg)
    batch = [mapper(dict(d)) for d in dicts]
    if cfg.INPUT.MIN_SIZE_TRAIN != (0,):  # (0,): the model resizes (SSD), the loader does not
        assert min(batch[0]["image"].shape[-2:]) in cfg.INPUT.MIN_SIZE_TRAIN
    with EventStorage():
        losses = model(batch)
    expected = set(LOSS_KEYS[cfg.MODEL.META_ARCHITECTURE])
    if not cfg.MODEL.MASK_ON:
        expected.discard("loss_mask")
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    test_inputs = [DatasetMapper(cfg, is_train=False)(dict(d)) for d in dicts]
    with torch.no_grad():
        outputs = model(test_inputs)
    for d, out in zip(dicts, outputs):
        size = (d["height"], d["width"])
        if "sem_seg" in out:
            assert out["sem_seg"].shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, *size)
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            continue
        instances = out["instances"]
        assert instances.image_size == size
        assert instances.has("pred_masks") == cfg.MODEL.MASK_ON
        assert len(instances) <= cfg.TEST.DETECTIONS_PER_IMAGE
        if cfg.MODEL.META_ARCHITECTURE == "PanopticFPN":
            assert out["panoptic_seg"][0].shape == size
