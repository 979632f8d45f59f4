"""CudaGraphRunner with real CUDA graphs: replays equal eager bit for bit (fp32 and fp16
autocast), each input shape gets its own graph in the shared pool, replays see new input
values, moved or replaced weights of the watched module are noticed, and a host sync inside the
captured function raises the runner's RuntimeError.

Every test here needs a CUDA device and is skipped elsewhere, saying so; CI has no GPU, so these
run when a session has a GPU machine lent (see the README's GPU notes).
"""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree

from segtron.utils.cuda_graphs import CudaGraphRunner
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (none visible to torch here)")


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8))
    nn.init.uniform_(net[3].running_mean, -0.5, 0.5)
    return net.cuda().eval()


def _features_and_topk(net):
    """Like the RPN part it stands for: a dict of feature maps plus per-image top-k."""

    def features_and_topk(images):
        p2 = net(images)
        p3 = F.max_pool2d(p2, 2)
        scores, indices = p3.flatten(1).float().topk(5, dim=1)
        return {"p2": p2, "p3": p3}, (scores, indices)

    return features_and_topk


def _images(seed, size=(32, 48)):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(1, 3, *size, device="cuda", generator=g)


def _assert_identical(got, want):
    got_leaves, got_spec = pytree.tree_flatten(got)
    want_leaves, want_spec = pytree.tree_flatten(want)
    assert got_spec == want_spec
    for a, b in zip(got_leaves, want_leaves):
        assert a.dtype == b.dtype and a.device == b.device
        assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("autocast, mode", [(False, torch.no_grad),
                                            (True, torch.inference_mode)])
def test_replays_equal_eager_bit_for_bit_and_follow_new_inputs(autocast, mode):
    net = _net()
    fn = _features_and_topk(net)
    runner = CudaGraphRunner(fn, watch=net)
    previous = None
    with mode(), torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
        for seed in range(3):
            images = _images(seed)
            got = runner(images)
            _assert_identical(got, fn(images))
            expected_dtype = torch.float16 if autocast else torch.float32
            assert got[0]["p2"].dtype == expected_dtype
            if previous is not None:  # a replay, and it saw the new values
                assert not torch.equal(got[0]["p2"], previous)
            previous = got[0]["p2"]
    assert runner.num_graphs == 1


def test_each_shape_gets_its_own_graph_in_the_shared_pool():
    net = _net()
    fn = _features_and_topk(net)
    runner = CudaGraphRunner(fn, clone_outputs=False)
    small, large = _images(0, (32, 48)), _images(1, (64, 40))
    with torch.no_grad():
        out_small = runner(small)
        want_small = fn(small)
        out_large = runner(large)
        assert runner.num_graphs == 2
        _assert_identical(out_large, fn(large))
        # the large graph's replay left the small graph's static outputs alone
        _assert_identical(out_small, want_small)
        again = runner(small.flip(-1).contiguous())
        _assert_identical(again, fn(small.flip(-1).contiguous()))
    assert again[0]["p2"].data_ptr() == out_small[0]["p2"].data_ptr()  # static outputs
    assert runner.num_graphs == 2


def test_watched_module_moved_or_parameters_replaced_is_recaptured(caplog):
    net = _net()
    fn = _features_and_topk(net)
    runner = CudaGraphRunner(fn, watch=net)
    images = _images(0)
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="segtron.utils.cuda_graphs"):
        before = runner(images)
        # move away and back, keeping the old storage alive so no address can be reused
        old = [t.data for t in (*net.parameters(), *net.buffers())]
        net.cpu().cuda()
        assert all(a.data_ptr() != b.data_ptr() for a, b in zip(old, net.parameters()))
        _assert_identical(runner(images), fn(images))
        old_weight = net[0].weight
        net[0].weight = nn.Parameter(old_weight.detach() * 2)
        after = runner(images)
        _assert_identical(after, fn(images))
        assert not torch.equal(after[0]["p2"], before[0]["p2"])
    drops = [r for r in caplog.records if "dropping" in r.getMessage()]
    assert len(drops) == 2 and runner.num_graphs == 1


def test_in_place_weight_updates_reach_the_replays():
    net = _net()
    fn = _features_and_topk(net)
    runner = CudaGraphRunner(fn, watch=net)
    images = _images(0)
    with torch.no_grad():
        before = runner(images)
        net[2].weight.mul_(-1.0)
        after = runner(images)
        _assert_identical(after, fn(images))
    assert not torch.equal(after[0]["p2"], before[0]["p2"]) and runner.num_graphs == 1


_HOST_SYNC_SCRIPT = textwrap.dedent("""
    import json, torch
    from segtron.utils.cuda_graphs import CudaGraphRunner

    def scale_by_total(x):
        return x * x.sum().item()

    result = {}
    try:
        with torch.no_grad():
            CudaGraphRunner(scale_by_total)(torch.ones(2, 5, device="cuda"))
    except RuntimeError as error:
        result["message"] = str(error)
    with torch.no_grad():  # CUDA and the runner still work after the failed capture
        x = torch.arange(4.0, device="cuda")
        result["recovered"] = bool(torch.equal(CudaGraphRunner(lambda t: t * 3)(x), x * 3))
        result["stream_restored"] = torch.cuda.current_stream() == torch.cuda.default_stream()
    print(json.dumps(result))
""")


def test_a_host_sync_inside_the_function_raises_a_runtime_error_naming_the_fix():
    # In a child process: a failed capture must not leave this test session's CUDA state odd.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    done = subprocess.run([sys.executable, "-c", _HOST_SYNC_SCRIPT], capture_output=True,
                          text=True, env=env, timeout=300, cwd=str(REPO_ROOT))
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    message = result.get("message", "")
    assert "scale_by_total" in message, result
    assert "(2, 5)" in message and "cuda:0" in message
    original = message.split(" as a CUDA graph for ", 1)[1]  # after the runner's own words
    assert any(word in original for word in ("capturing", "during capture", "graph capture"))
    assert ".item()" in message and "without CudaGraphRunner" in message
    assert result["recovered"] and result["stream_restored"], result
