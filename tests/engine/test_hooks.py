"""Hooks: checkpoints, LR schedule, evaluation, best checkpoint, timing, writers, precise BN,
validation losses."""

import json
import os

import pytest
import torch
from fvcore.common.param_scheduler import MultiStepParamScheduler

from segtron.checkpoint import DetectionCheckpointer
from segtron.engine import (
    BestCheckpointer,
    CallbackHook,
    EvalHook,
    IterationTimer,
    LRScheduler,
    PeriodicCheckpointer,
    PeriodicWriter,
    PreciseBN,
    SimpleTrainer,
    TorchMemoryStats,
    TorchProfiler,
    ValidationLoss,
)
from segtron.utils.events import EventStorage, EventWriter, JSONWriter

from .tiny_training import TinyRegressor, finite_loader, infinite_loader, sgd


def _trainer(model=None, **kwargs):
    model = model or TinyRegressor()
    return SimpleTrainer(model, infinite_loader(), sgd(model, **kwargs))


def _scalar(storage, name):
    return [(itr, value) for value, itr in storage.history(name).values()]


def test_periodic_checkpointer_files_and_iterations(tmp_path):
    trainer = _trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path), optimizer=trainer.optimizer)
    trainer.register_hooks([PeriodicCheckpointer(checkpointer, period=4)])
    trainer.train(0, 10)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint", "model_0000003.pth", "model_0000007.pth", "model_final.pth"
    ]
    for name, iteration in (("model_0000003", 3), ("model_0000007", 7), ("model_final", 9)):
        data = torch.load(tmp_path / f"{name}.pth", weights_only=True)
        assert data["iteration"] == iteration and "optimizer" in data
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_lr_scheduler_hook_follows_torch_schedule():
    trainer = _trainer(lr=0.1)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(trainer.optimizer, [3, 5], gamma=0.1)
    hook = LRScheduler(scheduler=scheduler)
    trainer.register_hooks([hook])
    trainer.train(0, 7)
    expected = [0.1] * 3 + [0.01] * 2 + [0.001] * 2
    assert [itr for itr, _ in _scalar(trainer.storage, "lr")] == list(range(7))
    assert [v for _, v in _scalar(trainer.storage, "lr")] == pytest.approx(expected)
    assert hook.state_dict()["last_epoch"] == 7


def test_lr_scheduler_hook_wraps_param_scheduler():
    # LRScheduler wraps an fvcore ParamScheduler in segtron.solver's LRMultiplier.
    trainer = _trainer(lr=0.1)
    trainer.register_hooks(
        [LRScheduler(scheduler=MultiStepParamScheduler([1.0, 0.1], milestones=[4], num_updates=6))]
    )
    trainer.train(0, 6)
    assert [v for _, v in _scalar(trainer.storage, "lr")] == pytest.approx([0.1] * 4 + [0.01] * 2)


def test_best_param_group_id():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(6)]
    big = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 2.0}])
    assert LRScheduler.get_best_param_group_id(big) == 1
    singles = torch.optim.SGD(
        [{"params": [p], "lr": lr} for p, lr in zip(params, [5.0, 1.0, 1.0, 2.0, 1.0, 5.0])]
    )
    assert LRScheduler.get_best_param_group_id(singles) == 1  # the most common lr, 1.0


def test_eval_hook_period_and_after_train():
    calls = []

    def evaluate():
        calls.append(trainer.iter)
        return {"bbox": {"AP": 10.0 + len(calls), "AP50": torch.tensor(50.0)}, "segm": {"AP": 1}}

    trainer = _trainer()
    trainer.register_hooks([EvalHook(3, evaluate)])
    trainer.train(0, 7)
    assert calls == [2, 5, 7]  # after iterations 2 and 5, then after training
    storage = trainer.storage
    assert _scalar(storage, "bbox/AP") == [(2, 11.0), (5, 12.0), (7, 13.0)]
    assert _scalar(storage, "bbox/AP50")[-1] == (7, 50.0)
    assert storage.smoothing_hints()["segm/AP"] is False


def test_eval_hook_not_after_failed_training_and_rejects_non_floats():
    calls = []
    model = TinyRegressor(nan_at_call=1)
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model))
    trainer.register_hooks([EvalHook(0, lambda: calls.append(1))])
    with pytest.raises(FloatingPointError):
        trainer.train(0, 4)
    assert calls == []

    trainer = _trainer()
    trainer.register_hooks([EvalHook(0, lambda: {"bbox": {"AP": "high"}})])
    with pytest.raises(ValueError, match="nested dict of float. Got 'bbox/AP: 'high''"):
        trainer.train(0, 1)


@pytest.mark.parametrize("mode,best_value,best_iter", [("max", 3.0, 2), ("min", 1.0, 1)])
def test_best_checkpointer_keeps_the_best(tmp_path, mode, best_value, best_iter):
    # Evaluated after iterations 0, 1, 2, 3 and after training (iteration 5).
    values = iter([2.0, 1.0, 3.0, float("nan"), 2.5])
    trainer = _trainer()
    checkpointer = DetectionCheckpointer(trainer.model, str(tmp_path))
    best = BestCheckpointer(1, checkpointer, "bbox/AP", mode=mode)
    trainer.register_hooks([EvalHook(1, lambda: {"bbox": {"AP": next(values)}}), best])
    trainer.train(0, 5)
    assert best.best_metric == best_value and best.best_iter == best_iter
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_best.pth"]
    assert torch.load(tmp_path / "model_best.pth", weights_only=True)["iteration"] == best_iter


def test_best_checkpointer_warns_on_unknown_metric(tmp_path, engine_log):
    trainer = _trainer()
    best = BestCheckpointer(2, DetectionCheckpointer(trainer.model, str(tmp_path)), "segm/AP")
    trainer.register_hooks([best])
    trainer.train(0, 2)
    assert "segm/AP does not seem to be computed/stored" in engine_log.text
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="'max' or 'min'"):
        BestCheckpointer(2, None, "x", mode="best")


def test_iteration_timer_records_time_after_warmup(engine_log):
    trainer = _trainer()
    trainer.register_hooks([IterationTimer(warmup_iter=2)])
    trainer.train(0, 6)
    times = _scalar(trainer.storage, "time")
    assert [itr for itr, _ in times] == [1, 2, 3, 4, 5]
    assert all(t > 0 for _, t in times)
    assert "Overall training speed: 5 iterations in" in engine_log.text
    assert "Total training time:" in engine_log.text


class _CountingWriter(EventWriter):
    def __init__(self):
        self.writes, self.closed = [], False

    def write(self):
        from segtron.utils.events import get_event_storage

        self.writes.append(get_event_storage().iter)

    def close(self):
        self.closed = True


def test_periodic_writer_period_last_iteration_and_close(tmp_path):
    counting = _CountingWriter()
    json_file = tmp_path / "metrics.json"
    trainer = _trainer()
    trainer.register_hooks([PeriodicWriter([counting, JSONWriter(str(json_file))], period=4)])
    trainer.train(0, 10)
    assert counting.writes == [3, 7, 9, 10] and counting.closed
    lines = [json.loads(line) for line in json_file.read_text().splitlines()]
    assert [r["iteration"] for r in lines] == [3, 7, 9]  # the latest values at each write
    assert all("total_loss" in r for r in lines)
    with pytest.raises(TypeError, match="EventWriter"):
        PeriodicWriter([object()])


def test_callback_hook():
    seen = []
    hook = CallbackHook(
        before_train=lambda t: seen.append(("bt", t.iter)),
        before_step=lambda t: seen.append(("bs", t.iter)),
        after_step=lambda t: seen.append(("as", t.iter)),
        after_train=lambda t: seen.append(("at", t.iter)),
    )
    trainer = _trainer()
    trainer.register_hooks([hook])
    trainer.train(0, 2)
    assert seen == [("bt", 0), ("bs", 0), ("as", 0), ("bs", 1), ("as", 1), ("at", 2)]


def test_precise_bn(engine_log):
    assert PreciseBN(1, TinyRegressor(), infinite_loader(), 2)._disabled
    assert "PreciseBN is disabled" in engine_log.text

    model = TinyRegressor(batch_norm=True)
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model))
    hook = PreciseBN(0, model, infinite_loader(seed=3), num_iter=3)
    trainer.register_hooks([hook])
    calls = []
    original = hook.update_stats
    hook.update_stats = lambda: (calls.append(trainer.iter), original())
    trainer.train(0, 3)
    assert calls == [2]  # period 0: only after the last iteration
    assert "Running precise-BN for 3 iterations" in engine_log.text
    # The running mean is now the average of the 3 precise-BN batches' means.
    batches = [b for _, b in zip(range(3), infinite_loader(seed=3))]
    expected = torch.stack([x.mean(0) for x, _ in batches]).mean(0)
    assert torch.allclose(model.norm.running_mean, expected, atol=1e-6)
    assert len(trainer.storage.history("total_loss").values()) == 3


def test_torch_memory_stats_without_cuda_and_profiler(tmp_path):
    trainer = _trainer()
    trainer.register_hooks(
        [
            TorchMemoryStats(period=1),
            TorchProfiler(lambda t: t.iter == 1, str(tmp_path), save_tensorboard=False),
        ]
    )
    trainer.train(0, 2)
    assert os.listdir(tmp_path) == ["profiler-trace-iter1.json"]


# --------------------------------------------------------------------------------------------
# ValidationLoss
# --------------------------------------------------------------------------------------------


def _expected_val_losses(model, batches):
    """The losses the hook should report: BN in eval mode, averaged over batches."""
    model.norm.eval()
    with torch.no_grad(), EventStorage():
        outs = [model(b) for b in batches]
    model.norm.train()
    means = {k: sum(float(o[k]) for o in outs) / len(outs) for k in outs[0]}
    return {"val_loss_mse": means["loss_mse"], "val_loss_l1": means["loss_l1"],
            "val_total_loss": means["loss_mse"] + means["loss_l1"]}


def test_validation_loss_values_no_grad_and_frozen_bn():
    model = TinyRegressor(batch_norm=True)
    model.train()
    batches = finite_loader(3)
    hook = ValidationLoss(5, model, batches)
    bn = model.norm
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    model.grad_enabled_in_forward.clear()

    with EventStorage():
        results = hook.compute_losses()

    assert model.grad_enabled_in_forward == [False, False, False]
    assert all(p.grad is None for p in model.parameters())
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key  # running stats and batch counter unchanged
    assert model.training and bn.training  # modes restored
    expected = _expected_val_losses(model, batches)
    assert results.keys() == expected.keys()
    for key in expected:
        assert results[key] == pytest.approx(expected[key], rel=1e-6)


def test_validation_loss_in_training_logs_val_losses():
    model = TinyRegressor(batch_norm=True)
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model))
    model.norm.eval()  # a BN frozen by the user stays in eval mode afterwards
    trainer.register_hooks([ValidationLoss(2, model, finite_loader(2))])
    trainer.train(0, 5)
    storage = trainer.storage
    for name in ("val_total_loss", "val_loss_mse", "val_loss_l1"):
        assert [itr for itr, _ in _scalar(storage, name)] == [1, 3, 5]
        assert storage.smoothing_hints()[name] is False
    assert model.training and not model.norm.training
    total = _scalar(storage, "val_total_loss")[-1][1]
    assert total == pytest.approx(
        _scalar(storage, "val_loss_mse")[-1][1] + _scalar(storage, "val_loss_l1")[-1][1]
    )


def test_validation_loss_infinite_loader_needs_num_batches():
    model = TinyRegressor()
    with pytest.raises(ValueError, match="num_batches"):
        ValidationLoss(1, model, infinite_loader())
    with pytest.raises(ValueError, match="positive"):
        ValidationLoss(1, model, finite_loader(1), num_batches=0)

    hook = ValidationLoss(1, model, infinite_loader(), num_batches=4)
    model.calls = 0
    with EventStorage():
        hook.compute_losses()
    assert model.calls == 4
    model.eval()
    with pytest.raises(RuntimeError, match="training mode"), EventStorage():
        hook.compute_losses()
