"""ROIAlignRotated: angle 0 against torchvision's ROIAlign, rotation equivariance, hand-computed
ramps, gradients, and the rotated pooler."""

import math

import pytest
import torch
from torchvision.ops import roi_align

from segtron.layers import ROIAlignRotated, roi_align_rotated
from segtron.modeling.poolers import ROIPooler
from segtron.structures import RotatedBoxes


def xyxy_to_rotated(rois):
    """(K, 5) (batch, x0, y0, x1, y1) -> (K, 6) (batch, cx, cy, w, h, 0)."""
    b, x0, y0, x1, y1 = rois.unbind(1)
    return torch.stack([b, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0, torch.zeros_like(b)], 1)


XYXY = torch.tensor(
    [
        [0, 1.3, 2.1, 15.7, 12.9],
        [1, -3.3, 4.2, 10.1, 30.0],  # reaches outside the map
        [0, 5.5, 5.5, 5.5, 9.0],  # zero width
        [1, 20.1, 1.1, 30.7, 7.7],
        [0, 0.2, 0.3, 2.9, 2.3],  # smaller than one bin
    ]
)


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_angle_zero_equals_torchvision_aligned_roi_align(scale, sampling_ratio):
    x = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    expected = roi_align(x, XYXY, (5, 4), scale, sampling_ratio, aligned=True)
    got = roi_align_rotated(x, xyxy_to_rotated(XYXY), (5, 4), scale, sampling_ratio)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rotating_map_and_roi_by_90_degrees_gives_the_same_output():
    # torch.rot90 turns the map a quarter counter-clockwise: pixel (row r, col c) of F goes to
    # (W - 1 - c, r) of G, i.e. image point (x, y) goes to (y, W - x); a box's angle grows by 90.
    h, w = 17, 23
    feats = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(1))
    turned = torch.rot90(feats, 1, dims=(2, 3))
    rois = torch.tensor([[0, 11.0, 8.0, 9.0, 5.0, 30.0], [0, 7.3, 9.1, 4.2, 7.7, -65.0]])
    moved = rois.clone()
    moved[:, 1] = rois[:, 2]
    moved[:, 2] = w - rois[:, 1]
    moved[:, 5] = rois[:, 5] + 90
    for sampling_ratio in (0, 3):
        expected = roi_align_rotated(feats, rois, (3, 4), 1.0, sampling_ratio)
        got = roi_align_rotated(turned, moved, (3, 4), 1.0, sampling_ratio)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_ramps_give_the_rotated_bin_centres():
    # On f = column index (or row index) bilinear sampling is exact, so each bin averages to
    # the coordinate of its centre: local offset (u, v) along the box's width / height axes is
    # at column cx - 0.5 + u cos(a) + v sin(a), row cy - 0.5 - u sin(a) + v cos(a).
    h, w = 30, 40
    cols = torch.arange(w, dtype=torch.float64).expand(h, w)
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    feats = torch.stack([cols, rows])[None]
    cx, cy, bw, bh, angle = 20.0, 14.0, 12.0, 6.0, 30.0
    out = roi_align_rotated(feats, torch.tensor([[0, cx, cy, bw, bh, angle]]).double(), (2, 3),
                            1.0, 2)
    a = math.radians(angle)
    for ph in range(2):
        for pw in range(3):
            u = -bw / 2 + (pw + 0.5) * bw / 3
            v = -bh / 2 + (ph + 0.5) * bh / 2
            col = cx - 0.5 + u * math.cos(a) + v * math.sin(a)
            row = cy - 0.5 - u * math.sin(a) + v * math.cos(a)
            assert out[0, 0, ph, pw].item() == pytest.approx(col, abs=1e-9)
            assert out[0, 1, ph, pw].item() == pytest.approx(row, abs=1e-9)


def test_adaptive_sampling_is_ceil_of_roi_size_over_output_size():
    x = torch.randn(1, 2, 40, 40, generator=torch.Generator().manual_seed(2))
    # 4 bins of 2.5 px across the width and 2 bins of 2.2 px down the height: ceil -> 3 x 3.
    rois = torch.tensor([[0, 20.0, 18.0, 10.0, 4.4, 25.0]])
    adaptive = roi_align_rotated(x, rois, (2, 4), 1.0, 0)
    torch.testing.assert_close(adaptive, roi_align_rotated(x, rois, (2, 4), 1.0, 3))
    assert not torch.allclose(adaptive, roi_align_rotated(x, rois, (2, 4), 1.0, 2), atol=1e-3)


def test_regions_outside_or_empty_pool_zeros():
    x = torch.randn(1, 2, 10, 10) + 5
    rois = torch.tensor([[0, 100.0, 100.0, 4.0, 4.0, 30.0], [0, 5.0, 5.0, 0.0, 0.0, 10.0]])
    assert (roi_align_rotated(x, rois, 3, 1.0, 0) == 0).all()
    assert roi_align_rotated(x, torch.zeros(0, 6), (2, 3), 1.0, 0).shape == (0, 2, 2, 3)


def test_constant_map_gives_constant_inside():
    x = torch.full((2, 1, 16, 16), 3.0)
    rois = torch.tensor([[1, 8.0, 8.0, 6.0, 3.0, 71.0], [0, 6.0, 9.0, 4.0, 8.0, -140.0]])
    out = roi_align_rotated(x, rois, (4, 4), 0.9, 0)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))


def test_gradcheck():
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 3.0, 2.5, 4.0, 2.0, 30.0], [1, 4.0, 3.0, 3.0, 5.0, -100.0],
                         [1, 1.0, 1.0, 6.0, 6.0, 45.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align_rotated(t, rois, (2, 3), 0.8, 0), (x,))


def test_module_and_errors():
    module = ROIAlignRotated((2, 2), 0.5, 0)
    assert "ROIAlignRotated(output_size=(2, 2), spatial_scale=0.5" in repr(module)
    x = torch.randn(1, 1, 8, 8)
    rois = torch.tensor([[0, 4.0, 4.0, 4.0, 4.0, 15.0]])
    torch.testing.assert_close(module(x, rois), roi_align_rotated(x, rois, 2, 0.5, 0))
    with pytest.raises(ValueError, match=r"\(K, 6\)"):
        module(x, torch.zeros(1, 5))
    with pytest.raises(ValueError, match="negative width"):
        module(x, torch.tensor([[0, 4.0, 4.0, -1.0, 4.0, 0.0]]))
    with pytest.raises(ValueError, match="batch indices"):
        module(x, torch.tensor([[1, 4.0, 4.0, 1.0, 4.0, 0.0]]))


def test_pooler_with_rotated_boxes():
    # Two levels (strides 4 and 8); a small box goes to level 2, a large one to level 3.
    gen = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 3, 32, 32, generator=gen), torch.randn(2, 3, 16, 16, generator=gen)]
    pooler = ROIPooler((2, 2), (1 / 4, 1 / 8), 0, "ROIAlignRotated", canonical_box_size=64,
                       canonical_level=3)
    small = RotatedBoxes([[40.0, 40.0, 16.0, 8.0, 30.0]])
    large = RotatedBoxes([[60.0, 50.0, 80.0, 60.0, -20.0], [30.0, 30.0, 10.0, 10.0, 0.0]])
    out = pooler(feats, [small, large])
    expected = torch.cat(
        [
            roi_align_rotated(feats[0], torch.tensor([[0, 40.0, 40.0, 16.0, 8.0, 30.0]]), 2,
                              1 / 4, 0),
            roi_align_rotated(feats[1], torch.tensor([[1, 60.0, 50.0, 80.0, 60.0, -20.0]]), 2,
                              1 / 8, 0),
            roi_align_rotated(feats[0], torch.tensor([[1, 30.0, 30.0, 10.0, 10.0, 0.0]]), 2,
                              1 / 4, 0),
        ]
    )
    torch.testing.assert_close(out, expected)
