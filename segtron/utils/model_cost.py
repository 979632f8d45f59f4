"""What a trained run costs at inference: parameters, GFLOPs and CPU time per image.

A training run's OUTPUT_DIR holds its full config (``config.yaml``) and checkpoints
(``model_final.pth``, ``model_0004999.pth``, ...). The functions here rebuild the run's model
on the CPU from them (``load_run_config``, ``load_run_model``), take test images at the size the
run is tested at (``test_images``) and measure:

* ``count_parameters``: the number of parameters;
* ``gflops``: fvcore's count for one inference, in GFLOPs (one fused multiply-add = one flop);
* ``flop_count_analysis`` / ``activation_count_analysis``: fvcore's per-module and
  per-operator analyses of one inference, of the whole model or of one of its submodules
  (``tools/analyze_model.py`` prints them);
* ``measure_ms_per_image``: CPU latency per image at batch 1, several models measured
  interleaved so that a slower or busier moment of the machine falls on all of them alike.

``measure_runs`` does all of it for several runs; ``tools/compare_runs.py --cost`` prints it.

Example::

    cfg = load_run_config("output/shapes_retinanet")
    model = load_run_model("output/shapes_retinanet", cfg)
    images = test_images(cfg, 5)
    print(count_parameters(model), gflops(model, images[:1]))
    print(measure_ms_per_image({"retinanet": model}, {"retinanet": images}, repeats=3))
"""

import glob
import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence

import torch
from torch import nn

from segtron.config import CfgNode
from segtron.utils.analysis import output_tensors

__all__ = [
    "RunCost",
    "load_run_config",
    "find_run_checkpoint",
    "load_run_model",
    "count_parameters",
    "find_submodule",
    "flop_count_analysis",
    "activation_count_analysis",
    "gflops",
    "test_images",
    "measure_ms_per_image",
    "measure_runs",
]

logger = logging.getLogger(__name__)

FINAL_CHECKPOINT = "model_final.pth"


@dataclass
class RunCost:
    """The inference cost of one run: ``params`` (count), ``gflops`` (GFLOPs per image, mean
    over the measured images) and ``ms_per_image`` (median CPU milliseconds per image)."""

    params: int
    gflops: float
    ms_per_image: float


def load_run_config(output_dir: str) -> CfgNode:
    """The config a training run was run with, ready to rebuild its model.

    The defaults, every project's ``add_config`` (the projects under ``projects/`` imported as
    ``train_net.py`` does, so their keys exist), then ``<output_dir>/config.yaml``.

    Args:
        output_dir: the run's OUTPUT_DIR.

    Returns:
        The config (not frozen).

    Raises:
        ValueError: when ``<output_dir>/config.yaml`` does not exist.
    """
    path = os.path.join(os.fspath(output_dir), "config.yaml")
    if not os.path.isfile(path):
        raise ValueError(
            f"No config at {path}. Pass a training OUTPUT_DIR: train_net.py writes its full "
            "config.yaml there at start-up (copy the run's config file there as config.yaml "
            "if it was removed)."
        )
    from segtron.engine.projects import get_cfg_with_projects

    cfg = get_cfg_with_projects()
    cfg.merge_from_file(path)
    return cfg


def find_run_checkpoint(output_dir: str) -> str:
    """The checkpoint of a run to measure: ``model_final.pth``, else the one the
    ``last_checkpoint`` file names, else the newest (by modification time) ``model_*.pth``.

    Raises:
        FileNotFoundError: when ``output_dir`` has none of them.
    """
    output_dir = os.fspath(output_dir)
    final = os.path.join(output_dir, FINAL_CHECKPOINT)
    if os.path.isfile(final):
        return final
    tag = os.path.join(output_dir, "last_checkpoint")
    if os.path.isfile(tag):
        with open(tag, "r", encoding="utf-8") as f:
            tagged = os.path.join(output_dir, f.read().strip())
        if os.path.isfile(tagged):
            return tagged
    candidates = glob.glob(os.path.join(glob.escape(output_dir), "model_*.pth"))
    if not candidates:
        raise FileNotFoundError(
            f"No checkpoint in {output_dir}: neither {FINAL_CHECKPOINT} nor any model_*.pth. "
            "Pass the OUTPUT_DIR of a run that saved one (train_net.py saves every "
            "SOLVER.CHECKPOINT_PERIOD iterations and at the end)."
        )
    return max(candidates, key=lambda p: (os.path.getmtime(p), p))


def load_run_model(output_dir: str, cfg: CfgNode) -> nn.Module:
    """The trained model of a run, on the CPU and in eval mode.

    Args:
        output_dir: the run's OUTPUT_DIR (see ``find_run_checkpoint`` for the file loaded).
        cfg: its config (``load_run_config``); a copy with ``MODEL.DEVICE`` "cpu" is used.

    Raises:
        FileNotFoundError: when the run has no checkpoint.
    """
    from segtron.checkpoint import DetectionCheckpointer
    from segtron.modeling import build_model

    checkpoint = find_run_checkpoint(output_dir)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    DetectionCheckpointer(model, save_to_disk=False).load(checkpoint, checkpointables=[])
    logger.info("Loaded %s", checkpoint)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """The number of parameters (elements) of ``model``; shared ones count once, buffers
    (BatchNorm statistics, ...) not at all."""
    return sum(p.numel() for p in model.parameters())


class _ImageToTensors(nn.Module):
    """``model([inputs])`` as a function of the image tensor alone, returning tensors: what
    fvcore's tracer needs. The other entries of ``inputs`` (height, width) stay fixed."""

    def __init__(self, model: nn.Module, inputs: Mapping[str, Any]):
        super().__init__()
        self.model = model
        self.inputs = dict(inputs)

    def forward(self, image: torch.Tensor):
        return tuple(output_tensors(self.model([{**self.inputs, "image": image}])))


class _TensorsOut(nn.Module):
    """``module(*args)`` with its output flattened to a tuple of tensors (a backbone returns a
    dict of feature maps), for fvcore's tracer."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: torch.Tensor):
        return tuple(output_tensors(self.module(*args)))


class _StopForward(Exception):
    """Raised by the hook of ``_submodule_args`` once it has the arguments it waits for."""


def find_submodule(model: nn.Module, name: str) -> nn.Module:
    """``model``'s submodule at dotted path ``name`` (e.g. "backbone.bottom_up").

    Raises:
        KeyError: naming ``name`` and the model's children, when there is no such submodule.
    """
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children())
        raise KeyError(
            f"The model ({type(model).__name__}) has no submodule '{name}'. Give a dotted path "
            f"under one of its children: {children}."
        ) from None


def _submodule_args(model: nn.Module, name: str, inputs: Mapping[str, Any]) -> tuple:
    """The positional arguments the submodule ``name`` is first called with when ``model``
    runs on ``[inputs]`` (the run stops there). They must all be tensors (fvcore traces a
    function of tensors): e.g. the backbone's normalized, padded image batch.

    Raises:
        ValueError: when the submodule is not called, or is called with other arguments.
    """
    captured = {}

    def grab(module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        raise _StopForward

    handle = find_submodule(model, name).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model([dict(inputs)])
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "args" not in captured:
        raise ValueError(f"Submodule '{name}' was not called during inference; analyze the "
                         "whole model or a submodule that inference runs.")
    args, kwargs = captured["args"], captured["kwargs"]
    if kwargs or not args or not all(isinstance(a, torch.Tensor) for a in args):
        kinds = [type(a).__name__ for a in args] + [f"{k}=" for k in kwargs]
        raise ValueError(
            f"Submodule '{name}' is called with ({', '.join(kinds)}), not tensors only, so "
            "fvcore cannot trace it alone. Analyze its parent, or a submodule taking tensors "
            "(e.g. 'backbone', 'roi_heads.box_head')."
        )
    return args


def _analysis(analysis_class, model: nn.Module, inputs: Mapping[str, Any], module: str):
    """Run fvcore's ``analysis_class`` on one inference under ``torch.no_grad`` (the op
    sequence of inference) and return it with its statistics computed."""
    model.eval()
    if module:
        args = _submodule_args(model, module, inputs)
        analysis = analysis_class(_TensorsOut(find_submodule(model, module)), args)
    else:
        analysis = analysis_class(_ImageToTensors(model, inputs), (inputs["image"],))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        analysis.total()  # traces now, without autograd; later queries reuse the statistics
    skipped = analysis.unsupported_ops()
    if skipped:
        logger.debug("fvcore skipped ops it cannot count: %s", dict(skipped))
    return analysis


def flop_count_analysis(model: nn.Module, inputs: Mapping[str, Any], module: str = ""):
    """fvcore's ``FlopCountAnalysis`` of one inference of ``model`` on one image.

    fvcore's default op handles (one fused multiply-add is one flop; a BatchNorm in inference
    mode 2 per element; nearest upsampling 1 per output element; element-wise and
    unsupported ops such as NMS 0). Detectron2's ``tools/analyze_model.py`` also marks
    batch_norm and a few element-wise ops as ignored; with fvcore 0.1.5 that only silences
    their warnings (an op that already has a handle keeps it), so its totals are the same.

    Args:
        model: a model taking a list of input dicts; put in eval mode.
        inputs: one input dict (``{"image": CHW tensor, "height", "width", ...}``).
        module: a dotted submodule path (e.g. "backbone") to count only that submodule, on
            the arguments inference gives it (which must be tensors); "" for the whole model.

    Returns:
        The analysis, already computed: ``total()``, ``by_operator()``, ``by_module()``, and
        ``fvcore.nn.flop_count_table(analysis)``. Module names are those of a wrapper:
        ``module.<name in the submodule>`` with ``module``, else ``model.<name in model>``.

    Raises:
        KeyError: no such submodule. ValueError: it is not called with tensors only.
    """
    from fvcore.nn import FlopCountAnalysis

    return _analysis(FlopCountAnalysis, model, inputs, module)


def activation_count_analysis(model: nn.Module, inputs: Mapping[str, Any], module: str = ""):
    """fvcore's ``ActivationCountAnalysis`` (elements output by convolutions and matrix
    products) of one inference; arguments, return value and errors as
    ``flop_count_analysis``."""
    from fvcore.nn import ActivationCountAnalysis

    return _analysis(ActivationCountAnalysis, model, inputs, module)


def _gflops_of_one(model: nn.Module, inputs: Mapping[str, Any]) -> float:
    return flop_count_analysis(model, inputs).total() / 1e9


def gflops(model: nn.Module, inputs: Sequence[Mapping[str, Any]]) -> float:
    """GFLOPs of one inference of ``model`` on one image, as fvcore's ``FlopCountAnalysis``
    counts them: one fused multiply-add is one flop; ops fvcore has no formula for (NMS,
    element-wise activations, ...) count zero, silently.

    Args:
        model: a model taking a list of input dicts (``{"image": CHW tensor, "height", ...}``);
            put in eval mode.
        inputs: one or more input dicts, each counted as a batch of one.

    Returns:
        The mean over ``inputs``, in GFLOPs (1e9 flops). A detector's count can vary with the
        image size and with the number of detections its later stages see.

    Raises:
        ValueError: when ``inputs`` is empty.
    """
    if not inputs:
        raise ValueError("gflops: no inputs; pass at least one model input dict.")
    model.eval()
    return statistics.fmean(_gflops_of_one(model, item) for item in inputs)


def test_images(cfg: CfgNode, n: int) -> List[Dict[str, Any]]:
    """The first ``n`` images of ``cfg.DATASETS.TEST[0]`` as model inputs, read and resized as
    at test time (``DatasetMapper(cfg, is_train=False)``: ``INPUT.MIN_SIZE_TEST`` /
    ``MAX_SIZE_TEST``).

    Returns:
        ``min(n, len(dataset))`` dicts with ``image`` (CHW uint8 tensor), ``height``,
        ``width`` and the dataset's other fields.

    Raises:
        ValueError: when the config has no test dataset or the dataset has no images.
    """
    from segtron.data import DatasetCatalog, DatasetMapper

    if not cfg.DATASETS.TEST:
        raise ValueError("The config has no DATASETS.TEST: set one to take test images from.")
    name = cfg.DATASETS.TEST[0]
    dicts = DatasetCatalog.get(name)[:n]
    if not dicts:
        raise ValueError(f"Dataset '{name}' (DATASETS.TEST[0]) has no images.")
    mapper = DatasetMapper(cfg, is_train=False)
    return [mapper(d) for d in dicts]


def _round_robin(inputs_per_model: Mapping[str, Sequence[Any]], calls_per_model: int):
    """``(name, input)`` pairs: ``calls_per_model`` calls of each model on its inputs in order
    (cycling), alternating between the models call by call."""
    for index in range(calls_per_model):
        for name, inputs in inputs_per_model.items():
            yield name, inputs[index % len(inputs)]


def measure_ms_per_image(models: Mapping[str, nn.Module],
                         inputs_per_model: Mapping[str, Sequence[Mapping[str, Any]]],
                         repeats: int = 3, warmup: int = 2) -> Dict[str, float]:
    """CPU latency of models, in milliseconds per image at batch 1.

    Each call is ``model([one input dict])`` under ``torch.no_grad``. The models are measured
    interleaved: first ``warmup`` untimed calls per model, then ``repeats`` rounds in which
    every model runs each of its images once; within a round, the models take turns image by
    image (model A's image 0, model B's image 0, A's image 1, ...; a model with fewer images
    sits out the later turns). The number of torch threads is left as the caller set it.

    Args:
        models: name -> model (in eval mode, on the CPU).
        inputs_per_model: name -> that model's input dicts (at least one per model).
        repeats: timed rounds (>= 1).
        warmup: untimed calls per model before timing (its images in order, cycling).

    Returns:
        name -> median over all timed calls (``repeats`` x its images) of the milliseconds
        per call.

    Raises:
        ValueError: when the names of ``models`` and ``inputs_per_model`` differ, a model has
            no inputs, or ``repeats`` < 1.
    """
    if set(models) != set(inputs_per_model):
        raise ValueError(f"measure_ms_per_image: models {sorted(models)} and inputs "
                         f"{sorted(inputs_per_model)} must have the same names.")
    empty = [name for name in models if not inputs_per_model[name]]
    if empty:
        raise ValueError(f"measure_ms_per_image: no inputs for {', '.join(empty)}.")
    if repeats < 1:
        raise ValueError(f"measure_ms_per_image: repeats must be >= 1, got {repeats}.")
    inputs_per_model = {name: inputs_per_model[name] for name in models}
    longest = max(len(inputs) for inputs in inputs_per_model.values())
    times: Dict[str, List[float]] = {name: [] for name in models}
    with torch.no_grad():
        for name, item in _round_robin(inputs_per_model, warmup):
            models[name]([item])
        for _ in range(repeats):
            for index in range(longest):
                for name, inputs in inputs_per_model.items():
                    if index >= len(inputs):
                        continue
                    start = time.perf_counter()
                    models[name]([inputs[index]])
                    times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in times.items()}


def measure_runs(output_dirs: Sequence[str], num_images: int = 20, repeats: int = 3,
                 warmup: int = 2, flop_images: int = 5) -> List[RunCost]:
    """The inference cost of each run (``load_run_config``, ``load_run_model``): its parameter
    count, GFLOPs (``gflops``, mean over the first ``min(flop_images, num_images)`` of its test
    images: tracing a detector for fvcore takes seconds per image) and CPU milliseconds per
    image (``measure_ms_per_image`` over its first ``num_images`` test images, all runs
    interleaved; threads as the caller set them).

    Returns:
        One ``RunCost`` per run, in the order of ``output_dirs``.

    Raises:
        ValueError: when a run has no config.yaml or its test dataset no images.
        FileNotFoundError: when a run has no checkpoint.
    """
    keys = [str(i) for i in range(len(output_dirs))]  # the same directory may come twice
    models, inputs, flops = {}, {}, {}
    for key, output_dir in zip(keys, output_dirs):
        cfg = load_run_config(output_dir)
        models[key] = load_run_model(output_dir, cfg)
        inputs[key] = test_images(cfg, num_images)
        flops[key] = gflops(models[key], inputs[key][:max(1, flop_images)])
        logger.info("%s: %d test images of %s", output_dir, len(inputs[key]),
                    cfg.DATASETS.TEST[0])
    ms = measure_ms_per_image(models, inputs, repeats=repeats, warmup=warmup)
    return [RunCost(count_parameters(models[k]), flops[k], ms[k]) for k in keys]
