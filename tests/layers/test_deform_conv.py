import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segtron.layers import DeformConv, ModulatedDeformConv


def _offset(x, conv, fill_y=0.0, fill_x=0.0):
    n, _, h, w = x.shape
    kh, kw = conv.kernel_size
    out_h = (h + 2 * conv.padding[0] - conv.dilation[0] * (kh - 1) - 1) // conv.stride[0] + 1
    out_w = (w + 2 * conv.padding[1] - conv.dilation[1] * (kw - 1) - 1) // conv.stride[1] + 1
    offset = torch.zeros(n, conv.deformable_groups * kh * kw, 2, out_h, out_w)
    offset[:, :, 0] = fill_y
    offset[:, :, 1] = fill_x
    return offset.reshape(n, -1, out_h, out_w)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=2, dilation=2),
        dict(kernel_size=(3, 1), padding=(1, 0), groups=2, deformable_groups=2),
    ],
)
def test_deform_conv_zero_offset_is_plain_conv(kwargs):
    conv = DeformConv(4, 6, **kwargs)
    x = torch.randn(2, 4, 9, 8)
    expected = F.conv2d(
        x, conv.weight, None, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
        groups=conv.groups,
    )
    assert torch.allclose(conv(x, _offset(x, conv)), expected, atol=1e-5)


def test_deform_conv_offset_layout_is_y_then_x():
    conv = DeformConv(3, 5, kernel_size=3)
    x = torch.randn(1, 3, 8, 10)
    # Shifting every tap by +1 row samples the image one row lower: conv of x shifted up.
    shifted_up = torch.cat([x[:, :, 1:], torch.zeros_like(x[:, :, :1])], dim=2)
    expected = F.conv2d(shifted_up, conv.weight)
    assert torch.allclose(conv(x, _offset(x, conv, fill_y=1.0)), expected, atol=1e-5)
    shifted_left = torch.cat([x[:, :, :, 1:], torch.zeros_like(x[:, :, :, :1])], dim=3)
    expected = F.conv2d(shifted_left, conv.weight)
    assert torch.allclose(conv(x, _offset(x, conv, fill_x=1.0)), expected, atol=1e-5)


def test_modulated_deform_conv_mask_scales_samples():
    conv = ModulatedDeformConv(4, 6, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.bias.uniform_(-1, 1)
    x = torch.randn(2, 4, 7, 7)
    offset = _offset(x, conv)
    ones = torch.ones(2, 9, 7, 7)
    plain = F.conv2d(x, conv.weight, None, padding=1)
    bias = conv.bias[None, :, None, None]
    assert torch.allclose(conv(x, offset, ones), plain + bias, atol=1e-5)
    assert torch.allclose(conv(x, offset, ones * 0.25), 0.25 * plain + bias, atol=1e-5)


def test_parameter_names_and_bias_rules():
    assert set(dict(DeformConv(4, 4, 3).named_parameters())) == {"weight"}
    assert DeformConv(4, 8, 3, groups=2).weight.shape == (8, 2, 3, 3)
    assert set(dict(ModulatedDeformConv(4, 4, 3).named_parameters())) == {"weight", "bias"}
    no_bias = ModulatedDeformConv(4, 4, 3, bias=False)
    assert set(dict(no_bias.named_parameters())) == {"weight"} and no_bias.bias is None
    with pytest.raises(ValueError, match="bias"):
        DeformConv(4, 4, 3, bias=True)
    with pytest.raises(ValueError, match="groups"):
        DeformConv(3, 4, 3, groups=2)
    assert "deformable_groups=1" in repr(DeformConv(4, 4, 3))


def test_norm_activation_and_bad_offset():
    conv = DeformConv(3, 4, 1, norm=nn.GroupNorm(2, 4), activation=F.relu)
    x = torch.randn(1, 3, 5, 5)
    plain = F.conv2d(x, conv.weight)
    expected = F.relu(F.group_norm(plain, 2, conv.norm.weight, conv.norm.bias))
    assert torch.allclose(conv(x, _offset(x, conv)), expected, atol=1e-5)
    with pytest.raises(ValueError, match="offset"):
        conv(x, torch.zeros(1, 3, 5, 5))
    mconv = ModulatedDeformConv(3, 4, 3, padding=1)
    with pytest.raises(ValueError, match="mask"):
        mconv(x, torch.zeros(1, 18, 5, 5), torch.zeros(1, 1, 5, 5))


def test_empty_batch_forward_backward():
    conv = DeformConv(3, 4, 3, stride=2, padding=1)
    x = torch.zeros(0, 3, 9, 7, requires_grad=True)
    offset = torch.zeros(0, 18, 5, 4, requires_grad=True)
    out = conv(x, offset)
    assert out.shape == (0, 4, 5, 4)
    out.sum().backward()
    assert x.grad.shape == x.shape and offset.grad.shape == offset.shape
    assert torch.all(conv.weight.grad == 0)
    mconv = ModulatedDeformConv(3, 4, 3, padding=1)
    mask = torch.zeros(0, 9, 9, 7, requires_grad=True)
    out = mconv(x, torch.zeros(0, 18, 9, 7), mask)
    assert out.shape == (0, 4, 9, 7)
    out.sum().backward()
    assert mask.grad.shape == mask.shape
