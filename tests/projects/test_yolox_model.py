"""YOLOX project, the network slice: config keys; CSPDarknet / PAFPN outputs; parameter counts
of YOLOX-s / tiny / nano against the published ones; the head's prior bias; decoding on a
hand-made grid; inference (best class, threshold, per-class NMS, detections cap); the errors
a bad config gets. Training losses: test_yolox_losses.py."""

import argparse
import math
from pathlib import Path

import pytest
import torch

import train_net
from projects.YOLO import (
    YOLOX,
    YOLOPAFPN,
    CSPDarknet,
    YOLOXHead,
    add_yolox_config,
    decode,
    grid_points,
    space_to_depth,
)
from segtron.config import get_cfg
from segtron.layers import FrozenBatchNorm2d
from segtron.modeling import build_model
from segtron.structures import Instances

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "projects/YOLO/configs/COCO-Detection"


def _cfg(name: str, *opts):
    return train_net.build_config(
        argparse.Namespace(config_file=str(CONFIGS / name), opts=["MODEL.DEVICE", "cpu", *opts])
    )


@pytest.fixture(scope="module")
def yolox_s():
    """YOLOX-s from the shipped config, eval mode, at most 5 detections, every box a
    candidate (a fresh model scores about 1e-4, below YOLOX's 0.01)."""
    torch.manual_seed(0)
    cfg = _cfg(
        "yolox_s.yaml", "TEST.DETECTIONS_PER_IMAGE", "5", "MODEL.YOLOX.SCORE_THRESH_TEST", "0.0"
    )
    return build_model(cfg).eval()


# -- config --------------------------------------------------------------------------------------


def test_add_yolox_config_adds_yolox_s_defaults_and_keeps_existing_values():
    cfg = get_cfg()
    add_yolox_config(cfg)
    y = cfg.MODEL.YOLOX
    assert (y.NUM_CLASSES, y.DEPTH, y.WIDTH, y.DEPTHWISE, y.ACT) == (80, 0.33, 0.5, False, "silu")
    assert y.IN_FEATURES == ["dark3", "dark4", "dark5"] and y.STRIDES == [8, 16, 32]
    assert y.HEAD_IN_FEATURES == ["p3", "p4", "p5"]
    assert (y.SCORE_THRESH_TEST, y.NMS_THRESH_TEST, y.TOPK_CANDIDATES_TEST) == (0.01, 0.65, -1)
    assert (y.CENTER_RADIUS, y.IOU_COST_WEIGHT, y.DYNAMIC_K_CANDIDATES) == (2.5, 3.0, 10)
    y.NUM_CLASSES = 20
    add_yolox_config(cfg)
    assert cfg.MODEL.YOLOX.NUM_CLASSES == 20


def test_shipped_configs_feed_unnormalised_bgr_at_yolox_sizes():
    for name, size, width, depthwise in (
        ("yolox_s.yaml", 640, 0.5, False),
        ("yolox_tiny.yaml", 416, 0.375, False),
        ("yolox_nano.yaml", 416, 0.25, True),
    ):
        cfg = _cfg(name)
        assert cfg.MODEL.META_ARCHITECTURE == "YOLOX"
        assert cfg.INPUT.FORMAT == "BGR"
        assert cfg.MODEL.PIXEL_MEAN == [0.0, 0.0, 0.0] and cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0]
        assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (size, size)
        assert (cfg.MODEL.YOLOX.WIDTH, cfg.MODEL.YOLOX.DEPTHWISE) == (width, depthwise)
        assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.NESTEROV) == (
            0.01, 64, True,
        )


def test_project_is_importable_by_detectron2_style_name():
    import projects.YOLO
    import segtron.projects.yolo

    assert segtron.projects.yolo is projects.YOLO


# -- backbone and neck ---------------------------------------------------------------------------


def test_cspdarknet_and_pafpn_outputs_for_yolox_s_at_64px():
    torch.manual_seed(0)
    darknet = CSPDarknet(0.33, 0.5).eval()
    shapes = darknet.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "dark3": (128, 8), "dark4": (256, 16), "dark5": (512, 32),
    }
    neck = YOLOPAFPN(darknet, ["dark3", "dark4", "dark5"], 0.33).eval()
    assert {k: (s.channels, s.stride) for k, s in neck.output_shape().items()} == {
        "p3": (128, 8), "p4": (256, 16), "p5": (512, 32),  # 256, 512, 1024 x 0.5
    }
    assert neck.size_divisibility == 32
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        dark = darknet(x)
        pan = neck(x)
    assert {k: tuple(v.shape) for k, v in dark.items()} == {
        "dark3": (2, 128, 8, 8), "dark4": (2, 256, 4, 4), "dark5": (2, 512, 2, 2),
    }
    assert {k: tuple(v.shape) for k, v in pan.items()} == {
        "p3": (2, 128, 8, 8), "p4": (2, 256, 4, 4), "p5": (2, 512, 2, 2),
    }


def test_cspdarknet_depths_and_stem():
    darknet = CSPDarknet(0.33, 0.5, out_features=["stem", "dark2"])
    assert [len(getattr(darknet, n)[1].m) for n in ("dark2", "dark3", "dark4")] == [1, 3, 3]
    assert len(darknet.dark5[2].m) == 1 and not darknet.dark5[2].m[0].use_add  # no shortcut
    assert [m.kernel_size for m in darknet.dark5[1].m] == [5, 9, 13]  # SPP
    bn = darknet.stem.conv.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.03) and darknet.stem.conv.conv.bias is None
    assert isinstance(darknet.stem.conv.act, torch.nn.SiLU)
    out = darknet(torch.zeros(1, 3, 64, 64))
    assert list(out) == ["stem", "dark2"] and out["stem"].shape == (1, 32, 32, 32)


def test_space_to_depth_order_is_yoloxs():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    # top-left, bottom-left, top-right, bottom-right
    assert space_to_depth(x).flatten().tolist() == [1.0, 3.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="even"):
        space_to_depth(torch.zeros(1, 3, 5, 4))


def test_freeze_at_freezes_the_first_stages():
    darknet = CSPDarknet(0.33, 0.25, freeze_at=2)
    assert not any(p.requires_grad for p in darknet.stem.parameters())
    assert not any(p.requires_grad for p in darknet.dark2.parameters())
    assert all(p.requires_grad for p in darknet.dark3.parameters())
    assert isinstance(darknet.dark2[0].bn, FrozenBatchNorm2d)
    assert isinstance(darknet.dark3[0].bn, torch.nn.BatchNorm2d)


# -- parameter counts ----------------------------------------------------------------------------

# Published parameter counts for 80 classes: YOLOX-Tiny 5.06 M and YOLOX-Nano 0.91 M (Ge et al.
# 2021, Table 6; also the YOLOX README's model table); YOLOX-s 9.0 M (paper, Table 5; README),
# 8.97 M to two decimals (the figure YOLOX's model summary prints). Tolerance: 1%.
PUBLISHED_PARAMS = {
    "yolox_s.yaml": 8.97e6,
    "yolox_tiny.yaml": 5.06e6,
    "yolox_nano.yaml": 0.91e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_the_paper(name):
    model = build_model(_cfg(name))
    count = sum(p.numel() for p in model.parameters())
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


# -- head ----------------------------------------------------------------------------------------


def test_head_prior_bias_and_output_shapes():
    head = YOLOXHead(in_channels=[16, 32], num_classes=3, feat_channels=8, prior_prob=0.01)
    expected = -math.log((1 - 0.01) / 0.01)  # -4.59512
    for pred in list(head.cls_preds) + list(head.obj_preds):
        assert torch.allclose(pred.bias, torch.full_like(pred.bias, expected))
    assert not torch.allclose(head.reg_preds[0].bias, torch.full((4,), expected))
    cls, box, obj = head([torch.rand(2, 16, 4, 6), torch.rand(2, 32, 2, 3)])
    assert [tuple(t.shape) for t in cls] == [(2, 3, 4, 6), (2, 3, 2, 3)]
    assert [tuple(t.shape) for t in box] == [(2, 4, 4, 6), (2, 4, 2, 3)]
    assert [tuple(t.shape) for t in obj] == [(2, 1, 4, 6), (2, 1, 2, 3)]


def test_depthwise_head_uses_separable_branches():
    head = YOLOXHead(in_channels=[16], num_classes=3, feat_channels=8, depthwise=True)
    conv = head.cls_convs[0][0]
    assert conv.dconv.conv.groups == 8 and conv.pconv.conv.kernel_size == (1, 1)


# -- decoding ------------------------------------------------------------------------------------


def test_decode_on_a_hand_made_grid():
    """Level 0: 2x2 cells, stride 8; level 1: 1 cell, stride 16; K = 2.

    Cell (i, j) = (column, row) decodes to centre ((i + dx) s, (j + dy) s), size (e^tw s,
    e^th s); flat index j * W + i, level 0 first.
    """
    box0 = torch.zeros(1, 4, 2, 2)
    box0[0, :, 0, 1] = torch.tensor([0.5, 0.25, math.log(2.0), 0.0])  # row 0, column 1
    obj0 = torch.zeros(1, 1, 2, 2)
    obj0[0, 0, 1, 1] = math.log(3.0)  # row 1, column 1: sigmoid = 0.75
    cls0 = torch.zeros(1, 2, 2, 2)
    cls0[0, :, 0, 1] = torch.tensor([math.log(3.0), -math.log(3.0)])  # sigmoids 0.75, 0.25
    box1 = torch.tensor([0.5, 0.5, 0.0, math.log(0.5)]).view(1, 4, 1, 1)
    obj1 = torch.full((1, 1, 1, 1), -math.log(3.0))  # 0.25
    cls1 = torch.zeros(1, 2, 1, 1)
    boxes, scores = decode([cls0, cls1], [box0, box1], [obj0, obj1], [8, 16])
    assert boxes.shape == (1, 5, 4) and scores.shape == (1, 5, 2)
    expected_boxes = torch.tensor([
        [-4.0, -4.0, 4.0, 4.0],    # (0, 0): centre (0, 0), 8 x 8
        [4.0, -2.0, 20.0, 6.0],    # (1, 0): centre (12, 2), 16 x 8
        [-4.0, 4.0, 4.0, 12.0],    # (0, 1): centre (0, 8)
        [4.0, 4.0, 12.0, 12.0],    # (1, 1): centre (8, 8)
        [0.0, 4.0, 16.0, 12.0],    # level 1 (0, 0): centre (8, 8), 16 x 8
    ])
    expected_scores = torch.tensor([
        [0.25, 0.25], [0.375, 0.125], [0.25, 0.25], [0.375, 0.375], [0.125, 0.125],
    ])
    assert torch.allclose(boxes[0], expected_boxes, atol=1e-5)
    assert torch.allclose(scores[0], expected_scores, atol=1e-6)


def test_grid_points_order_and_strides():
    offsets, strides = grid_points([(2, 3), (1, 1)], [8, 16])
    assert offsets.tolist() == [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1], [0, 0]]
    assert strides.tolist() == [8] * 6 + [16]


# -- inference -----------------------------------------------------------------------------------


def test_eval_forward_returns_capped_instances_in_the_output_size(yolox_s):
    images = [
        {"image": torch.rand(3, 60, 90) * 255, "height": 120, "width": 180},
        {"image": torch.rand(3, 64, 64) * 255},
    ]
    with torch.no_grad():
        outputs = yolox_s(images)
    assert isinstance(yolox_s, YOLOX) and len(outputs) == 2
    for out, size in zip(outputs, [(120, 180), (64, 64)]):
        inst = out["instances"]
        assert isinstance(inst, Instances) and inst.image_size == size
        assert 1 <= len(inst) <= 5
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes"}
        assert torch.all(inst.scores[:-1] >= inst.scores[1:])
        assert inst.pred_classes.min() >= 0 and inst.pred_classes.max() < 80
        b = inst.pred_boxes.tensor
        assert b[:, 0].min() >= 0 and b[:, 2].max() <= size[1]
        assert b[:, 1].min() >= 0 and b[:, 3].max() <= size[0]


def test_fresh_model_has_no_detection_at_yoloxs_threshold():
    """Scores start at about 0.01 x 0.01 (the prior bias), below SCORE_THRESH_TEST 0.01."""
    torch.manual_seed(0)
    model = build_model(_cfg("yolox_nano.yaml")).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 64) * 255}])
    assert len(out[0]["instances"]) == 0


def test_inference_keeps_best_class_thresholds_and_nms_per_class(yolox_s):
    boxes = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],
        [0.0, 0.0, 10.0, 9.0],    # IoU 0.9 with box 0, same class: suppressed
        [0.0, 0.0, 10.0, 9.5],    # IoU 0.95 with box 0, other class: kept
        [20.0, 20.0, 30.0, 30.0],  # best score 0.009 < 0.01: dropped
    ])
    scores = torch.zeros(4, 80)
    scores[0, 3], scores[0, 5] = 0.9, 0.8   # best class 3 (class 5 is not a second detection)
    scores[1, 3] = 0.5
    scores[2, 7] = 0.6
    scores[3, 1] = 0.009
    yolox_s.test_score_thresh = 0.01
    try:
        result = yolox_s.inference_single_image(boxes, scores, (40, 40))
    finally:
        yolox_s.test_score_thresh = 0.0
    assert result.pred_classes.tolist() == [3, 7]
    assert result.scores.tolist() == pytest.approx([0.9, 0.6])
    assert torch.equal(result.pred_boxes.tensor, boxes[[0, 2]])


# -- training (next slice) -----------------------------------------------------------------------


# -- config errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts, key",
    [
        (["MODEL.YOLOX.ACT", "gelu"], "MODEL.YOLOX.ACT"),
        (["MODEL.YOLOX.WIDTH", "0.0"], "MODEL.YOLOX.WIDTH"),
        (["MODEL.YOLOX.STRIDES", "[8, 16, 64]"], "MODEL.YOLOX.STRIDES"),
        (["MODEL.YOLOX.IN_FEATURES", "['dark2', 'dark3', 'dark5']"], "MODEL.YOLOX.IN_FEATURES"),
        (["MODEL.YOLOX.HEAD_IN_FEATURES", "['p3', 'p6']"], "MODEL.YOLOX.HEAD_IN_FEATURES"),
        (["MODEL.YOLOX.NUM_CLASSES", "0"], "MODEL.YOLOX.NUM_CLASSES"),
        (["MODEL.YOLOX.PRIOR_PROB", "1.0"], "MODEL.YOLOX.PRIOR_PROB"),
        (["MODEL.YOLOX.TOPK_CANDIDATES_TEST", "0"], "MODEL.YOLOX.TOPK_CANDIDATES_TEST"),
        (["MODEL.BACKBONE.FREEZE_AT", "6"], "MODEL.BACKBONE.FREEZE_AT"),
    ],
)
def test_bad_config_errors_name_the_key(opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(_cfg("yolox_nano.yaml", *opts))
