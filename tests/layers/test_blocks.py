"""CNNBlockBase.freeze and DepthwiseSeparableConv2d."""

import torch
from torch import nn
from torch.nn import functional as F

from segtron.layers import CNNBlockBase, Conv2d, DepthwiseSeparableConv2d, FrozenBatchNorm2d


class _Block(CNNBlockBase):
    def __init__(self):
        super().__init__(3, 4, 1)
        self.conv = Conv2d(3, 4, 3, padding=1, bias=False, norm=nn.BatchNorm2d(4))
        self.inner = nn.Sequential(nn.BatchNorm2d(4))

    def forward(self, x):
        return self.inner(self.conv(x))


def test_freeze_converts_norms_and_stops_gradients():
    block = _Block().eval()
    with torch.no_grad():
        block.conv.norm.running_mean.uniform_(-1, 1)
        block.conv.norm.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        before = block(x)
    assert block.freeze() is block
    assert (block.in_channels, block.out_channels, block.stride) == (3, 4, 1)
    assert isinstance(block.conv.norm, FrozenBatchNorm2d)
    assert isinstance(block.inner[0], FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in block.parameters())
    torch.testing.assert_close(block(x), before, rtol=1e-5, atol=1e-6)


def test_depthwise_separable_conv():
    conv = DepthwiseSeparableConv2d(
        4, 6, kernel_size=3, padding=2, dilation=2, norm1="BN", activation1=F.relu, norm2=""
    )
    assert conv.depthwise.groups == 4 and conv.depthwise.bias is None
    assert conv.depthwise.weight.shape == (4, 1, 3, 3)
    assert conv.pointwise.bias is not None and conv.pointwise.norm is None
    assert conv(torch.randn(2, 4, 7, 9)).shape == (2, 6, 7, 9)
