"""RotatedBoxes and the rotated IoU, against hand-computed values and a slow polygon-clipping
reference (tests/structures/rotated_reference.py)."""

import math
import random

import numpy as np
import pytest
import torch

from segtron.layers.rotated_boxes import pairwise_iou_rotated as layers_iou
from segtron.layers.rotated_boxes import rotated_box_corners
from segtron.structures import Boxes, RotatedBoxes, pairwise_iou, pairwise_iou_rotated
from segtron.structures.rotated_boxes import pairwise_iou as rotated_pairwise_iou
from tests.structures import rotated_reference as ref


def iou(rows1, rows2):
    return pairwise_iou_rotated(RotatedBoxes(rows1), RotatedBoxes(rows2))


# ------------------------------------------------------------------------------- IoU: by hand
def test_exported_at_detectron2_paths():
    assert pairwise_iou_rotated is rotated_pairwise_iou
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0, 30.0]])
    assert layers_iou(a, a).item() == pytest.approx(1.0, abs=1e-6)


def test_identical_boxes_give_one():
    rows = [[5, 3, 4, 2, 0], [5, 3, 4, 2, 37.5], [-20, 8, 0.3, 90, -123], [1e3, 2e3, 50, 7, 179]]
    out = iou(rows, rows)
    np.testing.assert_allclose(out.diagonal().numpy(), 1.0, atol=1e-6)


def test_square_rotated_by_90_or_180_is_the_same_region():
    out = iou([[3, 4, 6, 6, 0]], [[3, 4, 6, 6, 90], [3, 4, 6, 6, -90], [3, 4, 6, 6, 180]])
    np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)
    # A non-square box and itself turned half a turn (or a full turn) also coincide.
    out = iou([[3, 4, 6, 2, 20]], [[3, 4, 6, 2, 200], [3, 4, 6, 2, -340]])
    np.testing.assert_allclose(out.numpy(), 1.0, atol=1e-6)


def test_cross_of_two_rectangles():
    # 4x2 and its 90-degree turn about the same centre overlap in a 2x2 square: 4 / (8+8-4).
    out = iou([[5, 3, 4, 2, 0]], [[5, 3, 4, 2, 90]])
    assert out.item() == pytest.approx(1 / 3, abs=1e-6)


def test_square_and_its_45_degree_turn():
    # Side-2 squares about one centre, one turned 45 degrees: the overlap is a regular octagon of
    # apothem 1, area 8 (sqrt(2) - 1), so IoU = 8 (sqrt2 - 1) / (8 - 8 (sqrt2 - 1)) = 1 / sqrt2.
    out = iou([[0, 0, 2, 2, 0]], [[0, 0, 2, 2, 45]])
    assert out.item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_disjoint_and_touching_boxes_give_zero():
    a = [[0, 0, 2, 2, 0]]
    others = [
        [10, 10, 2, 2, 30],  # far away
        [2, 0, 2, 2, 0],  # shares the edge x = 1
        [2, 2, 2, 2, 0],  # shares the corner (1, 1)
        [1 + math.sqrt(2), 0, 2, 2, 45],  # a diamond touching the edge x = 1 at one point
    ]
    out = iou(a, others)
    np.testing.assert_allclose(out.numpy(), 0.0, atol=1e-6)


def test_degenerate_boxes_give_zero_never_nan():
    good = [[0, 0, 2, 2, 0], [0, 0, 2, 2, 45]]
    bad = [
        [0, 0, 0, 2, 0],  # zero width
        [0, 0, 2, 0, 30],  # zero height
        [0, 0, 0, 0, 0],  # a point
        [0, 0, -2, 2, 0],  # negative width
        [float("nan"), 0, 2, 2, 0],
        [0, 0, float("inf"), 2, 0],
    ]
    out = iou(good + bad, bad)
    assert torch.isfinite(out).all()
    assert (out == 0).all()


def test_empty_inputs_and_shapes():
    assert iou(torch.zeros(0, 5), [[0, 0, 1, 1, 0]] * 3).shape == (0, 3)
    assert iou([[0, 0, 1, 1, 0]] * 2, torch.zeros(0, 5)).shape == (2, 0)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        layers_iou(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="RotatedBoxes"):
        rotated_pairwise_iou(Boxes(torch.zeros(1, 4)), RotatedBoxes(torch.zeros(1, 5)))


def test_axis_aligned_boxes_match_horizontal_iou():
    gen = torch.Generator().manual_seed(0)
    xyxy = torch.rand(40, 2, generator=gen) * 50
    xyxy = torch.cat([xyxy, xyxy + 1 + torch.rand(40, 2, generator=gen) * 30], dim=1)
    centres = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    sizes = xyxy[:, 2:] - xyxy[:, :2]
    rotated = torch.cat([centres, sizes, torch.zeros(40, 1)], dim=1)
    expected = pairwise_iou(Boxes(xyxy[:20]), Boxes(xyxy[20:]))
    got = iou(rotated[:20], rotated[20:])
    assert (expected > 0).sum() > 20  # the case is not trivially all-zero
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- IoU: polygon-clipping check
def random_rows(rng, n, spread):
    return [
        [rng.uniform(0, spread), rng.uniform(0, spread), rng.uniform(0.2, 8), rng.uniform(0.2, 8),
         rng.uniform(-200, 200)]
        for _ in range(n)
    ]


def test_matches_polygon_clipping_on_random_pairs():
    rng = random.Random(1)
    rows1 = random_rows(rng, 20, 6)
    rows2 = random_rows(rng, 20, 6)
    # Concentric pairs and shared-edge-like pairs stress the degenerate paths.
    rows2[:5] = [[r[0], r[1], r[3], r[2], r[4] + 90 * k] for k, r in enumerate(rows1[:5])]
    got = iou(rows1, rows2).double().numpy()
    expected = np.array([[ref.iou(a, b) for b in rows2] for a in rows1])
    assert (expected > 0.05).sum() > 150  # many of the 400 pairs overlap
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_large_coordinates_keep_precision():
    rng = random.Random(2)
    rows1 = [[r[0] + 5000, r[1] + 3000] + r[2:] for r in random_rows(rng, 8, 6)]
    rows2 = [[r[0] + 5000, r[1] + 3000] + r[2:] for r in random_rows(rng, 8, 6)]
    got = iou(rows1, rows2).double().numpy()
    expected = np.array([[ref.iou(a, b) for b in rows2] for a in rows1])
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_corners_follow_the_documented_convention():
    # Detectron2's docstring example: (5, 3, 4, 2, 90) has corners A(4, 5), B(4, 1), C(6, 1),
    # D(6, 5) for the local offsets (-w/2, -h/2), (w/2, -h/2), (w/2, h/2), (-w/2, h/2).
    got = rotated_box_corners(torch.tensor([[5.0, 3.0, 4.0, 2.0, 90.0]]))[0]
    expected = torch.tensor([[4.0, 5.0], [4.0, 1.0], [6.0, 1.0], [6.0, 5.0]])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------ RotatedBoxes
def test_construction_and_container_behaviour():
    boxes = RotatedBoxes([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [0, 0, 1, 1, 0]])
    assert boxes.tensor.dtype == torch.float32 and len(boxes) == 3
    assert isinstance(boxes, Boxes)
    assert RotatedBoxes(torch.zeros(0)).tensor.shape == (0, 5)
    assert RotatedBoxes(np.zeros((2, 5))).tensor.shape == (2, 5)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        RotatedBoxes(torch.zeros(3, 4))
    one = boxes[1]
    assert isinstance(one, RotatedBoxes) and one.tensor.tolist() == [[6, 7, 8, 9, 10]]
    assert boxes[torch.tensor([True, False, True])].tensor[:, 0].tolist() == [1, 0]
    assert boxes[1:].tensor.shape == (2, 5)
    with pytest.raises(IndexError):
        boxes[:, 0]
    assert [tuple(b.shape) for b in boxes] == [(5,)] * 3
    copy = boxes.clone()
    copy.tensor[0, 0] = 100
    assert boxes.tensor[0, 0] == 1
    assert boxes.to("cpu").device.type == "cpu"
    assert boxes.area().tolist() == [12, 72, 1]
    assert boxes.get_centers().tolist() == [[1, 2], [6, 7], [0, 0]]
    assert repr(boxes).startswith("RotatedBoxes(")


def test_cat():
    a = RotatedBoxes([[1, 2, 3, 4, 5]])
    b = RotatedBoxes([[6, 7, 8, 9, 10], [0, 0, 1, 1, 0]])
    joined = RotatedBoxes.cat([a, b])
    assert isinstance(joined, RotatedBoxes) and joined.tensor[:, 0].tolist() == [1, 6, 0]
    assert RotatedBoxes.cat([]).tensor.shape == (0, 5)
    with pytest.raises(TypeError):
        RotatedBoxes.cat([a, Boxes([[0, 0, 1, 1]])])


def test_normalize_angles_into_minus_180_to_180():
    boxes = RotatedBoxes([[0, 0, 1, 1, a] for a in (-540, -181, -180, 0, 179, 180, 270, 725)])
    boxes.normalize_angles()
    assert boxes.tensor[:, 4].tolist() == [-180, 179, -180, 0, 179, -180, -90, 5]


def test_clip_only_nearly_horizontal_boxes():
    boxes = RotatedBoxes(
        [
            [1, 5, 6, 4, 0.5],  # x from -2 to 4: clipped to [0, 4]
            [9, 9, 4, 4, 0],  # x, y from 7 to 11: clipped to [7, 10]
            [1, 5, 6, 4, 30],  # too rotated: untouched
            [5, 5, 2, 2, 360.5],  # angle normalised to 0.5, inside the image: unchanged
        ]
    )
    boxes.clip((10, 10))
    expected = [[2, 5, 4, 4, 0.5], [8.5, 8.5, 3, 3, 0], [1, 5, 6, 4, 30], [5, 5, 2, 2, 0.5]]
    torch.testing.assert_close(boxes.tensor, torch.tensor(expected), atol=1e-4, rtol=0)


def test_nonempty_and_inside_box():
    boxes = RotatedBoxes([[5, 5, 2, 0, 0], [5, 5, 2, 1, 0], [5, 5, 4, 4, 45], [1, 1, 2, 2, 0]])
    assert boxes.nonempty().tolist() == [False, True, True, True]
    assert boxes.nonempty(threshold=1).tolist() == [False, False, True, True]
    # The 4x4 square turned 45 degrees spans 5 -+ 2 sqrt(2) = [2.17, 7.83]: inside a 10x10
    # image, outside a 7x7 one; the 2x2 box at (1, 1) touches the top-left corner.
    assert boxes.inside_box((10, 10)).tolist() == [True, True, True, True]
    assert boxes.inside_box((7, 7)).tolist() == [True, True, False, True]
    assert boxes.inside_box((7.8, 20), boundary_threshold=0.1).tolist() == [True] * 4


def test_scale():
    # Equal factors: a similarity, angles unchanged.
    boxes = RotatedBoxes([[1, 2, 4, 2, 30]])
    boxes.scale(2.0, 2.0)
    torch.testing.assert_close(boxes.tensor, torch.tensor([[2.0, 4.0, 8.0, 4.0, 30.0]]))
    # A 90-degree box has its width along y and its height along x.
    boxes = RotatedBoxes([[1, 1, 4, 2, 90], [1, 1, 4, 2, 0]])
    boxes.scale(2.0, 3.0)
    expected = torch.tensor([[2.0, 3.0, 12.0, 4.0, 90.0], [2.0, 3.0, 8.0, 6.0, 0.0]])
    torch.testing.assert_close(boxes.tensor, expected, atol=1e-5, rtol=0)
    # 45 degrees, scale (2, 1): the width vector (1, -1) w / sqrt2 becomes (2, -1) w / sqrt2, of
    # length w sqrt(5/2); the height vector (1, 1) h / sqrt2 becomes (2, 1) h / sqrt2, at
    # atan2(2, 1) from the y axis.
    boxes = RotatedBoxes([[0, 0, 2, 2, 45]])
    boxes.scale(2.0, 1.0)
    expected = torch.tensor(
        [[0.0, 0.0, 2 * math.sqrt(2.5), 2 * math.sqrt(2.5), math.degrees(math.atan2(2, 1))]]
    )
    torch.testing.assert_close(boxes.tensor, expected, atol=1e-5, rtol=0)
