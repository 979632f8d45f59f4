"""RotatedAnchorGenerator (hand-computed anchors) and Box2BoxTransformRotated (hand-computed
deltas, round trips)."""

import math

import pytest
import torch

from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    RotatedAnchorGenerator,
    build_anchor_generator,
)
from segtron.modeling.box_regression import Box2BoxTransformRotated, _dense_box_regression_loss
from segtron.structures import RotatedBoxes

# Size 32 with ratios 0.25 and 1: w = sqrt(32^2 / 0.25) = 64, h = 16; and 32 x 32. For each
# size, for each ratio, for each angle (0 then 45).
CELLS = [[0, 0, 64, 16, 0], [0, 0, 64, 16, 45], [0, 0, 32, 32, 0], [0, 0, 32, 32, 45]]


def rotated_cfg():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "RotatedAnchorGenerator"
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.25, 1.0]]
    cfg.MODEL.ANCHOR_GENERATOR.ANGLES = [[0, 45]]
    return cfg


def test_registered_and_built_from_config_on_a_1x1_map():
    assert ANCHOR_GENERATOR_REGISTRY.get("RotatedAnchorGenerator") is RotatedAnchorGenerator
    cfg = rotated_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5
    gen = build_anchor_generator(cfg, [ShapeSpec(stride=8)])
    assert isinstance(gen, RotatedAnchorGenerator)
    assert gen.box_dim == 5 and gen.num_anchors == [4] and gen.num_cell_anchors == [4]
    (anchors,) = gen([torch.zeros(2, 3, 1, 1)])
    assert isinstance(anchors, RotatedBoxes)
    # Offset 0.5 of stride 8: centred at (4, 4).
    expected = torch.tensor([[4.0, 4.0] + row[2:] for row in CELLS])
    torch.testing.assert_close(anchors.tensor, expected)


def test_2x2_map_is_location_major_row_by_row():
    gen = RotatedAnchorGenerator(sizes=[32], aspect_ratios=[0.25, 1], angles=[0, 45],
                                 strides=[4])
    (anchors,) = gen([torch.zeros(1, 1, 2, 2)])
    locations = [(0, 0), (4, 0), (0, 4), (4, 4)]  # (x, y): y outer, x inner
    rows = [[x, y] + row[2:] for x, y in locations for row in CELLS]
    expected = torch.tensor(rows, dtype=torch.float32)
    torch.testing.assert_close(anchors.tensor, expected)


def test_levels_and_broadcasting():
    gen = RotatedAnchorGenerator(sizes=[[16], [32]], aspect_ratios=[[1.0]],
                                 angles=[[-90, 0, 90]], strides=[4, 8])
    level0, level1 = gen([torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)])
    assert level0.tensor.shape == (2 * 3 * 3, 5) and level1.tensor.shape == (2 * 3, 5)
    torch.testing.assert_close(
        level1.tensor,
        torch.tensor([[0.0, 0, 32, 32, -90], [0, 0, 32, 32, 0], [0, 0, 32, 32, 90],
                      [8, 0, 32, 32, -90], [8, 0, 32, 32, 0], [8, 0, 32, 32, 90]]),
    )
    # Anchors are derived from the config: not in the state dict.
    assert gen.state_dict() == {}
    with pytest.raises(ValueError, match="ANGLES"):
        RotatedAnchorGenerator(sizes=[[16], [32]], aspect_ratios=[[1.0]],
                               angles=[[0], [0], [0]], strides=[4, 8])


def test_default_angles_from_the_config():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.NAME = "RotatedAnchorGenerator"
    gen = build_anchor_generator(cfg, [ShapeSpec(stride=4)])
    # Defaults: 5 sizes x 3 ratios x 3 angles (-90, 0, 90).
    assert gen.num_anchors == [5 * 3 * 3]
    cells = next(iter(gen.cell_anchors))
    assert cells[:3, 4].tolist() == [-90.0, 0.0, 90.0]


# ---------------------------------------------------------------------- Box2BoxTransformRotated
def test_hand_computed_deltas_and_decoding():
    src = torch.tensor([[10.0, 20.0, 4.0, 8.0, 30.0]])
    tgt = torch.tensor([[12.0, 16.0, 8.0, 2.0, -170.0]])
    # -170 - 30 = -200 degrees, i.e. +160 in [-180, 180).
    da = math.radians(160)
    deltas = Box2BoxTransformRotated((1, 1, 1, 1, 1)).get_deltas(src, tgt)
    expected = torch.tensor([[0.5, -0.5, math.log(2), math.log(0.25), da]])
    torch.testing.assert_close(deltas, expected)
    weighted = Box2BoxTransformRotated((10, 10, 5, 5, 2)).get_deltas(src, tgt)
    torch.testing.assert_close(weighted, expected * torch.tensor([10, 10, 5, 5, 2.0]))
    decoded = Box2BoxTransformRotated((10, 10, 5, 5, 2)).apply_deltas(weighted, src)
    torch.testing.assert_close(decoded, tgt, atol=1e-4, rtol=1e-5)  # 30 + 160 = 190 -> -170


@pytest.mark.parametrize("weights", [(1, 1, 1, 1, 1), (10, 10, 5, 5, 1)])
def test_round_trip_on_random_boxes(weights):
    gen = torch.Generator().manual_seed(0)
    n = 200

    def boxes():
        centres = torch.rand(n, 2, generator=gen) * 500
        sizes = 2 + torch.rand(n, 2, generator=gen) * 300
        angles = torch.rand(n, 1, generator=gen) * 720 - 360
        return torch.cat([centres, sizes, angles], dim=1).double()

    src, tgt = boxes(), boxes()
    transform = Box2BoxTransformRotated(weights)
    decoded = transform.apply_deltas(transform.get_deltas(src, tgt), src)
    torch.testing.assert_close(decoded[:, :4], tgt[:, :4])
    expected_angle = (tgt[:, 4] + 180) % 360 - 180
    assert ((decoded[:, 4] >= -180) & (decoded[:, 4] < 180)).all()
    torch.testing.assert_close(decoded[:, 4], expected_angle)


def test_class_specific_deltas_and_scale_clamp():
    transform = Box2BoxTransformRotated((1, 1, 1, 1, 1), scale_clamp=math.log(4))
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0, 10.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 1.0, -1.0, 10.0, math.log(2), math.pi]])
    out = transform.apply_deltas(deltas, boxes)
    expected = torch.tensor([[0.0, 0.0, 2.0, 3.0, 10.0, 2.0, -3.0, 8.0, 6.0, -170.0]])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)


def test_errors():
    with pytest.raises(ValueError, match="5 numbers"):
        Box2BoxTransformRotated((1, 1, 1, 1))
    transform = Box2BoxTransformRotated((1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        transform.get_deltas(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="w > 0"):
        transform.get_deltas(torch.zeros(1, 5), torch.ones(1, 5))
    with pytest.raises(ValueError, match=r"k\*5"):
        transform.apply_deltas(torch.zeros(1, 4), torch.ones(1, 5))


def test_dense_regression_loss_takes_rotated_anchors():
    transform = Box2BoxTransformRotated((1, 1, 1, 1, 1))
    anchors = [RotatedBoxes([[0.0, 0, 4, 4, 0], [10, 10, 4, 4, 45]]),
               RotatedBoxes([[5.0, 5, 8, 2, 90]])]
    gt = torch.tensor([[[1.0, 0, 4, 4, 0], [10, 10, 8, 4, 45], [5, 5, 8, 2, 90]]])
    pred = [torch.zeros(1, 2, 5), torch.zeros(1, 1, 5)]
    fg = torch.tensor([[True, True, False]])
    loss = _dense_box_regression_loss(anchors, transform, pred, gt, fg)
    # |dx| = 1/4 for the first anchor, |dw| = log 2 for the second.
    assert loss.item() == pytest.approx(0.25 + math.log(2), abs=1e-6)
