"""Model-zoo checkpoints load with no renaming: same state_dict keys and shapes as Detectron2.

For each config of ``../shared/compat/d2_state_dict_shapes.json`` that segtron builds (all but
Panoptic FPN), build the model from segtron's copy of the config and compare.
"""

import json

import pytest

from segtron import model_zoo
from segtron.config import get_cfg
from segtron.modeling import build_model

BUILT_HERE = [
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
]


@pytest.fixture(scope="module")
def expected_shapes(compat_dir):
    return json.loads((compat_dir / "d2_state_dict_shapes.json").read_text())


def test_every_config_in_the_fixture_is_covered(expected_shapes):
    not_built = {"COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml"}
    assert set(expected_shapes) == set(BUILT_HERE) | not_built


@pytest.mark.parametrize("config_path", BUILT_HERE)
def test_state_dict_keys_and_shapes(config_path, expected_shapes):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config_path))
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = expected_shapes[config_path]
    assert sorted(set(theirs) - set(ours)) == [], "missing from segtron"
    assert sorted(set(ours) - set(theirs)) == [], "not in Detectron2"
    wrong = {k: (ours[k], theirs[k]) for k in theirs if ours[k] != theirs[k]}
    assert not wrong, f"shape differs (ours, Detectron2): {wrong}"
