"""retry_if_cuda_oom: retried after a CUDA OOM, then with CUDA-looking arguments on the CPU."""

import pytest
import torch

from segtron.utils.memory import retry_if_cuda_oom


def _oom():
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class _FakeCudaTensor:
    """Looks like a CUDA tensor to the wrapper (``.device.type == "cuda"`` and ``.to``)."""

    class device:  # noqa: N801 - mimics torch.device's attribute
        type = "cuda"

    def to(self, device):
        assert device == "cpu"
        return "moved to cpu"


def test_returns_at_once_without_oom():
    calls = []

    def add(a, b=1):
        calls.append((a, b))
        return a + b

    assert retry_if_cuda_oom(add)(2, b=3) == 5 and calls == [(2, 3)]
    assert retry_if_cuda_oom(add).__name__ == "add"


def test_retries_once_after_oom():
    outcomes = [_oom(), "ok"]

    def flaky(x):
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, x

    assert retry_if_cuda_oom(flaky)(7) == ("ok", 7)


def test_moves_cuda_arguments_to_cpu_after_two_ooms():
    seen = []

    def needs_cpu(x, scale, *, other):
        seen.append((x, scale, other))
        if len(seen) <= 2:
            raise RuntimeError("CUDA out of memory. (the message of older PyTorch)")
        return "done"

    fake = _FakeCudaTensor()
    assert retry_if_cuda_oom(needs_cpu)(fake, 2.0, other=fake) == "done"
    assert seen[-1] == ("moved to cpu", 2.0, "moved to cpu")
    assert seen[0][0] is fake  # the first two tries get the original arguments


def test_other_errors_and_a_last_oom_propagate():
    def broken():
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):
        retry_if_cuda_oom(broken)()

    def always_oom():
        raise _oom()

    with pytest.raises(torch.cuda.OutOfMemoryError):
        retry_if_cuda_oom(always_oom)()
