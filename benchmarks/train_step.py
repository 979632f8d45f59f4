"""Mask R-CNN R50-FPN training step: segtron vs torchvision's maskrcnn_resnet50_fpn, one process.

One step = forward with losses, backward, SGD update, on a batch of 2 images of 512x683 with 5
boxes and masks each. BatchNorm2d in both backbones, every stage trainable (torchvision's
setting without pretrained weights), and the same initial weights (torchvision's random init
copied into segtron, see ``torchvision_peer.py``). Each library keeps its own training defaults
(RPN/ROI sampling sizes). segtron runs by default, with MODEL.CHANNELS_LAST, and with that
plus MODEL.WINOGRAD_CONV. Reports the median of several interleaved steps and segtron's time as
a ratio of torchvision's.

Run from the repository root::

    python benchmarks/train_step.py [--threads 2] [--repeats 5]
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peer_timing import machine_line, ratio_table, time_interleaved  # noqa: E402
from benchmarks.torchvision_peer import NUM_CLASSES, build_pair, segtron_candidates  # noqa: E402
from segtron.structures import BitMasks, Boxes, Instances  # noqa: E402
from segtron.utils.events import EventStorage  # noqa: E402

TARGET_RATIO = 0.7
HEIGHT, WIDTH, BATCH, BOXES = 512, 683, 2, 5


def make_batch(rng):
    """Images (uint8 RGB CHW), boxes (XYXY), classes (0-based) and full-image masks."""
    batch = []
    for _ in range(BATCH):
        image = torch.from_numpy(rng.integers(0, 256, (3, HEIGHT, WIDTH), dtype=np.uint8))
        x0 = rng.uniform(0, WIDTH - 120, BOXES)
        y0 = rng.uniform(0, HEIGHT - 120, BOXES)
        w, h = rng.uniform(30, 110, BOXES), rng.uniform(30, 110, BOXES)
        boxes = torch.tensor(np.stack([x0, y0, x0 + w, y0 + h], 1), dtype=torch.float32)
        masks = torch.zeros(BOXES, HEIGHT, WIDTH, dtype=torch.bool)
        for i, (a, b, c, d) in enumerate(boxes.round().int().tolist()):
            masks[i, b:d, a:c] = True
        classes = torch.from_numpy(rng.integers(0, NUM_CLASSES, BOXES))
        batch.append((image, boxes, classes, masks))
    return batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    batch = make_batch(np.random.default_rng(0))
    tv_images = [image.float() / 255 for image, *_ in batch]
    tv_targets = [{"boxes": boxes, "labels": classes + 1, "masks": masks.to(torch.uint8)}
                  for _, boxes, classes, masks in batch]
    st_inputs = []
    for image, boxes, classes, masks in batch:
        instances = Instances((HEIGHT, WIDTH), gt_boxes=Boxes(boxes), gt_classes=classes,
                              gt_masks=BitMasks(masks))
        st_inputs.append({"image": image, "instances": instances})

    torchvision_model, segtron_model = build_pair(frozen_bn=False, min_size=HEIGHT)
    torchvision_model.train()
    segtron_model.train()
    tv_optimizer = torch.optim.SGD(torchvision_model.parameters(), lr=1e-3, momentum=0.9)
    st_optimizer = torch.optim.SGD(segtron_model.parameters(), lr=1e-3, momentum=0.9)
    losses_seen = {}

    def run_torchvision():
        losses = torchvision_model(tv_images, tv_targets)
        total = sum(losses.values())
        tv_optimizer.zero_grad()
        total.backward()
        tv_optimizer.step()
        losses_seen["torchvision"] = sorted(losses)

    def run_segtron(name):
        with EventStorage():
            losses = segtron_model(st_inputs)
        total = sum(losses.values())
        st_optimizer.zero_grad()
        total.backward()
        st_optimizer.step()
        losses_seen[name] = sorted(losses)

    times = time_interleaved(
        {"torchvision": run_torchvision, **segtron_candidates(segtron_model, run_segtron)},
        repeats=args.repeats,
    )
    print(f"Mask R-CNN R50-FPN training step, batch {BATCH} x {HEIGHT}x{WIDTH}, {BOXES} boxes "
          f"per image, BatchNorm ({machine_line()})")
    print(f"losses: {losses_seen}")
    print(ratio_table(times, reference="torchvision", target=TARGET_RATIO))


if __name__ == "__main__":
    main()
