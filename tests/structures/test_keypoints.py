"""Keypoints container, heatmap encoding and heatmap decoding."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from segtron.structures import Boxes, Keypoints, heatmaps_to_keypoints
from segtron.structures.keypoints import _keypoints_to_heatmap


# ---------------------------------------------------------------- encoding
def test_keypoints_to_heatmap_hand_computed():
    # roi x in [10, 30) (width 20), y in [20, 60) (height 40); S = 4 -> a cell is 5 x 10 px.
    roi = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    kpts = torch.tensor(
        [[
            [10.0, 20.0, 2],  # top-left corner -> cell (0, 0) -> 0
            [29.9, 59.9, 2],  # col floor(19.9/5)=3, row floor(39.9/10)=3 -> 15
            [30.0, 60.0, 1],  # exactly on the right/bottom edge -> last cell -> 15
            [15.0, 30.0, 0],  # not labelled -> invalid, index 0
            [9.9, 25.0, 2],  # left of the roi -> invalid
            [20.0, 40.0, 1],  # col 2, row 2 -> 10
            [30.5, 40.0, 2],  # right of the roi -> invalid
            [14.99, 59.0, 2],  # col 0, row 3 -> 12
            [25.0, 60.5, 2],  # below the roi -> invalid
        ]]
    )
    heatmaps, valid = _keypoints_to_heatmap(kpts, roi, 4)
    assert heatmaps.dtype == torch.int64 and valid.dtype == torch.bool
    assert heatmaps.tolist() == [[0, 15, 15, 0, 0, 10, 0, 12, 0]]
    assert valid.tolist() == [[True, True, True, False, False, True, False, True, False]]
    # same through the class, with Boxes
    h2, v2 = Keypoints(kpts).to_heatmap(Boxes(roi), 4)
    assert torch.equal(h2, heatmaps) and torch.equal(v2, valid)


def test_keypoints_to_heatmap_random_vs_loop():
    rng = np.random.default_rng(0)
    n, k, s = 6, 5, 56
    x0 = rng.uniform(0, 50, n)
    y0 = rng.uniform(0, 50, n)
    rois = np.stack([x0, y0, x0 + rng.uniform(5, 60, n), y0 + rng.uniform(5, 60, n)], 1)
    kp = np.stack(
        [rng.uniform(-10, 130, (n, k)), rng.uniform(-10, 130, (n, k)), rng.integers(0, 3, (n, k))],
        axis=2,
    )
    rois_t = torch.tensor(rois, dtype=torch.float32)
    kp_t = torch.tensor(kp, dtype=torch.float32)
    heatmaps, valid = _keypoints_to_heatmap(kp_t, rois_t, s)
    r32, k32 = rois_t.double().numpy(), kp_t.double().numpy()
    for i in range(n):
        a, b, c, d = r32[i]
        for j in range(k):
            x, y, v = k32[i, j]
            col = s - 1 if x == c else math.floor((x - a) * (s / (c - a)))
            row = s - 1 if y == d else math.floor((y - b) * (s / (d - b)))
            ok = v > 0 and 0 <= col < s and 0 <= row < s
            assert valid[i, j].item() == ok
            assert heatmaps[i, j].item() == (row * s + col if ok else 0)


def test_keypoints_to_heatmap_empty():
    h, v = _keypoints_to_heatmap(torch.zeros(0, 17, 3), torch.zeros(0, 4), 56)
    assert h.shape == v.shape == (0, 17)


# ---------------------------------------------------------------- decoding
def ref_decode(maps, rois):
    """Loop reference: bicubic resize to ceil(w) x ceil(h), first argmax in row-major order,
    softmax numerator on the resized map, normaliser on the original map."""
    out = []
    for i in range(maps.shape[0]):
        x0, y0, x1, y1 = rois[i].tolist()
        w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        cw, ch = math.ceil(w), math.ceil(h)
        per_roi = []
        for j in range(maps.shape[1]):
            up = F.interpolate(maps[i : i + 1, j : j + 1], size=(ch, cw), mode="bicubic",
                               align_corners=False)[0, 0].tolist()
            best, br, bc = -math.inf, 0, 0
            for r in range(ch):
                for c in range(cw):
                    if up[r][c] > best:
                        best, br, bc = up[r][c], r, c
            denom = sum(math.exp(v - best) for row in maps[i, j].tolist() for v in row)
            per_roi.append([(bc + 0.5) * w / cw + x0, (br + 0.5) * h / ch + y0, best, 1.0 / denom])
        out.append(per_roi)
    return torch.tensor(out, dtype=torch.float64).reshape(maps.shape[0], maps.shape[1], 4)


def test_heatmaps_to_keypoints_identity_resize_hand_computed():
    # An 8 x 8 map over a roi of width/height 8 is not resampled (bicubic at scale 1 is exact).
    maps = torch.zeros(2, 1, 8, 8)
    maps[0, 0, 2, 5] = 3.0
    maps[1, 0, 6, 1] = 2.0
    rois = torch.tensor([[10.0, 20.0, 18.0, 28.0], [0.0, 0.0, 7.5, 7.5]])
    got = heatmaps_to_keypoints(maps, rois)
    assert got.shape == (2, 1, 4)
    e = math.exp
    assert got[0, 0].tolist() == pytest.approx([10 + 5.5, 20 + 2.5, 3.0, 1 / (1 + 63 * e(-3.0))])
    # width 7.5 -> 8 columns of 7.5/8 px each
    assert got[1, 0].tolist() == pytest.approx(
        [1.5 * 7.5 / 8, 6.5 * 7.5 / 8, 2.0, 1 / (1 + 63 * e(-2.0))]
    )


def test_heatmaps_to_keypoints_matches_loop_reference():
    g = torch.Generator().manual_seed(1)
    maps = torch.randn(4, 3, 6, 6, generator=g) * 3
    rois = torch.tensor(
        [[0.0, 0.0, 20.0, 13.0], [5.5, 7.25, 30.1, 12.0], [3.0, 3.0, 3.4, 3.2], [40, 2, 52.7, 50]]
    )
    got = heatmaps_to_keypoints(maps, rois)
    want = ref_decode(maps, rois)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)
    assert heatmaps_to_keypoints(maps[:0], rois[:0]).shape == (0, 3, 4)


def test_heatmaps_to_keypoints_no_grad_and_device():
    maps = torch.randn(1, 2, 4, 4, requires_grad=True)
    out = heatmaps_to_keypoints(maps, torch.tensor([[0.0, 0.0, 9.0, 9.0]]))
    assert not out.requires_grad
    with pytest.raises(ValueError):
        heatmaps_to_keypoints(maps[0], torch.zeros(1, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_heatmaps_to_keypoints_cuda_matches_cpu():
    maps = torch.randn(3, 4, 8, 8)
    rois = torch.tensor([[0.0, 0, 10, 12], [3, 4, 20, 9], [1, 1, 2, 2]])
    got = heatmaps_to_keypoints(maps.cuda(), rois.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), heatmaps_to_keypoints(maps, rois), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- container
def test_keypoints_container():
    data = torch.rand(4, 5, 3)
    kp = Keypoints(data.numpy())
    assert kp.tensor.dtype == torch.float32 and len(kp) == 4 and kp.device.type == "cpu"
    assert kp[1].tensor.shape == (1, 5, 3) and torch.equal(kp[1].tensor[0], data[1])
    assert torch.equal(kp[1:3].tensor, data[1:3])
    assert torch.equal(kp[torch.tensor([True, False, True, False])].tensor, data[[0, 2]])
    assert torch.equal(kp[torch.tensor([3, 3])].tensor, data[[3, 3]])
    cat = Keypoints.cat([kp, kp[:2]])
    assert cat.tensor.shape == (6, 5, 3)
    assert kp.to(torch.float64).tensor.dtype == torch.float32  # always float32
    assert Keypoints([]).tensor.shape == (0, 0, 3)
    assert Keypoints(torch.zeros(0, 17, 3)).tensor.shape == (0, 17, 3)
    assert repr(kp) == "Keypoints(num_instances=4)"
    with pytest.raises(ValueError, match=r"\(N, K, 3\)"):
        Keypoints(torch.zeros(2, 5, 2))
    with pytest.raises(ValueError):
        Keypoints.cat([])
    meta = Keypoints(torch.empty(2, 3, 3, device="meta"))
    heat, valid = meta.to_heatmap(torch.empty(2, 4, device="meta"), 56)
    assert heat.device.type == "meta" and valid.device.type == "meta"
