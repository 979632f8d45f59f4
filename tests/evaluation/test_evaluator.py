"""Tests for segtron.evaluation.evaluator: the evaluator protocol and inference_on_dataset."""

import pytest
import torch
from torch import nn

from segtron.evaluation import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_context,
    inference_on_dataset,
)
from segtron.evaluation import evaluator as evaluator_module


class _StubModel(nn.Module):
    """Doubles each input's value; records the mode and grad state it was called in."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.calls = []

    def forward(self, batch):
        self.calls.append((self.training, torch.is_grad_enabled()))
        return [{"value": self.weight * x["value"]} for x in batch]


class _SumEvaluator(DatasetEvaluator):
    """Sums the model outputs under task ``key``."""

    def __init__(self, key="sum", result=True):
        self.key, self.result = key, result
        self.resets = 0
        self.total = 0.0
        self.batches = 0

    def reset(self):
        self.resets += 1
        self.total, self.batches = 0.0, 0

    def process(self, inputs, outputs):
        assert len(inputs) == len(outputs)
        self.batches += 1
        self.total += sum(float(o["value"]) for o in outputs)

    def evaluate(self):
        return {self.key: {"total": self.total, "batches": self.batches}} if self.result else None


def _loader(num_batches=8, batch_size=2):
    return [
        [{"value": torch.tensor(float(b * batch_size + i))} for i in range(batch_size)]
        for b in range(num_batches)
    ]


def test_inference_on_dataset_runs_model_in_eval_mode_and_restores_it(catch_logs):
    logs = catch_logs("segtron.evaluation.evaluator")
    model = _StubModel()
    model.train()
    evaluator = _SumEvaluator()
    evaluator.total = 123.0  # stale state: must be reset
    results = inference_on_dataset(model, _loader(), evaluator)

    assert results == {"sum": {"total": float(sum(range(16))), "batches": 8}}
    assert evaluator.resets == 1
    assert model.calls == [(False, False)] * 8  # eval mode, no autograd
    assert model.training is True
    text = "\n".join(logs.messages())
    assert "Start inference on 8 batches" in text
    assert "Total inference time" in text and "on 1 devices" in text
    assert "Total inference pure compute time" in text


def test_inference_on_dataset_keeps_eval_mode_and_handles_none():
    model = _StubModel().eval()
    assert inference_on_dataset(model, _loader(3), _SumEvaluator(result=False)) == {}
    assert model.training is False
    # No evaluator: the model still runs over the whole loader.
    assert inference_on_dataset(model, _loader(3), None) == {}
    assert len(model.calls) == 6


def test_inference_on_dataset_waits_for_the_gpu_only_in_a_process_that_used_cuda(monkeypatch):
    """On a CUDA machine each batch's compute time ends with torch.cuda.synchronize(), but not in
    a process that never initialised CUDA (a CPU model): that would create a CUDA context."""
    syncs = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: syncs.append(1))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert inference_on_dataset(_StubModel(), _loader(3), _SumEvaluator())["sum"]["batches"] == 3
    assert syncs == []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    inference_on_dataset(_StubModel(), _loader(3), _SumEvaluator())
    assert syncs == [1, 1, 1]


def test_inference_on_dataset_with_a_list_of_evaluators_and_callbacks():
    events = []
    callbacks = {name: (lambda n=name: events.append(n))
                 for name in ("on_start", "before_inference", "after_inference", "on_end")}
    results = inference_on_dataset(
        _StubModel(), _loader(2), [_SumEvaluator("a"), _SumEvaluator("b")], callbacks=callbacks
    )
    assert list(results) == ["a", "b"]
    assert events == ["on_start"] + ["before_inference", "after_inference"] * 2 + ["on_end"]


def test_inference_on_dataset_accepts_a_plain_callable_and_logs_progress(monkeypatch, catch_logs):
    logs = catch_logs("segtron.evaluation.evaluator")
    # Every progress line passes the rate limit; 12 batches = 5 warm-up + steady state.
    monkeypatch.setattr(evaluator_module, "_LOG_PERIOD_S", 0)
    results = inference_on_dataset(lambda batch: [{"value": x["value"]} for x in batch],
                                   _loader(12, 1), _SumEvaluator())
    assert results["sum"]["batches"] == 12
    progress = [m for m in logs.messages() if m.startswith("Inference done")]
    assert progress and progress[-1].startswith("Inference done 12/12.")
    assert "Dataloading:" in progress[-1] and "Eval:" in progress[-1] and "ETA=" in progress[-1]


def test_inference_context_restores_mode_on_error():
    model = _StubModel().train()
    with pytest.raises(RuntimeError):
        with inference_context(model):
            assert model.training is False
            raise RuntimeError("boom")
    assert model.training is True


def test_dataset_evaluators_merge_and_reject_duplicate_keys():
    merged = DatasetEvaluators([_SumEvaluator("a"), _SumEvaluator("b", result=False),
                                _SumEvaluator("c")])
    merged.reset()
    merged.process([{"value": 1}], [{"value": torch.tensor(2.0)}])
    assert merged.evaluate() == {"a": {"total": 2.0, "batches": 1},
                                 "c": {"total": 2.0, "batches": 1}}

    duplicate = DatasetEvaluators([_SumEvaluator("a"), _SumEvaluator("a")])
    with pytest.raises(KeyError, match="'a'"):
        duplicate.evaluate()


def test_base_evaluator_is_a_no_op():
    base = DatasetEvaluator()
    base.reset()
    base.process([{}], [{}])
    assert base.evaluate() is None
