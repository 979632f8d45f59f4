"""TrainerBase / SimpleTrainer / AMPTrainer: the loop, hook order, metrics, NaN losses, state."""

import os

import pytest
import torch

from segtron.checkpoint import DetectionCheckpointer
from segtron.engine import (
    AMPTrainer,
    HookBase,
    PeriodicCheckpointer,
    SimpleTrainer,
    TrainerBase,
)
from segtron.engine.train_loop import _sum_losses

from .tiny_training import RecordingHook, TinyRegressor, infinite_loader, sgd


def _losses_at(storage, name):
    return [(itr, value) for value, itr in storage.history(name).values()]


def test_simple_trainer_trains_and_records_metrics():
    model = TinyRegressor()
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model, lr=0.1))
    trainer.train(0, 40)

    storage = trainer.storage
    total = _losses_at(storage, "total_loss")
    assert [itr for itr, _ in total] == list(range(40))
    first = sum(v for _, v in total[:5]) / 5
    last = sum(v for _, v in total[-5:]) / 5
    assert last < 0.1 * first
    # total_loss is the sum of the individual losses at each iteration.
    mse, l1 = dict(_losses_at(storage, "loss_mse")), dict(_losses_at(storage, "loss_l1"))
    for itr, value in total:
        assert value == pytest.approx(mse[itr] + l1[itr], rel=1e-6)
    for name in ("data_time", "rank_data_time"):
        assert len(storage.history(name).values()) == 40
        assert all(v >= 0 for v, _ in storage.history(name).values())
    assert trainer.iter == trainer.max_iter == 40 and trainer.start_iter == 0


def test_hooks_called_in_order_with_iterations():
    log = []
    model = TinyRegressor()
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model))
    trainer.register_hooks([RecordingHook("a", log), None, RecordingHook("b", log)])
    trainer.train(5, 7)

    expected = [("a", "before_train", 5, 5), ("b", "before_train", 5, 5)]
    for it in (5, 6):
        for event in ("before_step", "after_backward", "after_step"):
            expected += [("a", event, it, it), ("b", event, it, it)]
    expected += [("a", "after_train", 7, 7), ("b", "after_train", 7, 7)]
    assert log == expected


def test_register_hooks_rejects_non_hooks_and_uses_weak_reference():
    model = TinyRegressor()
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model))
    with pytest.raises(TypeError, match="HookBase"):
        trainer.register_hooks([object()])
    hook = HookBase()
    trainer.register_hooks([hook])
    assert hook.trainer.model is model
    del trainer
    with pytest.raises(ReferenceError):
        hook.trainer.iter


class _FailingTrainer(TrainerBase):
    def run_step(self):
        if self.iter == 2:
            raise RuntimeError("boom")


def test_exception_logged_with_iteration_and_after_train_runs(engine_log):
    log = []
    trainer = _FailingTrainer()
    trainer.register_hooks([RecordingHook("h", log)])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train(0, 5)
    assert log[-1] == ("h", "after_train", 2, 2)  # iter < max_iter: training did not complete
    assert "Exception during training at iteration 2" in engine_log.text


def test_nan_loss_raises_and_earlier_checkpoint_stays_loadable(tmp_path):
    model = TinyRegressor(nan_at_call=5)
    optimizer = sgd(model)
    trainer = SimpleTrainer(model, infinite_loader(), optimizer)
    checkpointer = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer)
    trainer.register_hooks([PeriodicCheckpointer(checkpointer, period=3)])

    with pytest.raises(FloatingPointError) as info:
        trainer.train(0, 10)
    message = str(info.value)
    assert "Loss became infinite or NaN at iteration=5!" in message
    assert "loss_mse" in message and "'loss_l1': nan" in message

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000002.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    fresh = TinyRegressor()
    extra = DetectionCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 2
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_gather_metric_period_records_every_nth_iteration():
    model = TinyRegressor()
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model), gather_metric_period=3)
    trainer.train(0, 9)
    assert [itr for itr, _ in _losses_at(trainer.storage, "total_loss")] == [2, 5, 8]


def test_async_write_metrics_records_all_and_reraises_nan():
    model = TinyRegressor()
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model), async_write_metrics=True)
    trainer.train(0, 6)
    assert [itr for itr, _ in _losses_at(trainer.storage, "total_loss")] == list(range(6))

    model = TinyRegressor(nan_at_call=4)
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model), async_write_metrics=True)
    with pytest.raises(FloatingPointError, match="iteration=4"):
        trainer.train(0, 6)


def test_zero_grad_before_forward_and_tensor_loss():
    class TensorLoss(TinyRegressor):
        def forward(self, batch):
            return sum(super().forward(batch).values())

    model = TensorLoss()
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model), zero_grad_before_forward=True)
    trainer.train(0, 3)
    assert len(trainer.storage.history("total_loss").values()) == 3
    with pytest.raises(KeyError):
        trainer.storage.history("loss_mse")
    with pytest.raises(TypeError, match="dict of scalar loss tensors"):
        _sum_losses([torch.tensor(1.0)])


def test_model_left_in_eval_mode_is_an_error():
    model = TinyRegressor()
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model))
    model.eval()
    with pytest.raises(RuntimeError, match="eval mode"):
        trainer.train(0, 1)


class _CountingHook(HookBase):
    def __init__(self):
        self.count = 0

    def after_step(self):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state_dict):
        self.count = state_dict["count"]


def _momentum_sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_state_dict_round_trip(engine_log):
    model = TinyRegressor()
    trainer = SimpleTrainer(model, infinite_loader(), _momentum_sgd(model))
    trainer.register_hooks([_CountingHook(), _CountingHook(), RecordingHook("r", [])])
    trainer.train(0, 4)
    state = trainer.state_dict()
    assert state["iteration"] == 4
    assert state["hooks"] == {"_CountingHook": {"count": 4}}  # hooks without state: not saved
    assert state["optimizer"]["state"]  # momentum buffers

    model2 = TinyRegressor()
    trainer2 = SimpleTrainer(model2, infinite_loader(), _momentum_sgd(model2))
    hook = _CountingHook()
    trainer2.register_hooks([hook])
    trainer2.load_state_dict({**state, "hooks": {**state["hooks"], "Gone": {"x": 1}}})
    assert trainer2.iter == 4 and hook.count == 4
    assert trainer2.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()
    assert "Cannot find the hook 'Gone'" in engine_log.text


def test_amp_trainer_on_cpu_uses_bfloat16_and_round_trips():
    dtypes = []

    class Probe(TinyRegressor):
        def forward(self, batch):
            dtypes.append(self.linear(batch[0]).dtype)
            return super().forward(batch)

    model = Probe()
    before = model.linear.weight.detach().clone()
    trainer = AMPTrainer(model, infinite_loader(), sgd(model), log_grad_scaler=True)
    assert trainer.precision == torch.bfloat16 and not trainer.grad_scaler.is_enabled()
    trainer.train(0, 2)
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    assert not torch.equal(before, model.linear.weight)
    assert len(trainer.storage.history("total_loss").values()) == 2
    assert trainer.storage.history("[metric]grad_scaler").latest() == 1.0

    state = trainer.state_dict()
    assert "grad_scaler" in state and state["iteration"] == 2
    model2 = Probe()
    trainer2 = AMPTrainer(model2, infinite_loader(), sgd(model2))
    trainer2.load_state_dict(state)
    assert trainer2.iter == 2

    with pytest.raises(ValueError, match="precision"):
        AMPTrainer(model2, infinite_loader(), sgd(model2), precision=torch.float32)
