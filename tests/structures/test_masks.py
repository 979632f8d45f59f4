"""Polygon rasterisation, BitMasks / PolygonMasks / ROIMasks against brute-force references."""

import math
import sys
import types

import numpy as np
import pytest
import torch

from segtron.structures import (
    BitMasks,
    Boxes,
    PolygonMasks,
    ROIMasks,
    polygon_area,
    polygons_to_bitmask,
    rasterize_polygons_within_box,
)

# pycocotools' decode trips a numpy-2 DeprecationWarning inside its own C extension.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

H, W = 90, 120


# ---------------------------------------------------------------- references
def point_in_polygon(x, y, poly):
    """Even-odd ray casting; ``poly`` is a flat [x0, y0, x1, y1, ...] list."""
    xs, ys = poly[0::2], poly[1::2]
    inside = False
    j = len(xs) - 1
    for i in range(len(xs)):
        if (ys[i] > y) != (ys[j] > y):
            x_cross = xs[i] + (y - ys[i]) * (xs[j] - xs[i]) / (ys[j] - ys[i])
            if x < x_cross:
                inside = not inside
        j = i
    return inside


def ref_bitmask(polygons, height, width, to_image=lambda c, r: (c + 0.5, r + 0.5)):
    """Pixel (r, c) is set when its centre lies inside any polygon."""
    out = np.zeros((height, width), dtype=bool)
    for r in range(height):
        for c in range(width):
            x, y = to_image(c, r)
            out[r, c] = any(point_in_polygon(x, y, list(p)) for p in polygons)
    return out


def iou(a, b):
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    return (a & b).sum() / max((a | b).sum(), 1)


def regular(cx, cy, r, k, phase=0.0):
    ang = [phase + 2 * math.pi * i / k for i in range(k)]
    return np.array([v for a in ang for v in (cx + r * math.cos(a), cy + r * math.sin(a))])


def star(cx, cy, r_out, r_in, k=5):
    pts = []
    for i in range(2 * k):
        r = r_out if i % 2 == 0 else r_in
        a = math.pi * i / k - math.pi / 2
        pts += [cx + r * math.cos(a), cy + r * math.sin(a)]
    return np.array(pts)


SHAPES = {
    "triangle": [np.array([10.0, 12.0, 70.0, 20.0, 30.0, 80.0])],
    "hexagon": [regular(60.0, 45.0, 30.0, 6, 0.3)],
    "star": [star(55.0, 45.0, 38.0, 16.0)],
    "l_shape": [np.array([20.0, 10, 50, 10, 50, 60, 100, 60, 100, 85, 20, 85])],
    "two_parts": [regular(25.0, 25.0, 15.0, 8), np.array([70.0, 40, 110, 40, 110, 80, 70, 80])],
}


# ---------------------------------------------------------------- rasterisation
@pytest.mark.parametrize("name", sorted(SHAPES))
def test_polygons_to_bitmask_matches_point_in_polygon(name):
    polys = SHAPES[name]
    got = polygons_to_bitmask(polys, H, W)
    assert got.dtype == bool and got.shape == (H, W)
    want = ref_bitmask(polys, H, W)
    agreement = (got == want).mean()
    assert agreement > 0.995, agreement
    assert iou(got, want) > 0.98


def test_polygons_to_bitmask_empty_and_invalid():
    empty = polygons_to_bitmask([], 5, 7)
    assert empty.shape == (5, 7) and not empty.any()
    with pytest.raises(ValueError, match="4 coordinates"):
        polygons_to_bitmask([np.array([0.0, 0, 5, 5])], 10, 10)


def test_polygon_area():
    assert polygon_area(np.array([0, 4, 4, 0]), np.array([0, 0, 3, 3])) == pytest.approx(12.0)
    assert polygon_area(np.array([0, 0, 4]), np.array([0, 3, 0])) == pytest.approx(6.0)  # cw
    hexagon = SHAPES["hexagon"][0]
    want = 1.5 * math.sqrt(3) * 30.0**2
    assert polygon_area(hexagon[0::2], hexagon[1::2]) == pytest.approx(want)


@pytest.mark.parametrize("name", ["triangle", "star", "two_parts"])
def test_rasterize_within_box_matches_reference(name):
    polys = SHAPES[name]
    box = np.array([8.0, 5.0, 92.5, 77.0], dtype=np.float32)
    m = 28
    got = rasterize_polygons_within_box(polys, box, m)
    assert got.dtype == torch.bool and got.shape == (m, m)
    sx, sy = m / (box[2] - box[0]), m / (box[3] - box[1])
    want = ref_bitmask(
        polys, m, m, to_image=lambda c, r: ((c + 0.5) / sx + box[0], (r + 0.5) / sy + box[1])
    )
    assert (got.numpy() == want).mean() > 0.95
    assert iou(got.numpy(), want) > 0.9
    # input polygons are left untouched
    assert np.array_equal(polys[0], SHAPES[name][0])


def test_rasterize_box_equal_to_rectangle_fills_mask():
    rect = [np.array([10.0, 20.0, 50.0, 20.0, 50.0, 60.0, 10.0, 60.0])]
    got = rasterize_polygons_within_box(rect, np.array([10.0, 20.0, 50.0, 60.0]), 14)
    assert got.all()


# ---------------------------------------------------------------- crop_and_resize
def shape_boxes(polys):
    xy = np.concatenate([p.reshape(-1, 2) for p in polys])
    x0, y0 = xy.min(0)
    x1, y1 = xy.max(0)
    w, h = x1 - x0, y1 - y0
    return [
        [x0, y0, x1, y1],  # tight
        [x0 - 0.2 * w, y0 - 0.1 * h, x1 + 0.15 * w, y1 + 0.2 * h],  # loose
        [x0 + 0.1 * w, y0 + 0.05 * h, x1 - 0.3 * w, y1 - 0.2 * h],  # partial
    ]


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_polygon_and_bitmask_crops_agree(name):
    polys = SHAPES[name]
    boxes = torch.tensor(shape_boxes(polys), dtype=torch.float32)
    n = len(boxes)
    poly_masks = PolygonMasks([list(polys) for _ in range(n)])
    bit_masks = BitMasks.from_polygon_masks(poly_masks, H, W)
    a = poly_masks.crop_and_resize(boxes, 28)
    b = bit_masks.crop_and_resize(boxes, 28)
    assert a.shape == b.shape == (n, 28, 28) and a.dtype == b.dtype == torch.bool
    for i in range(n):
        assert iou(a[i].numpy(), b[i].numpy()) > 0.9, (name, i)


def test_bitmask_crop_and_resize_rectangles():
    masks = torch.zeros(2, 40, 50, dtype=torch.bool)
    masks[0, 10:30, 5:25] = True
    masks[1, :, 25:] = True  # right half
    bm = BitMasks(masks)
    boxes = torch.tensor([[5.0, 10.0, 25.0, 30.0], [0.0, 0.0, 50.0, 40.0]])
    out = bm.crop_and_resize(Boxes(boxes), 10)
    assert out[0].all()
    assert not out[1, :, :5].any() and out[1, :, 5:].all()
    assert bm.crop_and_resize(boxes.double(), 10).shape == (2, 10, 10)
    assert BitMasks(torch.zeros(0, 4, 4)).crop_and_resize(torch.zeros(0, 4), 7).shape == (0, 7, 7)
    assert PolygonMasks([]).crop_and_resize(torch.zeros(0, 4), 7).shape == (0, 7, 7)
    with pytest.raises(ValueError, match="one box per mask"):
        bm.crop_and_resize(boxes[:1], 10)


# ---------------------------------------------------------------- bounding boxes
def test_bitmask_bounding_boxes_match_numpy():
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 20, 30), dtype=bool)
    for i in range(5):
        y0, x0 = rng.integers(0, 15), rng.integers(0, 25)
        masks[i, y0 : y0 + rng.integers(1, 6), x0 : x0 + rng.integers(1, 6)] = True
        masks[i, rng.integers(0, 20), rng.integers(0, 30)] = True  # a stray pixel
    # mask 5 stays empty
    got = BitMasks(masks).get_bounding_boxes()
    assert isinstance(got, Boxes) and got.tensor.dtype == torch.float32
    for i in range(6):
        ys, xs = np.where(masks[i])
        want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
        assert got.tensor[i].tolist() == want
    assert BitMasks(torch.zeros(0, 5, 5)).get_bounding_boxes().tensor.shape == (0, 4)
    full = BitMasks(torch.ones(1, 7, 9)).get_bounding_boxes().tensor.tolist()
    assert full == [[0, 0, 9, 7]]


def test_polygon_bounding_boxes_match_numpy():
    pm = PolygonMasks([SHAPES["star"], SHAPES["two_parts"], []])
    got = pm.get_bounding_boxes().tensor
    for i, polys in enumerate(pm.polygons[:2]):
        xy = np.concatenate([p.reshape(-1, 2) for p in polys])
        np.testing.assert_allclose(got[i].numpy(), [*xy.min(0), *xy.max(0)], rtol=1e-6)
    assert got[2].tolist() == [0, 0, 0, 0]


# ---------------------------------------------------------------- containers
def test_bitmasks_container():
    t = torch.rand(4, 6, 7) > 0.5
    t[2] = False
    bm = BitMasks(t.numpy())
    assert bm.tensor.dtype == torch.bool and bm.device.type == "cpu" and len(bm) == 4
    assert bm.image_size == (6, 7)
    assert bm.nonempty().tolist() == [bool(t[i].any()) for i in range(4)]
    assert bm[1].tensor.shape == (1, 6, 7) and torch.equal(bm[1].tensor[0], t[1])
    assert torch.equal(bm[torch.tensor([3, 0])].tensor, t[[3, 0]])
    assert torch.equal(bm[t.flatten(1).any(1)].tensor, t[t.flatten(1).any(1)])
    assert torch.equal(bm[1:3].tensor, t[1:3])
    assert [m.shape for m in bm] == [(6, 7)] * 4
    assert torch.equal(BitMasks.cat([bm, bm[:1]]).tensor, torch.cat([t, t[:1]]))
    assert BitMasks(torch.rand(2, 3, 3)).tensor.dtype == torch.bool
    assert repr(bm) == "BitMasks(num_instances=4)"
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        BitMasks(torch.zeros(5, 5))
    with pytest.raises(ValueError):
        BitMasks.cat([])
    meta = BitMasks(torch.empty(2, 5, 5, dtype=torch.bool, device="meta"))
    assert meta.get_bounding_boxes().tensor.device.type == "meta"
    assert meta.nonempty().device.type == "meta"


def test_bitmasks_from_polygons():
    pm = PolygonMasks([SHAPES["triangle"], SHAPES["hexagon"]])
    bm = BitMasks.from_polygon_masks(pm, H, W)
    assert bm.tensor.shape == (2, H, W)
    assert np.array_equal(bm.tensor[1].numpy(), polygons_to_bitmask(SHAPES["hexagon"], H, W))
    assert torch.equal(BitMasks.from_polygon_masks(pm.polygons, H, W).tensor, bm.tensor)
    assert BitMasks.from_polygon_masks([], 5, 6).tensor.shape == (0, 5, 6)


def test_polygon_masks_validation():
    with pytest.raises(ValueError, match="list"):
        PolygonMasks(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="instance 0"):
        PolygonMasks([np.zeros(6)])
    with pytest.raises(ValueError, match="4 coordinates"):
        PolygonMasks([[[0.0, 0, 1, 1]]])
    with pytest.raises(ValueError, match="7 coordinates"):
        PolygonMasks([[[0.0, 0, 1, 1, 2, 0, 3]]])
    pm = PolygonMasks([[torch.tensor([0, 0, 4, 0, 4, 4]), [1, 1, 2, 1, 2, 2]], []])
    assert all(p.dtype == np.float64 for p in pm.polygons[0])
    assert pm.to("cuda") is pm and pm.device.type == "cpu"


def test_polygon_masks_indexing_area_cat():
    tri = [np.array([0.0, 0, 4, 0, 0, 3])]
    sq = [np.array([0.0, 0, 2, 0, 2, 2, 0, 2]), np.array([5.0, 5, 6, 5, 6, 6, 5, 6])]
    pm = PolygonMasks([tri, sq, [], tri])
    assert len(pm) == 4 and pm.nonempty().tolist() == [True, True, False, True]
    np.testing.assert_allclose(pm.area().numpy(), [6.0, 5.0, 0.0, 6.0])
    assert pm.area().dtype == torch.float64
    assert len(pm[1]) == 1 and len(pm[1].polygons[0]) == 2
    assert len(pm[1:3]) == 2 and len(pm[[0, 3]]) == 2
    assert [len(p) for p in pm[torch.tensor([False, True, True, False])]] == [2, 0]
    assert [len(p) for p in pm[torch.tensor([3, 1])]] == [1, 2]
    assert len(pm[torch.tensor([], dtype=torch.long)]) == 0
    with pytest.raises(ValueError, match="dtype"):
        pm[torch.tensor([0.5])]
    assert [len(p) for p in pm] == [1, 2, 0, 1]
    cat = PolygonMasks.cat([pm, pm[:1]])
    assert len(cat) == 5 and repr(cat) == "PolygonMasks(num_instances=5)"


# ---------------------------------------------------------------- ROIMasks
def test_roi_masks_container_and_paste_contract(monkeypatch):
    probs = torch.rand(3, 28, 28)
    rm = ROIMasks(probs)
    assert len(rm) == 3 and rm.device.type == "cpu"
    assert rm[0].tensor.shape == (1, 28, 28) and torch.equal(rm[1:].tensor, probs[1:])
    assert rm.to(torch.float64).tensor.dtype == torch.float64
    with pytest.raises(ValueError):
        ROIMasks(torch.rand(28, 28))

    calls = []

    def fake_paste(masks, boxes, image_shape, threshold=0.5):
        calls.append((masks, boxes, image_shape, threshold))
        return torch.ones(len(masks), *image_shape, dtype=torch.bool)

    fake = types.ModuleType("segtron.layers.mask_ops")
    fake.paste_masks_in_image = fake_paste
    monkeypatch.setitem(sys.modules, "segtron.layers.mask_ops", fake)
    boxes = torch.tensor([[0.0, 0, 5, 5], [1, 1, 8, 9], [2, 2, 3, 3]])
    out = rm.to_bitmasks(Boxes(boxes), 12, 10, threshold=0.3)
    assert isinstance(out, BitMasks) and out.tensor.shape == (3, 12, 10)
    masks_arg, boxes_arg, shape_arg, thr = calls[-1]
    assert masks_arg is probs and torch.equal(boxes_arg, boxes)
    assert tuple(shape_arg) == (12, 10) and thr == 0.3
    via_bitmasks = BitMasks.from_roi_masks(rm, 12, 10, boxes=boxes)
    assert via_bitmasks.tensor.shape == (3, 12, 10) and calls[-1][3] == 0.5
    with pytest.raises(TypeError, match="boxes"):
        BitMasks.from_roi_masks(rm, 12, 10)


def test_bitmasks_index_tensor_is_lazy_and_exact():
    g = torch.Generator().manual_seed(11)
    source = torch.rand(4, 40, 50, generator=g) > 0.6
    masks = BitMasks(source)
    index = torch.tensor([3, 0, 0, 2, 3, 1, 2])
    picked = masks[index]
    assert picked._tensor is None  # nothing gathered yet
    assert len(picked) == 7 and picked.device == source.device
    boxes = torch.tensor([[2.3, 4.1, 30.2, 33.0], [0.0, 0.0, 50.0, 40.0], [10.5, 3.2, 11.9, 9.9],
                          [-5.0, -3.0, 20.0, 45.0], [40.2, 30.1, 55.0, 44.0], [7.0, 7.0, 8.0, 8.0],
                          [1.0, 2.0, 49.0, 39.0]])
    expected = BitMasks(source[index]).crop_and_resize(boxes, 28)
    assert torch.equal(picked.crop_and_resize(boxes, 28), expected)
    nested = picked[torch.tensor([6, 1])]
    assert torch.equal(nested.tensor, source[torch.tensor([2, 0])])
    assert torch.equal(picked.tensor, source[index])  # gathered on first access
    assert picked._tensor is not None and picked._source is None
