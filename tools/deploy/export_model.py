#!/usr/bin/env python
"""Export a model to TorchScript or ONNX: Detectron2's ``tools/deploy/export_model.py``.

    python tools/deploy/export_model.py --format onnx --export-method tracing \\
        --config-file configs/Shapes/mask_rcnn_R_18_FPN_demo.yaml --output out/export \\
        MODEL.WEIGHTS output/shapes_demo/model_final.pth
    python tools/deploy/export_model.py --format torchscript --export-method tracing \\
        --config-file cfg.yaml --sample-image image.png --run-eval --output out/export \\
        MODEL.WEIGHTS model.pth

The model is built as ``train_net.py`` builds it (projects loaded), loads MODEL.WEIGHTS, and is
traced on one input: ``--sample-image`` (read in INPUT.FORMAT and resized to
INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, as ``DefaultPredictor`` does), else the first image of
DATASETS.TEST[0]. ``--output`` receives ``model.ts`` (TorchScript, with its IR dumped beside
it) or ``model.onnx``.

What is inside the exported graph: preprocessing (normalisation, padding) and the network up
to the detections in the network input's resolution. What stays outside, in Python (as in
Detectron2's tool): the R-CNNs are exported with ``do_postprocess=False``, so masks are
(N, 1, M, M) probabilities; pasting them into the image and rescaling boxes / sem_seg to the
original image size is ``detector_postprocess`` / ``sem_seg_postprocess``, which ``--run-eval``
applies (``segtron.export.onnx_export.ExportedModel``). Image height and width are dynamic.

``--export-method scripting`` (``--format torchscript``; GeneralizedRCNN and RetinaNet as in
Detectron2, and FCOS) compiles the model instead of tracing it, so no sample image is read: model.ts
takes ``[{"image": (C, H, W) tensor}, ...]`` and returns one dict of tensors per image
(``pred_boxes``, ``scores``, ``pred_classes``, ``pred_masks``), the same raw detections.

``--run-eval`` evaluates the exported file on DATASETS.TEST with the evaluators train_net.py
uses and prints the same tables (ONNX in onnxruntime on the CPU; TorchScript traced only).
``--format caffe2`` / ``--export-method caffe2_tracing`` are Detectron2's Caffe2 path, which
segtron does not have.
"""

import argparse
import contextlib
import logging
import os
import sys
import warnings
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:  # runnable as `python tools/deploy/export_model.py` from anywhere
    sys.path.insert(0, REPO_ROOT)

import train_net  # noqa: E402  (imports projects/: their components and config keys)
from segtron.checkpoint import DetectionCheckpointer  # noqa: E402
from segtron.data import build_detection_test_loader  # noqa: E402
from segtron.data import transforms as T  # noqa: E402
from segtron.data.image_reading import read_image  # noqa: E402
from segtron.export import (  # noqa: E402
    TracingAdapter,
    dump_torchscript_IR,
    scripting_with_instances,
)
from segtron.export.torchscript import (  # noqa: E402
    detectron2_export_fields,
    scriptable_adapter,
)
from segtron.export.diagnostics import export_diagnostics  # noqa: E402
from segtron.export.onnx_export import (  # noqa: E402
    ExportedModel,
    ONNXRuntimeModel,
    export_inference_func,
    export_onnx,
)
from segtron.modeling import DenseDetector, GeneralizedRCNN, build_model  # noqa: E402
from segtron.utils.file_io import PathManager  # noqa: E402
from segtron.utils.logger import setup_logger  # noqa: E402

logger = logging.getLogger("segtron.tools.export_model")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Detectron2's flags: --format, --export-method, --config-file, --sample-image,
    --run-eval, --output, and trailing KEY VALUE config overrides."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--format", choices=["caffe2", "onnx", "torchscript"],
                        default="torchscript", help="output format (caffe2: not supported)")
    parser.add_argument("--export-method", choices=["caffe2_tracing", "tracing", "scripting"],
                        default="tracing",
                        help="how the model is captured (caffe2_tracing: not supported; "
                             "onnx needs tracing)")
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to config file")
    parser.add_argument("--sample-image", default=None, type=str,
                        help="image to trace on (default: the first image of DATASETS.TEST[0])")
    parser.add_argument("--run-eval", action="store_true",
                        help="evaluate the exported model on DATASETS.TEST (postprocessing "
                             "done in Python, see above)")
    parser.add_argument("--output", required=True,
                        help="output directory for the converted model")
    parser.add_argument("--show-tracer-warnings", action="store_true",
                        help="print torch's TracerWarnings one by one (by default they are "
                             "counted in one log line)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS m.pth")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Refuse what segtron cannot export, before anything is built (ValueError)."""
    if args.format == "caffe2" or args.export_method == "caffe2_tracing":
        raise ValueError(
            "--format caffe2 / --export-method caffe2_tracing: segtron has no Caffe2 export "
            "(Caffe2 is deprecated and not part of PyTorch 2); use --format torchscript or "
            "--format onnx with --export-method tracing."
        )
    if args.format == "onnx" and args.export_method != "tracing":
        raise ValueError(
            f"--format onnx needs --export-method tracing (got {args.export_method}): the "
            "ONNX exporter traces the model."
        )
    if args.run_eval and args.export_method == "scripting":
        raise ValueError(
            "--run-eval is not supported with --export-method scripting (as in Detectron2); "
            "evaluate a traced export (--export-method tracing) instead."
        )


def setup_cfg(args: argparse.Namespace):
    """The frozen config: built as train_net.py builds it, data read in this process."""
    cfg = train_net.build_config(args)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.freeze()
    return cfg


def get_sample_inputs(cfg, sample_image: Optional[str]) -> List[Dict[str, Any]]:
    """One model input: ``sample_image`` read in INPUT.FORMAT and resized as at test time
    (float32 (C, H, W) plus its original "height" / "width"), else the first input of the
    test loader of DATASETS.TEST[0]."""
    if sample_image is None:
        if not cfg.DATASETS.TEST:
            raise ValueError(
                "No --sample-image and DATASETS.TEST is empty: give an image to trace on "
                "with --sample-image, or a test dataset in the config."
            )
        loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
        return next(iter(loader))
    original = read_image(sample_image, format=cfg.INPUT.FORMAT)
    height, width = original.shape[:2]
    aug = T.ResizeShortestEdge(
        [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
    )
    image = aug.get_transform(original).apply_image(original)
    image = torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))
    return [{"image": image, "height": height, "width": width}]


@contextlib.contextmanager
def summarized_tracer_warnings(show: bool) -> Iterator[None]:
    """Collect torch's TracerWarnings raised inside (unless ``show``) and log how many there
    were in one line: tracing any detector raises dozens ("Converting a tensor to a Python
    boolean ...") for Python code that runs on the traced sizes, which says nothing about
    whether the export is right; the round-trip tests are what check that."""
    if show:
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        yield
    tracer = [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for other in caught:
        if not issubclass(other.category, torch.jit.TracerWarning):
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    if tracer:
        logger.info("torch raised %d TracerWarnings while tracing (Python code run on the traced "
                    "sizes; expected); --show-tracer-warnings prints them.", len(tracer))


def export_tracing(model, inputs: List[Dict[str, Any]], args) -> ExportedModel:
    """Trace ``model`` on ``inputs[0]["image"]`` and write model.ts / model.onnx into
    ``args.output``; returns an :class:`ExportedModel` running the written file."""
    image = inputs[0]["image"]
    if args.format == "onnx":
        path = os.path.join(args.output, "model.onnx")
        export_onnx(model, image, path)
        logger.info("Exported the ONNX model to %s", path)
        return ExportedModel(ONNXRuntimeModel(path))

    adapter = TracingAdapter(model, [{"image": image}], export_inference_func(model)).eval()
    with export_diagnostics(model, adapter, export_format="TorchScript (tracing)"):
        traced = torch.jit.trace(adapter, (image,))
    path = os.path.join(args.output, "model.ts")
    with PathManager.open(path, "wb") as f:
        torch.jit.save(traced, f)
    dump_torchscript_IR(traced, args.output)
    logger.info("Exported the TorchScript model to %s", path)
    return ExportedModel(traced, outputs_schema=adapter.outputs_schema)


def export_scripting(model, args) -> None:
    """Script ``model`` (GeneralizedRCNN; RetinaNet / FCOS) as Detectron2's tool does and write
    model.ts (with its IR dumped beside it) into ``args.output``.

    The scripted module takes ``[{"image": (C, H, W) float tensor}, ...]`` (any sizes) and
    returns one ``{field: tensor}`` per image: ``pred_boxes`` (N, 4) in the network input's
    resolution, ``scores``, ``pred_classes`` (+ ``pred_masks`` (N, 1, M, M) probabilities for
    Mask R-CNN); an R-CNN is scripted as ``inference(inputs, do_postprocess=False)``.
    Rescaling / mask pasting (``detector_postprocess``) stays in Python. Raises RuntimeError
    naming the model and what could not be scripted."""
    if not isinstance(model, (GeneralizedRCNN, DenseDetector)):
        raise RuntimeError(
            f"--export-method scripting supports GeneralizedRCNN and the dense detectors "
            f"(RetinaNet, FCOS), not {type(model).__name__}; export it with "
            "--export-method tracing."
        )
    try:
        scripted = scripting_with_instances(
            scriptable_adapter(model), detectron2_export_fields()
        )
    except Exception as error:
        raise RuntimeError(
            f"--export-method scripting: {type(model).__name__} could not be scripted: "
            f"{type(error).__name__}: {str(error).strip()}\n"
            "Export it with --export-method tracing instead."
        ) from error
    path = os.path.join(args.output, "model.ts")
    with PathManager.open(path, "wb") as f:
        torch.jit.save(scripted, f)
    dump_torchscript_IR(scripted, args.output)
    logger.info("Exported the scripted TorchScript model to %s", path)


def run_eval(cfg, exported: ExportedModel, output_dir: str) -> Dict[str, Any]:
    """Evaluate ``exported`` on DATASETS.TEST with train_net.py's evaluators (results written
    under ``output_dir/inference``); returns what ``Trainer.test`` returns."""
    evaluators = [
        train_net.Trainer.build_evaluator(cfg, name, os.path.join(output_dir, "inference"))
        for name in cfg.DATASETS.TEST
    ]
    return train_net.Trainer.test(cfg, exported, evaluators)


def main(argv: Optional[List[str]] = None) -> Optional[Dict[str, Any]]:
    """Export as the command line says; returns the evaluation results with --run-eval."""
    args = parse_args(argv)
    check_args(args)
    setup_logger()
    logger.info("Command line arguments: %s", args)
    PathManager.mkdirs(args.output)
    cfg = setup_cfg(args)

    model = build_model(cfg)
    DetectionCheckpointer(model).resume_or_load(cfg.MODEL.WEIGHTS)
    model.eval()

    if args.export_method == "scripting":
        export_scripting(model, args)
        return None
    inputs = get_sample_inputs(cfg, args.sample_image)
    with summarized_tracer_warnings(args.show_tracer_warnings):
        exported = export_tracing(model, inputs, args)
    if args.run_eval:
        return run_eval(cfg, exported, args.output)
    return None


if __name__ == "__main__":
    main()
