"""build_optimizer: parameter groups, optimizer choice, gradient clipping and key errors."""

import pytest
import torch
from torch import nn

from segtron.config import get_cfg
from segtron.layers import FrozenBatchNorm2d, LayerNorm
from segtron.solver import (
    build_optimizer,
    get_default_optimizer_params,
    maybe_add_gradient_clipping,
    reduce_param_groups,
)


class _Net(nn.Module):
    """conv (weight+bias), norms, a weight shared by two Linears, a frozen weight, FrozenBN."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = LayerNorm(4)
        self.fc1 = nn.Linear(4, 4, bias=False)
        self.fc2 = nn.Linear(4, 4)
        self.fc2.weight = self.fc1.weight
        self.head = nn.Linear(4, 2)
        self.head.weight.requires_grad_(False)
        self.frozen_bn = FrozenBatchNorm2d(4)


def _solver_cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _hyperparams_by_param(optimizer):
    """{id(param): (lr, weight_decay)}, checking that no parameter is in two groups."""
    out = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert id(param) not in out, "a parameter is in two groups"
            out[id(param)] = (group["lr"], group["weight_decay"])
    return out


@pytest.mark.parametrize("optimizer_name", ["SGD", "AdamW", "Adam"])
@pytest.mark.parametrize("wd_bias", [None, 0.5])
def test_param_groups_per_parameter(wd_bias, optimizer_name):
    model = _Net()
    cfg = _solver_cfg(BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_BIAS=wd_bias, OPTIMIZER=optimizer_name)
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer) is getattr(torch.optim, optimizer_name)
    got = _hyperparams_by_param(optimizer)

    lr, wd, wd_norm = 0.1, 1e-4, 0.0
    bias_lr = lr * 2.0
    expected = {
        "conv.weight": (lr, wd),
        "conv.bias": (bias_lr, wd if wd_bias is None else wd_bias),
        "fc1.weight": (lr, wd),  # shared with fc2.weight: listed once
        "fc2.bias": (bias_lr, wd if wd_bias is None else wd_bias),
        "head.bias": (bias_lr, wd if wd_bias is None else wd_bias),  # head.weight is frozen
    }
    for norm in ("bn", "gn", "ln"):
        expected[f"{norm}.weight"] = (lr, wd_norm)
        # A norm's bias keeps the norm decay unless WEIGHT_DECAY_BIAS is set.
        expected[f"{norm}.bias"] = (bias_lr, wd_norm if wd_bias is None else wd_bias)

    named = dict(model.named_parameters())  # deduplicated: fc2.weight is not listed
    assert "fc2.weight" not in named
    assert set(got) == {id(named[n]) for n in expected}
    for name, hyper in expected.items():
        assert got[id(named[name])] == pytest.approx(hyper), name
    assert id(model.head.weight) not in got


def test_param_groups_are_merged_by_hyperparameters():
    groups = get_default_optimizer_params(
        _Net(), base_lr=0.1, weight_decay_norm=0.0, bias_lr_factor=2.0
    )
    keys = sorted(tuple(sorted((k, v) for k, v in g.items() if k != "params")) for g in groups)
    assert keys == sorted(
        [
            (("lr", 0.1),),
            (("lr", 0.2),),
            (("lr", 0.1), ("weight_decay", 0.0)),
            (("lr", 0.2), ("weight_decay", 0.0)),
        ]
    )
    assert sum(len(g["params"]) for g in groups) == 11


def test_default_params_with_defaults_is_one_group():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 4))
    groups = get_default_optimizer_params(model)
    assert len(groups) == 1 and set(groups[0]) == {"params"}
    assert len(groups[0]["params"]) == 4


def test_overrides_and_lr_factor_func():
    model = _Net()
    seen = []

    def factor(name):
        seen.append(name)
        return 0.5 if name.startswith("conv.") else 1.0

    overrides = {"weight": {"weight_decay": 3.0}}
    groups = get_default_optimizer_params(
        model, base_lr=1.0, weight_decay=1e-4, weight_decay_norm=0.0,
        lr_factor_func=factor, overrides=overrides,
    )
    assert overrides == {"weight": {"weight_decay": 3.0}}  # the caller's dict is not modified
    assert "conv.weight" in seen and "bn.bias" in seen and "head.weight" not in seen
    by_param = {id(p): g for g in groups for p in g["params"]}
    conv_w = by_param[id(model.conv.weight)]
    assert (conv_w["lr"], conv_w["weight_decay"]) == (0.5, 3.0)
    bn_w = by_param[id(model.bn.weight)]  # overrides win over weight_decay_norm
    assert (bn_w["lr"], bn_w["weight_decay"]) == (1.0, 3.0)
    bn_b = by_param[id(model.bn.bias)]
    assert (bn_b["lr"], bn_b["weight_decay"]) == (1.0, 0.0)

    with pytest.raises(ValueError, match="bias"):
        get_default_optimizer_params(
            model, base_lr=1.0, weight_decay_bias=0.0, overrides={"bias": {"lr": 1.0}}
        )
    with pytest.raises(ValueError, match="base_lr"):
        get_default_optimizer_params(model, bias_lr_factor=2.0)
    with pytest.raises(ValueError, match="base_lr"):
        get_default_optimizer_params(model, lr_factor_func=factor)


def test_reduce_param_groups():
    params = [
        {"params": ["a", "b", "c"], "lr": 1.0, "weight_decay": 0.1},
        {"params": ["b", "d"], "weight_decay": 0.2},  # b: later group wins on weight_decay
        {"params": ["e"], "weight_decay": 0.1, "lr": 1.0},  # same values, other key order
        {"params": ["f"], "lr": 2.0, "momentum": 0.5},
    ]
    out = reduce_param_groups(params)
    assert out == [
        {"lr": 1.0, "weight_decay": 0.1, "params": ["a", "c", "e"]},
        {"lr": 1.0, "weight_decay": 0.2, "params": ["b"]},
        {"weight_decay": 0.2, "params": ["d"]},
        {"lr": 2.0, "momentum": 0.5, "params": ["f"]},
    ]
    named = reduce_param_groups(
        [{"params": ["a", "b"], "param_names": ["A", "B"], "lr": 1.0},
         {"params": ["c"], "param_names": ["C"], "lr": 1.0}]
    )
    assert named == [{"lr": 1.0, "params": ["a", "b", "c"], "param_names": ["A", "B", "C"]}]


def test_sgd_and_adamw_selected_by_key():
    model = nn.Linear(3, 2)
    sgd = build_optimizer(_solver_cfg(MOMENTUM=0.8, NESTEROV=True), model)
    assert type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"] is True

    adamw = build_optimizer(_solver_cfg(OPTIMIZER="AdamW", WEIGHT_DECAY=0.05), model)
    assert type(adamw) is torch.optim.AdamW
    group = adamw.param_groups[0]
    assert group["betas"] == (0.9, 0.999)
    assert (group["lr"], group["weight_decay"]) == (0.1, 0.05)


def test_bad_optimizer_and_frozen_model_raise():
    with pytest.raises(ValueError, match=r"SOLVER\.OPTIMIZER 'RMSprop'.*'SGD', 'AdamW', 'Adam'"):
        build_optimizer(_solver_cfg(OPTIMIZER="RMSprop"), nn.Linear(2, 2))
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(_solver_cfg(), frozen)


def _adam_by_hand(param, grads, lr, weight_decay, betas=(0.9, 0.999), eps=1e-8):
    """Adam's update rule (L2 weight decay added to the gradient, bias-corrected moments),
    in float64: the parameter after one step per gradient in ``grads``."""
    p = param.double().clone()
    m = torch.zeros_like(p)
    v = torch.zeros_like(p)
    for t, grad in enumerate(grads, start=1):
        g = grad.double() + weight_decay * p
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t)
        v_hat = v / (1 - betas[1] ** t)
        p = p - lr * m_hat / (v_hat.sqrt() + eps)
    return p


def test_adam_steps_as_by_hand():
    model = nn.Linear(3, 2)
    cfg = _solver_cfg(OPTIMIZER="Adam", BASE_LR=0.01, WEIGHT_DECAY=0.1, BIAS_LR_FACTOR=3.0,
                      WEIGHT_DECAY_BIAS=0.0)
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer) is torch.optim.Adam
    assert all(g["betas"] == (0.9, 0.999) for g in optimizer.param_groups)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: [torch.randn_like(p) for _ in range(2)] for n, p in model.named_parameters()}
    for step in range(2):
        for name, param in model.named_parameters():
            param.grad = grads[name][step].clone()
        optimizer.step()
    expected_w = _adam_by_hand(start["weight"], grads["weight"], lr=0.01, weight_decay=0.1)
    expected_b = _adam_by_hand(start["bias"], grads["bias"], lr=0.03, weight_decay=0.0)
    assert torch.allclose(model.weight.double(), expected_w, atol=1e-6)
    assert torch.allclose(model.bias.double(), expected_b, atol=1e-6)
    # Coupled L2 decay, not AdamW's decoupled one: the two rules end at different weights.
    adamw = nn.Linear(3, 2)
    adamw.load_state_dict({"weight": start["weight"], "bias": start["bias"]})
    adamw_opt = build_optimizer(_solver_cfg(OPTIMIZER="AdamW", BASE_LR=0.01, WEIGHT_DECAY=0.1,
                                            BIAS_LR_FACTOR=3.0, WEIGHT_DECAY_BIAS=0.0), adamw)
    for step in range(2):
        for name, param in adamw.named_parameters():
            param.grad = grads[name][step].clone()
        adamw_opt.step()
    assert not torch.allclose(adamw.weight.double(), expected_w, atol=1e-6)


def test_adam_with_gradient_clipping():
    cfg = _solver_cfg(OPTIMIZER="Adam", BASE_LR=0.1, WEIGHT_DECAY=1.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    model = _TwoParams()
    with torch.no_grad():
        model.a.copy_(torch.tensor([-1.0, -2.0]))
    optimizer = build_optimizer(cfg, model)
    assert type(optimizer).__name__ == "AdamWithGradientClip"
    assert isinstance(optimizer, torch.optim.Adam)
    model.a.grad = torch.tensor([3.0, 0.25])
    model.b.grad = torch.tensor([-4.0, 0.0])
    start_a = model.a.detach().clone()
    optimizer.step()
    assert torch.equal(model.a.grad, torch.tensor([0.5, 0.25]))  # clipped in place
    # Adam's first step moves each element by lr against the sign of grad + decay * a. With
    # a = (-1, -2) and decay 1: clipped (-0.5, -1.75) -> a[0] rises; unclipped (2, -1.75) would
    # lower it.
    expected = _adam_by_hand(start_a, [torch.tensor([0.5, 0.25])], lr=0.1, weight_decay=1.0)
    assert torch.allclose(model.a.double(), expected, atol=1e-6)
    assert model.a[0].item() == pytest.approx(-0.9)


# ---------------------------------------------------------------------------------------------
# Gradient clipping
# ---------------------------------------------------------------------------------------------
def _clip_cfg(clip_type, clip_value=1.0, norm_type=2.0, enabled=True):
    cfg = _solver_cfg(BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0, WEIGHT_DECAY_NORM=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = enabled
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = clip_value
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = norm_type
    return cfg


class _TwoParams(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(2))
        self.b = nn.Parameter(torch.zeros(2))


def _step_with_grads(cfg, grad_a, grad_b):
    """Plain SGD (lr 1, no momentum / decay) step from zero: returns the updates -a, -b."""
    model = _TwoParams()
    optimizer = build_optimizer(cfg, model)
    model.a.grad = torch.tensor(grad_a)
    model.b.grad = torch.tensor(grad_b)
    optimizer.step()
    return -model.a.detach(), -model.b.detach(), optimizer


def test_clip_by_value():
    upd_a, upd_b, opt = _step_with_grads(_clip_cfg("value", 1.0), [3.0, -0.25], [-5.0, 0.5])
    assert torch.allclose(upd_a, torch.tensor([1.0, -0.25]))
    assert torch.allclose(upd_b, torch.tensor([-1.0, 0.5]))
    assert type(opt).__name__ == "SGDWithGradientClip" and isinstance(opt, torch.optim.SGD)


def test_clip_by_norm_is_per_parameter():
    upd_a, upd_b, _ = _step_with_grads(_clip_cfg("norm", 1.0), [3.0, 4.0], [0.3, 0.4])
    assert torch.allclose(upd_a, torch.tensor([0.6, 0.8]), atol=1e-6)  # norm 5 -> 1
    assert torch.allclose(upd_b, torch.tensor([0.3, 0.4]))  # norm 0.5: untouched

    upd_a, _, _ = _step_with_grads(_clip_cfg("norm", 1.0, float("inf")), [2.0, -4.0], [0.0, 0.0])
    assert torch.allclose(upd_a, torch.tensor([0.5, -1.0]), atol=1e-6)  # max-abs 4 -> 1


def test_clip_full_model_uses_one_norm_for_all_parameters():
    upd_a, upd_b, _ = _step_with_grads(_clip_cfg("full_model", 1.0), [3.0, 4.0], [0.0, 0.5])
    scale = 1.0 / 25.25**0.5
    assert torch.allclose(upd_a, torch.tensor([3.0, 4.0]) * scale, atol=1e-6)
    assert torch.allclose(upd_b, torch.tensor([0.0, 0.5]) * scale, atol=1e-6)


def test_clipping_disabled_and_on_a_class():
    upd_a, _, opt = _step_with_grads(_clip_cfg("value", 1.0, enabled=False), [3.0, 0.0], [0.0, 0.0])
    assert type(opt) is torch.optim.SGD
    assert torch.allclose(upd_a, torch.tensor([3.0, 0.0]))

    clipped_cls = maybe_add_gradient_clipping(_clip_cfg("value", 0.5), torch.optim.SGD)
    assert issubclass(clipped_cls, torch.optim.SGD) and clipped_cls is not torch.optim.SGD
    param = nn.Parameter(torch.zeros(1))
    param.grad = torch.tensor([2.0])
    clipped_cls([param], lr=1.0).step()
    assert param.item() == pytest.approx(-0.5)


def test_bad_clip_type_raises():
    with pytest.raises(ValueError, match=r"CLIP_GRADIENTS\.CLIP_TYPE.*full_model"):
        build_optimizer(_clip_cfg("l2"), _TwoParams())
