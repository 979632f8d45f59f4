"""LR schedules: values at the interesting iterations against hand-computed formulas, resume,
legacy schedulers and config errors."""

import io
import logging
import math

import pytest
import torch
from fvcore.common.param_scheduler import ConstantParamScheduler, CosineParamScheduler

from segtron.config import get_cfg
from segtron.solver import (
    LRMultiplier,
    WarmupCosineLR,
    WarmupMultiStepLR,
    WarmupParamScheduler,
    build_lr_scheduler,
)

BASE_LR = 0.5
MAX_ITER = 100
WARMUP_ITERS = 10
WARMUP_FACTOR = 0.001


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = BASE_LR
    cfg.SOLVER.MAX_ITER = MAX_ITER
    cfg.SOLVER.WARMUP_ITERS = WARMUP_ITERS
    cfg.SOLVER.WARMUP_FACTOR = WARMUP_FACTOR
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _optimizer(lr=BASE_LR):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _run(optimizer, scheduler, num_iters):
    """LR used at each iteration, as a trainer sees it: read, optimizer.step(), scheduler.step()."""
    lrs = []
    for _ in range(num_iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _linear_warmup(t):
    alpha = t / WARMUP_ITERS
    return WARMUP_FACTOR * (1 - alpha) + alpha


# ---------------------------------------------------------------------------------------------
# WarmupMultiStepLR
# ---------------------------------------------------------------------------------------------
def test_multistep_with_linear_warmup():
    steps, gamma = (30, 70), 0.1
    cfg = _cfg(STEPS=steps, GAMMA=gamma)
    opt = _optimizer()
    lrs = _run(opt, build_lr_scheduler(cfg, opt), MAX_ITER)

    def expected(t):
        warm = _linear_warmup(t) if t < WARMUP_ITERS else 1.0
        return BASE_LR * warm * gamma ** sum(t >= s for s in steps)

    checkpoints = {
        0: BASE_LR * WARMUP_FACTOR,
        5: BASE_LR * (WARMUP_FACTOR * 0.5 + 0.5),
        WARMUP_ITERS - 1: BASE_LR * (WARMUP_FACTOR * 0.1 + 0.9),
        WARMUP_ITERS: BASE_LR,
        29: BASE_LR,
        30: BASE_LR * 0.1,
        69: BASE_LR * 0.1,
        70: BASE_LR * 0.01,
        MAX_ITER - 1: BASE_LR * 0.01,
    }
    for t, value in checkpoints.items():
        assert lrs[t] == pytest.approx(value, rel=1e-9), t
    assert lrs == pytest.approx([expected(t) for t in range(MAX_ITER)], rel=1e-9)


def test_multistep_constant_warmup_and_no_warmup():
    opt = _optimizer()
    lrs = _run(opt, build_lr_scheduler(_cfg(STEPS=(50,), WARMUP_METHOD="constant"), opt), 60)
    assert lrs[0] == lrs[WARMUP_ITERS - 1] == pytest.approx(BASE_LR * WARMUP_FACTOR)
    assert lrs[WARMUP_ITERS] == pytest.approx(BASE_LR)
    assert lrs[50] == pytest.approx(BASE_LR * 0.1)

    opt = _optimizer()
    lrs = _run(opt, build_lr_scheduler(_cfg(STEPS=(50,), WARMUP_ITERS=0), opt), 51)
    assert lrs[0] == pytest.approx(BASE_LR)
    assert lrs[49] == pytest.approx(BASE_LR) and lrs[50] == pytest.approx(BASE_LR * 0.1)


def test_multistep_drops_steps_beyond_max_iter_with_warning(caplog, monkeypatch):
    for name in ("segtron", "segtron.solver", "segtron.solver.build"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.WARNING, logger="segtron.solver.build")
    opt = _optimizer()
    sched = build_lr_scheduler(_cfg(STEPS=(40, 100, 150)), opt)
    assert "SOLVER.STEPS" in caplog.text and "150" in caplog.text
    lrs = _run(opt, sched, MAX_ITER)
    assert lrs[39] == pytest.approx(BASE_LR) and lrs[40] == pytest.approx(BASE_LR * 0.1)
    assert lrs[MAX_ITER - 1] == pytest.approx(BASE_LR * 0.1)


def test_every_group_scales_its_own_base_lr():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]], "lr": 2.0}], lr=0.5)
    sched = build_lr_scheduler(_cfg(STEPS=(30,)), opt)
    for _ in range(35):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.2])


# ---------------------------------------------------------------------------------------------
# WarmupCosineLR
# ---------------------------------------------------------------------------------------------
def test_cosine_with_linear_warmup():
    base_lr_end = 0.05
    end = base_lr_end / BASE_LR
    opt = _optimizer()
    lrs = _run(opt, build_lr_scheduler(_cfg(LR_SCHEDULER_NAME="WarmupCosineLR",
                                            BASE_LR_END=base_lr_end), opt), MAX_ITER)

    def cosine(t):
        return end + (1 - end) / 2 * (1 + math.cos(math.pi * t / MAX_ITER))

    # Linear warmup ends at the cosine's own value where warmup ends (fixed interval).
    def warm(t):
        alpha = t / WARMUP_ITERS
        return WARMUP_FACTOR * (1 - alpha) + cosine(WARMUP_ITERS) * alpha

    assert lrs[0] == pytest.approx(BASE_LR * WARMUP_FACTOR)
    assert lrs[WARMUP_ITERS - 1] == pytest.approx(BASE_LR * warm(WARMUP_ITERS - 1))
    assert lrs[WARMUP_ITERS] == pytest.approx(BASE_LR * cosine(WARMUP_ITERS))
    assert lrs[50] == pytest.approx(BASE_LR * (end + (1 - end) / 2))
    assert lrs[MAX_ITER - 1] == pytest.approx(BASE_LR * cosine(MAX_ITER - 1))
    expected = [BASE_LR * (warm(t) if t < WARMUP_ITERS else cosine(t)) for t in range(MAX_ITER)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    # After MAX_ITER scheduler steps the LR stays at its last-iteration value.
    assert opt.param_groups[0]["lr"] == pytest.approx(BASE_LR * cosine(MAX_ITER - 1))


def test_cosine_rejects_end_above_base():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupCosineLR", BASE_LR_END=1.0)
    with pytest.raises(ValueError, match="BASE_LR_END"):
        build_lr_scheduler(cfg, _optimizer())


# ---------------------------------------------------------------------------------------------
# WarmupStepWithFixedGammaLR
# ---------------------------------------------------------------------------------------------
def test_step_with_fixed_gamma_fixed_interval():
    gamma, num_decays = 0.5, 3
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupStepWithFixedGammaLR", GAMMA=gamma, NUM_DECAYS=num_decays)
    opt = _optimizer()
    lrs = _run(opt, build_lr_scheduler(cfg, opt), MAX_ITER + 2)  # past the end: no error
    # NUM_DECAYS + 1 equal intervals of the whole run: decays at 25, 50, 75.
    assert lrs[0] == pytest.approx(BASE_LR * WARMUP_FACTOR)
    assert lrs[5] == pytest.approx(BASE_LR * _linear_warmup(5))
    assert lrs[WARMUP_ITERS] == pytest.approx(BASE_LR)
    for boundary, decays in ((25, 1), (50, 2), (75, 3)):
        assert lrs[boundary - 1] == pytest.approx(BASE_LR * gamma ** (decays - 1)), boundary
        assert lrs[boundary] == pytest.approx(BASE_LR * gamma**decays), boundary
    assert lrs[MAX_ITER - 1] == pytest.approx(BASE_LR * gamma**3)
    assert lrs[MAX_ITER + 1] == pytest.approx(BASE_LR * gamma**3)


def test_step_with_fixed_gamma_rescaled_interval():
    gamma = 0.5
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupStepWithFixedGammaLR", GAMMA=gamma, NUM_DECAYS=3,
               RESCALE_INTERVAL=True)
    opt = _optimizer()
    lrs = _run(opt, build_lr_scheduler(cfg, opt), MAX_ITER)
    # The 4 intervals share the 90 post-warmup iterations: decays once (t - 10) * 4 / 90 >= k.
    assert lrs[WARMUP_ITERS - 1] == pytest.approx(BASE_LR * _linear_warmup(WARMUP_ITERS - 1))
    assert lrs[WARMUP_ITERS] == pytest.approx(BASE_LR)
    for boundary, decays in ((33, 1), (55, 2), (78, 3)):
        assert lrs[boundary - 1] == pytest.approx(BASE_LR * gamma ** (decays - 1)), boundary
        assert lrs[boundary] == pytest.approx(BASE_LR * gamma**decays), boundary
    assert lrs[MAX_ITER - 1] == pytest.approx(BASE_LR * gamma**3)


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["WarmupMultiStepLR", "WarmupCosineLR"])
def test_state_dict_round_trip_resumes_the_same_sequence(name):
    cfg = _cfg(LR_SCHEDULER_NAME=name, STEPS=(30, 70), BASE_LR_END=0.01)
    opt = _optimizer()
    sched = build_lr_scheduler(cfg, opt)
    _run(opt, sched, 37)
    state = sched.state_dict()
    assert set(state) == {"base_lrs", "last_epoch"}
    buffer = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": state}, buffer)
    reference = _run(opt, sched, MAX_ITER - 37)

    # Resume as a trainer does: fresh optimizer and scheduler from the config, then load both.
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    opt2 = _optimizer()
    sched2 = build_lr_scheduler(cfg, opt2)
    opt2.load_state_dict(saved["optimizer"])
    sched2.load_state_dict(saved["scheduler"])
    assert sched2.last_epoch == 37
    assert _run(opt2, sched2, MAX_ITER - 37) == pytest.approx(reference, rel=1e-12)

    # The scheduler state alone also restores the LR of the next iteration.
    opt3 = _optimizer()
    sched3 = build_lr_scheduler(cfg, opt3)
    sched3.load_state_dict(saved["scheduler"])
    assert sched3.get_last_lr() == pytest.approx([reference[0]])
    assert _run(opt3, sched3, MAX_ITER - 37) == pytest.approx(reference, rel=1e-12)


def test_load_state_dict_with_other_group_count_fails_clearly():
    opt = _optimizer()
    sched = build_lr_scheduler(_cfg(STEPS=(30,)), opt)
    with pytest.raises(ValueError, match="parameter groups"):
        sched.load_state_dict({"base_lrs": [0.1, 0.2], "last_epoch": 3})


# ---------------------------------------------------------------------------------------------
# Building blocks and legacy schedulers
# ---------------------------------------------------------------------------------------------
def test_warmup_param_scheduler_and_lr_multiplier_directly():
    shape = WarmupParamScheduler(CosineParamScheduler(1.0, 0.0), 0.1, 0.2, "constant")
    assert shape(0.0) == pytest.approx(0.1) and shape(0.19) == pytest.approx(0.1)
    assert shape(0.5) == pytest.approx(0.5)
    opt = _optimizer(lr=2.0)
    sched = LRMultiplier(opt, WarmupParamScheduler(ConstantParamScheduler(1.0), 0.5, 0.5), 4)
    assert _run(opt, sched, 4) == pytest.approx([1.0, 1.5, 2.0, 2.0])
    with pytest.raises(ValueError, match="ParamScheduler"):
        LRMultiplier(_optimizer(), lambda where: 1.0, 10)
    with pytest.raises(ValueError, match="WARMUP_METHOD"):
        WarmupParamScheduler(ConstantParamScheduler(1.0), 0.1, 0.1, "exponential")


def test_legacy_warmup_multistep_lr():
    opt = _optimizer()
    sched = WarmupMultiStepLR(opt, milestones=[30, 70], gamma=0.1, warmup_factor=WARMUP_FACTOR,
                              warmup_iters=WARMUP_ITERS)
    lrs = _run(opt, sched, MAX_ITER)
    assert lrs[0] == pytest.approx(BASE_LR * WARMUP_FACTOR)
    assert lrs[7] == pytest.approx(BASE_LR * _linear_warmup(7))
    assert lrs[WARMUP_ITERS] == lrs[29] == pytest.approx(BASE_LR)
    assert lrs[30] == pytest.approx(BASE_LR * 0.1) and lrs[70] == pytest.approx(BASE_LR * 0.01)
    with pytest.raises(ValueError, match="increasing"):
        WarmupMultiStepLR(_optimizer(), milestones=[70, 30])


def test_legacy_warmup_cosine_lr():
    opt = _optimizer()
    sched = WarmupCosineLR(opt, max_iters=MAX_ITER, warmup_factor=WARMUP_FACTOR,
                           warmup_iters=WARMUP_ITERS, warmup_method="linear")
    lrs = _run(opt, sched, MAX_ITER)

    def cos(t):
        return 0.5 * (1 + math.cos(math.pi * t / MAX_ITER))

    assert lrs[0] == pytest.approx(BASE_LR * WARMUP_FACTOR)
    assert lrs[4] == pytest.approx(BASE_LR * _linear_warmup(4) * cos(4))
    assert lrs[WARMUP_ITERS] == pytest.approx(BASE_LR * cos(WARMUP_ITERS))
    assert lrs[MAX_ITER - 1] == pytest.approx(BASE_LR * cos(MAX_ITER - 1))


# ---------------------------------------------------------------------------------------------
# Config errors
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "solver, match",
    [
        ({"LR_SCHEDULER_NAME": "OneCycle"}, "LR_SCHEDULER_NAME.*WarmupStepWithFixedGammaLR"),
        ({"WARMUP_METHOD": "quadratic"}, "WARMUP_METHOD.*linear"),
        ({"STEPS": (70, 30)}, "SOLVER.STEPS"),
        ({"MAX_ITER": 0}, "SOLVER.MAX_ITER"),
    ],
)
def test_bad_scheduler_keys_raise(solver, match):
    with pytest.raises(ValueError, match=match):
        build_lr_scheduler(_cfg(**solver), _optimizer())
