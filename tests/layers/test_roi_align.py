import math

import pytest
import torch

from segtron.layers import ROIAlign


def _bilinear(feat, y, x):
    """Value of feat (H, W) at continuous (y, x), pixel centres at integers (ROIAlign rule)."""
    height, width = feat.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(math.floor(y)), int(math.floor(x))
    if y0 >= height - 1:
        y0 = y1 = height - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= width - 1:
        x0 = x1 = width - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    f = feat.double()
    return float(hy * hx * f[y0, x0] + hy * lx * f[y0, x1] + ly * hx * f[y1, x0] + ly * lx * f[y1, x1])


def _roi_align_reference(features, rois, out_h, out_w, scale, sampling_ratio, aligned):
    """Brute-force ROIAlign: average of a grid of bilinear samples in each output bin."""
    num, channels = rois.shape[0], features.shape[1]
    out = torch.zeros(num, channels, out_h, out_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k in range(num):
        b, x0, y0, x1, y1 = [float(v) for v in rois[k]]
        start_x, start_y = x0 * scale - offset, y0 * scale - offset
        roi_w, roi_h = x1 * scale - offset - start_x, y1 * scale - offset - start_y
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_h / out_h))
        grid_w = sampling_ratio if sampling_ratio > 0 else int(math.ceil(roi_w / out_w))
        count = max(grid_h * grid_w, 1)
        for c in range(channels):
            feat = features[int(b), c]
            for ph in range(out_h):
                for pw in range(out_w):
                    total = 0.0
                    for iy in range(grid_h):
                        y = start_y + ph * bin_h + (iy + 0.5) * bin_h / grid_h
                        for ix in range(grid_w):
                            x = start_x + pw * bin_w + (ix + 0.5) * bin_w / grid_w
                            total += _bilinear(feat, y, x)
                    out[k, c, ph, pw] = total / count
    return out


def _random_rois(num, batch, height, width, scale, gen):
    """Boxes in image coordinates (feature size / scale), some partly outside, some tiny."""
    img_h, img_w = height / scale, width / scale
    x0 = torch.rand(num, generator=gen) * img_w * 1.2 - 0.1 * img_w
    y0 = torch.rand(num, generator=gen) * img_h * 1.2 - 0.1 * img_h
    w = torch.rand(num, generator=gen) * img_w * 0.8
    h = torch.rand(num, generator=gen) * img_h * 0.8
    w[:2] = torch.tensor([0.3, 0.0])  # sub-pixel and degenerate boxes
    h[:2] = torch.tensor([0.2, 1.5])
    b = torch.randint(0, batch, (num,), generator=gen).float()
    return torch.stack([b, x0, y0, x0 + w, y0 + h], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_matches_bruteforce(aligned, sampling_ratio):
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 2, 7, 9, generator=gen)
    scale = 0.5
    rois = _random_rois(8, 2, 7, 9, scale, gen)
    pooler = ROIAlign((3, 4), spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    out = pooler(features, rois)
    expected = _roi_align_reference(features, rois, 3, 4, scale, sampling_ratio, aligned)
    assert out.shape == (8, 2, 3, 4)
    assert torch.allclose(out.double(), expected, atol=1e-5)


def test_roi_align_int_output_size_and_repr():
    pooler = ROIAlign(2, spatial_scale=1.0, sampling_ratio=0)
    assert pooler.aligned is True
    out = pooler(torch.randn(1, 3, 5, 5), torch.tensor([[0.0, 1.0, 1.0, 4.0, 4.0]]))
    assert out.shape == (1, 3, 2, 2)
    assert "output_size=2" in repr(pooler) and "aligned=True" in repr(pooler)


def test_roi_align_casts_rois_to_input_dtype():
    features = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    rois32 = torch.tensor([[0.0, 0.5, 1.0, 4.5, 5.0]], dtype=torch.float32)
    pooler = ROIAlign((2, 2), 1.0, 2)
    out = pooler(features, rois32)
    assert out.dtype == torch.float64
    assert torch.allclose(out, pooler(features, rois32.double()))
    out32 = pooler(features.float(), rois32.double())
    assert out32.dtype == torch.float32


def test_roi_align_empty_rois_forward_backward():
    features = torch.randn(2, 3, 6, 6, requires_grad=True)
    out = ROIAlign((7, 7), 0.25, 0)(features, torch.zeros(0, 5))
    assert out.shape == (0, 3, 7, 7)
    out.sum().backward()
    assert torch.all(features.grad == 0)


def test_roi_align_rejects_bad_rois_shape():
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        ROIAlign(2, 1.0, 0)(torch.randn(1, 1, 4, 4), torch.zeros(3, 4))
