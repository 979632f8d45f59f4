"""``deform_conv`` / ``modulated_deform_conv`` (Detectron2's functional forms) vs the modules."""

import pytest
import torch
from torch.nn import functional as F

from segtron.layers import DeformConv, ModulatedDeformConv
from segtron.layers.deform_conv import deform_conv, modulated_deform_conv

CASES = [
    dict(kernel_size=3, stride=1, padding=1, dilation=1, groups=1, deformable_groups=1),
    dict(kernel_size=3, stride=2, padding=2, dilation=2, groups=2, deformable_groups=2),
    dict(kernel_size=(3, 1), stride=(1, 2), padding=(1, 0), dilation=1, groups=1,
         deformable_groups=4),
]


def _random_offset(x, conv, seed):
    """Random offsets (up to 2 px) of the right shape for ``conv`` applied to ``x``."""
    kh, kw = conv.kernel_size
    sizes = [
        (x.shape[2 + d] + 2 * conv.padding[d] - conv.dilation[d] * (k - 1) - 1) // conv.stride[d]
        + 1
        for d, k in enumerate((kh, kw))
    ]
    gen = torch.Generator().manual_seed(seed)
    shape = (x.shape[0], conv.deformable_groups * kh * kw, *sizes)
    offset = 4 * torch.rand((shape[0], 2 * shape[1], *shape[2:]), generator=gen) - 2
    mask = torch.rand(shape, generator=gen)
    return offset, mask


@pytest.mark.parametrize("kw", CASES)
def test_deform_conv_equals_module(kw):
    torch.manual_seed(0)
    conv = DeformConv(4, 6, **kw)
    x = torch.randn(2, 4, 9, 8)
    offset, _ = _random_offset(x, conv, seed=1)
    expected = conv(x, offset)
    got = deform_conv(x, offset, conv.weight, conv.stride, conv.padding, conv.dilation,
                      kw["groups"], kw["deformable_groups"])
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6)
    # Non-zero offsets do deform: the result is not the plain convolution.
    plain = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation, kw["groups"])
    assert not torch.allclose(got, plain, atol=1e-3)


@pytest.mark.parametrize("kw", CASES)
def test_modulated_deform_conv_equals_module(kw):
    torch.manual_seed(0)
    conv = ModulatedDeformConv(4, 6, **kw)
    with torch.no_grad():
        conv.bias.uniform_(-1, 1)
    x = torch.randn(2, 4, 9, 8)
    offset, mask = _random_offset(x, conv, seed=2)
    expected = conv(x, offset, mask)
    got = modulated_deform_conv(x, offset, mask, conv.weight, conv.bias, conv.stride,
                                conv.padding, conv.dilation, kw["groups"],
                                kw["deformable_groups"])
    assert torch.allclose(got, expected, atol=1e-6)
    no_bias = modulated_deform_conv(x, offset, mask, conv.weight, None, conv.stride,
                                    conv.padding, conv.dilation, kw["groups"],
                                    kw["deformable_groups"])
    assert torch.allclose(got - no_bias, conv.bias[None, :, None, None].expand_as(got),
                          atol=1e-5)


def test_int_arguments_and_zero_offset_is_conv():
    weight = torch.randn(5, 3, 3, 3)
    x = torch.randn(1, 3, 7, 7)
    offset = torch.zeros(1, 18, 4, 4)
    expected = F.conv2d(x, weight, stride=2, padding=1)
    assert torch.allclose(deform_conv(x, offset, weight, 2, 1), expected, atol=1e-5)
    mask = torch.full((1, 9, 4, 4), 0.5)
    got = modulated_deform_conv(x, offset, mask, weight, None, 2, 1)
    assert torch.allclose(got, 0.5 * expected, atol=1e-5)


def test_gradients_flow_to_all_inputs():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    offset = (torch.rand(1, 18, 5, 5) - 0.5).requires_grad_()
    mask = torch.rand(1, 9, 5, 5, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    modulated_deform_conv(x, offset, mask, weight, bias, 1, 1).sum().backward()
    for t in (x, offset, mask, weight, bias):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert torch.all(bias.grad == 25)  # d(sum)/d(bias_c) = number of output pixels


def test_bad_shapes_name_the_argument():
    weight = torch.randn(4, 2, 3, 3)
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match="groups=1"):
        deform_conv(x, torch.zeros(1, 18, 3, 3), weight)
    with pytest.raises(ValueError, match="offset"):
        deform_conv(x, torch.zeros(1, 9, 3, 3), weight, groups=2)
    with pytest.raises(ValueError, match="input must be a 4D"):
        deform_conv(x[0], torch.zeros(1, 18, 3, 3), weight, groups=2)
    with pytest.raises(ValueError, match="mask"):
        modulated_deform_conv(x, torch.zeros(1, 18, 3, 3), torch.ones(1, 3, 3, 3), weight,
                              groups=2)
    with pytest.raises(ValueError, match="im2col_step"):
        deform_conv(x, torch.zeros(1, 18, 3, 3), weight, groups=2, im2col_step=0)


def test_empty_batch():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    x = torch.zeros(0, 3, 9, 7, requires_grad=True)
    out = deform_conv(x, torch.zeros(0, 18, 5, 4), weight, 2, 1)
    assert out.shape == (0, 4, 5, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.all(weight.grad == 0)
