"""The layout / kernel policy of segtron.layers.execution: its decisions on CPU, and what it
picks for CUDA tensors (where a GPU is present)."""

import pytest
import torch
from torch import nn

from segtron.layers import Conv2d, FrozenBatchNorm2d, winograd_available
from segtron.layers.execution import (
    LinearOnMap,
    conv_plan,
    enable_winograd_conv,
    features_for_roi_pooling,
    is_channels_last,
    mask_deconv_input,
    new_pooled_output,
    set_model_winograd_conv,
    to_input_layout,
    uses_nhwc_roi_align,
)

from ..conftest import lift_winograd_limits

CL = torch.channels_last


def _nhwc(*shape, device="cpu"):
    return torch.randn(*shape, device=device).contiguous(memory_format=CL)


def test_is_channels_last_excludes_maps_that_are_both_layouts():
    assert is_channels_last(_nhwc(2, 3, 4, 5))
    assert not is_channels_last(torch.randn(2, 3, 4, 5))
    assert not is_channels_last(_nhwc(2, 3, 1, 1))  # NCHW-contiguous as well
    assert not is_channels_last(torch.randn(3, 4, 5))


def test_input_layout_follows_the_channels_last_setting():
    batch = torch.randn(2, 3, 8, 8)
    assert is_channels_last(to_input_layout(batch, True))
    assert to_input_layout(batch, False) is batch
    assert torch.equal(to_input_layout(batch, True), batch)


def test_roi_features_go_nhwc_only_with_both_settings():
    features = {"p2": torch.randn(1, 4, 8, 8), "p3": torch.randn(1, 4, 4, 4)}
    for channels_last, winograd in [(False, False), (True, False), (False, True)]:
        assert features_for_roi_pooling(features, channels_last, winograd) is features
    out = features_for_roi_pooling(features, True, True)
    assert all(is_channels_last(v) and torch.equal(v, features[k]) for k, v in out.items())


def test_pooled_output_and_deconv_input_follow_the_pooled_layout():
    pooled = new_pooled_output(_nhwc(1, 4, 8, 8).double(), (3, 4, 2, 2))
    assert pooled.shape == (3, 4, 2, 2) and pooled.dtype == torch.float64
    assert is_channels_last(pooled)
    assert new_pooled_output(torch.randn(1, 4, 8, 8), (3, 4, 2, 2)).is_contiguous()
    nchw = torch.randn(3, 4, 6, 6)
    assert is_channels_last(mask_deconv_input(nchw, pooled_nhwc=True))
    assert mask_deconv_input(nchw, pooled_nhwc=False) is nchw
    already = _nhwc(3, 4, 6, 6)
    assert mask_deconv_input(already, pooled_nhwc=True) is already


def test_nhwc_roi_align_kernel_only_for_nhwc_cpu_maps_outside_tracing():
    assert uses_nhwc_roi_align(_nhwc(1, 4, 8, 8))
    assert not uses_nhwc_roi_align(torch.randn(1, 4, 8, 8))
    picked = []
    torch.jit.trace(lambda t: picked.append(uses_nhwc_roi_align(t)) or t * 2,
                    _nhwc(1, 4, 8, 8), check_trace=False)
    assert picked == [False]


def _frozen_conv(kernel=3, channels=8):
    norm = FrozenBatchNorm2d(channels)
    norm.running_var.fill_(4.0)  # not the identity, so folding changes the weights
    return Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False, norm=norm)


def test_frozen_norm_folds_with_autograd_or_nhwc_inputs_only():
    conv, x = _frozen_conv(), torch.randn(1, 8, 6, 6)
    assert conv_plan(conv, x) == ("direct", True)  # autograd on
    with torch.no_grad():
        assert conv_plan(conv, x) == ("direct", False)  # Detectron2's exact inference
        assert conv_plan(conv, x.contiguous(memory_format=CL)) == ("direct", True)
        # A norm that cannot fold, or none: nothing to fold.
        gn = Conv2d(8, 8, 3, padding=1, norm=nn.GroupNorm(2, 8))
        assert conv_plan(gn, x.contiguous(memory_format=CL)) == ("direct", False)
        assert conv_plan(Conv2d(8, 8, 3), x) == ("direct", False)


def test_winograd_kernels_only_when_switched_on_and_the_output_is_the_convs(monkeypatch):
    lift_winograd_limits(monkeypatch)
    x = torch.randn(2, 8, 6, 6)
    pointwise = _frozen_conv(kernel=1)
    with torch.no_grad():
        assert conv_plan(pointwise, x).kernel == "direct"  # switch off
        pointwise.winograd = True
        assert conv_plan(pointwise, x) == ("pointwise", True)  # folded, even in inference
        gn = Conv2d(8, 8, 1, norm=nn.GroupNorm(2, 8))
        gn.winograd = True
        assert conv_plan(gn, x) == ("direct", False)  # a GroupNorm output is not the conv's
        assert conv_plan(pointwise, x.double()).kernel == "direct"  # float32 only
        if winograd_available():
            conv3 = _frozen_conv(kernel=3)
            conv3.winograd = True
            assert conv_plan(conv3, x) == ("winograd", True)


def test_conv2d_runs_the_planned_kernel(monkeypatch):
    """A folded Winograd / GEMM conv computes what conv-then-norm computes."""
    lift_winograd_limits(monkeypatch)
    torch.manual_seed(0)
    conv = _frozen_conv(kernel=1, channels=16)
    x = torch.randn(2, 16, 5, 5)
    with torch.no_grad():
        expected = conv.norm(nn.functional.conv2d(x, conv.weight))
        conv.winograd = True
        out = conv(x)
    assert out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_linear_on_map_is_a_convolution_only_for_nhwc_cpu_inference():
    torch.manual_seed(0)
    fc, run = nn.Linear(4 * 3 * 3, 5), LinearOnMap()
    x = torch.randn(6, 4, 3, 3)
    expected = fc(x.flatten(1))
    assert torch.equal(run(fc, x.contiguous(memory_format=CL)), expected)  # autograd: plain
    assert run.cached_kernel is None
    with torch.no_grad():
        assert torch.equal(run(fc, x), expected.detach())
        assert run.cached_kernel is None
        out = run(fc, x.contiguous(memory_format=CL))
    assert run.cached_kernel is not None and run.cached_kernel.shape == (5, 4, 3, 3)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-5, atol=1e-6)
    run.clear()
    assert run.cached_kernel is None


def test_winograd_switch_covers_all_but_the_bottom_up_network():
    model = nn.Module()
    model.backbone = nn.Module()
    model.backbone.bottom_up = nn.Sequential(Conv2d(3, 4, 3), Conv2d(4, 4, 3))
    model.backbone.lateral = Conv2d(4, 4, 1)
    model.head = nn.Sequential(Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3))
    model.alias = model.backbone.bottom_up[0]  # excluded by identity, whatever its name
    assert set_model_winograd_conv(model, True) == 2
    assert model.backbone.lateral.winograd and model.head[0].winograd
    assert not any(m.winograd for m in model.backbone.bottom_up)
    # Without a bottom-up part the whole backbone is left alone.
    plain = nn.Module()
    plain.backbone = nn.Sequential(Conv2d(3, 4, 3))
    plain.head = Conv2d(4, 4, 3)
    assert set_model_winograd_conv(plain, True) == 1 and not plain.backbone[0].winograd
    # Names still work as exclusions.
    assert enable_winograd_conv(model, False, exclude=("head",)) == 3
    assert model.head[0].winograd and not model.backbone.lateral.winograd


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_policy_on_cuda_tensors_never_picks_cpu_kernels(monkeypatch):
    lift_winograd_limits(monkeypatch)
    conv = _frozen_conv(kernel=1).cuda()
    conv.winograd = True
    x = torch.randn(2, 8, 6, 6, device="cuda")
    with torch.no_grad():
        assert conv_plan(conv, x) == ("direct", False)
        assert conv_plan(conv, x.contiguous(memory_format=CL)) == ("direct", True)
        assert not uses_nhwc_roi_align(_nhwc(1, 4, 8, 8, device="cuda"))
        assert is_channels_last(to_input_layout(x, True))
        fc, run = nn.Linear(8 * 6 * 6, 3).cuda(), LinearOnMap()
        run(fc, x.contiguous(memory_format=CL))
        assert run.cached_kernel is None
        out = conv(x.contiguous(memory_format=CL))
    assert out.is_cuda
