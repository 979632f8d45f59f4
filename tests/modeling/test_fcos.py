"""FCOS: point-to-box assignment (centre sampling, scale ranges, smallest box) and centerness on
a hand-worked grid, the losses' normaliser, the head, inference scores, build from config."""

import math

import pytest
import torch
from torch import nn

from segtron import model_zoo
from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling import build_model
from segtron.modeling.backbone import Backbone
from segtron.modeling.meta_arch import FCOS, FCOSHead
from segtron.structures import Boxes, Instances
from segtron.utils.events import EventStorage


class _TwoLevelBackbone(Backbone):
    """"p3" (stride 8) and "p4" (stride 16) maps of 4 channels."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(3, 4, 8, stride=8)
        self.c4 = nn.Conv2d(3, 4, 16, stride=16)
        self._out_features = ["p3", "p4"]
        self._out_feature_channels = {"p3": 4, "p4": 4}
        self._out_feature_strides = {"p3": 8, "p4": 16}

    @property
    def size_divisibility(self):
        return 16

    def forward(self, x):
        return {"p3": self.c3(x), "p4": self.c4(x)}


def _fcos(**kwargs):
    shapes = [ShapeSpec(channels=4, stride=8), ShapeSpec(channels=4, stride=16)]
    args = dict(
        backbone=_TwoLevelBackbone(),
        head=FCOSHead(input_shape=shapes, num_classes=3, conv_dims=[4], norm=""),
        num_classes=3,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )
    args.update(kwargs)
    return FCOS(**args)


def _instances(boxes, classes, size=(128, 128)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def _points(model):
    """Points of a 128x128 input: p3 is 16x16 (rows 0..255), p4 8x8 (rows 256..319)."""
    return model.anchor_generator([torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8)])


def _row(x, y):
    """Row of the p3 point at (x, y) px (multiples of 8)."""
    return (y // 8) * 16 + x // 8


def _row_p4(x, y):
    """Row of the p4 point at (x, y) px (multiples of 16)."""
    return 256 + (y // 16) * 8 + x // 16


def test_points_are_stride_sized_boxes_at_multiples_of_the_stride():
    points = _points(_fcos())
    assert [len(p) for p in points] == [256, 64]
    assert points[0].tensor[_row(16, 8)].tolist() == [12, 4, 20, 12]
    assert points[1].tensor[_row_p4(32, 16) - 256].tolist() == [24, 8, 40, 24]


def test_assignment_on_a_hand_worked_grid():
    """Three boxes on a 128x128 input (p3 points every 8 px, p4 every 16 px):

    - A = (40, 40, 60, 60), class 1, centre (50, 50). p3 points strictly inside it within
      1.5 * 8 = 12 px of the centre on both axes: x, y in {48, 56}. Their largest side distance
      is <= 20 px, inside p3's range (0, 64). On p4 it would need > 64 px: none.
    - C = (40, 40, 64, 64), class 2, centre (52, 52): p3 candidates x, y in {48, 56} too; the
      three points (48, 48), (56, 48), (48, 56) qualify for both boxes and take A, the smaller;
      (56, 56) is also in both, and also goes to A.
    - B = (0, 0, 128, 112), class 0, centre (64, 56). p4 points within 24 px: x in {48, 64, 80},
      y in {48, 64}. Largest side distance: 80 at x = 48 or 80 (positive, > 64), exactly 64
      at x = 64 (not > 64: negative). On p3 (radius 12: x in {56, 64, 72}, y in {48, 56,
      64}) every candidate reaches >= 64 px, outside p3's range (0, 64): negative.
    """
    model = _fcos()
    boxes = [[40, 40, 60, 60], [40, 40, 64, 64], [0, 0, 128, 112]]
    labels, matched = model.label_anchors(_points(model), [_instances(boxes, [1, 2, 0])])
    labels, matched = labels[0], matched[0]

    expected = {}
    for x in (48, 56):
        for y in (48, 56):
            expected[_row(x, y)] = (1, boxes[0])
    for x in (48, 80):
        for y in (48, 64):
            expected[_row_p4(x, y)] = (0, boxes[2])
    positives = torch.nonzero(labels != 3).flatten().tolist()
    assert sorted(positives) == sorted(expected)
    for row, (cls, box) in expected.items():
        assert labels[row].item() == cls
        assert matched[row].tolist() == box
    assert labels[_row_p4(64, 48)] == 3 and labels[_row_p4(64, 64)] == 3  # reach exactly 64


def test_centre_sampling_radius_and_no_gt():
    """With a radius of half a stride (4 px), only the p3 point (48, 48) of A = (40, 40, 60, 60)
    is within 4 px of its centre (50, 50) on both axes. An image without gt: all background."""
    model = _fcos(center_sampling_radius=0.5)
    labels, _ = model.label_anchors(_points(model), [_instances([[40, 40, 60, 60]], [1])])
    assert torch.nonzero(labels[0] != 3).flatten().tolist() == [_row(48, 48)]
    labels, boxes = model.label_anchors(_points(model), [_instances([], [])])
    assert (labels[0] == 3).all() and boxes[0].abs().sum() == 0


def test_centerness_targets():
    """(48, 48) in (40, 40, 60, 60): l = t = 8, r = b = 12 -> sqrt(8/12 * 8/12) = 2/3; the
    centre point of a box -> 1."""
    model = _fcos()
    points = _points(model)
    gt = torch.zeros(320, 4)
    gt[_row(48, 48)] = torch.tensor([40.0, 40, 60, 60])
    gt[_row(48, 40)] = torch.tensor([32.0, 32, 64, 48])
    target = model.compute_ctrness_targets(points, [gt])
    assert target.shape == (1, 320)
    assert target[0, _row(48, 48)].item() == pytest.approx(2 / 3)
    assert target[0, _row(48, 40)].item() == pytest.approx(1.0)


def test_losses_normaliser_starts_at_300():
    """Four positives: normaliser 0.9 * 300 + 0.1 * 4 = 270.4. loss_fcos_ctr is the BCE of
    logit 0 (p = 0.5) against each positive's centerness target, summed / 270.4."""
    model = _fcos()
    points = _points(model)
    batch_labels, batch_boxes = model.label_anchors(
        points, [_instances([[40, 40, 60, 60]], [1])]
    )
    logits = [torch.zeros(1, 256, 3), torch.zeros(1, 64, 3)]
    deltas = [torch.ones(1, 256, 4), torch.ones(1, 64, 4)]
    centerness = [torch.zeros(1, 256, 1), torch.zeros(1, 64, 1)]
    with EventStorage() as storage:
        losses = model.losses(points, logits, batch_labels, deltas, batch_boxes, centerness)
        assert storage.latest()["num_pos_anchors"][0] == 4
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    assert model.loss_normalizer == pytest.approx(270.4)
    targets = model.compute_ctrness_targets(points, batch_boxes)[0][batch_labels[0] != 3]
    # BCE(0, t) = ln 2 for every target t (p = 0.5): the sum is 4 ln 2.
    assert targets.numel() == 4
    assert losses["loss_fcos_ctr"].item() == pytest.approx(4 * math.log(2) / 270.4, rel=1e-6)
    # Focal loss at logit 0: 0.25 * 0.25 * ln 2 per positive class entry and 0.75 * 0.25 *
    # ln 2 per negative entry; 320 points x 3 classes with 4 positive entries.
    per_pos, per_neg = 0.0625 * math.log(2), 0.1875 * math.log(2)
    expected = (4 * per_pos + (960 - 4) * per_neg) / 270.4
    assert losses["loss_fcos_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_inference_scores_are_geometric_mean_of_class_and_centerness():
    model = _fcos(test_score_thresh=0.0, test_topk_candidates=1, max_detections_per_image=10)
    model.eval()
    with torch.no_grad():
        for conv in (model.head.cls_score, model.head.ctrness, model.head.bbox_pred):
            conv.weight.zero_()
        model.head.cls_score.bias.copy_(torch.tensor([2.0, -1.0, 0.0]))
        model.head.bbox_pred.bias.fill_(1.0)  # one stride to every side
        model.head.ctrness.bias.fill_(-1.0)
        out = model([{"image": torch.zeros(3, 32, 32)}])[0]["instances"]
    score = math.sqrt(1 / (1 + math.exp(-2.0)) * 1 / (1 + math.exp(1.0)))
    # One candidate per level (top-1 of equal scores), both class 0: a 16 px box from p3 and a
    # 32 px box from p4, which overlap by IoU <= 0.25 < 0.6, so NMS keeps both.
    assert len(out) == 2 and out.pred_classes.tolist() == [0, 0]
    assert out.scores.tolist() == pytest.approx([score, score])


def test_head_layout():
    shapes = [ShapeSpec(channels=32, stride=s) for s in (8, 16)]
    head = FCOSHead(input_shape=shapes, num_classes=5, conv_dims=[32, 32], norm="GN")
    keys = set(head.state_dict())
    assert {"cls_subnet.0.weight", "cls_subnet.1.weight", "bbox_subnet.3.bias",
            "cls_score.weight", "bbox_pred.weight", "ctrness.weight", "ctrness.bias"} <= keys
    assert head.ctrness.bias.item() == 0
    logits, deltas, centerness = head([torch.rand(1, 32, 4, 6), torch.rand(1, 32, 2, 3)])
    assert [tuple(x.shape) for x in logits] == [(1, 5, 4, 6), (1, 5, 2, 3)]
    assert [tuple(x.shape) for x in deltas] == [(1, 4, 4, 6), (1, 4, 2, 3)]
    assert [tuple(x.shape) for x in centerness] == [(1, 1, 4, 6), (1, 1, 2, 3)]


def tiny_fcos_cfg():
    """The shipped FCOS config at a quarter-width ResNet-18 with a 64-channel FPN (GN's 32
    groups get 2 channels each, so even a 1x1 P7 normalises), 3 classes."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/fcos_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "64",
        "MODEL.FCOS.NUM_CLASSES", "3", "MODEL.FCOS.NUM_CONVS", "1",
    ])
    return cfg


def test_build_from_config_train_and_predict():
    cfg = tiny_fcos_cfg()
    model = build_model(cfg)
    assert isinstance(model, FCOS)
    # P6 comes from P5 (FPN channels), not from res5.
    assert model.backbone.top_block.in_feature == "p5"
    assert model.backbone.top_block.p6.in_channels == 64
    assert isinstance(model.head.cls_subnet[1], nn.GroupNorm)
    assert model.anchor_generator.strides == [8, 16, 32, 64, 128]
    batch = [{"image": torch.rand(3, 96, 128) * 255,
              "instances": _instances([[10, 10, 60, 50]], [2], size=(96, 128))}]
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 96, 128) * 255, "height": 48, "width": 64}])
    assert out[0]["instances"].image_size == (48, 64)


def test_config_errors_name_the_key():
    cfg = tiny_fcos_cfg()
    cfg.MODEL.FCOS.IN_FEATURES = ["p3", "p8"]
    with pytest.raises(ValueError, match=r"MODEL.FCOS.IN_FEATURES.*\['p8'\]"):
        build_model(cfg)
    cfg = tiny_fcos_cfg()
    cfg.MODEL.FCOS.NUM_CLASSES = 0
    with pytest.raises(ValueError, match="MODEL.FCOS.NUM_CLASSES = 0"):
        build_model(cfg)
    cfg = tiny_fcos_cfg()
    cfg.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 0.0
    with pytest.raises(ValueError, match="MODEL.FCOS.CENTER_SAMPLING_RADIUS"):
        build_model(cfg)
