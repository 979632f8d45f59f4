"""Caffe2 name conversion, suffix matching, torchvision recognition and the model catalog."""

import logging
import pickle

import numpy as np
import pytest
import torch

from segtron.checkpoint import DetectionCheckpointer
from segtron.checkpoint.c2_model_loading import (
    align_and_update_state_dicts,
    convert_basic_c2_names,
    convert_c2_detectron_names,
)
from segtron.checkpoint.catalog import ModelCatalog, ModelCatalogHandler
from segtron.checkpoint.torchvision_model_loading import (
    convert_torchvision_resnet_names,
    is_torchvision_resnet_state_dict,
)
from segtron.utils.file_io import PathManager

from .tiny_models import TINY, TinyDetector

# Caffe2 blob name -> Detectron2 name (Detectron2's renaming rules).
BASIC = {
    "conv1_w": "stem.conv1.weight",
    "res_conv1_bn_s": "stem.conv1.norm.weight",
    "res_conv1_bn_b": "stem.conv1.norm.bias",
    "res2_0_branch2a_w": "res2.0.conv1.weight",
    "res2_0_branch2a_bn_s": "res2.0.conv1.norm.weight",
    "res2_0_branch2a_bn_b": "res2.0.conv1.norm.bias",
    "res2_0_branch2b_w": "res2.0.conv2.weight",
    "res2_0_branch2c_bn_s": "res2.0.conv3.norm.weight",
    "res2_0_branch1_w": "res2.0.shortcut.weight",
    "res2_0_branch1_bn_b": "res2.0.shortcut.norm.bias",
    "res4_22_branch2b_bn_rm": "res4.22.conv2.norm.running_mean",
    "res4_22_branch2b_bn_riv": "res4.22.conv2.norm.running_var",
    "res5_2_branch2a_gn_s": "res5.2.conv1.norm.weight",
    "res5_2_branch2a_gn_b": "res5.2.conv1.norm.bias",
    "res3_1_branch2a_bn_gamma": "res3.1.conv1.norm.weight",
    "res3_1_branch2a_bn_beta": "res3.1.conv1.norm.bias",
    "fc1000_w": "fc1000.weight",
    "fc1000_b": "fc1000.bias",
    "pred_w": "linear.weight",
    "pred_b": "linear.bias",
}

DETECTION = {
    "conv_rpn_fpn2_w": "proposal_generator.rpn_head.conv.weight",
    "rpn_cls_logits_fpn2_w": "proposal_generator.rpn_head.objectness_logits.weight",
    "rpn_bbox_pred_fpn2_b": "proposal_generator.rpn_head.anchor_deltas.bias",
    "conv_rpn_w": "proposal_generator.rpn_head.conv.weight",
    "rpn_cls_logits_b": "proposal_generator.rpn_head.objectness_logits.bias",
    "fc6_w": "box_head.fc1.weight",
    "fc7_b": "box_head.fc2.bias",
    "head_conv1_w": "box_head.conv1.weight",
    "head_conv1_gn_s": "box_head.conv1.norm.weight",
    "fpn_inner_res5_2_sum_w": "fpn_lateral5.weight",
    "fpn_inner_res2_2_sum_lateral_b": "fpn_lateral2.bias",
    "fpn_res3_3_sum_w": "fpn_output3.weight",
    "fpn_res4_5_sum_gn_s": "fpn_output4.norm.weight",
    "_[mask]_fcn1_w": "mask_head.mask_fcn1.weight",
    "_mask_fcn2_b": "mask_head.mask_fcn2.bias",
    "conv5_mask_w": "mask_head.deconv.weight",
    "conv_fcn3_w": "roi_heads.keypoint_head.conv_fcn3.weight",
    "kps_score_lowres_w": "roi_heads.keypoint_head.score_lowres.weight",
}


def test_basic_names():
    keys = list(BASIC)
    assert convert_basic_c2_names(keys) == [BASIC[k] for k in keys]


def test_detection_names_and_background_rows(ckpt_log):
    k = 3
    weights = {name: torch.zeros(1) for name in DETECTION if name != "conv_rpn_w"}
    weights["cls_score_w"] = torch.arange(k + 1, dtype=torch.float32).view(-1, 1).repeat(1, 2)
    weights["bbox_pred_b"] = torch.arange(4 * (k + 1), dtype=torch.float32)
    weights["mask_fcn_logits_w"] = torch.arange(k + 1, dtype=torch.float32).view(-1, 1, 1, 1)
    new, original = convert_c2_detectron_names(weights)
    for c2, d2 in DETECTION.items():
        if c2 != "conv_rpn_w":
            assert d2 in new and original[d2] == c2, c2
    # Background (index 0) moves to the end for the classifier, and is dropped elsewhere.
    assert new["cls_score.weight"][:, 0].tolist() == [1, 2, 3, 0]
    assert new["bbox_pred.bias"].tolist() == list(range(4, 16))
    assert new["mask_head.predictor.weight"].flatten().tolist() == [1, 2, 3]
    assert "background" in ckpt_log.text


def test_conv_rpn_without_fpn():
    new, _ = convert_c2_detectron_names({"conv_rpn_w": torch.zeros(1)})
    assert list(new) == ["proposal_generator.rpn_head.conv.weight"]


def test_colliding_names_are_reported():
    with pytest.raises(ValueError, match="both map to"):
        convert_c2_detectron_names({"conv_rpn_w": torch.zeros(1), "conv_rpn_fpn2_w": torch.zeros(1)})


def _shapes(**kw):
    return {k.replace("__", "."): torch.zeros(v) for k, v in kw.items()}


def test_longest_dot_aligned_suffix_wins(ckpt_log):
    model = {
        "backbone.bottom_up.res2.0.conv1.weight": torch.zeros(2),
        "backbone.bottom_up.stem.conv1.weight": torch.zeros(3),
        "roi_heads.mask_head.myconv1.weight": torch.zeros(3),
        "roi_heads.box_head.fc1.weight": torch.zeros(5),
    }
    ckpt = {
        "res2.0.conv1.weight": torch.full((2,), 1.0),
        "conv1.weight": torch.full((3,), 2.0),
        "stem.conv1.weight": torch.full((3,), 3.0),
        "box_head.fc1.weight": torch.full((7,), 4.0),
        "head.fc1.weight": torch.full((5,), 5.0),  # "box_head" is not ".head": never matches
        "unused.thing": torch.zeros(1),
    }
    out = align_and_update_state_dicts(model, ckpt, c2_conversion=False)
    assert torch.equal(out["backbone.bottom_up.res2.0.conv1.weight"], ckpt["res2.0.conv1.weight"])
    assert torch.equal(out["backbone.bottom_up.stem.conv1.weight"], ckpt["stem.conv1.weight"])
    # "myconv1.weight" does not end in ".conv1.weight": no match.
    assert "roi_heads.mask_head.myconv1.weight" not in out
    # Shape mismatch: skipped with a warning naming both keys and shapes, and left out.
    assert "roi_heads.box_head.fc1.weight" not in out and "box_head.fc1.weight" not in out
    warning = next(r.getMessage() for r in ckpt_log.records if r.levelno == logging.WARNING)
    assert "'box_head.fc1.weight'" in warning and "(7,)" in warning and "(5,)" in warning
    assert "roi_heads.box_head.fc1.weight" in warning
    # Unmatched checkpoint keys stay, so loading reports them as unexpected.
    assert "unused.thing" in out and "conv1.weight" in out and "head.fc1.weight" in out
    assert "Names in Model" in ckpt_log.text


def test_ambiguous_match_raises():
    model = {"a.conv1.weight": torch.zeros(1), "b.conv1.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="matches two model keys"):
        align_and_update_state_dicts(model, {"conv1.weight": torch.zeros(1)}, c2_conversion=False)


def test_nothing_matches(ckpt_log):
    out = align_and_update_state_dicts({"x.weight": torch.zeros(1)}, {"y.weight": torch.zeros(1)}, False)
    assert list(out) == ["y.weight"]
    assert "No weights" in ckpt_log.text


def test_c2_detection_blobs_file_loads_into_detector(tmp_path):
    """A Detectron (v1) detection pickle: {"blobs": ...} with a background-first predictor."""
    k = 3
    cls_w = np.random.rand(k + 1, 8).astype(np.float32)
    box_w = np.random.rand(4 * (k + 1), 8).astype(np.float32)
    blobs = {"cls_score_w": cls_w, "bbox_pred_w": box_w, "cls_score_w_momentum": cls_w * 0}
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"blobs": blobs, "cfg": "..."}, f)
    detector = TinyDetector(num_classes=k, **TINY)
    DetectionCheckpointer(detector).load(str(tmp_path / "model_final.pkl"))
    pred = detector.roi_heads.box_predictor
    assert torch.equal(pred.cls_score.weight, torch.from_numpy(np.concatenate([cls_w[1:], cls_w[:1]])))
    assert torch.equal(pred.bbox_pred.weight, torch.from_numpy(box_w[4:]))


def test_torchvision_recognition_and_names():
    tv = {
        "conv1.weight": 0, "bn1.weight": 1, "bn1.running_mean": 2, "bn1.num_batches_tracked": 3,
        "layer1.0.conv1.weight": 4, "layer1.0.bn2.bias": 5, "layer2.0.downsample.0.weight": 6,
        "layer2.0.downsample.1.running_var": 7, "layer4.2.conv3.weight": 8, "layer4.2.bn3.weight": 9,
        "fc.weight": 10, "fc.bias": 11,
    }
    assert is_torchvision_resnet_state_dict(tv)
    assert is_torchvision_resnet_state_dict({"module." + k: v for k, v in tv.items()})
    assert not is_torchvision_resnet_state_dict({"stem.conv1.weight": 0, "res2.0.conv1.weight": 1})
    assert convert_torchvision_resnet_names(tv, keep_num_batches_tracked=False) == {
        "stem.conv1.weight": 0, "stem.conv1.norm.weight": 1, "stem.conv1.norm.running_mean": 2,
        "res2.0.conv1.weight": 4, "res2.0.conv2.norm.bias": 5, "res3.0.shortcut.weight": 6,
        "res3.0.shortcut.norm.running_var": 7, "res5.2.conv3.weight": 8, "res5.2.conv3.norm.weight": 9,
    }
    assert convert_torchvision_resnet_names(tv)["stem.conv1.norm.num_batches_tracked"] == 3


def test_catalog_urls_without_network():
    assert ModelCatalog.get("ImageNetPretrained/MSRA/R-50") == (
        "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl"
    )
    assert ModelCatalog.get("ImageNetPretrained/FAIR/X-101-32x8d") == (
        "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/20171220/X-101-32x8d.pkl"
    )
    url = ModelCatalog.get("Caffe2Detectron/COCO/35858933/e2e_mask_rcnn_R-50-FPN_1x")
    assert url == (
        "https://dl.fbaipublicfiles.com/detectron/35858933/12_2017_baselines/"
        "e2e_mask_rcnn_R-50-FPN_1x.yaml.01_48_14.DzEQe4wC/output/train/"
        "coco_2014_train%3Acoco_2014_valminusminival/generalized_rcnn/model_final.pkl"
    )
    assert "/rpn/model_final.pkl" in ModelCatalog.get("Caffe2Detectron/COCO/35998355/rpn_R-50-C4_1x")
    assert "keypoints_coco_2014_train" in ModelCatalog.get(
        "Caffe2Detectron/COCO/37697547/e2e_keypoint_rcnn_R-50-FPN_1x"
    )
    with pytest.raises(RuntimeError, match="ImageNetPretrained/MSRA/R-101"):
        ModelCatalog.get("ImageNetPretrained/MSRA/R-5O")

    handler = PathManager._path_handlers["catalog://"]
    assert isinstance(handler, ModelCatalogHandler)
    assert handler.to_url("catalog://ImageNetPretrained/MSRA/R-101") == (
        "https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-101.pkl"
    )
    d2 = PathManager._path_handlers["detectron2://"]
    assert d2.to_url("detectron2://ImageNetPretrained/MSRA/R-50.pkl") == (
        "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"
    )
