"""ModelEMA against hand-computed averages, and MODEL_EMA in DefaultTrainer: evaluation with
the average, the final checkpoint holding it, resume restoring it."""

import math

import pytest
import torch
from torch import nn

from segtron.engine import ModelEMA, ModelEMAHook, hooks
from segtron.engine.model_ema import load_model_ema_for_eval

from .defaults_toys import ToyTrainer, restored_process_state, toy_cfg


@pytest.fixture(autouse=True)
def _process_state():
    """DefaultTrainer sets up the segtron logger; undo it for the tests that follow."""
    with restored_process_state():
        yield


def _linear(weight: float, bias: float) -> nn.Linear:
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(weight)
        layer.bias.fill_(bias)
    return layer


def test_update_averages_with_the_decay():
    model = _linear(2.0, 0.0)
    ema = ModelEMA(model, decay=0.75)
    with torch.no_grad():
        model.weight.fill_(6.0)
        model.bias.fill_(-4.0)
    ema.update(model)  # 0.75 * 2 + 0.25 * 6 = 3; 0.75 * 0 + 0.25 * -4 = -1
    assert ema.state["weight"].item() == pytest.approx(3.0)
    assert ema.state["bias"].item() == pytest.approx(-1.0)
    ema.update(model)  # 0.75 * 3 + 0.25 * 6 = 3.75
    assert ema.state["weight"].item() == pytest.approx(3.75)
    assert ema.updates == 2
    assert model.weight.item() == 6.0  # the model keeps its raw weights


def test_ramped_decay_follows_yolox_formula():
    ema = ModelEMA(_linear(0.0, 0.0), decay=0.9998, ramp_iters=2000)
    assert ema.decay_at(1) == pytest.approx(0.9998 * (1 - math.exp(-1 / 2000)))
    assert ema.decay_at(2000) == pytest.approx(0.9998 * (1 - math.exp(-1)))
    assert ModelEMA(_linear(0.0, 0.0), decay=0.9).decay_at(1) == 0.9
    # The first update of a ramped EMA nearly copies the raw weights.
    model = _linear(0.0, 0.0)
    ramped = ModelEMA(model, decay=0.9998, ramp_iters=2000)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ramped.update(model)
    assert ramped.state["weight"].item() == pytest.approx(1 - ramped.decay_at(1))


def test_integer_buffers_are_copied_and_batch_norm_statistics_averaged():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.5)
    model.train()
    model(torch.tensor([[1.0, 3.0], [3.0, 5.0]]))  # running mean 0.1 * (2, 4) = (0.2, 0.4)
    ema.update(model)
    assert torch.allclose(ema.state["running_mean"], torch.tensor([0.1, 0.2]))
    assert ema.state["num_batches_tracked"].item() == 1


def test_applied_swaps_the_average_in_and_restores_even_on_error():
    model = _linear(1.0, 1.0)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # average 2
    with ema.applied(model):
        assert model.weight.item() == pytest.approx(2.0)
    assert model.weight.item() == 3.0
    with pytest.raises(RuntimeError, match="boom"):
        with ema.applied(model):
            raise RuntimeError("boom")
    assert model.weight.item() == 3.0


def test_bad_settings_and_foreign_state_fail_naming_the_key():
    with pytest.raises(ValueError, match="MODEL_EMA.DECAY"):
        ModelEMA(_linear(0.0, 0.0), decay=1.0)
    with pytest.raises(ValueError, match="MODEL_EMA.DECAY_RAMP_ITERS"):
        ModelEMA(_linear(0.0, 0.0), ramp_iters=-1)
    ema = ModelEMA(_linear(0.0, 0.0))
    with pytest.raises(KeyError, match="model_ema lacks"):
        ema.load_state_dict({"updates": 3, "state": {"weight": torch.zeros(1, 1)}})


def test_trainer_evaluates_and_ends_with_the_average(tmp_path):
    """8 iterations with MODEL_EMA: the hook sits after the LR scheduler and before the
    checkpointer; evaluation sees the average (not the raw weights); model_final.pth's "model"
    is the average and its "model_ema" has 8 updates."""
    cfg = toy_cfg(tmp_path)
    cfg.MODEL_EMA.ENABLED = True
    cfg.MODEL_EMA.DECAY = 0.9
    cfg.TEST.EVAL_PERIOD = 4
    seen = []

    class Recording(ToyTrainer):
        @classmethod
        def test(cls, cfg, model, evaluators=None):
            seen.append(model.linear.weight.detach().clone())
            return {}

    trainer = Recording(cfg)
    kinds = [type(h) for h in trainer._hooks]
    assert kinds[:3] == [hooks.IterationTimer, hooks.LRScheduler, ModelEMAHook]
    assert kinds.index(ModelEMAHook) < kinds.index(hooks.PeriodicCheckpointer)
    trainer.resume_or_load(resume=False)
    raw_after_step_3 = []

    class Probe(hooks.HookBase):
        def after_step(self):
            if self.trainer.iter == 3:
                raw_after_step_3.append(self.trainer.model.linear.weight.detach().clone())

    trainer.register_hooks([Probe()])
    trainer.train()
    assert len(seen) == 2  # iteration 4 and the end
    assert not torch.equal(seen[0], raw_after_step_3[0])  # the average, not the raw weights
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert final["model_ema"]["updates"] == 8
    averaged = final["model_ema"]["state"]["linear.weight"]
    assert torch.equal(final["model"]["linear.weight"], averaged)
    assert torch.equal(seen[1], final["model"]["linear.weight"])


def test_resume_restores_the_average_and_eval_only_loads_it(tmp_path):
    cfg = toy_cfg(tmp_path)
    cfg.MODEL_EMA.ENABLED = True
    cfg.MODEL_EMA.DECAY = 0.9
    ToyTrainer(cfg).train()
    (tmp_path / "last_checkpoint").write_text("model_0000005.pth")
    resumed = ToyTrainer(cfg)
    resumed.resume_or_load(resume=True)
    saved = torch.load(tmp_path / "model_0000005.pth", weights_only=False)
    assert resumed.model_ema.updates == 6
    assert torch.equal(resumed.model_ema.state["linear.weight"],
                       saved["model_ema"]["state"]["linear.weight"])
    # A fresh start from weights restarts the average from them.
    cfg2 = toy_cfg(tmp_path / "second")
    cfg2.MODEL_EMA.ENABLED = True
    cfg2.MODEL.WEIGHTS = str(tmp_path / "model_0000005.pth")
    fresh = ToyTrainer(cfg2)
    fresh.resume_or_load(resume=False)
    assert fresh.model_ema.updates == 0
    assert torch.equal(fresh.model_ema.state["linear.weight"], saved["model"]["linear.weight"])
    # --eval-only: the checkpoint's average is what gets evaluated.
    model = ToyTrainer.build_model(cfg)
    assert load_model_ema_for_eval(cfg, model, saved)
    assert torch.equal(model.linear.weight, saved["model_ema"]["state"]["linear.weight"])
    cfg.MODEL_EMA.ENABLED = False
    assert not load_model_ema_for_eval(cfg, model, saved)
