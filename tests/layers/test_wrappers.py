import dataclasses

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segtron.layers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    ShapeSpec,
    cat,
    check_if_dynamo_compiling,
    cross_entropy,
    empty_input_loss_func_wrapper,
    get_norm,
    interpolate,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)


def test_shape_spec_defaults_frozen_and_hashable():
    spec = ShapeSpec(channels=256, stride=4)
    assert (spec.channels, spec.height, spec.width, spec.stride) == (256, None, None, 4)
    assert ShapeSpec() == ShapeSpec(None, None, None, None)
    assert {spec: 1}[ShapeSpec(channels=256, stride=4)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.channels = 3
    assert [f.name for f in dataclasses.fields(ShapeSpec)] == ["channels", "height", "width", "stride"]


def test_aliases_are_torch():
    assert ConvTranspose2d is nn.ConvTranspose2d
    assert BatchNorm2d is nn.BatchNorm2d
    assert Linear is nn.Linear
    assert interpolate is F.interpolate


def test_cat_single_tensor_is_not_copied():
    t = torch.rand(3, 2)
    assert cat([t]) is t
    a, b = torch.rand(2, 3), torch.rand(4, 3)
    assert torch.equal(cat([a, b]), torch.cat([a, b]))
    assert torch.equal(cat((a.t(), b.t()), dim=1), torch.cat([a.t(), b.t()], 1))
    with pytest.raises(TypeError, match="list or tuple"):
        cat(t)


def test_nonzero_tuple():
    x = torch.tensor([[0, 1, 0], [2, 0, 3]])
    rows, cols = nonzero_tuple(x)
    assert rows.tolist() == [0, 1, 1] and cols.tolist() == [1, 0, 2]
    (idx,) = nonzero_tuple(torch.tensor(5))
    assert idx.tolist() == [0]
    (idx,) = nonzero_tuple(torch.tensor(0))
    assert idx.tolist() == []


def test_shapes_to_tensor_and_move_device_like():
    t = shapes_to_tensor([3, 5])
    assert t.dtype == torch.int64 and t.tolist() == [3, 5]
    src, dst = torch.ones(2), torch.zeros(1)
    assert move_device_like(src, dst).device == dst.device


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_shapes_to_tensor_under_tracing_follows_input_shape():
    # While tracing, tensor.shape entries are 0-dim tensors: the result must stay dynamic.
    def size_of(x):
        return shapes_to_tensor(x.shape[-2:]) * 1

    traced = torch.jit.trace(size_of, torch.zeros(2, 3))
    assert traced(torch.zeros(4, 7)).tolist() == [4, 7]


def test_check_if_dynamo_compiling_false_in_eager():
    assert check_if_dynamo_compiling() is False


def test_cross_entropy_empty_is_zero_with_grad():
    logits = torch.zeros(0, 5, requires_grad=True)
    loss = cross_entropy(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.dim() == 0
    loss.backward()
    assert logits.grad is not None and logits.grad.shape == (0, 5)
    # Non-empty input: plain cross entropy.
    logits = torch.randn(6, 5)
    target = torch.randint(0, 5, (6,))
    assert torch.allclose(cross_entropy(logits, target), F.cross_entropy(logits, target))
    assert torch.allclose(
        cross_entropy(logits, target, reduction="sum"), F.cross_entropy(logits, target, reduction="sum")
    )


def test_empty_input_loss_func_wrapper_passes_kwargs():
    wrapped = empty_input_loss_func_wrapper(F.binary_cross_entropy_with_logits)
    x, y, w = torch.randn(4), torch.rand(4), torch.rand(4)
    assert torch.allclose(wrapped(x, y, weight=w), F.binary_cross_entropy_with_logits(x, y, weight=w))
    empty = torch.zeros(0, requires_grad=True)
    assert wrapped(empty, torch.zeros(0)).item() == 0.0
    # With reduction="none" the wrapped loss is called even for empty input.
    assert wrapped(empty, torch.zeros(0), reduction="none").shape == (0,)


def test_conv2d_norm_then_activation():
    conv = Conv2d(3, 8, kernel_size=3, padding=1, bias=False, norm=nn.BatchNorm2d(8), activation=F.relu)
    with torch.no_grad():
        conv.norm.running_mean.uniform_(-1, 1)
        conv.norm.running_var.uniform_(0.5, 2)
        conv.norm.weight.uniform_(0.5, 2)
        conv.norm.bias.uniform_(-1, 1)
    conv.eval()
    x = torch.randn(2, 3, 9, 7)
    raw = F.conv2d(x, conv.weight, None, padding=1)
    bn = conv.norm
    expected = (raw - bn.running_mean[None, :, None, None]) / torch.sqrt(
        bn.running_var[None, :, None, None] + bn.eps
    ) * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    expected = expected.clamp(min=0)
    assert torch.allclose(conv(x), expected, atol=1e-5)
    # Checkpoint layout: the norm is a sub-module named "norm".
    assert set(conv.state_dict()) == {
        "weight", "norm.weight", "norm.bias", "norm.running_mean", "norm.running_var",
        "norm.num_batches_tracked",
    }


def test_conv2d_plain_matches_nn_conv2d():
    conv = Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    ref = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(1, 4, 11, 10)
    assert torch.allclose(conv(x), ref(x))
    assert conv.norm is None and conv.activation is None


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("norm", ["", "BN", "GN", "FrozenBN", "naiveSyncBN_N", "LN"])
def test_conv2d_empty_batch_forward_backward(training, norm):
    conv = Conv2d(3, 32, 3, stride=2, padding=1, norm=get_norm(norm, 32), activation=F.relu)
    conv.train(training)
    x = torch.zeros(0, 3, 10, 12, requires_grad=True)
    y = conv(x)
    assert y.shape == (0, 32, 5, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert conv.weight.grad is not None and torch.all(conv.weight.grad == 0)


def test_conv_transpose2d_empty_batch_forward_backward():
    deconv = ConvTranspose2d(4, 2, kernel_size=2, stride=2)
    x = torch.zeros(0, 4, 7, 5, requires_grad=True)
    y = deconv(x)
    assert y.shape == (0, 2, 14, 10)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.all(deconv.weight.grad == 0)


def test_conv2d_sync_batchnorm_rejects_empty_batch_in_training():
    conv = Conv2d(3, 4, 1, norm=nn.SyncBatchNorm(4))
    conv.train()
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        conv(torch.zeros(0, 3, 4, 4))
    conv.eval()
    assert conv(torch.zeros(0, 3, 4, 4)).shape == (0, 4, 4, 4)
