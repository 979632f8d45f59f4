"""ASPP: branch layout and parameter names, output shapes with global and windowed image
pooling, depthwise-separable branches, and the errors for bad dilations / input sizes."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segtron.layers import ASPP, DepthwiseSeparableConv2d


def _aspp(**kwargs):
    args = dict(norm="BN", activation=F.relu)
    args.update(kwargs)
    return ASPP(16, 8, [1, 2, 3], **args)


@pytest.mark.parametrize("norm", ["", "BN"])
def test_layout_and_parameter_names(norm):
    aspp = _aspp(norm=norm)
    assert len(aspp.convs) == 5
    assert [aspp.convs[i].kernel_size for i in range(4)] == [(1, 1)] + [(3, 3)] * 3
    assert [aspp.convs[i].dilation for i in range(1, 4)] == [(1, 1), (2, 2), (3, 3)]
    assert isinstance(aspp.convs[4][0], nn.AdaptiveAvgPool2d)
    # The pooling conv never has a norm and always a bias; the others a bias only without norm.
    assert aspp.convs[4][1].norm is None and aspp.convs[4][1].bias is not None
    assert (aspp.convs[0].bias is None) == (norm == "BN")
    assert aspp.project.weight.shape == (8, 40, 1, 1)
    keys = set(aspp.state_dict())
    assert {"convs.4.1.weight", "convs.4.1.bias", "project.weight"} <= keys
    assert ("convs.2.norm.running_mean" in keys) == (norm == "BN")


@pytest.mark.parametrize("size", [(8, 8), (5, 11)])
def test_global_pooling_output_shape(size):
    aspp = _aspp().eval()
    out = aspp(torch.randn(2, 16, *size))
    assert out.shape == (2, 8, *size)


def test_pooling_kernel_equal_to_the_input_is_global_pooling():
    """With kh x kw = the input size, the windowed pooling is one window: the global mean."""
    torch.manual_seed(0)
    pooled_global = _aspp().eval()
    windowed = _aspp(pool_kernel_size=(4, 6)).eval()
    windowed.load_state_dict(pooled_global.state_dict())
    x = torch.randn(1, 16, 4, 6)
    torch.testing.assert_close(windowed(x), pooled_global(x))


def test_pooling_kernel_on_a_larger_input():
    """A (4, 6) window on an (8, 12) map: a (5, 7) pooled map, upsampled to (8, 12), and it
    differs from global pooling (the windows see different means)."""
    torch.manual_seed(0)
    windowed = _aspp(pool_kernel_size=(4, 6)).eval()
    x = torch.randn(1, 16, 8, 12)
    assert windowed.convs[4](x).shape == (1, 8, 5, 7)
    out = windowed(x)
    assert out.shape == (1, 8, 8, 12)
    pooled_global = _aspp().eval()
    pooled_global.load_state_dict(windowed.state_dict())
    assert not torch.allclose(out, pooled_global(x))


def test_pooling_kernel_must_divide_the_input():
    windowed = _aspp(pool_kernel_size=(4, 6)).eval()
    with pytest.raises(ValueError, match=r"\(8, 9\).*\(4, 6\).*INPUT.CROP.SIZE"):
        windowed(torch.randn(1, 16, 8, 9))


def test_depthwise_separable_branches():
    aspp = _aspp(use_depthwise_separable_conv=True).eval()
    for i, dilation in zip(range(1, 4), [1, 2, 3]):
        branch = aspp.convs[i]
        assert isinstance(branch, DepthwiseSeparableConv2d)
        assert branch.depthwise.groups == 16 and branch.depthwise.dilation == (dilation,) * 2
        assert branch.depthwise.norm is not None and branch.pointwise.norm is not None
    assert "convs.1.depthwise.weight" in aspp.state_dict()
    assert aspp(torch.randn(1, 16, 6, 6)).shape == (1, 8, 6, 6)
    dense = sum(p.numel() for p in _aspp().parameters())
    assert sum(p.numel() for p in aspp.parameters()) < dense


def test_dropout_only_in_training():
    aspp = _aspp(dropout=0.5)
    x = torch.randn(1, 16, 6, 6)
    aspp.eval()
    torch.testing.assert_close(aspp(x), aspp(x))
    aspp.train()
    torch.manual_seed(1)
    out = aspp(x)
    assert (out == 0).float().mean() > 0.2


def test_three_dilations_required():
    with pytest.raises(ValueError, match="3 dilations.*MODEL.SEM_SEG_HEAD.ASPP_DILATIONS"):
        ASPP(16, 8, [6, 12], norm="", activation=F.relu)
