"""SSD300-VGG16 inference: segtron's SSD project vs torchvision's ssd300_vgg16, one process.

Same weights and same image. torchvision's ``ssd300_vgg16(weights=None, weights_backbone=None)``
(its own random init after ``torch.manual_seed(0)``, 91 outputs: 90 classes plus background)
is copied into segtron's SSD built from ``projects/SSD/configs/COCO-Detection/ssd300_vgg16.yaml``
(``MODEL.SSD.NUM_CLASSES 90``) by ``load_torchvision_ssd300_vgg16``. Before timing, both models
are run once on the benchmark image and must give the same detections (same count and
classes, boxes within 1e-2 px), so the timings compare implementations of one function.
segtron, like Detectron2, drops boxes left with zero width or height after rescaling and
torchvision keeps them (see projects/SSD/README.md); the check leaves such torchvision boxes
out before comparing (with these weights there is one, clipped to the top edge).

The image is one random 480x640 RGB image (``random_image_inputs``, seed 0), batch 1, eval
mode, under ``torch.no_grad()``. Each timed call is the model call a user of each library makes
for one image whose tensor they already have:

- torchvision: ``model([image])`` with ``image`` a float32 (3, 480, 640) tensor in 0..1.
  Inside: normalisation (its mean, std 1/255), bilinear resize to 300x300, VGG-16 + extra
  layers, head, default boxes (recomputed every call), softmax, box decoding and clipping,
  per class the 400 best candidates above 0.01, per-class NMS at 0.45, the 200 best, and the
  boxes rescaled to 480x640.
- segtron: ``model([{"image": image, "height": 480, "width": 640}])`` with ``image`` the same
  pixels as float32 in 0..255 (what ``DefaultPredictor`` passes; the config's
  ``INPUT.MIN_SIZE_TEST: 0`` means neither the data mapper nor ``DefaultPredictor`` resizes:
  the model does, as torchvision's does). Inside: the same steps in the same order
  (normalisation with MODEL.PIXEL_MEAN / STD, resize to 300x300, backbone, head, default boxes
  (cached after the first call), softmax, decoding, clipping, top 400 per class above 0.01,
  NMS 0.45, 200 best), then ``detector_postprocess`` (rescale to 480x640, clip, drop empty
  boxes).

Not timed in either: decoding a file and making the tensor (uint8 -> float, and the division
by 255 torchvision's input needs), which each user does before the call.
With random weights every class fills its 400 candidates (36,000 boxes go into NMS), the most
post-processing these settings allow; a trained model sends fewer.
``--all-modes`` adds segtron with MODEL.CHANNELS_LAST and with that plus MODEL.WINOGRAD_CONV
(the latter only changes the head's convs: the VGG backbone has no ``bottom_up``).
Reports the median of several interleaved runs (after warm-up) and segtron's time as a ratio
of torchvision's. No ``--device`` option: like the other peer benchmarks this one is CPU-only.

Run from the repository root::

    python -m benchmarks.ssd_inference [--repeats 20] [--threads 2] [--warmup 1] [--all-modes]
"""

import argparse
import os
import statistics
import sys
from typing import Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peer_timing import machine_line, ratio_table, time_interleaved  # noqa: E402
from benchmarks.torchvision_peer import random_image_inputs, segtron_candidates  # noqa: E402

__all__ = [
    "CONFIG",
    "build_ssd_pair",
    "ssd_image_inputs",
    "nonempty_detections",
    "compare_detections",
    "check_same_detections",
    "ssd_candidates",
    "medians_and_ratio",
]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "projects/SSD/configs/COCO-Detection/ssd300_vgg16.yaml")
NUM_CLASSES = 90  # torchvision's default 91 outputs count background
HEIGHT, WIDTH = 480, 640
BOX_ATOL = 1e-2  # pixels


def build_ssd_pair(num_classes: int = NUM_CLASSES, seed: int = 0):
    """torchvision's ``ssd300_vgg16(weights=None, weights_backbone=None, num_classes=
    num_classes + 1)``, its random init drawn after ``torch.manual_seed(seed)``, and segtron's
    SSD from :data:`CONFIG` (``MODEL.SSD.NUM_CLASSES num_classes``, CPU) with those weights
    loaded by ``load_torchvision_ssd300_vgg16``.

    Returns:
        (torchvision model, segtron model), both in eval mode.
    """
    from torchvision.models.detection import ssd300_vgg16

    from segtron.config import get_cfg
    from segtron.modeling import build_model
    from segtron.projects.ssd import add_ssd_config, load_torchvision_ssd300_vgg16

    torch.manual_seed(seed)
    tv_model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes + 1)
    cfg = get_cfg()
    add_ssd_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.SSD.NUM_CLASSES", str(num_classes)])
    st_model = build_model(cfg)
    load_torchvision_ssd300_vgg16(st_model, tv_model.state_dict())
    return tv_model.eval(), st_model.eval()


def ssd_image_inputs(height: int = HEIGHT, width: int = WIDTH, seed: int = 0):
    """One random RGB image (``random_image_inputs``) as each library's model call takes it.

    Returns:
        (torchvision's ``[float32 (3, H, W) in 0..1]``, segtron's ``[{"image": float32
        (3, H, W) in 0..255, "height": H, "width": W}]``): the same pixels.
    """
    tv_input, st_input = random_image_inputs(height, width, seed)
    st_input = [dict(item, image=item["image"].float()) for item in st_input]
    return tv_input, st_input


def nonempty_detections(boxes: torch.Tensor) -> torch.Tensor:
    """Which of (N, 4) XYXY ``boxes`` have positive width and height: the ones segtron's
    ``detector_postprocess`` keeps (torchvision keeps every box). Returns an (N,) bool mask."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def compare_detections(expected: Dict[str, torch.Tensor], got,
                       box_atol: float = BOX_ATOL) -> int:
    """Check that segtron's detections ``got`` (an ``Instances`` with pred_boxes and
    pred_classes) are torchvision's ``expected`` (its output dict for the same image) without
    torchvision's empty boxes (:func:`nonempty_detections`): the same count and, in order, the
    same classes (torchvision's labels count background, so label - 1) and boxes within
    ``box_atol`` pixels.

    Returns:
        the number of detections compared.
    Raises:
        AssertionError saying what differs.
    """
    keep = nonempty_detections(expected["boxes"])
    tv_boxes, tv_classes = expected["boxes"][keep], expected["labels"][keep] - 1
    assert len(got) == len(tv_boxes), (
        f"segtron gave {len(got)} detections, torchvision {len(tv_boxes)} (non-empty boxes of "
        f"{len(keep)}): the models do not compute the same function")
    assert torch.equal(got.pred_classes, tv_classes), "the detections' classes differ"
    if len(got):
        diff = (got.pred_boxes.tensor - tv_boxes).abs().max().item()
        assert diff <= box_atol, f"boxes differ by up to {diff:.4g} px (> {box_atol})"
    return len(got)


def check_same_detections(tv_model, st_model, tv_input, st_input,
                          box_atol: float = BOX_ATOL) -> int:
    """Run both models once on their inputs (``torch.no_grad``) and :func:`compare_detections`
    their outputs. Returns the number of detections compared; AssertionError if they differ."""
    with torch.no_grad():
        expected = tv_model(tv_input)[0]
        got = st_model(st_input)[0]["instances"]
    return compare_detections(expected, got, box_atol)


def ssd_candidates(tv_model, st_model, tv_input, st_input, all_modes: bool = False,
                   counts: Optional[Dict[str, int]] = None) -> Dict[str, Callable[[], None]]:
    """The timed calls: name -> zero-argument callable running one model on its input under
    ``torch.no_grad()`` (the calls of the module docstring). "torchvision" and "segtron"
    (segtron's defaults); with ``all_modes`` one segtron entry per ``SEGTRON_MODES`` instead
    (MODEL.CHANNELS_LAST, + MODEL.WINOGRAD_CONV). Each call stores its number of detections
    in ``counts[name]`` when ``counts`` is given."""
    counts = {} if counts is None else counts

    def run_torchvision():
        with torch.no_grad():
            counts["torchvision"] = len(tv_model(tv_input)[0]["boxes"])

    def run_segtron(name="segtron"):
        with torch.no_grad():
            counts[name] = len(st_model(st_input)[0]["instances"])

    if all_modes:
        return {"torchvision": run_torchvision, **segtron_candidates(st_model, run_segtron)}
    return {"torchvision": run_torchvision, "segtron": run_segtron}


def medians_and_ratio(times: Dict[str, List[float]], name: str = "segtron",
                      reference: str = "torchvision") -> Tuple[float, float, float]:
    """From ``time_interleaved``'s seconds: (``reference``'s median ms, ``name``'s median ms,
    the ratio of ``name``'s median to ``reference``'s)."""
    ref = statistics.median(times[reference])
    med = statistics.median(times[name])
    return ref * 1e3, med * 1e3, med / ref


def main(argv=None):
    """Parse ``argv`` (--threads, --repeats, --warmup, --all-modes), check that both models
    detect the same objects, time them interleaved and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each model")
    parser.add_argument("--all-modes", action="store_true",
                        help="also time segtron with MODEL.CHANNELS_LAST (+ WINOGRAD_CONV)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    tv_model, st_model = build_ssd_pair()
    tv_input, st_input = ssd_image_inputs()
    compared = check_same_detections(tv_model, st_model, tv_input, st_input)

    counts = {}
    times = time_interleaved(
        ssd_candidates(tv_model, st_model, tv_input, st_input, args.all_modes, counts),
        repeats=args.repeats, warmup=args.warmup,
    )
    tv_ms, st_ms, ratio = medians_and_ratio(times)
    print(f"SSD300-VGG16 inference, {HEIGHT}x{WIDTH} -> 300x300, batch 1 ({machine_line()})")
    print(f"same detections checked: {compared} (boxes within {BOX_ATOL} px); "
          f"detections per call: {counts}")
    print(ratio_table(times, reference="torchvision"))
    print(f"median ms/image: torchvision {tv_ms:.1f}, segtron {st_ms:.1f}; "
          f"segtron / torchvision {ratio:.3f} ({args.repeats} interleaved rounds)")


if __name__ == "__main__":
    main()
