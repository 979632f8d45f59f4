"""Semantic-segmentation heads on the shapes data: size, FLOPs, training-step time and mIoU.

The numbers behind the ablation of the shapes semantic-segmentation configs, whose runs train
for the same CPU time. For each config (same half-width ResNet-18, different backbone output
and head):

- parameters, in millions, of the whole model and of ``model.sem_seg_head``;
- GFLOPs of one inference on a random 3 x S x S image, S = ``INPUT.MIN_SIZE_TEST``, whole
  model and head, counted by fvcore's ``FlopCountAnalysis``, which counts one fused
  multiply-add as one flop (half the "2 flops per MAC" convention); ops fvcore cannot count
  are skipped (logged at debug level);
- seconds (wall clock, on this CPU, with torch's default threads) per training iteration: the
  median of ``--repeats`` interleaved steps (one warm-up step each), a step being forward with
  losses on ``SOLVER.IMS_PER_BATCH`` random images of ``max(INPUT.MIN_SIZE_TRAIN)`` square
  with random labels, backward, and the config's optimizer step (``build_optimizer``: its
  optimizer and gradient clipping, as in training);
- mIoU, the last ``sem_seg/mIoU`` of a finished run (``--results LABEL=OUTPUT_DIR``), and mIoU
  per GFLOP of the whole model.

Run from the repository root::

    python benchmarks/semantic_heads.py [--repeats 5] [--results FCN=output/shapes_fcn ...]
                                        [--json heads.json]
"""

import argparse
import json
import logging
import os
import statistics
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import train_net  # noqa: E402  (loads the projects/ plug-ins: DeepLab)
from benchmarks.peer_timing import machine_line, time_interleaved  # noqa: E402
from benchmarks.torchvision_peer import random_image_inputs  # noqa: E402
from segtron.config import CfgNode  # noqa: E402
from segtron.modeling import build_model  # noqa: E402
from segtron.solver import build_optimizer  # noqa: E402
from segtron.utils.events import EventStorage  # noqa: E402
from segtron.utils.run_analysis import final_results, load_metrics  # noqa: E402

logger = logging.getLogger(__name__)

DEEPLAB_CONFIGS = "projects/DeepLab/configs/Shapes"
# Row label -> config file, relative to the repository root.
CONFIGS = {
    "FCN": "configs/Shapes/fcn_R_18_DC.yaml",
    "SemSegFPN": "configs/Shapes/semantic_R_18_FPN.yaml",
    "DeepLabV3": f"{DEEPLAB_CONFIGS}/deeplab_v3_R_18_os16.yaml",
    "DeepLabV3+": f"{DEEPLAB_CONFIGS}/deeplab_v3_plus_R_18_os16.yaml",
    "DeepLabV3+ (DS conv)": f"{DEEPLAB_CONFIGS}/deeplab_v3_plus_R_18_os16_dsconv.yaml",
}
MIOU_KEY = "sem_seg/mIoU"


def build_config_and_model(config_file: str, opts: Sequence[str] = ()) -> Tuple[CfgNode,
                                                                                  nn.Module]:
    """The config of ``config_file`` (a path) with ``opts`` (KEY VALUE overrides) as
    ``train_net.py`` builds it, and its freshly initialised model (train mode)."""
    cfg = train_net.build_config(argparse.Namespace(config_file=config_file, opts=list(opts)))
    return cfg, build_model(cfg)


def parameter_millions(module: nn.Module) -> float:
    """The number of parameters of ``module``, in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


class _SemSegLogits(nn.Module):
    """A segmentor as a tensor -> tensor function (for jit tracing): (3, H, W) image ->
    (K, H, W) ``sem_seg`` logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        return self.model([{"image": image, "height": height, "width": width}])[0]["sem_seg"]


def inference_gflops(model: nn.Module, size: int) -> Tuple[float, float]:
    """(whole model, ``sem_seg_head``) GFLOPs (fvcore: 1 multiply-add = 1 flop) of one
    inference of ``model`` on a random 3 x ``size`` x ``size`` image. Leaves ``model`` in eval
    mode."""
    from fvcore.nn import FlopCountAnalysis

    model.eval()
    image = random_image_inputs(size, size)[1][0]["image"]
    analysis = FlopCountAnalysis(_SemSegLogits(model), (image,))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        total, by_module = analysis.total(), analysis.by_module()
    skipped = analysis.unsupported_ops()  # op name -> count
    if skipped:
        logger.debug("fvcore skipped ops it cannot count: %s", dict(skipped))
    return total / 1e9, by_module["model.sem_seg_head"] / 1e9


def training_step(cfg: CfgNode, model: nn.Module, size: Optional[int] = None,
                  batch_size: Optional[int] = None, seed: int = 0) -> Callable[[], float]:
    """A zero-argument callable doing one training iteration of ``model`` (put in train mode)
    and returning its total loss: forward on ``batch_size`` (default ``SOLVER.IMS_PER_BATCH``)
    random ``size`` x ``size`` images (default ``max(INPUT.MIN_SIZE_TRAIN)``) with random
    int64 labels in [0, NUM_CLASSES), loss sum, backward, ``build_optimizer(cfg, model)``'s
    step. Inputs are drawn once, from ``seed``."""
    size = size or max(cfg.INPUT.MIN_SIZE_TRAIN)
    batch_size = batch_size or cfg.SOLVER.IMS_PER_BATCH
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(batch_size):
        item = random_image_inputs(size, size, seed=seed + i)[1][0]
        item["sem_seg"] = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (size, size),
                                        generator=generator, dtype=torch.int64)
        batch.append(item)
    optimizer = build_optimizer(cfg, model)
    model.train()

    def step() -> float:
        with EventStorage():
            losses = model(batch)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return float(total.detach())

    return step


def read_miou(output_dir: str) -> Optional[float]:
    """The last ``sem_seg/mIoU`` (percent) in ``output_dir``'s ``metrics.json`` (or a metrics
    .json path), or None when the run has not evaluated."""
    return final_results(load_metrics(output_dir)).get(MIOU_KEY)


def measure(configs: Dict[str, str], repeats: int,
            results: Optional[Dict[str, str]] = None) -> List[Dict]:
    """One row per entry of ``configs`` (label -> config file): label, config, test_size,
    train_size, train_batch (pixels, images), params_m, head_params_m, gflops, head_gflops,
    s_per_iter (median seconds of ``repeats``), miou (from ``results``, label -> OUTPUT_DIR;
    None without) and miou_per_gflop (None without mIoU)."""
    results = results or {}
    rows, steps = [], {}
    for label, config_file in configs.items():
        torch.manual_seed(0)
        cfg, model = build_config_and_model(os.path.join(REPO_ROOT, config_file))
        gflops, head_gflops = inference_gflops(model, cfg.INPUT.MIN_SIZE_TEST)
        steps[label] = training_step(cfg, model)
        miou = read_miou(results[label]) if label in results else None
        rows.append({
            "label": label, "config": config_file, "test_size": cfg.INPUT.MIN_SIZE_TEST,
            "train_size": max(cfg.INPUT.MIN_SIZE_TRAIN), "train_batch": cfg.SOLVER.IMS_PER_BATCH,
            "params_m": parameter_millions(model),
            "head_params_m": parameter_millions(model.sem_seg_head),
            "gflops": gflops, "head_gflops": head_gflops,
            "miou": miou, "miou_per_gflop": None if miou is None else miou / gflops,
        })
    times = time_interleaved(steps, repeats=repeats)
    for row in rows:
        row["s_per_iter"] = statistics.median(times[row["label"]])
    return rows


def markdown_table(rows: List[Dict]) -> str:
    """``measure``'s rows as a GitHub Markdown table ("-" where there is no mIoU)."""
    from tabulate import tabulate

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    table = [[r["label"], f"`{os.path.basename(r['config'])}`",
              f"{r['params_m']:.2f} ({r['head_params_m']:.2f})",
              f"{r['gflops']:.2f} ({r['head_gflops']:.2f})", f"{r['s_per_iter']:.3f}",
              fmt(r["miou"], ".1f"), fmt(r["miou_per_gflop"], ".1f")] for r in rows]
    return tabulate(table, headers=["head", "config", "params M (head)", "GFLOPs (head)",
                                    "s/iter", "mIoU", "mIoU/GFLOP"],
                    tablefmt="github", disable_numparse=True)


def _label_and_dir(text: str) -> Tuple[str, str]:
    label, sep, output_dir = text.partition("=")
    if not sep or label not in CONFIGS:
        raise argparse.ArgumentTypeError(
            f"expected LABEL=OUTPUT_DIR with LABEL one of {list(CONFIGS)}, got {text!r}")
    return label, output_dir


def main(argv=None):
    """Parse ``argv`` (--repeats, --results, --json), measure every config and print the
    table (and write the rows as JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", type=_label_and_dir, nargs="+", action="extend",
                        default=[], metavar="LABEL=OUTPUT_DIR",
                        help="training runs to read mIoU from")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    rows = measure(CONFIGS, args.repeats, dict(args.results))
    settings = sorted({(r["test_size"], r["train_batch"], r["train_size"]) for r in rows})
    print("Semantic heads on shapes: " + "; ".join(
        f"inference at {test} px, training batch {batch} x {train} px"
        for test, batch, train in settings) + f"; median of {args.repeats} ({machine_line()})")
    print(markdown_table(rows))
    print("GFLOPs: fvcore, one multiply-add = one flop; mIoU/GFLOP uses the whole model's.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
