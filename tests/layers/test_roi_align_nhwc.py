"""roi_align_nhwc (channels-last CPU path of ROIAlign) equals torchvision's kernel."""

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from segtron.layers import ROIAlign
from segtron.layers.roi_align_nhwc import roi_align_nhwc


def _rois(num, height, width, scale, generator, batch=1):
    """Boxes in image pixels, incl. boxes partly outside, tiny ones and degenerate ones."""
    size = torch.tensor([width, height, width, height]) / scale
    xy = torch.rand(num, 2, generator=generator) * size[:2] * 1.1 - 0.05 * size[:2]
    wh = torch.rand(num, 2, generator=generator) * size[:2] * 0.5
    wh[: num // 8] *= 0.01  # sub-pixel boxes
    boxes = torch.cat([xy, xy + wh], dim=1)
    boxes[-1] = torch.tensor([-30.0, -30.0, -10.0, -5.0])  # entirely outside
    boxes[-2, 2:] = boxes[-2, :2]  # zero area
    index = torch.randint(0, batch, (num, 1), generator=generator).float()
    return torch.cat([index, boxes], dim=1)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("output_size", [(7, 7), (14, 14), (5, 3)])
def test_values_equal_torchvision(aligned, sampling_ratio, output_size):
    g = torch.Generator().manual_seed(hash((aligned, sampling_ratio, output_size)) % 1000)
    x = torch.randn(2, 16, 23, 31, generator=g).contiguous(memory_format=torch.channels_last)
    rois = _rois(60, 23, 31, 0.25, g, batch=2)
    expected = tv_roi_align(x.contiguous(), rois, output_size, 0.25, sampling_ratio, aligned)
    ours = roi_align_nhwc(x, rois, output_size, 0.25, sampling_ratio, aligned)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_gradient_equals_torchvision():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(2, 8, 19, 27, generator=g)
    rois = _rois(40, 19, 27, 0.5, g, batch=2)
    weights = torch.randn(40, 8, 7, 7, generator=g)
    grads = []
    for layout, fn in [(torch.contiguous_format, tv_roi_align), (torch.channels_last, roi_align_nhwc)]:
        x = base.clone().contiguous(memory_format=layout).requires_grad_()
        (fn(x, rois, (7, 7), 0.5, 0, True) * weights).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_gradient_passes_gradcheck_in_float64():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 9, 11, generator=g, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    rois = _rois(6, 9, 11, 1.0, g).double()
    assert torch.autograd.gradcheck(lambda t: roi_align_nhwc(t, rois, (3, 2), 1.0, 0, True), (x,))


def test_module_dispatches_on_layout():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 12, 12, generator=g)
    rois = _rois(10, 12, 12, 1.0, g)
    layer = ROIAlign((7, 7), 1.0, 0, aligned=True)
    nchw = layer(x, rois)
    nhwc = layer(x.contiguous(memory_format=torch.channels_last), rois)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc, nchw, rtol=1e-5, atol=1e-5)
    empty = layer(x.contiguous(memory_format=torch.channels_last), rois[:0])
    assert empty.shape == (0, 4, 7, 7)
