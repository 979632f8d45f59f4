#!/usr/bin/env python
"""Count a model's FLOPs, activations and parameters, or print its structure: Detectron2's
``tools/analyze_model.py``, plus ``--input-size``, ``--module`` and the ``ops`` task.

``--tasks`` (one or more of flop, activation, parameter, structure, ops) on the model that
``--config-file`` and the ``KEY VALUE`` overrides describe, built as ``train_net.py`` builds
it (every project under ``projects/`` loaded). FLOPs, activations and ops depend on the input:
they are counted on the first ``-n`` images of ``DATASETS.TEST[0]`` (read and resized as at
test time) and averaged, or with ``--input-size H W`` on one random image of that size (fed to
the model as is: no resizing, only the model's own normalization and padding). For those
tasks ``MODEL.WEIGHTS`` is loaded when set, as in Detectron2 (pass ``MODEL.WEIGHTS ""`` to
count with random weights: the backbone's count does not depend on them, the heads' can).
``--module backbone`` restricts every task to one submodule, fed what inference gives it.

Counting is fvcore's (``segtron.utils.model_cost.flop_count_analysis``): one fused
multiply-add is one flop, an inference BatchNorm 2 per element, element-wise ops and NMS 0;
with ``MODEL.CHANNELS_LAST`` and ``MODEL.WINOGRAD_CONV`` off, as they only change the ops run.

``--tasks ops`` (segtron addition) runs inference on the same inputs under
``segtron.utils.op_audit.OpAudit`` and prints, per stage (the model's children and
grandchildren, e.g. ``backbone.bottom_up``, ``roi_heads.box_pooler``, in forward order; the
model's own pre- and post-processing as ``(model)``), the aten ops dispatched, the kernels
(those ops that are not views or allocations) and the host syncs. On a GPU each op costs the
CPU a trip through the dispatcher, each kernel at least one launch, and each sync
(``.item()``, ``nonzero``, boolean-mask indexing, NMS, device->host copies, ...) leaves the
GPU idle until the CPU has launched what follows: at batch 1 these numbers bound the speed.
They are counted on any device, the CPU included, so GPU-path work can be measured without a
GPU. The table is that of the first input; the mean totals over all inputs follow. With
``--module`` the whole model still runs and only that submodule's stages are shown. Ops are
counted with the config's ``MODEL.CHANNELS_LAST`` / ``MODEL.WINOGRAD_CONV`` (they change the
ops run), unless flop or activation is asked for in the same run.

Examples::

    python tools/analyze_model.py --tasks parameter \\
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml
    python tools/analyze_model.py --tasks flop --module backbone --input-size 800 1088 \\
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \\
        MODEL.WEIGHTS "" MODEL.DEVICE cpu
    python tools/analyze_model.py --tasks flop activation -n 10 \\
        --config-file configs/Shapes/retinanet_R_18_FPN.yaml MODEL.WEIGHTS out/model_final.pth
    python tools/analyze_model.py --tasks ops --input-size 800 1088 \\
        --config-file configs/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \\
        MODEL.WEIGHTS "" MODEL.DEVICE cpu
"""

import logging
import os
import sys
from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable as `python tools/analyze_model.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

import train_net  # noqa: E402  (imports projects/: their components and config keys)
from segtron.checkpoint import DetectionCheckpointer  # noqa: E402
from segtron.engine.defaults import default_argument_parser  # noqa: E402
from segtron.modeling import build_model  # noqa: E402
from segtron.utils import model_cost  # noqa: E402
from segtron.utils.logger import setup_logger  # noqa: E402

logger = logging.getLogger("segtron.tools.analyze_model")

TASKS = ("flop", "activation", "parameter", "structure", "ops")


def parse_args(argv: Optional[List[str]] = None):
    """The command line: ``train_net.py``'s flags plus ``--tasks``, ``-n``, ``--input-size``
    and ``--module``."""
    parser = default_argument_parser(epilog=__doc__.split("Examples::", 1)[1])
    parser.add_argument("--tasks", choices=TASKS, required=True, nargs="+",
                        help="what to report (one or more)")
    parser.add_argument("-n", "--num-inputs", default=100, type=int,
                        help="number of test images FLOPs, activations and ops are averaged "
                             "over (they depend on the input)")
    parser.add_argument("--input-size", nargs=2, type=int, metavar=("H", "W"), default=None,
                        help="count FLOPs, activations and ops on one random HxW image "
                             "instead of test images (segtron addition)")
    parser.add_argument("--module", default="",
                        help="analyze only this submodule (dotted path, e.g. 'backbone'), fed "
                             "what inference gives it (segtron addition)")
    return parser.parse_args(_tasks_first(sys.argv[1:] if argv is None else list(argv)))


def _tasks_first(argv: List[str]) -> List[str]:
    """``argv`` with ``--tasks`` and the task names after it moved to the front.

    ``--tasks`` takes one or more values, so argparse would also hand it the trailing
    ``KEY VALUE`` overrides of ``--tasks flop MODEL.WEIGHTS x`` (and fail on "MODEL.WEIGHTS").
    The task list ends at the first word after it that is not a task name; the rest stays in
    order.
    """
    for start, word in enumerate(argv):
        if word == "--tasks" or word.startswith("--tasks="):
            end = start + 1
            if word == "--tasks":
                if end < len(argv) and not argv[end].startswith("-"):
                    end += 1  # the first value, even a wrong one: argparse names it
                while end < len(argv) and argv[end] in TASKS:
                    end += 1
            return argv[start:end] + argv[:start] + argv[end:]
    return argv


def setup(args):
    """The frozen config, built as train_net.py builds it, with data read in this process and,
    when FLOPs or activations are counted, segtron's execution-only options off
    (``MODEL.CHANNELS_LAST``, ``MODEL.WINOGRAD_CONV``): they change which ops run (a norm
    folded into its conv, Winograd transforms), not the model, so counts stay those of
    Detectron2's op sequence. The ``ops`` task alone counts the ops the config runs."""
    cfg = train_net.build_config(args)
    cfg.DATALOADER.NUM_WORKERS = 0
    keep_options = not set(args.tasks) & {"flop", "activation"}
    for key in () if keep_options else ("CHANNELS_LAST", "WINOGRAD_CONV"):
        if cfg.MODEL.get(key):
            logger.info("Counting with MODEL.%s False (it changes the ops run, not the model).",
                        key)
            cfg.MODEL[key] = False
    cfg.freeze()
    return cfg


def random_input(height: int, width: int, seed: int = 0) -> Dict[str, Any]:
    """A model input dict holding a random uint8 image (3, height, width), seeded."""
    if height <= 0 or width <= 0:
        raise ValueError(f"--input-size must be two positive numbers H W, got {height} {width}.")
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), generator=generator, dtype=torch.uint8)
    return {"image": image, "height": height, "width": width}


def model_inputs(cfg, args) -> List[Dict[str, Any]]:
    """One random image of ``--input-size``, else the first ``-n`` test images."""
    if args.input_size:
        return [random_input(*args.input_size)]
    if args.num_inputs < 1:
        raise ValueError(f"-n/--num-inputs must be >= 1, got {args.num_inputs}.")
    return model_cost.test_images(cfg, args.num_inputs)


def _count_over_inputs(kind: str, model, inputs, module: str) -> Dict[str, Any]:
    """Run the fvcore analysis ``kind`` ("flop" or "activation") on every input; return
    the first analysis, the totals and the per-operator sums."""
    analyze = (model_cost.flop_count_analysis if kind == "flop"
               else model_cost.activation_count_analysis)
    first, totals, by_operator = None, [], Counter()
    for index, item in enumerate(inputs):
        analysis = analyze(model, item, module)
        if first is None:
            first = analysis
        totals.append(analysis.total())
        by_operator.update(analysis.by_operator())
        logger.info("%s count %d/%d: %.4g", kind, index + 1, len(inputs), totals[-1])
    return {"first": first, "totals": np.asarray(totals, dtype=np.float64),
            "by_operator": by_operator}


def do_flop(model, inputs, module: str) -> float:
    """Print the FLOP table of the first input, the mean GFLOPs per operator and the total;
    return the mean total in GFLOPs."""
    from fvcore.nn import flop_count_table

    counts = _count_over_inputs("flop", model, inputs, module)
    n = len(inputs)
    print("Flops table computed from only one input sample:\n"
          + flop_count_table(counts["first"]))
    print("Average GFlops for each type of operators:\n"
          + str([(op, v / n / 1e9) for op, v in counts["by_operator"].items()]))
    totals = counts["totals"] / 1e9
    print(f"Total GFlops: {totals.mean():.2f}±{totals.std():.2f}")
    return float(totals.mean())


def do_activation(model, inputs, module: str) -> float:
    """Print the mean activations per operator and the total, in millions; return the mean
    total in millions."""
    counts = _count_over_inputs("activation", model, inputs, module)
    n = len(inputs)
    print("(Million) Activations for Each Type of Operators:\n"
          + str([(op, v / n / 1e6) for op, v in counts["by_operator"].items()]))
    totals = counts["totals"] / 1e6
    print(f"Total (Million) Activations: {totals.mean():.2f}±{totals.std():.2f}")
    return float(totals.mean())


def do_ops(model, inputs, module: str) -> Dict[str, Any]:
    """Run inference on every input under ``OpAudit`` (stages: the children and grandchildren
    of the model, or of ``module`` with only its rows shown); print the table of the first
    input and the mean ops and host syncs per input. Return ``{"ops", "syncs"}`` (means) and
    ``"first"``: the first input's ``OpAudit.as_dict()``."""
    from segtron.utils.op_audit import OpAudit, default_stages

    stages = default_stages(model, root=module)
    first, ops, syncs = None, [], []
    for index, item in enumerate(inputs):
        with OpAudit(model, stages) as audit, torch.no_grad():
            model([item])
        total = audit.total(module)
        ops.append(total.ops)
        syncs.append(total.syncs)
        if first is None:
            first = audit
        logger.info("ops count %d/%d: %d ops, %d host syncs", index + 1, len(inputs),
                    total.ops, total.syncs)
    print("Ops and host syncs per stage, computed from only one input sample:\n"
          + first.table(module))
    ops_mean, syncs_mean = float(np.mean(ops)), float(np.mean(syncs))
    print(f"Average ops: {ops_mean:.1f}±{np.std(ops):.1f}, "
          f"host syncs: {syncs_mean:.1f}±{np.std(syncs):.1f}")
    return {"ops": ops_mean, "syncs": syncs_mean, "first": first.as_dict(module)}


def do_parameter(model) -> int:
    """Print fvcore's parameter table (5 levels deep) and the exact total; return it."""
    from fvcore.nn import parameter_count_table

    total = model_cost.count_parameters(model)
    print("Parameter Count:\n" + parameter_count_table(model, max_depth=5))
    print(f"Total parameters: {total:,}")
    return total


def do_structure(model) -> str:
    """Print the module tree; return it."""
    structure = str(model)
    print("Model Structure:\n" + structure)
    return structure


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the requested tasks; return ``{task: result}`` (GFLOPs, million activations,
    parameter count, structure text, ``do_ops``'s dict)."""
    args = parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger()
    cfg = setup(args)
    model = build_model(cfg).eval()
    if set(args.tasks) & {"flop", "activation", "ops"} and cfg.MODEL.WEIGHTS:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    target = model_cost.find_submodule(model, args.module) if args.module else model
    results: Dict[str, Any] = {}
    inputs = None
    for task in args.tasks:
        if task in ("flop", "activation"):
            inputs = inputs if inputs is not None else model_inputs(cfg, args)
            count = do_flop if task == "flop" else do_activation
            results[task] = count(model, inputs, args.module)
        elif task == "ops":
            inputs = inputs if inputs is not None else model_inputs(cfg, args)
            results[task] = do_ops(model, inputs, args.module)
        elif task == "parameter":
            results[task] = do_parameter(target)
        else:
            results[task] = do_structure(target)
    return results


if __name__ == "__main__":
    main()
