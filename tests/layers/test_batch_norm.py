import os
from collections import OrderedDict

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F

from segtron.layers import (
    Conv2d,
    CycleBatchNormList,
    FrozenBatchNorm2d,
    LayerNorm,
    NaiveSyncBatchNorm,
    get_norm,
)


def _random_stats(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.1, 3.0)


def _frozen_from(bn):
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    frozen.weight.copy_(bn.weight.detach())
    frozen.bias.copy_(bn.bias.detach())
    frozen.running_mean.copy_(bn.running_mean)
    frozen.running_var.copy_(bn.running_var)
    return frozen


def test_frozen_bn_buffers_and_identity_default():
    frozen = FrozenBatchNorm2d(5)
    assert set(dict(frozen.named_buffers())) == {"weight", "bias", "running_mean", "running_var"}
    assert list(frozen.parameters()) == []
    x = torch.randn(2, 5, 3, 3)
    assert torch.allclose(frozen(x), x, atol=1e-6)
    assert repr(frozen) == "FrozenBatchNorm2d(num_features=5, eps=1e-05)"


@pytest.mark.parametrize("requires_grad", [False, True])
def test_frozen_bn_equals_eval_batchnorm(requires_grad):
    bn = nn.BatchNorm2d(6, eps=1e-5)
    _random_stats(bn)
    bn.eval()
    frozen = _frozen_from(bn)
    x = torch.randn(3, 6, 5, 4, requires_grad=requires_grad)
    # Direct formula as an extra independent reference.
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    expected = x * scale[None, :, None, None] + shift[None, :, None, None]
    out = frozen(x)
    assert torch.allclose(out, bn(x), atol=1e-5)
    assert torch.allclose(out, expected, atol=1e-5)


def test_frozen_bn_in_train_mode_updates_nothing_and_passes_grad():
    bn = nn.BatchNorm2d(4)
    _random_stats(bn)
    frozen = _frozen_from(bn).train()
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    frozen(x).sum().backward()
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, before[k]), k
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(x.grad, scale[None, :, None, None].expand_as(x))


def test_convert_frozen_batchnorm_preserves_outputs():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(Conv2d(8, 4, 1, norm=nn.BatchNorm2d(4, eps=1e-3)), nn.SyncBatchNorm(4)),
    )
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _random_stats(m)
    model.eval()
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    converted = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
    assert converted is model
    kinds = [type(m) for m in converted.modules()]
    assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert kinds.count(FrozenBatchNorm2d) == 3
    assert converted[3][0].norm.eps == 1e-3
    converted.train()  # frozen: train mode changes nothing
    assert torch.allclose(converted(x), expected, atol=1e-5)
    # A bare batch norm is replaced by a new module.
    bn = nn.BatchNorm2d(2)
    assert isinstance(FrozenBatchNorm2d.convert_frozen_batchnorm(bn), FrozenBatchNorm2d)


def test_convert_back_to_batchnorm():
    bn = nn.BatchNorm2d(3)
    _random_stats(bn)
    bn.eval()
    model = nn.Sequential(_frozen_from(bn))
    back = FrozenBatchNorm2d.convert_frozenbatchnorm2d_to_batchnorm2d(model).eval()
    assert isinstance(back[0], nn.BatchNorm2d)
    x = torch.randn(1, 3, 2, 2)
    assert torch.allclose(back(x), bn(x), atol=1e-6)


def test_frozen_bn_state_dict_round_trip():
    bn = nn.BatchNorm2d(4)
    _random_stats(bn)
    src = nn.Sequential(_frozen_from(bn))
    dst = nn.Sequential(FrozenBatchNorm2d(4))
    dst.load_state_dict(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_frozen_bn_loads_old_checkpoint_without_running_stats():
    # Model-zoo style checkpoint: no metadata, no running statistics.
    state = OrderedDict(
        [("0.weight", torch.tensor([2.0, 3.0])), ("0.bias", torch.tensor([1.0, -1.0]))]
    )
    model = nn.Sequential(FrozenBatchNorm2d(2))
    with torch.no_grad():
        model[0].running_mean.fill_(7.0)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model[0].running_mean, torch.zeros(2))
    assert torch.equal(model[0].running_var, torch.ones(2))
    x = torch.randn(1, 2, 3, 3)
    expected = x * torch.tensor([2.0, 3.0])[None, :, None, None] / (1 + 1e-5) ** 0.5
    expected = expected + torch.tensor([1.0, -1.0])[None, :, None, None]
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_frozen_bn_version_2_checkpoint_subtracts_eps():
    state = OrderedDict(
        [
            ("weight", torch.ones(2)),
            ("bias", torch.zeros(2)),
            ("running_mean", torch.zeros(2)),
            ("running_var", torch.tensor([1.0, 2.0])),
        ]
    )
    state._metadata = {"": {"version": 2}}
    frozen = FrozenBatchNorm2d(2)
    frozen.load_state_dict(state)
    assert torch.allclose(frozen.running_var, torch.tensor([1.0, 2.0]) - 1e-5)
    assert torch.equal(state["running_var"], torch.tensor([1.0, 2.0]))  # caller's dict untouched


def test_get_norm_every_name():
    assert get_norm(None, 64) is None
    assert get_norm("", 64) is None
    bn = get_norm("BN", 64)
    assert type(bn) is nn.BatchNorm2d and bn.num_features == 64
    for name in ("SyncBN", "nnSyncBN"):
        sync = get_norm(name, 64)
        assert type(sync) is nn.SyncBatchNorm and sync.num_features == 64
    frozen = get_norm("FrozenBN", 64)
    assert type(frozen) is FrozenBatchNorm2d and frozen.num_features == 64
    gn = get_norm("GN", 64)
    assert type(gn) is nn.GroupNorm and gn.num_groups == 32 and gn.num_channels == 64
    naive = get_norm("naiveSyncBN", 64)
    assert type(naive) is NaiveSyncBatchNorm and naive._stats_mode == "" and naive.num_features == 64
    naive_n = get_norm("naiveSyncBN_N", 64)
    assert type(naive_n) is NaiveSyncBatchNorm and naive_n._stats_mode == "N"
    ln = get_norm("LN", 64)
    assert type(ln) is LayerNorm and ln.weight.shape == (64,) and ln.eps == 1e-6
    custom = get_norm(lambda c: nn.GroupNorm(4, c), 64)
    assert type(custom) is nn.GroupNorm and custom.num_groups == 4


def test_get_norm_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as info:
        get_norm("BatchNorm", 8)
    message = str(info.value)
    assert "BatchNorm" in message
    for name in ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN"):
        assert repr(name) in message
    with pytest.raises(TypeError):
        get_norm(3, 8)


def test_naive_sync_bn_single_process_is_batchnorm():
    naive = NaiveSyncBatchNorm(5)
    ref = nn.BatchNorm2d(5)
    ref.load_state_dict(naive.state_dict())
    x = torch.randn(4, 5, 3, 3)
    assert torch.allclose(naive.train()(x), ref.train()(x))
    assert torch.allclose(naive.running_mean, ref.running_mean)
    assert torch.allclose(naive.running_var, ref.running_var)
    assert torch.allclose(naive.eval()(x), ref.eval()(x))
    with pytest.raises(ValueError, match="stats_mode"):
        NaiveSyncBatchNorm(5, stats_mode="M")


_SYNC_CASES = [("", (3, 3)), ("N", (4, 2)), ("N", (5, 0))]


def _sync_inputs(sizes):
    gen = torch.Generator().manual_seed(1)
    full = torch.randn(sum(sizes), 3, 4, 5, generator=gen)
    upstream = torch.randn(sum(sizes), 3, 4, 5, generator=gen)
    return full, upstream


def _set_affine(bn):
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 1.0]))


def _sync_bn_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for case, (stats_mode, sizes) in enumerate(_SYNC_CASES):
            full, upstream = _sync_inputs(sizes)
            start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
            x = full[start:stop].clone().requires_grad_(True)
            bn = NaiveSyncBatchNorm(3, stats_mode=stats_mode, momentum=0.1)
            _set_affine(bn)
            out = bn.train()(x)
            (out * upstream[start:stop]).sum().backward()
            result = {
                "out": out.detach(),
                "grad": x.grad,
                "weight_grad": bn.weight.grad,
                "running_mean": bn.running_mean,
                "running_var": bn.running_var,
            }
            torch.save(result, os.path.join(out_dir, f"case{case}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_naive_sync_bn_two_processes_equals_global_batchnorm(tmp_path):
    """Two gloo processes, each with part of the batch, match one BatchNorm2d on all of it."""
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    mp.spawn(_sync_bn_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)

    for case, (stats_mode, sizes) in enumerate(_SYNC_CASES):
        results = [torch.load(tmp_path / f"case{case}_rank{r}.pt") for r in range(2)]
        full, upstream = _sync_inputs(sizes)
        full.requires_grad_(True)
        ref = nn.BatchNorm2d(3, momentum=0.1)
        _set_affine(ref)
        out = ref.train()(full)
        (out * upstream).sum().backward()

        where = f"stats_mode={stats_mode!r}, sizes={sizes}"
        assert torch.allclose(torch.cat([r["out"] for r in results]), out, atol=1e-5), where
        assert torch.allclose(torch.cat([r["grad"] for r in results]), full.grad, atol=1e-4), where
        assert torch.allclose(sum(r["weight_grad"] for r in results), ref.weight.grad, atol=1e-4), where
        biased_var = full.detach().var(dim=[0, 2, 3], unbiased=False)
        for r in results:
            assert torch.allclose(r["running_mean"], ref.running_mean, atol=1e-6), where
            # NaiveSyncBatchNorm tracks the biased batch variance.
            assert torch.allclose(r["running_var"], 0.9 + 0.1 * biased_var, atol=1e-6), where


# Ranks whose feature maps differ in size (as images of different shapes do): the statistics
# are the weighted average of each rank's own means, by definition of NaiveSyncBatchNorm.
_UNEQUAL_SHAPES = [(2, 3, 4, 5), (3, 3, 6, 2)]


def _unequal_inputs(rank):
    gen = torch.Generator().manual_seed(10 + rank)
    shape = _UNEQUAL_SHAPES[rank]
    return torch.randn(shape, generator=gen) * 2 + 1, torch.randn(shape, generator=gen)


def _unequal_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for stats_mode in ("", "N"):
            for channels_last in (False, True):
                x, upstream = _unequal_inputs(rank)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_(True)
                bn = NaiveSyncBatchNorm(3, stats_mode=stats_mode)
                _set_affine(bn)
                out = bn.train()(x)
                (out * upstream).sum().backward()
                torch.save({"out": out.detach(), "grad": x.grad, "weight_grad": bn.weight.grad,
                            "bias_grad": bn.bias.grad, "running_var": bn.running_var},
                           os.path.join(out_dir, f"{stats_mode or 'eq'}_{channels_last}_rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _reference_unequal(stats_mode):
    """Autograd through the defining formulas, all ranks' inputs in one process."""
    inputs = [_unequal_inputs(rank) for rank in range(2)]
    xs = [x.clone().requires_grad_(True) for x, _ in inputs]
    counts = [float(x.shape[0]) for x in xs]
    weights = [0.5, 0.5] if stats_mode == "" else [c / sum(counts) for c in counts]
    mean = sum(w * x.mean(dim=[0, 2, 3]) for w, x in zip(weights, xs))
    mean_sq = sum(w * (x * x).mean(dim=[0, 2, 3]) for w, x in zip(weights, xs))
    var = mean_sq - mean * mean
    weight = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    bias = torch.tensor([0.0, -1.0, 1.0], requires_grad=True)
    view = (1, -1, 1, 1)
    outs = [(x - mean.view(view)) * torch.rsqrt(var + 1e-5).view(view) * weight.view(view)
            + bias.view(view) for x in xs]
    sum((out * up).sum() for out, (_, up) in zip(outs, inputs)).backward()
    return outs, xs, weight.grad, bias.grad, var.detach()


@pytest.mark.slow
def test_naive_sync_bn_ranks_of_different_sizes_match_the_defining_formulas(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed not available")
    mp.spawn(_unequal_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for stats_mode in ("", "N"):
        outs, xs, weight_grad, bias_grad, var = _reference_unequal(stats_mode)
        for channels_last in (False, True):
            where = f"stats_mode={stats_mode!r}, channels_last={channels_last}"
            results = [torch.load(tmp_path / f"{stats_mode or 'eq'}_{channels_last}_rank{r}.pt")
                       for r in range(2)]
            for rank, result in enumerate(results):
                assert torch.allclose(result["out"], outs[rank].detach(), atol=1e-5), where
                assert torch.allclose(result["grad"], xs[rank].grad, atol=1e-5), where
                assert torch.allclose(result["running_var"], 0.9 + 0.1 * var, atol=1e-6), where
            assert torch.allclose(sum(r["weight_grad"] for r in results), weight_grad, atol=1e-4), where
            assert torch.allclose(sum(r["bias_grad"] for r in results), bias_grad, atol=1e-4), where


def test_layer_norm_channels_first():
    ln = LayerNorm(6)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 2)
        ln.bias.uniform_(-1, 1)
    x = torch.randn(2, 6, 4, 3) * 3 + 1
    channels_last = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, eps=1e-6)
    expected = channels_last.permute(0, 3, 1, 2)
    assert torch.allclose(ln(x), expected, atol=1e-5)
    assert set(dict(ln.named_parameters())) == {"weight", "bias"}


def test_cycle_batchnorm_list_alternates_statistics():
    cycle = CycleBatchNormList(2, num_features=3)
    refs = [nn.BatchNorm2d(3, affine=False) for _ in range(2)]
    with torch.no_grad():
        cycle.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        cycle.bias.copy_(torch.tensor([0.5, 0.0, -0.5]))
    inputs = [torch.randn(2, 3, 4, 4) + i for i in range(4)]
    for i, x in enumerate(inputs):
        expected = refs[i % 2](x) * cycle.weight.detach()[None, :, None, None]
        expected = expected + cycle.bias.detach()[None, :, None, None]
        assert torch.allclose(cycle(x), expected, atol=1e-5)
    for bn, ref in zip(cycle, refs):
        assert torch.allclose(bn.running_mean, ref.running_mean)
        assert torch.allclose(bn.running_var, ref.running_var)
    plain = CycleBatchNormList(3, num_features=3, affine=False)
    assert not hasattr(plain, "weight") and len(plain) == 3
