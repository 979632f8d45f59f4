"""Fast R-CNN box predictor and box head.

References, all independent of the code under test: a brute-force inference (Python loop over
classes with torchvision.ops.nms, merged and sorted by score); losses worked out by hand on
tiny cases; torchvision's ``fastrcnn_loss`` and ``TwoMLPHead`` with the same weights.
"""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import fastrcnn_loss
from torchvision.ops import nms

from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling.box_regression import Box2BoxTransform
from segtron.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers, build_box_head
from segtron.modeling.roi_heads.fast_rcnn import (
    fast_rcnn_inference,
    fast_rcnn_inference_single_image,
)
from segtron.structures import Boxes, Instances
from segtron.utils.events import EventStorage


def _random_boxes(n, size=100.0, min_side=2.0):
    xy = torch.rand(n, 2) * size
    wh = torch.rand(n, 2) * size / 2 + min_side
    return torch.cat([xy, xy + wh], dim=1)


def _brute_force(boxes, scores, image_hw, score_thresh, nms_thresh, topk):
    """One image: per-class NMS with plain loops, then merge by decreasing score."""
    h, w = image_hw
    num_classes = scores.shape[1] - 1
    per_class_boxes = boxes.reshape(len(boxes), -1, 4)
    found = []  # (score, class, box)
    for c in range(num_classes):
        b = per_class_boxes[:, c if per_class_boxes.shape[1] > 1 else 0].clone()
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        s = scores[:, c]
        keep = s > score_thresh
        b, s = b[keep], s[keep]
        for i in nms(b, s, nms_thresh).tolist():
            found.append((s[i].item(), c, b[i]))
    found.sort(key=lambda item: -item[0])
    found = found[:topk]
    if not found:
        return torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return (
        torch.stack([f[2] for f in found]),
        torch.tensor([f[0] for f in found]),
        torch.tensor([f[1] for f in found]),
    )


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_inference_matches_brute_force(class_agnostic):
    num_classes, image_hw = 4, (80, 90)
    boxes_list, scores_list = [], []
    for n in (60, 25):
        base = _random_boxes(n)
        k = 1 if class_agnostic else num_classes
        # Class-specific boxes that overlap each other a lot, so NMS has work to do.
        jitter = torch.randn(n, k, 4) * 3
        boxes_list.append((base[:, None, :] + jitter).reshape(n, 4 * k))
        scores_list.append(torch.softmax(torch.randn(n, num_classes + 1) * 2, dim=1))
    results, kept = fast_rcnn_inference(
        boxes_list, scores_list, [image_hw, image_hw], 0.05, 0.5, 30
    )
    assert len(results) == len(kept) == 2
    for inst, idx, boxes, scores in zip(results, kept, boxes_list, scores_list):
        ref_boxes, ref_scores, ref_classes = _brute_force(boxes, scores, image_hw, 0.05, 0.5, 30)
        assert len(inst) == len(ref_scores) > 0
        torch.testing.assert_close(inst.scores, ref_scores)
        torch.testing.assert_close(inst.pred_classes, ref_classes)
        torch.testing.assert_close(inst.pred_boxes.tensor, ref_boxes)
        # The kept indices point at the rows the detections came from.
        torch.testing.assert_close(scores[idx, inst.pred_classes], inst.scores)
        assert inst.image_size == image_hw


def test_inference_drops_non_finite_rows_and_handles_no_detections():
    boxes = torch.tensor([[0.0, 0, 10, 10] * 2, [float("nan"), 0, 5, 5] * 2, [2.0, 2, 8, 8] * 2])
    scores = torch.tensor([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    inst, idx = fast_rcnn_inference_single_image(boxes, scores, (20, 20), 0.5, 0.5, 10)
    assert inst.pred_classes.tolist() == [1, 0]
    # Indices are rows of the finite inputs (row 2 became row 1).
    assert idx.tolist() == [1, 0]
    inst, idx = fast_rcnn_inference_single_image(boxes, scores, (20, 20), 0.95, 0.5, 10)
    assert len(inst) == 0 and idx.numel() == 0 and inst.pred_boxes.tensor.shape == (0, 4)


def _proposals(boxes, gt_classes, gt_boxes, image_hw=(50, 60)):
    inst = Instances(image_hw)
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(gt_classes)
    inst.gt_boxes = Boxes(torch.tensor(gt_boxes, dtype=torch.float32))
    return inst


def _predictor(num_classes=2, in_channels=8, **kwargs):
    return FastRCNNOutputLayers(
        ShapeSpec(channels=in_channels), box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
        num_classes=num_classes, **kwargs,
    )


def test_losses_by_hand():
    predictor = _predictor()
    # Regions 0 and 2 are foreground (classes 0 and 1), region 1 background (class 2).
    scores = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 1.5], [0.0, 1.0, 3.0]], requires_grad=True)
    deltas = torch.zeros(3, 8)
    deltas[0, 0:4] = torch.tensor([0.5, 0.0, 0.0, 0.0])  # class 0 of region 0
    deltas[2, 4:8] = torch.tensor([0.1, -0.2, 0.3, 0.0])  # class 1 of region 2
    deltas[1] = 7.0  # background rows never count
    deltas.requires_grad_(True)
    proposals = [
        _proposals(
            [[0, 0, 10, 10], [5, 5, 9, 9], [0, 0, 20, 10]],
            [0, 2, 1],
            [[1, 1, 11, 11], [0, 0, 0, 0], [0, 0, 20, 10]],
        )
    ]
    with EventStorage() as storage:
        losses = predictor.losses((scores, deltas), proposals)
        stats = {k: v[0] for k, v in storage.latest().items()}

    def ce(row, label):
        return math.log(sum(math.exp(v) for v in row)) - row[label]

    rows = scores.tolist()
    expected_cls = (ce(rows[0], 0) + ce(rows[1], 2) + ce(rows[2], 1)) / 3
    # Region 0: gt target (dx, dy, dw, dh) = (10 * 1 / 10, 10 * 1 / 10, 0, 0) -> L1 0.5 + 1.
    # Region 2: target 0 -> L1 0.1 + 0.2 + 0.3. Divided by the 3 sampled regions.
    expected_box = (1.5 + 0.6) / 3
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-6)
    assert losses["loss_box_reg"].item() == pytest.approx(expected_box, rel=1e-6)
    (losses["loss_cls"] + losses["loss_box_reg"]).backward()
    assert deltas.grad[1].abs().sum() == 0 and deltas.grad[0, 4:].abs().sum() == 0

    # argmax per row: 0, 2, 2 against gt 0, 2, 1.
    assert stats["fast_rcnn/cls_accuracy"] == pytest.approx(2 / 3)
    assert stats["fast_rcnn/fg_cls_accuracy"] == pytest.approx(1 / 2)
    assert stats["fast_rcnn/false_negative"] == pytest.approx(1 / 2)


def test_loss_weights_and_empty_batch():
    predictor = _predictor(loss_weight={"loss_box_reg": 2.0})
    assert predictor.loss_weight == {"loss_box_reg": 2.0}
    scores = torch.zeros((0, 3), requires_grad=True)
    deltas = torch.zeros((0, 8), requires_grad=True)
    empty = Instances((10, 10))
    empty.proposal_boxes = Boxes(torch.zeros((0, 4)))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    with EventStorage():
        losses = predictor.losses((scores, deltas), [empty])
    assert losses["loss_cls"].item() == 0 and losses["loss_box_reg"].item() == 0
    sum(losses.values()).backward()
    assert _predictor(loss_weight=0.5).loss_weight == {"loss_cls": 0.5, "loss_box_reg": 0.5}


def test_losses_match_torchvision_fastrcnn_loss():
    num_classes, num_regions = 3, 40
    predictor = _predictor(num_classes=num_classes, smooth_l1_beta=1 / 9)
    proposals_boxes = _random_boxes(num_regions)
    gt_boxes = proposals_boxes + torch.randn(num_regions, 4)
    gt_classes = torch.randint(0, num_classes + 1, (num_regions,))  # K = background
    scores = torch.randn(num_regions, num_classes + 1)
    deltas = torch.randn(num_regions, 4 * num_classes)
    proposals = [
        _proposals(proposals_boxes[:25].tolist(), gt_classes[:25].tolist(), gt_boxes[:25].tolist()),
        _proposals(proposals_boxes[25:].tolist(), gt_classes[25:].tolist(), gt_boxes[25:].tolist()),
    ]
    with EventStorage():
        ours = predictor.losses((scores, deltas), proposals)

    # torchvision: background is class 0, and its box slot comes first.
    tv_labels = torch.where(gt_classes == num_classes, 0, gt_classes + 1)
    tv_logits = torch.cat([scores[:, num_classes:], scores[:, :num_classes]], dim=1)
    tv_deltas = torch.cat([torch.zeros(num_regions, 4), deltas], dim=1)
    targets = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt_boxes, proposals_boxes)
    tv_cls, tv_box = fastrcnn_loss(tv_logits, tv_deltas, [tv_labels], [targets])
    torch.testing.assert_close(ours["loss_cls"], tv_cls)
    torch.testing.assert_close(ours["loss_box_reg"], tv_box)


def test_class_agnostic_and_predict_boxes():
    predictor = _predictor(num_classes=3, cls_agnostic_bbox_reg=True)
    assert predictor.bbox_pred.out_features == 4 and predictor.cls_score.out_features == 4
    props = _proposals([[0, 0, 10, 10], [10, 10, 30, 40]], [1, 3], [[0, 0, 10, 10]] * 2)
    deltas = torch.tensor([[1.0, 0, 0, 0], [0, 0, 5 * math.log(2), 0]])
    scores = torch.zeros(2, 4)
    boxes = predictor.predict_boxes((scores, deltas), [props])[0]
    torch.testing.assert_close(boxes, torch.tensor([[1.0, 0, 11, 10], [0, 10, 40, 40]]))
    gt_boxes = predictor.predict_boxes_for_gt_classes((scores, deltas), [props])[0]
    torch.testing.assert_close(gt_boxes, boxes)
    probs = predictor.predict_probs((scores, deltas), [props])[0]
    torch.testing.assert_close(probs, torch.full((2, 4), 0.25))


def test_predict_boxes_for_gt_classes_picks_the_gt_class():
    predictor = _predictor(num_classes=2)
    props = _proposals([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 2], [[0, 0, 10, 10]] * 2)
    deltas = torch.zeros(2, 8)
    deltas[0, 4] = 10.0  # class 1 of region 0: shift right by 1 box width
    deltas[1, 4] = 10.0  # region 1 is background: clamped to class 1 as well
    out = predictor.predict_boxes_for_gt_classes((torch.zeros(2, 3), deltas), [props])[0]
    torch.testing.assert_close(out, torch.tensor([[10.0, 0, 20, 10], [10.0, 0, 20, 10]]))


def test_sigmoid_ce_and_fed_loss():
    predictor = _predictor(num_classes=2, use_sigmoid_ce=True)
    scores = torch.tensor([[1.0, -1.0, 0.3], [0.0, 2.0, -0.5]])
    props = _proposals([[0, 0, 10, 10]] * 2, [1, 2], [[0, 0, 10, 10]] * 2)
    with EventStorage():
        loss = predictor.losses((scores, torch.zeros(2, 8)), [props])["loss_cls"]

    def bce(x, t):
        return math.log(1 + math.exp(-x)) if t else math.log(1 + math.exp(x))

    # Region 0 has class 1; region 1 is background (all-zero targets); background logit unused.
    expected = (bce(1.0, 0) + bce(-1.0, 1) + bce(0.0, 0) + bce(2.0, 0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    probs = predictor.predict_probs((scores, None), [props])[0]
    torch.testing.assert_close(probs, scores.sigmoid())

    fed = _predictor(
        num_classes=2, use_sigmoid_ce=True, use_fed_loss=True,
        get_fed_loss_cls_weights=lambda: torch.tensor([1.0, 0.0]), fed_loss_num_classes=2,
    )
    with EventStorage():
        fed_loss = fed.losses((scores, torch.zeros(2, 8)), [props])["loss_cls"]
    # Classes present: 1 and the background index 2 -> only class 1's column counts.
    assert fed_loss.item() == pytest.approx((bce(-1.0, 1) + bce(2.0, 0)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="USE_SIGMOID_CE"):
        _predictor(use_fed_loss=True, get_fed_loss_cls_weights=lambda: torch.ones(2))


def test_init_and_from_config():
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 3.0
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.3
    cfg.TEST.DETECTIONS_PER_IMAGE = 7
    predictor = FastRCNNOutputLayers(cfg, ShapeSpec(channels=16, height=2, width=2))
    assert predictor.cls_score.weight.shape == (6, 64)
    assert predictor.bbox_pred.weight.shape == (20, 64)
    assert predictor.box2box_transform.weights == (10.0, 10.0, 5.0, 5.0)
    assert (predictor.test_score_thresh, predictor.test_nms_thresh) == (0.3, 0.5)
    assert predictor.test_topk_per_image == 7
    assert predictor.loss_weight == {"loss_box_reg": 3.0}
    assert predictor.cls_score.bias.abs().sum() == 0 and predictor.bbox_pred.bias.abs().sum() == 0

    big = _predictor(num_classes=80, in_channels=1024)
    assert big.cls_score.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert big.bbox_pred.weight.std().item() == pytest.approx(0.001, rel=0.05)

    scores, deltas = predictor(torch.randn(3, 16, 2, 2))
    assert scores.shape == (3, 6) and deltas.shape == (3, 20)
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE"):
        _predictor(box_reg_loss_type="l2")


def test_box_head_matches_torchvision_two_mlp_head():
    cfg = get_cfg()
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    head = build_box_head(cfg, ShapeSpec(channels=8, height=7, width=7))
    assert [name for name, _ in head.named_children()] == [
        "flatten", "fc1", "fc_relu1", "fc2", "fc_relu2"
    ]
    assert head.output_shape == ShapeSpec(channels=32)
    # c2_xavier_fill: uniform with bound sqrt(3 / fan_in), zero bias.
    bound = math.sqrt(3 / (8 * 7 * 7))
    assert head.fc1.weight.abs().max() <= bound and head.fc1.bias.abs().sum() == 0

    reference = TwoMLPHead(8 * 7 * 7, 32)
    with torch.no_grad():
        reference.fc6.weight.copy_(head.fc1.weight)
        reference.fc6.bias.copy_(torch.randn(32))
        head.fc1.bias.copy_(reference.fc6.bias)
        reference.fc7.weight.copy_(head.fc2.weight)
        reference.fc7.bias.copy_(head.fc2.bias)
    x = torch.randn(5, 8, 7, 7)
    torch.testing.assert_close(head(x), reference(x))


def test_box_head_with_convs_and_errors():
    head = FastRCNNConvFCHead(
        ShapeSpec(channels=4, height=5, width=5), conv_dims=[6, 6], fc_dims=[10]
    )
    assert [n for n, _ in head.named_children()] == ["conv1", "conv2", "flatten", "fc1", "fc_relu1"]
    assert head.conv1.bias is not None and head.conv1.bias.abs().sum() == 0
    normed = FastRCNNConvFCHead(
        ShapeSpec(channels=4, height=5, width=5), conv_dims=[32], fc_dims=[10], conv_norm="GN"
    )
    assert normed.conv1.bias is None and isinstance(normed.conv1.norm, torch.nn.GroupNorm)
    assert head(torch.randn(2, 4, 5, 5)).shape == (2, 10)
    conv_only = FastRCNNConvFCHead(
        ShapeSpec(channels=4, height=5, width=5), conv_dims=[6], fc_dims=[]
    )
    assert conv_only.output_shape == ShapeSpec(channels=6, height=5, width=5)
    assert (conv_only(torch.randn(2, 4, 5, 5)) >= 0).all()  # ReLU after the conv
    with pytest.raises(ValueError, match="NUM_FC"):
        FastRCNNConvFCHead(ShapeSpec(channels=4, height=5, width=5), conv_dims=[], fc_dims=[])
    with pytest.raises(ValueError, match="MODEL.ROI_BOX_HEAD.NAME"):
        build_box_head(get_cfg(), ShapeSpec(channels=4, height=5, width=5))
