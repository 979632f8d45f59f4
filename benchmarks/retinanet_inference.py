"""RetinaNet R50-FPN inference: segtron vs torchvision's retinanet_resnet50_fpn, one process.

Same input (one 800x1067 image) and the same weights: torchvision's random init, copied into
segtron with its preprocessing (see ``torchvision_peer.py``). 80 classes, FrozenBN in both
backbones (what each library uses with pretrained weights), score threshold 0 so both keep the
top 1000 candidates of every level, NMS at 0.5 and 100 detections per image (segtron may
report fewer: like Detectron2, its ``detector_postprocess`` drops boxes left empty after
clipping).

What differs between the two models (why they are close rather than identical):
- torchvision's v1 RetinaNet computes P6 from the FPN's P5 (``LastLevelP6P7(256, 256)``),
  Detectron2's RetinaNet from C5 (``res5``, 2048 channels). segtron is given torchvision's
  choice (``build_fcos_resnet_fpn_backbone``, the same FPN with P6 from P5) so that every
  weight copies and both do the same convolutions; segtron's model-zoo RetinaNet does a
  slightly larger P6 conv (2048 -> 256 input channels).
- anchors: segtron takes torchvision's per-level sizes (``int(x * 2 ** (k / 3))``), but
  torchvision rounds its cell anchors to whole pixels, and its anchor stride is ``padded
  size // grid size``: on P6 / P7 of this image's 800x1088 padded input 61x64 / 114x120
  pixels (rows x columns), where segtron's is 64 / 128. Only box positions move; the work is
  the same.
- torchvision clips boxes to the image before NMS, segtron after.
segtron runs three ways: by default (Detectron2's exact operations), with MODEL.CHANNELS_LAST
(NHWC convolutions, frozen BN folded), and with that plus MODEL.WINOGRAD_CONV (NNPACK Winograd
/ GEMM convolutions in the FPN and head). Targets: segtron's default at most torchvision's
time, the two fast modes at most 0.7 of it.
Reports the median of several interleaved runs and segtron's time as a ratio of torchvision's.

Run from the repository root::

    python benchmarks/retinanet_inference.py [--threads 2] [--repeats 7]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peer_timing import machine_line, ratio_table, time_interleaved  # noqa: E402
from benchmarks.torchvision_peer import (  # noqa: E402
    build_retinanet_pair,
    random_image_inputs,
    segtron_candidates,
)

TARGET_RATIO = 0.7  # MODEL.CHANNELS_LAST and + MODEL.WINOGRAD_CONV; the default's is 1.0
HEIGHT, WIDTH = 800, 1067


def main(argv=None):
    """Parse ``argv`` (--threads, --repeats), time both models and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tv_input, st_input = random_image_inputs(HEIGHT, WIDTH)
    torchvision_model, segtron_model = build_retinanet_pair(frozen_bn=True)
    torchvision_model.eval()
    segtron_model.eval()

    counts = {}

    def run_torchvision():
        with torch.inference_mode():
            out = torchvision_model(tv_input)[0]
        counts["torchvision"] = len(out["boxes"])

    def run_segtron(name):
        with torch.inference_mode():
            out = segtron_model(st_input)[0]["instances"]
        counts[name] = len(out)

    times = time_interleaved(
        {"torchvision": run_torchvision, **segtron_candidates(segtron_model, run_segtron)},
        repeats=args.repeats,
    )
    print(f"RetinaNet R50-FPN inference, {HEIGHT}x{WIDTH}, batch 1 ({machine_line()})")
    print(f"detections: {counts}")
    print(ratio_table(times, reference="torchvision", target=TARGET_RATIO))
    print("(0.7 for MODEL.CHANNELS_LAST and + MODEL.WINOGRAD_CONV; segtron's default: <= 1.0)")


if __name__ == "__main__":
    main()
