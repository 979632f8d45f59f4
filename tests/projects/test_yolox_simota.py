"""YOLOX's SimOTA assignment (projects/YOLO/simota.py) on hand-made cases: the centre-region
candidates of a 4x4 grid at stride 8, the dynamic k from top-IoU sums, each GT's k
lowest-cost anchors and conflicts, the cost formula, the per-anchor targets, 0 GT and 0
candidates, and the errors."""

import math

import pytest
import torch

from projects.YOLO.simota import (
    center_candidates,
    dynamic_k_matching,
    dynamic_ks,
    simota_assign,
    simota_cost,
)

STRIDE = 8


def _grid_4x4():
    """Anchor points of a 4x4 map at stride 8, row-major: index = 4 * row + col, centre
    ((col + 0.5) * 8, (row + 0.5) * 8), i.e. coordinates 4, 12, 20, 28."""
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    centers = torch.stack([cols.flatten(), rows.flatten()], dim=1).float() * STRIDE + STRIDE / 2
    return centers, torch.full((16,), float(STRIDE))


# --- candidates -----------------------------------------------------------------------------


def test_center_candidates_by_hand():
    centers, strides = _grid_4x4()
    gt = torch.tensor(
        [
            [0.0, 0.0, 16.0, 16.0],  # contains the points 4, 12 (x and y); centre square (-12, 28)
            [24.0, 0.0, 32.0, 8.0],  # contains (28, 4); square x in (8, 48), y in (-16, 24)
        ]
    )
    candidate, in_both = center_candidates(centers, strides, gt)
    # GT 0's square holds rows/cols 0..2 (28 is on its edge: outside); GT 1's adds col 3 for
    # rows 0..2. The bottom row (y = 28) is outside both squares and both boxes.
    assert candidate.tolist() == [True] * 12 + [False] * 4
    assert in_both.shape == (2, 12)
    assert in_both[0].nonzero().flatten().tolist() == [0, 1, 4, 5]
    assert in_both[1].nonzero().flatten().tolist() == [3]


def test_center_candidates_radius_scales_with_each_anchor_stride():
    gt = torch.tensor([[0.0, 0.0, 16.0, 16.0]])  # centre (8, 8)
    centers = torch.tensor([[60.0, 8.0], [60.0, 8.0]])
    strides = torch.tensor([8.0, 32.0])  # half-sides 20 and 80 pixels
    candidate, in_both = center_candidates(centers, strides, gt)
    assert candidate.tolist() == [False, True]
    assert in_both.tolist() == [[False]]  # inside the square, not the box
    candidate, _ = center_candidates(centers, strides, gt, radius=1.5)  # half-sides 12, 48
    assert candidate.tolist() == [False, False]


def test_center_candidates_errors():
    centers, strides = _grid_4x4()
    with pytest.raises(ValueError, match="strides must be"):
        center_candidates(centers, strides[:3], torch.zeros(1, 4))
    with pytest.raises(ValueError, match="gt_boxes"):
        center_candidates(centers, strides, torch.zeros(4))


# --- dynamic k and matching -----------------------------------------------------------------


IOUS = torch.tensor(
    [
        [0.75, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0],  # top sum 2.25 -> k 2
        [0.0, 0.0, 0.5, 0.75, 0.75, 0.5, 0.25, 0.25],  # top sum 3.0 -> k 3
    ]
)


def test_dynamic_ks_from_top_iou_sums():
    assert dynamic_ks(IOUS).tolist() == [2, 3]
    assert dynamic_ks(IOUS, top_candidates=2).tolist() == [1, 1]  # 1.5 -> 1
    # Only the 10 largest count: 12 IoUs of 0.5 sum to 5 over the top 10.
    assert dynamic_ks(torch.full((1, 12), 0.5)).tolist() == [5]
    # At least 1, even with no overlap at all.
    assert dynamic_ks(torch.zeros(1, 3)).tolist() == [1]


def test_each_gt_takes_its_k_lowest_cost_anchors():
    cost = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0, 9.0],  # k 2: anchors 0, 1
            [9.0, 9.0, 9.0, 1.0, 2.0, 1.5, 9.0, 9.0],  # k 3: anchors 3, 5, 4
        ]
    )
    matched, fg = dynamic_k_matching(cost, IOUS)
    assert matched.dtype == torch.int64
    assert matched.tolist() == [0, 0, -1, 1, 1, 1, -1, -1]
    assert fg.tolist() == [m >= 0 for m in matched.tolist()]


def test_conflicting_anchor_goes_to_the_lower_cost_gt():
    cost = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 9.0, 9.0, 9.0, 9.0],  # claims 0 (cost 1), 1 (cost 2)
            [1.25, 1.5, 9.0, 1.0, 9.0, 9.0, 9.0, 9.0],  # claims 3, 0 (cost 1.25), 1 (cost 1.5)
        ]
    )
    matched, _ = dynamic_k_matching(cost, IOUS)
    # Anchor 0: GT 0 (1.0 < 1.25); anchor 1: GT 1 (1.5 < 2.0).
    assert matched.tolist() == [0, 1, -1, 1, -1, -1, -1, -1]


def test_only_claimants_compete_for_an_anchor():
    # GT 0 (k 2) is cheaper on anchor 2 than GT 1 but has used its k on anchors 0 and 1, so
    # anchor 2, claimed by GT 1 only, is GT 1's.
    cost = torch.tensor(
        [
            [1.0, 2.0, 3.0, 9.0, 9.0, 9.0, 9.0, 9.0],
            [9.0, 9.0, 5.0, 1.0, 2.0, 9.0, 9.0, 9.0],
        ]
    )
    matched, _ = dynamic_k_matching(cost, IOUS)
    assert matched.tolist() == [0, 0, 1, 1, 1, -1, -1, -1]


def test_equal_costs_take_the_lower_anchor_index():
    matched, _ = dynamic_k_matching(torch.ones(1, 5), torch.full((1, 5), 0.5))  # k 2
    assert matched.tolist() == [0, 0, -1, -1, -1]


def test_dynamic_k_matching_empty_and_errors():
    matched, fg = dynamic_k_matching(torch.zeros(0, 4), torch.zeros(0, 4))
    assert matched.tolist() == [-1] * 4 and not fg.any()
    matched, fg = dynamic_k_matching(torch.zeros(2, 0), torch.zeros(2, 0))
    assert matched.shape == (0,) and fg.shape == (0,)
    with pytest.raises(ValueError, match="same shape"):
        dynamic_k_matching(torch.zeros(2, 3), torch.zeros(2, 4))


# --- cost -----------------------------------------------------------------------------------


def test_simota_cost_formula():
    joint = torch.tensor([[0.5, 0.2], [0.5, 0.2]])  # 2 candidates, K = 2
    ious = torch.tensor([[0.5, 0.5]])
    cost = simota_cost(joint, ious, torch.tensor([0]), torch.tensor([[True, False]]))
    cls = -math.log(0.5) - math.log(1 - 0.2)  # BCE summed over both classes, target class 0
    iou = -math.log(0.5 + 1e-8)
    assert cost[0, 0].item() == pytest.approx(cls + 3.0 * iou, rel=1e-6)
    assert cost[0, 1].item() == pytest.approx(cls + 3.0 * iou + 100000.0, rel=1e-6)


def test_simota_cost_matches_summed_bce():
    gen = torch.Generator().manual_seed(0)
    joint = torch.rand(7, 4, generator=gen)
    joint[0, 1] = 0.0  # log clamped at -100, like torch's BCE
    ious = torch.rand(3, 7, generator=gen)
    gt_classes = torch.tensor([1, 3, 1])
    inside = torch.rand(3, 7, generator=gen) > 0.5
    onehot = torch.nn.functional.one_hot(gt_classes, 4).float()
    bce = torch.nn.functional.binary_cross_entropy(
        joint[None].expand(3, 7, 4), onehot[:, None].expand(3, 7, 4), reduction="none"
    ).sum(-1)
    expected = bce + 3.0 * -torch.log(ious + 1e-8) + 100000.0 * (~inside).float()
    torch.testing.assert_close(simota_cost(joint, ious, gt_classes, inside), expected)


# --- simota_assign --------------------------------------------------------------------------

GT_BOX = torch.tensor([[0.0, 0.0, 16.0, 16.0]])  # candidates: rows/cols 0..2; box: 0, 1, 4, 5


def _predictions():
    """Predicted boxes: the GT box itself (IoU 1) at the in-box anchors, its top half (IoU 0.5)
    elsewhere; K = 2 classes at 0.5, objectness 1."""
    pred = torch.tensor([[0.0, 0.0, 16.0, 8.0]]).repeat(16, 1)
    pred[[0, 1, 4, 5]] = GT_BOX
    return pred, torch.full((16, 2), 0.5), torch.ones(16)


def test_simota_assign_targets():
    centers, strides = _grid_4x4()
    pred, cls_probs, obj_probs = _predictions()
    res = simota_assign(cls_probs, obj_probs, pred, centers, strides, GT_BOX, torch.tensor([1]))
    # 9 candidates, IoU sum 4 * 1 + 5 * 0.5 = 6.5 -> k 6: the 4 in-box anchors (no 1e5
    # penalty), then the 2 lowest-index ones among the 5 equal-cost others (2, 6, 8, 9, 10).
    fg = [0, 1, 2, 4, 5, 6]
    assert res.num_fg == 6
    assert res.fg_mask.nonzero().flatten().tolist() == fg
    assert res.matched_gt.tolist() == [0 if i in fg else -1 for i in range(16)]
    expected_iou = torch.zeros(16)
    expected_iou[[0, 1, 4, 5]] = 1.0
    expected_iou[[2, 6]] = 0.5
    torch.testing.assert_close(res.iou_target, expected_iou)
    torch.testing.assert_close(res.cls_target[:, 1], expected_iou)  # one-hot (class 1) x IoU
    assert not res.cls_target[:, 0].any()
    torch.testing.assert_close(res.obj_target, res.fg_mask.float())


def test_simota_assign_class_cost_uses_sqrt_of_cls_times_obj():
    centers, strides = _grid_4x4()
    pred, cls_probs, obj_probs = _predictions()
    gt_classes = torch.tensor([1])
    # Anchor 8 confident in class 1: its cost (-log sqrt(.9) - log(1 - sqrt(.1)) = 0.44) beats
    # the 0.5/0.5 anchors (1.57), so it is taken before anchor 6.
    cls_probs[8] = torch.tensor([0.1, 0.9])
    res = simota_assign(cls_probs, obj_probs, pred, centers, strides, GT_BOX, gt_classes)
    assert res.fg_mask.nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 8]
    # With objectness 0.01 its joint scores are sqrt(.009), sqrt(.001): cost 2.39, not taken.
    obj_probs[8] = 0.01
    res = simota_assign(cls_probs, obj_probs, pred, centers, strides, GT_BOX, gt_classes)
    assert res.fg_mask.nonzero().flatten().tolist() == [0, 1, 2, 4, 5, 6]


def test_simota_assign_no_gt_and_no_candidate():
    centers, strides = _grid_4x4()
    pred, cls_probs, obj_probs = _predictions()
    for gt_boxes, gt_classes in [
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)),
        (torch.tensor([[1000.0, 1000.0, 1010.0, 1010.0]]), torch.tensor([0])),  # far away
    ]:
        res = simota_assign(cls_probs, obj_probs, pred, centers, strides, gt_boxes, gt_classes)
        assert res.num_fg == 0
        assert res.matched_gt.tolist() == [-1] * 16
        assert res.cls_target.shape == (16, 2) and not res.cls_target.any()
        assert not res.obj_target.any() and not res.iou_target.any()


def test_simota_assign_two_gts_share_the_grid():
    centers, strides = _grid_4x4()
    gt_boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 32.0]])
    pred = torch.zeros(16, 4)
    pred[[0, 1, 4, 5]] = gt_boxes[0]
    pred[[10, 11, 14, 15]] = gt_boxes[1]
    res = simota_assign(
        torch.full((16, 3), 0.5), torch.ones(16), pred, centers, strides, gt_boxes,
        torch.tensor([2, 0]),
    )
    # Each GT: 4 perfect predictions, the rest IoU 0 -> k 4 -> exactly its in-box anchors.
    expected = [-1] * 16
    for i in (0, 1, 4, 5):
        expected[i] = 0
    for i in (10, 11, 14, 15):
        expected[i] = 1
    assert res.matched_gt.tolist() == expected
    assert res.cls_target[[0, 1, 4, 5]].argmax(dim=1).tolist() == [2] * 4
    assert res.cls_target[[10, 11, 14, 15]].argmax(dim=1).tolist() == [0] * 4


def test_simota_assign_errors():
    centers, strides = _grid_4x4()
    pred, cls_probs, obj_probs = _predictions()
    with pytest.raises(ValueError, match="apply sigmoid"):
        simota_assign(cls_probs * 4 - 3, obj_probs, pred, centers, strides, GT_BOX,
                      torch.tensor([1]))
    with pytest.raises(ValueError, match="gt_classes must be in"):
        simota_assign(cls_probs, obj_probs, pred, centers, strides, GT_BOX, torch.tensor([2]))
    with pytest.raises(ValueError, match="one objectness per anchor"):
        simota_assign(cls_probs, obj_probs[:3], pred, centers, strides, GT_BOX,
                      torch.tensor([1]))


def test_simota_assign_under_autocast():
    centers, strides = _grid_4x4()
    pred, cls_probs, obj_probs = _predictions()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        res = simota_assign(
            cls_probs, obj_probs, pred, centers, strides, GT_BOX, torch.tensor([1])
        )
    assert res.num_fg == 6 and res.cls_target.dtype == torch.float32
