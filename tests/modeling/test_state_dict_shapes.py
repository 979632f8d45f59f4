"""Model-zoo checkpoints load with no renaming: same state_dict keys and shapes as Detectron2.

Every config of ``../shared/compat/d2_state_dict_shapes.json`` and
``d2_state_dict_shapes_semantic.json``, built from segtron's copy of the config (the DeepLab
project's as ``train_net.py`` builds them, with the project's keys; SyncBN is stored under BN's
names) and compared key by key.
"""

import argparse
import json
from pathlib import Path

import pytest

import train_net
from segtron import model_zoo
from segtron.config import get_cfg
from segtron.modeling import build_model

DEEPLAB_CITYSCAPES = "projects/DeepLab/configs/Cityscapes-SemanticSegmentation"
# (fixture file, config path)
BUILT_HERE = [
    ("d2_state_dict_shapes.json", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"),
    ("d2_state_dict_shapes.json", "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"),
    ("d2_state_dict_shapes.json", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"),
    ("d2_state_dict_shapes.json", "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"),
    ("d2_state_dict_shapes.json", "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml"),
    ("d2_state_dict_shapes.json", "COCO-Detection/retinanet_R_50_FPN_1x.yaml"),
    ("d2_state_dict_shapes.json", "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"),
    ("d2_state_dict_shapes_semantic.json", "Misc/semantic_R_50_FPN_1x.yaml"),
    ("d2_state_dict_shapes_semantic.json",
     f"{DEEPLAB_CITYSCAPES}/deeplab_v3_R_103_os16_mg124_poly_90k_bs16.yaml"),
    ("d2_state_dict_shapes_semantic.json",
     f"{DEEPLAB_CITYSCAPES}/deeplab_v3_plus_R_103_os16_mg124_poly_90k_bs16.yaml"),
]
REPO = Path(__file__).resolve().parents[2]


def _fixture(compat_dir, name):
    return json.loads((compat_dir / name).read_text())


def test_every_config_in_the_fixtures_is_covered(compat_dir):
    for name in ("d2_state_dict_shapes.json", "d2_state_dict_shapes_semantic.json"):
        ours = {config for fixture, config in BUILT_HERE if fixture == name}
        assert ours == set(_fixture(compat_dir, name)), name


@pytest.mark.parametrize("fixture,config_path", BUILT_HERE, ids=[c for _, c in BUILT_HERE])
def test_state_dict_keys_and_shapes(fixture, config_path, compat_dir):
    if config_path.startswith("projects/"):
        cfg = train_net.build_config(argparse.Namespace(
            config_file=str(REPO / config_path), opts=["MODEL.DEVICE", "cpu"]))
    else:
        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(config_path))
        cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = _fixture(compat_dir, fixture)[config_path]
    assert sorted(set(theirs) - set(ours)) == [], "missing from segtron"
    assert sorted(set(ours) - set(theirs)) == [], "not in Detectron2"
    wrong = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert not wrong, f"shape differs (ours, Detectron2): {wrong}"
