"""Box coding against torchvision's BoxCoder / BoxLinearCoder and torchvision.ops losses.

torchvision's ``BoxCoder(weights, bbox_xform_clip)`` is the same R-CNN parameterisation with the
same default clamp, log(1000 / 16); note its argument order: ``encode_single(targets,
references)`` and ``decode_single(deltas, references)``.
"""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from segtron.modeling.box_regression import (
    Box2BoxTransform,
    Box2BoxTransformLinear,
    _dense_box_regression_loss,
)
from segtron.structures import Boxes


def _random_boxes(n, max_xy=500.0, min_wh=2.0, max_wh=300.0, dtype=torch.float32):
    xy = torch.rand(n, 2, dtype=torch.float64) * max_xy
    wh = min_wh + torch.rand(n, 2, dtype=torch.float64) * (max_wh - min_wh)
    return torch.cat([xy, xy + wh], dim=1).to(dtype)


@pytest.mark.parametrize("weights", [(1, 1, 1, 1), (10, 10, 5, 5), (30, 30, 15, 15)])
def test_matches_torchvision_box_coder(weights):
    src, tgt = _random_boxes(200), _random_boxes(200)
    ours = Box2BoxTransform(weights)
    tv = BoxCoder(weights, bbox_xform_clip=math.log(1000.0 / 16))
    torch.testing.assert_close(
        ours.get_deltas(src, tgt), tv.encode_single(tgt, src), rtol=1e-5, atol=1e-5
    )

    deltas = torch.randn(200, 4 * 3) * 2.0  # 3 class-specific boxes per row, some clamped
    torch.testing.assert_close(
        ours.apply_deltas(deltas, src), tv.decode_single(deltas, src), rtol=1e-5, atol=1e-5
    )


def test_round_trip():
    src, tgt = _random_boxes(100, dtype=torch.float64), _random_boxes(100, dtype=torch.float64)
    b2b = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    decoded = b2b.apply_deltas(b2b.get_deltas(src, tgt), src)
    assert decoded.dtype == torch.float64
    torch.testing.assert_close(decoded, tgt, rtol=1e-9, atol=1e-9)


def test_clamping_of_dw_dh():
    b2b = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    out = b2b.apply_deltas(torch.tensor([[0.0, 0.0, 50.0, -1.0]]), box)
    # dw clamped to log(1000/16): width 16 -> 1000 around the centre 8; dh = -1 untouched.
    h = 16 * math.exp(-1.0)
    torch.testing.assert_close(out, torch.tensor([[8 - 500.0, 8 - h / 2, 8 + 500.0, 8 + h / 2]]))
    custom = Box2BoxTransform((1.0, 1.0, 1.0, 1.0), scale_clamp=math.log(2.0))
    out = custom.apply_deltas(torch.tensor([[0.0, 0.0, 5.0, 5.0]]), box)
    torch.testing.assert_close(out, torch.tensor([[-8.0, -8.0, 24.0, 24.0]]))


def test_class_specific_deltas_and_dtypes():
    b2b = Box2BoxTransform((10.0, 10.0, 5.0, 5.0))
    boxes = _random_boxes(7)
    deltas = torch.randn(7, 12)
    out = b2b.apply_deltas(deltas, boxes)
    for k in range(3):
        cols = slice(4 * k, 4 * k + 4)
        torch.testing.assert_close(out[:, cols], b2b.apply_deltas(deltas[:, cols], boxes))
    assert b2b.apply_deltas(deltas.half(), boxes).dtype == torch.float32
    assert b2b.apply_deltas(torch.zeros(0, 8), torch.zeros(0, 4)).shape == (0, 8)
    with pytest.raises(ValueError, match=r"\(N, k\*4\)"):
        b2b.apply_deltas(torch.zeros(3, 5), boxes[:3])
    with pytest.raises(ValueError, match="src box"):
        b2b.get_deltas(torch.tensor([[0.0, 0.0, 0.0, 5.0]]), boxes[:1])


def test_linear_matches_torchvision_box_linear_coder():
    src, tgt = _random_boxes(50), _random_boxes(50)
    for normalize in (True, False):
        ours = Box2BoxTransformLinear(normalize_by_size=normalize)
        tv = BoxLinearCoder(normalize_by_size=normalize)
        torch.testing.assert_close(
            ours.get_deltas(src, tgt), tv.encode(src, tgt), rtol=1e-5, atol=1e-5
        )
        positive = torch.rand(50, 4) * 3
        torch.testing.assert_close(ours.apply_deltas(positive, src), tv.decode(positive, src))


def test_linear_hand_example_and_relu():
    b2b = Box2BoxTransformLinear(normalize_by_size=True)
    src = torch.tensor([[0.0, 0.0, 8.0, 4.0]])  # centre (4, 2), size 8 x 4
    tgt = torch.tensor([[2.0, -2.0, 12.0, 3.0]])
    deltas = b2b.get_deltas(src, tgt)
    torch.testing.assert_close(deltas, torch.tensor([[2 / 8, 4 / 4, 8 / 8, 1 / 4]]))
    torch.testing.assert_close(b2b.apply_deltas(deltas, src), tgt)
    # Negative distances are treated as 0: the box collapses onto the centre on those sides.
    out = b2b.apply_deltas(torch.tensor([[-1.0, 0.5, -2.0, 0.5]]), src)
    torch.testing.assert_close(out, torch.tensor([[4.0, 0.0, 4.0, 4.0]]))
    two = b2b.apply_deltas(torch.cat([deltas, deltas], dim=1), src)
    torch.testing.assert_close(two, torch.cat([tgt, tgt], dim=1))


def _dense_inputs(num_images=2, level_sizes=(30, 12)):
    anchors = [Boxes(_random_boxes(n, min_wh=8.0)) for n in level_sizes]
    total = sum(level_sizes)
    preds = [torch.randn(num_images, n, 4) * 0.3 for n in level_sizes]
    gt = [_random_boxes(total, min_wh=8.0) for _ in range(num_images)]
    fg = torch.rand(num_images, total) < 0.4
    return anchors, preds, gt, fg


def test_dense_smooth_l1_loss_matches_brute_force():
    anchors, preds, gt, fg = _dense_inputs()
    b2b = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    tv = BoxCoder((1.0, 1.0, 1.0, 1.0))
    all_anchors = torch.cat([a.tensor for a in anchors])
    all_preds = torch.cat(preds, dim=1)
    for beta in (0.0, 0.1):
        expected = 0.0
        for i in range(fg.shape[0]):
            for j in range(fg.shape[1]):
                if fg[i, j]:
                    target = tv.encode_single(gt[i][j : j + 1], all_anchors[j : j + 1])[0]
                    for p, t in zip(all_preds[i, j].tolist(), target.tolist()):
                        d = abs(p - t)
                        if beta == 0:
                            expected += d
                        else:
                            expected += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
        loss = _dense_box_regression_loss(anchors, b2b, preds, gt, fg, "smooth_l1", beta)
        assert loss.dim() == 0
        assert loss.item() == pytest.approx(expected, rel=1e-4)
    # Tensors instead of Boxes for the anchors give the same loss.
    same = _dense_box_regression_loss([a.tensor for a in anchors], b2b, preds, gt, fg)
    boxes_loss = _dense_box_regression_loss(anchors, b2b, preds, gt, fg)
    assert same.item() == pytest.approx(boxes_loss.item())


@pytest.mark.parametrize(
    "kind, reference",
    [
        ("giou", generalized_box_iou_loss),
        ("diou", distance_box_iou_loss),
        ("ciou", complete_box_iou_loss),
    ],
)
def test_dense_iou_losses_match_torchvision(kind, reference):
    anchors, preds, gt, fg = _dense_inputs()
    b2b = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    tv = BoxCoder((1.0, 1.0, 1.0, 1.0))
    all_anchors = torch.cat([a.tensor for a in anchors])
    all_preds = torch.cat(preds, dim=1)
    decoded = torch.stack([tv.decode_single(all_preds[i], all_anchors) for i in range(2)])
    expected = reference(decoded[fg], torch.stack(gt)[fg], reduction="sum")
    loss = _dense_box_regression_loss(anchors, b2b, preds, gt, fg, box_reg_loss_type=kind)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-4)


def test_dense_loss_empty_foreground_and_bad_type():
    anchors, preds, gt, fg = _dense_inputs()
    preds = [p.requires_grad_() for p in preds]
    b2b = Box2BoxTransform((1.0, 1.0, 1.0, 1.0))
    loss = _dense_box_regression_loss(anchors, b2b, preds, gt, torch.zeros_like(fg))
    assert loss.item() == 0.0
    loss.backward()  # still connected to the predictions
    with pytest.raises(ValueError, match="'l2'"):
        _dense_box_regression_loss(anchors, b2b, preds, gt, fg, box_reg_loss_type="l2")
