#!/usr/bin/env python
"""Print the config overrides that put ``make demo`` on this machine's GPU, if it has one.

The quickstart config trains on the CPU (``MODEL.DEVICE "cpu"``, float32). With a CUDA GPU
visible to torch, the demo trains there with mixed precision instead: this prints
``MODEL.DEVICE cuda SOLVER.AMP.ENABLED True`` (and names the GPU on stderr); without one it
prints nothing, so the CPU demo is unchanged. ``make demo`` appends the output to train_net.py's
overrides (``DEMO_ARGS`` come after it and win).
"""

import sys
from typing import List


def demo_device_overrides(cuda_available: bool) -> List[str]:
    """``KEY VALUE`` words for train_net.py: the GPU with AMP when ``cuda_available``, else
    none (the config's CPU setting stays)."""
    return ["MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True"] if cuda_available else []


def main() -> None:
    """Print the demo's device overrides on one line (empty without a GPU); say on stderr
    which GPU is used."""
    import torch

    available = torch.cuda.is_available()
    if available:
        print(f"[segtron] GPU found ({torch.cuda.get_device_name(0)}): the demo trains there "
              "with AMP", file=sys.stderr)
    print(" ".join(demo_device_overrides(available)))


if __name__ == "__main__":
    main()
