"""AutogradProfiler: Detectron2's autograd-profiler hook writes one Chrome trace per profiled
iteration."""

import json
import os

from segtron.engine import AutogradProfiler, SimpleTrainer, TorchProfiler, hooks

from .tiny_training import TinyRegressor, infinite_loader, sgd


def test_autograd_profiler_writes_chrome_traces(tmp_path):
    assert hooks.AutogradProfiler is AutogradProfiler
    assert issubclass(AutogradProfiler, TorchProfiler)
    model = TinyRegressor()
    trainer = SimpleTrainer(model, infinite_loader(), sgd(model))
    trainer.register_hooks([AutogradProfiler(lambda t: t.iter in (1, 2), str(tmp_path))])
    trainer.train(0, 4)
    assert sorted(os.listdir(tmp_path)) == ["profiler-trace-iter1.json",
                                           "profiler-trace-iter2.json"]
    with open(tmp_path / "profiler-trace-iter1.json") as f:
        trace = json.load(f)
    assert trace["traceEvents"], "the trace records the step's ops"
