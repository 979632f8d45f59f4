"""Mask R-CNN R50-FPN inference: segtron vs torchvision's maskrcnn_resnet50_fpn, one process.

Same input (one 800x1067 image) and the same weights: torchvision's random init, copied into
segtron with its preprocessing and pooler settings (see ``torchvision_peer.py``), so both find
the same proposals and detections. 80 classes, FrozenBN in both backbones (what each library
uses with pretrained weights), score threshold 0 so both compute 100 detections with masks
pasted at full resolution (segtron may report 99: like Detectron2, its ``detector_postprocess``
drops boxes left with zero width or height after scaling, as one is with these weights).
segtron runs three ways: by default (Detectron2's exact operations), with MODEL.CHANNELS_LAST
(NHWC convolutions, frozen BN folded), and with that plus MODEL.WINOGRAD_CONV (NNPACK Winograd
/ GEMM convolutions in the FPN, RPN and mask head).
Reports the median of several interleaved runs and segtron's time as a ratio of torchvision's.
On a GPU (``--device cuda``, optionally ``--amp`` for fp16 autocast) every run is timed between
two CUDA synchronisations, the Winograd row is left out (CPU-only kernels), and a row replays
the backbone and RPN from CUDA graphs (TEST.CUDA_GRAPHS; its first warm-up run captures).
``--compile`` adds two rows (NCHW and channels-last) run by a copy of the model whose backbone
is compiled with torch.compile (MODEL.COMPILE), after at least two warm-up runs.

Run from the repository root::

    python benchmarks/inference.py [--threads 2] [--repeats 5]
    python benchmarks/inference.py --device cuda --amp --repeats 20
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.device_options import (  # noqa: E402
    add_device_arguments,
    autocast,
    resolve_device,
    synchronizer,
)
from benchmarks.peer_timing import machine_line, ratio_table, time_interleaved  # noqa: E402
from benchmarks.torchvision_peer import (  # noqa: E402
    COMPILE_ROWS,
    build_pair,
    compiled_twin,
    random_image_inputs,
    segtron_candidates,
)

TARGET_RATIO = 0.55
# GPU only: Detectron2's operations, the static part replayed from a CUDA graph.
CUDA_GRAPHS_ROW = "segtron + TEST.CUDA_GRAPHS"
HEIGHT, WIDTH = 800, 1067


def main(argv=None):
    """Parse ``argv`` (the module docstring lists the flags), time segtron against torchvision
    on the same weights and print the table of medians and ratios; returns None."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each row first")
    parser.add_argument("--size", type=int, nargs=2, default=(HEIGHT, WIDTH),
                        metavar=("H", "W"), help="image size (both models keep it)")
    parser.add_argument("--compile", action="store_true",
                        help="add rows whose backbone is compiled with torch.compile "
                             "(MODEL.COMPILE; compiling costs the warm-up runs)")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    height, width = args.size

    tv_input, st_input = random_image_inputs(height, width)
    tv_input = [image.to(device) for image in tv_input]
    st_input = [{**x, "image": x["image"].to(device)} for x in st_input]
    torchvision_model, segtron_model = build_pair(frozen_bn=True, min_size=min(height, width),
                                                  max_size=max(height, width, 1333))
    torchvision_model.to(device).eval()
    segtron_model.to(device).eval()

    counts = {}

    def run_torchvision():
        with torch.inference_mode(), autocast(device, args.amp):
            out = torchvision_model(tv_input)[0]
        counts["torchvision"] = (len(out["boxes"]), tuple(out["masks"].shape[-2:]))

    def run_segtron(name):
        segtron_model.cuda_graphs = name == CUDA_GRAPHS_ROW  # the other rows run eagerly
        with torch.inference_mode(), autocast(device, args.amp):
            out = segtron_model(st_input)[0]["instances"]
        counts[name] = (len(out), tuple(out.pred_masks.shape[-2:]))

    candidates = {"torchvision": run_torchvision,
                  **segtron_candidates(segtron_model, run_segtron, device)}
    if device.type == "cuda":
        def run_graphed():
            segtron_model.channels_last = segtron_model.winograd_conv = False
            return run_segtron(CUDA_GRAPHS_ROW)

        candidates[CUDA_GRAPHS_ROW] = run_graphed
    if args.compile:
        twin = compiled_twin(segtron_model)

        def compiled_row(name, channels_last):
            def run():
                twin.channels_last = channels_last
                with torch.inference_mode(), autocast(device, args.amp):
                    out = twin(st_input)[0]["instances"]
                counts[name] = (len(out), tuple(out.pred_masks.shape[-2:]))
            return run

        candidates.update({name: compiled_row(name, cl) for name, cl in COMPILE_ROWS.items()})
    # Compiling takes the first call (and a recompile for the channels-last row's strides).
    warmup = max(args.warmup, 2) if args.compile else args.warmup
    times = time_interleaved(
        candidates, repeats=args.repeats, warmup=warmup, synchronize=synchronizer(device),
    )
    precision = "fp16 autocast" if args.amp else "float32"
    print(f"Mask R-CNN R50-FPN inference, {height}x{width}, batch 1, {precision} "
          f"({machine_line(device)})")
    print(f"detections and mask size: {counts}")
    print(ratio_table(times, reference="torchvision", target=TARGET_RATIO))


if __name__ == "__main__":
    main()
