"""Boxes, BoxMode and the pairwise box metrics against plain-Python references."""

import math

import numpy as np
import pytest
import torch

from segtron.structures import (
    BoxMode,
    Boxes,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
    pairwise_point_box_distance,
)


# ---------------------------------------------------------------- brute-force references
def ref_area(b):
    return (b[2] - b[0]) * (b[3] - b[1])


def ref_inter(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return w * h


def ref_matrix(rows1, rows2, fn):
    return np.array([[fn(a, b) for b in rows2] for a in rows1], dtype=np.float64).reshape(
        len(rows1), len(rows2)
    )


def ref_iou(a, b):
    inter = ref_inter(a, b)
    if inter <= 0:
        return 0.0
    return inter / (ref_area(a) + ref_area(b) - inter)


def ref_ioa(a, b):
    inter = ref_inter(a, b)
    return inter / ref_area(b) if inter > 0 else 0.0


def random_boxes(n, seed, degenerate=True):
    """Random XYXY boxes; a share of them have zero width and/or height."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, size=(n, 2))
    wh = rng.uniform(0, 30, size=(n, 2))
    if degenerate and n:
        wh[rng.random(n) < 0.15, 0] = 0.0
        wh[rng.random(n) < 0.15, 1] = 0.0
    boxes = np.concatenate([xy, xy + wh], axis=1)
    # Snap to a coarse grid so exact ties and touching edges occur.
    return np.round(boxes * 2) / 2


def as_f64(x):
    x = x.numpy() if torch.is_tensor(x) else x
    return np.array(x, dtype=np.float64)


def rows(t):
    return [list(map(float, r)) for r in t.tolist()]


# ---------------------------------------------------------------- pairwise metrics
@pytest.mark.parametrize(
    "n,m,seed", [(7, 11, 0), (1, 1, 1), (20, 3, 2), (0, 5, 3), (4, 0, 4), (0, 0, 5)]
)
def test_pairwise_metrics_match_double_loop(n, m, seed):
    a_np, b_np = random_boxes(n, seed), random_boxes(m, seed + 100)
    a, b = Boxes(torch.tensor(a_np)), Boxes(torch.tensor(b_np))
    ra, rb = rows(a.tensor), rows(b.tensor)

    inter = pairwise_intersection(a, b)
    iou = pairwise_iou(a, b)
    ioa = pairwise_ioa(a, b)
    for got in (inter, iou, ioa):
        assert got.shape == (n, m) and got.dtype == torch.float32
    np.testing.assert_allclose(inter.numpy(), ref_matrix(ra, rb, ref_inter), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(iou.numpy(), ref_matrix(ra, rb, ref_iou), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ioa.numpy(), ref_matrix(ra, rb, ref_ioa), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(iou).all() and torch.isfinite(ioa).all()


def test_pairwise_iou_special_cases():
    a = Boxes(torch.tensor([[0.0, 0, 10, 10], [5, 5, 5, 9], [0, 0, 10, 10]]))
    b = Boxes(torch.tensor([[0.0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 5, 10], [5, 5, 5, 9]]))
    iou = pairwise_iou(a, b)
    assert iou[0, 0] == 1.0  # identical
    assert iou[0, 1] == 0.0  # touching edge only
    assert iou[0, 2] == pytest.approx(0.5)  # half contained
    assert (iou[1] == 0).all()  # zero-width box never overlaps, no NaN
    assert iou[0, 3] == 0.0
    ioa = pairwise_ioa(a, b)
    assert ioa[0, 2] == pytest.approx(1.0)  # b fully inside a: intersection / area(b)


def test_pairwise_point_box_distance_matches_loop():
    rng = np.random.default_rng(7)
    pts = torch.tensor(rng.uniform(-5, 60, size=(6, 2)), dtype=torch.float32)
    boxes = Boxes(torch.tensor(random_boxes(4, 8)))
    got = pairwise_point_box_distance(pts, boxes)
    assert got.shape == (6, 4, 4)
    for i, (x, y) in enumerate(pts.tolist()):
        for j, (x0, y0, x1, y1) in enumerate(boxes.tensor.tolist()):
            np.testing.assert_allclose(
                got[i, j].numpy(), [x - x0, y - y0, x1 - x, y1 - y], rtol=1e-6, atol=1e-5
            )
    assert pairwise_point_box_distance(pts[:0], boxes).shape == (0, 4, 4)


def test_matched_pairwise_iou_matches_loop():
    a_np, b_np = random_boxes(15, 11, degenerate=False), random_boxes(15, 12, degenerate=False)
    got = matched_pairwise_iou(Boxes(torch.tensor(a_np)), Boxes(torch.tensor(b_np)))
    ra, rb = rows(Boxes(torch.tensor(a_np)).tensor), rows(Boxes(torch.tensor(b_np)).tensor)
    want = [
        ref_inter(x, y) / (ref_area(x) + ref_area(y) - ref_inter(x, y)) for x, y in zip(ra, rb)
    ]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert matched_pairwise_iou(Boxes([]), Boxes([])).shape == (0,)
    with pytest.raises(ValueError, match="same number of boxes"):
        matched_pairwise_iou(Boxes(torch.tensor(a_np)), Boxes(torch.tensor(b_np[:3])))


def test_pairwise_ops_keep_device():
    # The meta device checks that no op silently moves data to the CPU.
    a = Boxes(torch.empty(3, 4, device="meta"))
    b = Boxes(torch.empty(5, 4, device="meta"))
    for fn in (pairwise_iou, pairwise_ioa, pairwise_intersection):
        out = fn(a, b)
        assert out.device.type == "meta" and out.shape == (3, 5)
    assert matched_pairwise_iou(a, a).device.type == "meta"
    assert pairwise_point_box_distance(torch.empty(2, 2, device="meta"), b).device.type == "meta"
    assert a.area().device.type == "meta" and a.get_centers().device.type == "meta"
    assert a.nonempty().device.type == "meta" and a.inside_box((4, 4)).device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_boxes_on_cuda_match_cpu():
    a_np, b_np = random_boxes(9, 21), random_boxes(6, 22)
    a, b = Boxes(torch.tensor(a_np)), Boxes(torch.tensor(b_np))
    got = pairwise_iou(a.to("cuda"), b.to("cuda"))
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), pairwise_iou(a, b))
    c = a.to("cuda")
    c.clip((20, 30))
    assert c.device.type == "cuda"


# ---------------------------------------------------------------- BoxMode
def test_boxmode_values():
    assert [m.value for m in BoxMode] == [0, 1, 2, 3, 4]
    assert BoxMode.XYXY_ABS == 0 and BoxMode(4) is BoxMode.XYWHA_ABS


@pytest.mark.parametrize(
    "box",
    [
        [1.0, 2.0, 5.0, 8.0],
        (1.0, 2.0, 5.0, 8.0),
        np.array([[1.0, 2.0, 5.0, 8.0], [0.0, 0.0, 3.0, 3.0]]),
        torch.tensor([[1.0, 2.0, 5.0, 8.0], [0.0, 0.0, 3.0, 3.0]]),
    ],
)
def test_boxmode_round_trip_keeps_kind_and_input(box):
    orig = as_f64(box)
    xywh = BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    assert type(xywh) is type(box)
    first = list(as_f64(xywh).reshape(-1, 4)[0])
    assert first == [1.0, 2.0, 4.0, 6.0]
    back = BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS)
    np.testing.assert_array_equal(as_f64(back), orig)
    # the input is never modified in place
    np.testing.assert_array_equal(as_f64(box), orig)


def test_boxmode_same_mode_and_random_round_trip():
    box = torch.rand(10, 4)
    assert BoxMode.convert(box, BoxMode.XYXY_ABS, BoxMode.XYXY_ABS) is box
    xyxy = torch.tensor(random_boxes(10, 3), dtype=torch.float64)
    there = BoxMode.convert(xyxy, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    for i, (x0, y0, x1, y1) in enumerate(xyxy.tolist()):
        assert there[i].tolist() == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    torch.testing.assert_close(BoxMode.convert(there, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS), xyxy)
    one_d = np.array([1.0, 1.0, 2.0, 2.0])
    assert BoxMode.convert(one_d, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS).tolist() == [1, 1, 3, 3]


def test_boxmode_relative_modes_raise():
    for a, b in [(BoxMode.XYXY_REL, BoxMode.XYXY_ABS), (BoxMode.XYXY_ABS, BoxMode.XYWH_REL)]:
        with pytest.raises(ValueError, match="[Rr]elative"):
            BoxMode.convert([0.1, 0.1, 0.5, 0.5], a, b)
    with pytest.raises(ValueError, match="4 or 5"):
        BoxMode.convert([1, 2, 3], BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
    with pytest.raises(TypeError):
        BoxMode.convert("1 2 3 4", BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)


def ref_rotated_bounds(cx, cy, w, h, deg):
    """Bounding rectangle of the 4 rotated corners."""
    t = math.radians(deg)
    xs, ys = [], []
    for dx, dy in [(-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)]:
        # counter-clockwise in image coordinates; the bounds do not depend on the sign
        xs.append(cx + dx * math.cos(t) + dy * math.sin(t))
        ys.append(cy - dx * math.sin(t) + dy * math.cos(t))
    return [min(xs), min(ys), max(xs), max(ys)]


def test_boxmode_xywha_to_xyxy_matches_rotated_corners():
    rng = np.random.default_rng(5)
    rot = np.column_stack(
        [rng.uniform(0, 100, 8), rng.uniform(0, 100, 8), rng.uniform(1, 30, 8),
         rng.uniform(1, 30, 8), rng.uniform(-180, 180, 8)]
    )
    got = BoxMode.convert(rot, BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    assert isinstance(got, np.ndarray) and got.shape == (8, 4)
    for i in range(8):
        np.testing.assert_allclose(got[i], ref_rotated_bounds(*rot[i]), rtol=1e-9, atol=1e-9)
    # 90 degrees swaps width and height
    assert BoxMode.convert([10.0, 20.0, 4.0, 2.0, 90.0], BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS) == \
        pytest.approx([9.0, 18.0, 11.0, 22.0])
    with pytest.raises(ValueError, match="5 numbers"):
        BoxMode.convert(np.zeros((2, 4)), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)


def test_boxmode_to_xywha():
    xywh = torch.tensor([[2.0, 4.0, 6.0, 10.0]])
    got = BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS)
    assert got.tolist() == [[5.0, 9.0, 6.0, 10.0, 0.0]]
    got = BoxMode.convert((2.0, 4.0, 8.0, 14.0), BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS)
    assert isinstance(got, tuple) and got == (5.0, 9.0, 6.0, 10.0, 0.0)
    back = BoxMode.convert(list(got), BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS)
    assert back == [2.0, 4.0, 8.0, 14.0]


# ---------------------------------------------------------------- Boxes container
def test_boxes_construction():
    assert Boxes([]).tensor.shape == (0, 4)
    assert Boxes(torch.zeros(0)).tensor.dtype == torch.float32
    b = Boxes([[0, 0, 1, 2]])
    assert b.tensor.dtype == torch.float32 and b.device.type == "cpu"
    t = torch.ones(2, 4, dtype=torch.float64)
    assert Boxes(t).tensor.dtype == torch.float32
    t32 = torch.ones(2, 4)
    assert Boxes(t32).tensor is t32  # no copy for float32 input
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        Boxes(torch.zeros(3, 5))


def test_boxes_geometry():
    b = Boxes(torch.tensor([[0.0, 0, 10, 20], [5, 5, 5, 8], [-3, 2, 40, 7]]))
    assert b.area().tolist() == [200.0, 0.0, 215.0]
    assert b.get_centers().tolist() == [[5.0, 10.0], [5.0, 6.5], [18.5, 4.5]]
    assert b.nonempty().tolist() == [True, False, True]
    assert b.nonempty(threshold=5.0).tolist() == [True, False, False]
    assert b.inside_box((20, 30)).tolist() == [False, True, False]  # y1 == 20 is not < 20
    assert b.inside_box((21, 41), boundary_threshold=3).tolist() == [True, True, True]
    c = b.clone()
    c.clip((15, 30))
    assert c.tensor.tolist() == [[0, 0, 10, 15], [5, 5, 5, 8], [0, 2, 30, 7]]
    assert b.tensor[0, 3] == 20  # clone is independent
    c.scale(2.0, 0.5)
    assert c.tensor.tolist() == [[0, 0, 20, 7.5], [10, 2.5, 10, 4], [0, 1, 60, 3.5]]
    bad = Boxes(torch.tensor([[0.0, 0, float("nan"), 1]]))
    with pytest.raises(ValueError, match="NaN"):
        bad.clip((5, 5))


def test_boxes_indexing_and_iteration():
    t = torch.arange(20, dtype=torch.float32).view(5, 4)
    b = Boxes(t)
    assert len(b) == 5
    for item in (2, np.int64(2), torch.tensor(2)):
        assert b[item].tensor.tolist() == [t[2].tolist()]
    assert b[-1].tensor.shape == (1, 4)
    assert b[1:3].tensor.tolist() == t[1:3].tolist()
    mask = torch.tensor([True, False, True, False, True])
    assert b[mask].tensor.tolist() == t[mask].tolist()
    assert b[torch.tensor([4, 0])].tensor.tolist() == [t[4].tolist(), t[0].tolist()]
    assert b[torch.zeros(5, dtype=torch.bool)].tensor.shape == (0, 4)
    assert [r.tolist() for r in b] == t.tolist()
    with pytest.raises(IndexError):
        b[:, 0]
    assert repr(b).startswith("Boxes(tensor(")


def test_boxes_cat():
    a, b = Boxes(torch.rand(2, 4)), Boxes(torch.rand(3, 4))
    c = Boxes.cat([a, b])
    assert len(c) == 5 and torch.equal(c.tensor[2:], b.tensor)
    c.tensor[0, 0] = 100.0
    assert a.tensor[0, 0] != 100.0  # new storage
    assert Boxes.cat([]).tensor.shape == (0, 4)
    with pytest.raises(TypeError):
        Boxes.cat([a, torch.rand(1, 4)])
