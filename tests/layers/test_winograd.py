"""Winograd (NNPACK) and GEMM convolutions: same function and gradients as F.conv2d, NCHW
outputs, and only where they apply (CPU float32, stride 1; 3x3 on large maps, 1x1 without
autograd)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segtron.layers import Conv2d, FrozenBatchNorm2d, enable_winograd_conv
from segtron.layers import winograd
from segtron.layers.winograd import (
    pointwise_conv_nchw,
    winograd_applies,
    winograd_available,
    winograd_conv3x3,
)
from segtron.modeling.backbone.fpn import _add_upsampled

needs_nnpack = pytest.mark.skipif(not winograd_available(), reason="no NNPACK in this build")


def _relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@needs_nnpack
@pytest.mark.parametrize("batch,height,width", [(1, 48, 60), (3, 48, 50), (40, 14, 14)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("padding", [(1, 1), (0, 0)])
def test_winograd_conv3x3_matches_conv2d(batch, height, width, channels_last, padding):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 16, height, width, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(24, 16, 3, 3, generator=g)
    bias = torch.randn(24, generator=g)
    expected = F.conv2d(x, weight, bias, padding=padding)
    out = winograd_conv3x3(x, weight, bias, padding)
    assert out.shape == expected.shape and out.is_contiguous()
    assert _relative_error(out, expected) < 1e-5
    # Not bit-identical: a Winograd transform rounds differently from a direct convolution.
    assert not torch.equal(out, expected)


@needs_nnpack
@pytest.mark.parametrize("batch,height,width", [(1, 48, 60), (2, 48, 50), (30, 14, 14)])
@pytest.mark.parametrize("padding", [(1, 1), (0, 0)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_winograd_conv3x3_gradients_match_conv2d(batch, height, width, padding, with_bias):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(batch, 16, height, width, generator=g).contiguous(
        memory_format=torch.channels_last)
    weight = torch.randn(24, 16, 3, 3, generator=g)
    bias = torch.randn(24, generator=g) if with_bias else None
    leaves = [t for t in (x, weight, bias) if t is not None]
    grad_out = None
    results = []
    for fn in (lambda *a: F.conv2d(*a, padding=padding),
               lambda *a: winograd_conv3x3(*a, padding)):
        inputs = [t.detach().clone().requires_grad_() for t in leaves]
        out = fn(*inputs) if with_bias else fn(*inputs, None)
        if grad_out is None:
            grad_out = torch.randn(out.shape, generator=g)
        out.backward(grad_out)
        results.append([t.grad for t in inputs])
    for expected, actual in zip(*results):
        assert actual.shape == expected.shape
        assert _relative_error(actual, expected) < 1e-5


@needs_nnpack
def test_winograd_conv3x3_gradient_for_weight_only():
    """A frozen input (e.g. the first layer) gets no gradient; the weight still does."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 8, 50, 50, generator=g)
    weight = torch.randn(8, 8, 3, 3, generator=g, requires_grad=True)
    winograd_conv3x3(x, weight, None, (1, 1)).square().sum().backward()
    reference = weight.detach().clone().requires_grad_()
    F.conv2d(x, reference, padding=1).square().sum().backward()
    assert x.grad is None
    assert _relative_error(weight.grad, reference.grad) < 1e-4


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_pointwise_conv_nchw_matches_conv2d(batch, channels_last, with_bias):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 12, 9, 7, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(5, 12, 1, 1, generator=g)
    bias = torch.randn(5, generator=g) if with_bias else None
    x.requires_grad_()
    weight.requires_grad_()
    out = pointwise_conv_nchw(x, weight, bias)
    assert out.is_contiguous()
    expected = F.conv2d(x, weight, bias)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # Differentiable: the same input and weight gradients as the convolution's.
    grad = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (x, weight), grad)
    want = torch.autograd.grad(expected, (x, weight), grad)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_winograd_applies_only_to_cpu_float_inference_convs(monkeypatch):
    monkeypatch.setattr(winograd, "winograd_available", lambda: True)
    big = torch.zeros(1, 128, 64, 64)
    conv3 = nn.Conv2d(128, 128, 3, padding=1)
    with torch.no_grad():
        assert winograd_applies(conv3, big)
        assert winograd_applies(nn.Conv2d(128, 128, 1), big)
        assert not winograd_applies(nn.Conv2d(128, 128, 1, padding=1), big)
        assert not winograd_applies(nn.Conv2d(128, 128, 3, stride=2, padding=1), big)
        assert not winograd_applies(nn.Conv2d(128, 128, 3, dilation=2, padding=2), big)
        assert not winograd_applies(nn.Conv2d(128, 128, 3, groups=2, padding=1), big)
        assert not winograd_applies(nn.Conv2d(128, 128, 5, padding=2), big)
        assert not winograd_applies(nn.Conv2d(128, 64, 3, padding=1), big)  # narrow
        assert not winograd_applies(conv3, torch.zeros(1, 128, 20, 20))  # small map
        assert winograd_applies(conv3, torch.zeros(50, 128, 14, 14))  # a batch of ROIs
        rois = torch.zeros(50, 128, 14, 14)
        assert winograd_applies(nn.Conv2d(128, 128, 1), rois)
        assert not winograd_applies(
            nn.Conv2d(128, 128, 1), rois.contiguous(memory_format=torch.channels_last))
        assert winograd_applies(
            nn.Conv2d(128, 128, 1), big.contiguous(memory_format=torch.channels_last))
        assert not winograd_applies(conv3, big.double())
        assert not winograd_applies(conv3, big[:0])
    # With autograd (training) the 3x3 kernels apply, and the 1x1 products on NCHW inputs only.
    assert winograd_applies(conv3, big)
    assert winograd_applies(nn.Conv2d(128, 3, 1), big)
    # ... but not on a large ROI batch, whose per-image weight gradients would be summed.
    assert winograd_applies(nn.Conv2d(256, 80, 1), torch.zeros(100, 256, 28, 28))
    assert not winograd_applies(nn.Conv2d(2048, 512, 1), torch.zeros(512, 2048, 7, 7))
    with torch.no_grad():
        assert winograd_applies(nn.Conv2d(2048, 512, 1), torch.zeros(512, 2048, 7, 7))
    assert not winograd_applies(
        nn.Conv2d(128, 3, 1), big.contiguous(memory_format=torch.channels_last))
    monkeypatch.setattr(winograd, "winograd_available", lambda: False)
    with torch.no_grad():
        assert not winograd_applies(conv3, big)
        assert winograd_applies(nn.Conv2d(128, 128, 1), big)  # a GEMM needs no NNPACK


@needs_nnpack
@pytest.mark.parametrize("kernel", [1, 3])
def test_conv2d_flag_same_function_nchw_output(kernel):
    g = torch.Generator().manual_seed(2)
    norm = FrozenBatchNorm2d(128)
    norm.weight.uniform_(0.5, 1.5, generator=g)
    norm.bias.normal_(generator=g)
    norm.running_mean.normal_(generator=g)
    norm.running_var.uniform_(0.5, 2.0, generator=g)
    conv = Conv2d(128, 128, kernel, padding=kernel // 2, bias=False, norm=norm,
                  activation=F.relu).eval()
    x = torch.randn(1, 128, 48, 48, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = conv(x)
        conv.winograd = True
        out = conv(x)
    assert out.is_contiguous() and not expected.is_contiguous()
    assert _relative_error(out, expected) < 1e-5
    # With autograd (training) a 1x1 conv on NHWC keeps oneDNN, bit for bit; a 3x3 one runs
    # NNPACK.
    conv.winograd = False
    reference = conv(x)
    conv.winograd = True
    trained = conv(x)
    if kernel == 1:
        assert torch.equal(trained, reference)
    else:
        assert trained.is_contiguous() and _relative_error(trained, reference) < 1e-5


def test_enable_winograd_conv_skips_excluded_modules():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bottom_up = nn.Sequential(Conv2d(3, 4, 3), Conv2d(4, 4, 3))
    model.backbone.lateral = Conv2d(4, 4, 1)
    model.head = nn.Sequential(Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    assert enable_winograd_conv(model, exclude=("backbone.bottom_up",)) == 2
    assert model.backbone.lateral.winograd and model.head[0].winograd
    assert not any(m.winograd for m in model.backbone.bottom_up)
    assert enable_winograd_conv(model, enabled=False) == 4  # not the plain nn.Conv2d
    assert not model.head[0].winograd


@pytest.mark.parametrize("channels_last", [False, True])
def test_add_upsampled_matches_interpolate(channels_last):
    g = torch.Generator().manual_seed(3)
    fine = torch.randn(2, 4, 10, 14, generator=g)
    coarse = torch.randn(2, 4, 5, 7, generator=g)
    if channels_last:
        fine = fine.contiguous(memory_format=torch.channels_last)
        coarse = coarse.contiguous(memory_format=torch.channels_last)
    expected = fine + F.interpolate(coarse, scale_factor=2.0, mode="nearest")
    with torch.no_grad():
        out = _add_upsampled(fine.clone(), coarse)
    assert torch.equal(out, expected)
    # With autograd the lateral map is not overwritten.
    fine.requires_grad_()
    out = _add_upsampled(fine, coarse)
    assert torch.equal(out, expected) and out.data_ptr() != fine.data_ptr()
