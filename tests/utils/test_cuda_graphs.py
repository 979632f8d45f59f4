"""CudaGraphRunner on CPU: the plain-call default, and all the bookkeeping around the capture
(signatures, static buffers, output cloning, limits, staleness, errors) through a fake capture
backend that "replays" by running the function on the static buffers in place; then the real
backend's stream, pool and autocast-cache handling against a stand-in for torch.cuda."""

import contextlib
import logging

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

from segtron.utils import cuda_graphs
from segtron.utils.cuda_graphs import CudaGraphRunner


class FakeBackend:
    """Captures on CPU: runs fn once per warm-up, once as the "capture", and on each replay
    writes fn's results into the captured outputs in place, as a CUDA graph replay would."""

    def __init__(self):
        self.captures = []  # static inputs of each capture
        self.replays = 0
        self.warmups = 0
        self.capturing = False

    def supports(self, device):
        return device.type == "cpu"

    def capture(self, fn, static_inputs, warmup_iters):
        for _ in range(warmup_iters):
            self.warmups += 1
            fn(*static_inputs)
        self.capturing = True
        try:
            outputs = fn(*static_inputs)
        except Exception as error:
            raise cuda_graphs._CaptureError(error) from error
        finally:
            self.capturing = False
        self.captures.append(static_inputs)

        def replay():
            self.replays += 1
            fresh = pytree.tree_leaves(fn(*static_inputs))
            for old, new in zip(pytree.tree_leaves(outputs), fresh):
                if isinstance(old, torch.Tensor):
                    old.copy_(new)

        return replay, outputs


class Counted:
    """fn(x) = (2x + 1, x.sum()) counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x * 2 + 1, x.sum()


def fake_runner(fn, **kwargs):
    runner = CudaGraphRunner(fn, **kwargs)
    runner._backend = FakeBackend()
    return runner


def test_cpu_inputs_with_the_real_backend_are_a_plain_call():
    fn = Counted()
    runner = CudaGraphRunner(fn)
    x = torch.arange(6.0).reshape(2, 3)
    with torch.no_grad():
        doubled, total = runner(x)
        runner(x)
    assert fn.calls == 2 and runner.num_graphs == 0
    assert torch.equal(doubled, torch.tensor([[1.0, 3, 5], [7, 9, 11]])) and total.item() == 15


def test_same_signature_replays_without_calling_fn_again():
    fn = Counted()
    runner = fake_runner(fn, warmup_iters=3)
    with torch.no_grad():
        for step in range(4):
            x = torch.full((2, 3), float(step))
            doubled, total = runner(x)
            assert torch.equal(doubled, torch.full((2, 3), 2.0 * step + 1))
            assert total.item() == 6.0 * step
    backend = runner._backend
    assert runner.num_graphs == 1 and len(backend.captures) == 1
    assert backend.warmups == 3 and backend.replays == 4
    # 3 warm-ups + 1 capture + 4 replays: the runner never calls fn eagerly by itself
    assert fn.calls == 3 + 1 + 4


def test_inputs_are_copied_into_the_static_buffers():
    runner = fake_runner(Counted())
    first, second = torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0])
    with torch.no_grad():
        runner(first)
        (static,) = runner._backend.captures[0]
        address = static.data_ptr()
        assert static is not first and static.data_ptr() != first.data_ptr()
        doubled, _ = runner(second)
    assert static.data_ptr() == address and torch.equal(static, second)
    assert torch.equal(doubled, torch.tensor([3.0, 5.0, 7.0, 9.0]))
    assert torch.equal(first, torch.zeros(4))  # the caller's tensors are never written


@pytest.mark.parametrize("change", ["shape", "dtype", "stride", "autocast", "inference_mode"])
def test_each_signature_change_gets_its_own_graph(change):
    runner = fake_runner(lambda x: (x * 2,))
    base = torch.ones(4, 6)
    with torch.no_grad():
        runner(base)
        if change == "shape":
            runner(torch.ones(5, 6))
        elif change == "dtype":
            runner(base.double())
        elif change == "stride":
            runner(torch.ones(6, 4).t())  # same shape, transposed strides
        elif change == "autocast":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                runner(base)
        else:
            with torch.inference_mode():
                runner(base)
        runner(base)  # the first signature still replays its own graph
    assert runner.num_graphs == 2 and len(runner._backend.captures) == 2
    assert runner._backend.replays == 3


def test_clone_outputs_true_returns_results_that_later_replays_leave_alone():
    runner = fake_runner(Counted(), clone_outputs=True)
    with torch.no_grad():
        first, _ = runner(torch.zeros(3))
        second, _ = runner(torch.ones(3))
    assert torch.equal(first, torch.ones(3)) and torch.equal(second, torch.full((3,), 3.0))
    assert first.data_ptr() != second.data_ptr()


def test_clone_outputs_false_returns_the_static_outputs_overwritten_by_the_next_replay():
    runner = fake_runner(Counted(), clone_outputs=False)
    with torch.no_grad():
        first, _ = runner(torch.zeros(3))
        second, _ = runner(torch.ones(3))
    assert first.data_ptr() == second.data_ptr()
    assert torch.equal(first, torch.full((3,), 3.0))  # overwritten by the second replay


def test_nested_output_structures_keep_their_layout():
    def fn(images, scale):
        features = {"p2": images * scale, "p3": images[:, :, ::2, ::2] * scale}
        return features, (images.flatten(1).sum(1), [scale + 1, None])

    runner = fake_runner(fn)
    images, scale = torch.arange(32.0).reshape(2, 1, 4, 4), torch.tensor(2.0)
    with torch.no_grad():
        runner(images, scale)
        features, (sums, (plus_one, nothing)) = runner(images + 1, torch.tensor(3.0))
    assert list(features) == ["p2", "p3"] and nothing is None
    assert torch.equal(features["p2"], (images + 1) * 3)
    assert torch.equal(features["p3"], (images + 1)[:, :, ::2, ::2] * 3)
    assert torch.equal(sums, (images + 1).flatten(1).sum(1)) and plus_one.item() == 4.0


def test_max_graphs_falls_back_to_eager_and_logs_once(caplog):
    fn = Counted()
    runner = fake_runner(fn, max_graphs=2, warmup_iters=0)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="segtron.utils.cuda_graphs"):
        for n in (1, 2, 3, 4, 3):
            doubled, _ = runner(torch.ones(n))
            assert torch.equal(doubled, torch.full((n,), 3.0))
    assert runner.num_graphs == 2 and len(runner._backend.captures) == 2
    assert runner._backend.replays == 2
    assert fn.calls == 2 + 2 + 3  # 2 captures, their 2 replays, then sizes 3, 4, 3 eagerly
    messages = [r.getMessage() for r in caplog.records if "max_graphs" in r.getMessage()]
    assert len(messages) == 1
    assert "max_graphs=2" in messages[0] and "(3,)" in messages[0]


def test_grad_mode_and_non_tensor_inputs_run_eagerly():
    fn = Counted()
    runner = fake_runner(fn)
    x = torch.ones(3, requires_grad=True)
    doubled, _ = runner(x)  # grad mode on: autograd needs the eager graph
    doubled.sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))
    assert runner.num_graphs == 0 and fn.calls == 1
    scaled = fake_runner(lambda x, factor: x * factor)
    with torch.no_grad():
        assert torch.equal(scaled(torch.ones(2), 3.0), torch.full((2,), 3.0))
    assert scaled.num_graphs == 0


def test_inputs_on_several_devices_run_eagerly():
    seen = []

    def fn(a, b):
        seen.append((a.device.type, b.device.type))
        return a.shape, b.shape

    runner = fake_runner(fn)
    with torch.no_grad():
        runner(torch.ones(2), torch.ones(2, device="meta"))
        runner(torch.ones(2, device="meta"), torch.ones(2, device="meta"))
    assert seen == [("cpu", "meta"), ("meta", "meta")] and runner.num_graphs == 0


@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.*:FutureWarning")
def test_tracing_runs_eagerly():
    runner = fake_runner(lambda x: x * 2 + 1)

    def through_runner(x):
        return runner(x)

    with torch.no_grad():
        traced = torch.jit.trace(through_runner, torch.ones(3), check_trace=False)
    assert runner.num_graphs == 0
    assert torch.equal(traced(torch.zeros(3)), torch.ones(3))


def test_watch_detects_replaced_parameters_and_recaptures(caplog):
    net = nn.Linear(3, 2)
    runner = fake_runner(net, watch=net)
    x = torch.ones(1, 3)
    with torch.no_grad():
        runner(x)
        old_weight = net.weight  # kept alive so its address cannot be reused
        net.weight = nn.Parameter(torch.full((2, 3), 2.0))
        with caplog.at_level(logging.INFO, logger="segtron.utils.cuda_graphs"):
            out = runner(x)
    assert old_weight is not net.weight
    assert len(runner._backend.captures) == 2 and runner.num_graphs == 1
    assert torch.equal(out, 6.0 + net.bias.view(1, 2))
    assert any("dropping 1 graph" in r.getMessage() for r in caplog.records)


def test_watch_detects_a_module_moved_with_to():
    net = nn.Linear(3, 2)
    runner = fake_runner(lambda x: net(x).to(torch.float32), watch=net)
    with torch.no_grad():
        runner(torch.ones(1, 3))
        old = [p.data for p in net.parameters()]
        net.to(torch.float64)  # new storage for every parameter
        out = runner(torch.ones(1, 3, dtype=torch.float64))
        runner(torch.ones(1, 3, dtype=torch.float64))
    assert len(old) == 2 and len(runner._backend.captures) == 2 and runner.num_graphs == 1
    assert torch.allclose(out, net(torch.ones(1, 3, dtype=torch.float64)).float())


def test_watch_in_place_updates_keep_the_graphs():
    net = nn.Linear(3, 2)
    runner = fake_runner(net, watch=net)
    with torch.no_grad():
        runner(torch.ones(1, 3))
        net.load_state_dict({"weight": torch.ones(2, 3), "bias": torch.zeros(2)})
        out = runner(torch.ones(1, 3))
    assert len(runner._backend.captures) == 1
    assert torch.equal(out, torch.full((1, 2), 3.0))


def test_reset_drops_every_graph():
    runner = fake_runner(Counted())
    with torch.no_grad():
        runner(torch.ones(2))
        runner(torch.ones(3))
        runner.reset()
        assert runner.num_graphs == 0
        runner(torch.ones(2))
    assert len(runner._backend.captures) == 3 and runner.num_graphs == 1


def test_capture_failure_names_fn_signature_error_and_fix():
    backend = FakeBackend()

    def syncs_with_host(x):
        if backend.capturing:  # what CUDA says to a host sync inside a capture
            raise RuntimeError("operation not permitted when stream is capturing")
        return x * int(x.sum().item())

    runner = CudaGraphRunner(syncs_with_host)
    runner._backend = backend
    with torch.no_grad(), pytest.raises(RuntimeError) as info:
        runner(torch.ones(2, 5))
    message = str(info.value)
    assert "syncs_with_host" in message and "(2, 5)" in message and "torch.float32" in message
    assert "operation not permitted when stream is capturing" in message
    assert ".item()" in message and "without CudaGraphRunner" in message
    assert runner.num_graphs == 0 and backend.warmups == 2


def test_errors_while_warming_up_propagate_unchanged():
    def broken(x):
        raise KeyError("no such level 'p7'")

    runner = fake_runner(broken)
    with torch.no_grad(), pytest.raises(KeyError, match="p7"):
        runner(torch.ones(2))


@pytest.mark.parametrize("kwargs, word", [({"max_graphs": -1}, "max_graphs"),
                                          ({"warmup_iters": 1.5}, "warmup_iters"),
                                          ({"watch": "model"}, "watch")])
def test_bad_arguments_are_rejected(kwargs, word):
    with pytest.raises(ValueError, match=word):
        CudaGraphRunner(lambda x: x, **kwargs)
    with pytest.raises(ValueError, match="callable"):
        CudaGraphRunner(3)


class FakeCuda:
    """Stands in for the torch.cuda calls of the real backend, recording streams and captures;
    like torch.cuda.graph, it leaves its stream current when ending a failed capture raises."""

    def __init__(self, monkeypatch):
        self.waits, self.pools, self.captures = [], [], []
        outer = self

        class Stream:
            def wait_stream(self, other):
                outer.waits.append((self, other))

        self.caller = self.current = Stream()

        class Graph:
            def replay(self):
                pass

        class StreamContext:
            def __init__(self, stream):
                self.stream = stream

            def __enter__(self):
                self.previous, outer.current = outer.current, self.stream

            def __exit__(self, *exc):
                outer.current = self.previous

        class GraphContext(StreamContext):
            def __init__(self, graph, pool, stream, capture_error_mode):
                super().__init__(stream)
                outer.pools.append(pool)
                outer.captures.append(capture_error_mode)

            def __exit__(self, kind, error, tb):
                if error is not None:
                    raise RuntimeError("operation failed due to a previous error during capture")
                super().__exit__()

        def set_current(stream):
            outer.current = stream

        for name, value in {"device": lambda device: contextlib.nullcontext(),
                            "current_stream": lambda: outer.current, "Stream": Stream,
                            "stream": StreamContext, "graph_pool_handle": object,
                            "CUDAGraph": Graph, "graph": GraphContext,
                            "set_stream": set_current}.items():
            monkeypatch.setattr(torch.cuda, name, value)


def test_real_backend_warms_up_and_captures_on_a_side_stream_with_one_pool(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    backend = cuda_graphs._CudaGraphBackend()
    seen = []

    def fn(x):
        seen.append((cuda.current, torch.is_autocast_cache_enabled()))
        return {"y": x + 1}

    x = [torch.zeros(2)]
    assert torch.is_autocast_cache_enabled()
    backend.capture(fn, x, warmup_iters=2)
    replay, outputs = backend.capture(fn, x, warmup_iters=1)
    side = seen[0][0]
    assert side != cuda.caller and all(stream is side for stream, _ in seen) and len(seen) == 5
    assert not any(cache for _, cache in seen)  # autocast's cast cache off while capturing
    assert torch.is_autocast_cache_enabled() and cuda.current == cuda.caller
    assert cuda.pools[0] is cuda.pools[1] and cuda.captures == ["thread_local"] * 2
    assert (side, cuda.caller) in cuda.waits and (cuda.caller, side) in cuda.waits
    assert torch.equal(outputs["y"], torch.ones(2)) and callable(replay)


def test_real_backend_failed_capture_restores_the_stream_and_wraps_the_error(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    backend = cuda_graphs._CudaGraphBackend()
    capturing = []

    def fn(x):
        if cuda.current != cuda.caller and len(capturing) == 1:  # the capture, after 1 warm-up
            raise RuntimeError("operation not permitted when stream is capturing")
        capturing.append(1)
        return x

    with pytest.raises(cuda_graphs._CaptureError) as info:
        backend.capture(fn, [torch.zeros(2)], warmup_iters=1)
    assert cuda.current == cuda.caller and torch.is_autocast_cache_enabled()
    chain = cuda_graphs._error_chain(info.value.error)
    assert "previous error during capture" in chain and "when stream is capturing" in chain

    def broken(x):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):  # a warm-up error is fn's own
        backend.capture(broken, [torch.zeros(2)], warmup_iters=1)
    assert cuda.current == cuda.caller and torch.is_autocast_cache_enabled()
