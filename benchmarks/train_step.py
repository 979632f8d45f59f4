"""Mask R-CNN R50-FPN training step: segtron vs torchvision's maskrcnn_resnet50_fpn, one process.

One step = forward with losses, backward, SGD update, on a batch of 2 images of 512x683 with 5
boxes and masks each. BatchNorm2d in both backbones, every stage trainable (torchvision's
setting without pretrained weights), and the same initial weights (torchvision's random init
copied into segtron, see ``torchvision_peer.py``). Each library keeps its own training defaults
(RPN/ROI sampling sizes). segtron runs by default, with MODEL.CHANNELS_LAST, and with that
plus MODEL.WINOGRAD_CONV. Reports the median of several interleaved steps and segtron's time as
a ratio of torchvision's.

On a GPU (``--device cuda``) the default batch is Detectron2's per-GPU setting of its
mask_rcnn_R_50_FPN_1x training on 8 GPUs scaled to one: 8 images of 800x1067 (``--batch`` and
``--size`` change it); every step is timed between two CUDA synchronisations, ``--amp`` runs
fp16 autocast with a GradScaler (as Detectron2's AMPTrainer), and the Winograd row is left out.
``--compile`` adds two rows (NCHW and channels-last) run by a copy of the model whose backbone
is compiled with torch.compile (MODEL.COMPILE), after two untimed steps that compile it.

Run from the repository root::

    python benchmarks/train_step.py [--threads 2] [--repeats 5]
    python benchmarks/train_step.py --device cuda --amp --repeats 20
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.device_options import (  # noqa: E402
    add_device_arguments,
    autocast,
    grad_scaler,
    resolve_device,
    synchronizer,
)
from benchmarks.peer_timing import machine_line, ratio_table, time_interleaved  # noqa: E402
from benchmarks.torchvision_peer import (  # noqa: E402
    COMPILE_ROWS,
    NUM_CLASSES,
    build_pair,
    compiled_twin,
    segtron_candidates,
)
from segtron.structures import BitMasks, Boxes, Instances  # noqa: E402
from segtron.utils.events import EventStorage  # noqa: E402

TARGET_RATIO = 0.7
HEIGHT, WIDTH, BATCH, BOXES = 512, 683, 2, 5
# Detectron2's GPU setting: 16 images per iteration on 8 GPUs at 800 x ~1067 -> 8 on one GPU.
GPU_HEIGHT, GPU_WIDTH, GPU_BATCH = 800, 1067, 8


def make_batch(rng, batch_size=BATCH, height=HEIGHT, width=WIDTH):
    """Images (uint8 RGB CHW), boxes (XYXY), classes (0-based) and full-image masks."""
    batch = []
    for _ in range(batch_size):
        image = torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))
        x0 = rng.uniform(0, width - 120, BOXES)
        y0 = rng.uniform(0, height - 120, BOXES)
        w, h = rng.uniform(30, 110, BOXES), rng.uniform(30, 110, BOXES)
        boxes = torch.tensor(np.stack([x0, y0, x0 + w, y0 + h], 1), dtype=torch.float32)
        masks = torch.zeros(BOXES, height, width, dtype=torch.bool)
        for i, (a, b, c, d) in enumerate(boxes.round().int().tolist()):
            masks[i, b:d, a:c] = True
        classes = torch.from_numpy(rng.integers(0, NUM_CLASSES, BOXES))
        batch.append((image, boxes, classes, masks))
    return batch


def step_settings(args, device: torch.device):
    """(images per step, height, width): ``--batch`` / ``--size`` when given, else 2 x 512x683
    on the CPU and Detectron2's per-GPU 8 x 800x1067 on CUDA."""
    on_gpu = device.type == "cuda"
    batch_size = args.batch or (GPU_BATCH if on_gpu else BATCH)
    height, width = args.size or ((GPU_HEIGHT, GPU_WIDTH) if on_gpu else (HEIGHT, WIDTH))
    return batch_size, height, width


def main(argv=None):
    """Parse ``argv`` (the module docstring lists the flags), time training steps of segtron
    and torchvision on the same batch and print the table of medians and ratios; returns None."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None,
                        help=f"images per step (default {BATCH} on CPU, {GPU_BATCH} on CUDA)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help=f"image size (default {HEIGHT}x{WIDTH} on CPU, "
                             f"{GPU_HEIGHT}x{GPU_WIDTH} on CUDA)")
    parser.add_argument("--compile", action="store_true",
                        help="add rows whose backbone is compiled with torch.compile "
                             "(MODEL.COMPILE; compiling costs the first steps)")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args)
    torch.set_num_threads(args.threads)
    batch_size, height, width = step_settings(args, device)

    batch = make_batch(np.random.default_rng(0), batch_size, height, width)
    tv_images = [(image.float() / 255).to(device) for image, *_ in batch]
    tv_targets = [{"boxes": boxes.to(device), "labels": (classes + 1).to(device),
                   "masks": masks.to(torch.uint8).to(device)}
                  for _, boxes, classes, masks in batch]
    st_inputs = []
    for image, boxes, classes, masks in batch:
        instances = Instances((height, width), gt_boxes=Boxes(boxes), gt_classes=classes,
                              gt_masks=BitMasks(masks))
        st_inputs.append({"image": image.to(device), "instances": instances.to(device)})

    torchvision_model, segtron_model = build_pair(frozen_bn=False, min_size=min(height, width),
                                                  max_size=max(height, width, 1333))
    torchvision_model.to(device).train()
    segtron_model.to(device).train()
    tv_optimizer = torch.optim.SGD(torchvision_model.parameters(), lr=1e-3, momentum=0.9)
    st_optimizer = torch.optim.SGD(segtron_model.parameters(), lr=1e-3, momentum=0.9)
    scalers = {}  # one GradScaler per row (--amp), made on its first step
    losses_seen = {}

    def step(name, optimizer, compute_losses):
        """Forward (autocast when --amp), backward (scaled when --amp), SGD update."""
        with autocast(device, args.amp):
            losses = compute_losses()
        total = sum(losses.values())
        optimizer.zero_grad()
        if name not in scalers:
            scalers[name] = grad_scaler(device, args.amp)
        scaler = scalers[name]
        if scaler is None:
            total.backward()
            optimizer.step()
        else:
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
        losses_seen[name] = sorted(losses)

    def run_torchvision():
        step("torchvision", tv_optimizer, lambda: torchvision_model(tv_images, tv_targets))

    def run_segtron(name):
        def compute_losses():
            with EventStorage():
                return segtron_model(st_inputs)
        step(name, st_optimizer, compute_losses)

    candidates = {"torchvision": run_torchvision,
                  **segtron_candidates(segtron_model, run_segtron, device)}
    if args.compile:
        twin = compiled_twin(segtron_model)
        twin_optimizer = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9)

        def compiled_row(name, channels_last):
            def run():
                twin.channels_last = channels_last

                def compute_losses():
                    with EventStorage():
                        return twin(st_inputs)
                step(name, twin_optimizer, compute_losses)
            return run

        candidates.update({name: compiled_row(name, cl) for name, cl in COMPILE_ROWS.items()})
    times = time_interleaved(
        candidates, repeats=args.repeats, warmup=2 if args.compile else 1,
        synchronize=synchronizer(device),
    )
    precision = "fp16 autocast + GradScaler" if args.amp else "float32"
    print(f"Mask R-CNN R50-FPN training step, batch {batch_size} x {height}x{width}, {BOXES} "
          f"boxes per image, BatchNorm, {precision} ({machine_line(device)})")
    print(f"losses: {losses_seen}")
    print(ratio_table(times, reference="torchvision", target=TARGET_RATIO))


if __name__ == "__main__":
    main()
