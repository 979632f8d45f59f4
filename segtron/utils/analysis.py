"""Operator-level flop and activation counts of a segtron model, with Detectron2's API.

fvcore traces a function of tensors; segtron models take ``list[dict]`` and return dicts of
``Instances``. ``_ImagesToTensors`` bridges the two: the ``"image"`` tensor of each input dict
becomes a traced argument (the other entries stay fixed) and every tensor in the output
(``Instances`` fields, ``Boxes``, feature dicts) becomes part of a flat tuple.

* ``FlopCountAnalysis(model, inputs)``: fvcore's analysis (``total()``, ``by_operator()``,
  ``by_module()``) of ``model(inputs)``;
* ``flop_count_operators`` / ``activation_count_operators``: per-operator GFlops / mega
  activations of one inference;
* ``parameter_count`` / ``parameter_count_table``: fvcore's, re-exported.

Counting is fvcore's (convolutions, matrix products, norms, upsampling; one fused multiply-add
is one flop). As in Detectron2, common ops fvcore has no handle for (element-wise arithmetic,
pooling, sorting, NMS) count zero without a warning; ``flop_count_operators`` and
``activation_count_operators`` count inference (eval mode, ``torch.no_grad``) and warn about
no op.
"""

import warnings
from collections import defaultdict
from typing import Any, Dict, List, Mapping

import torch
from torch import nn

with warnings.catch_warnings():
    # fvcore.nn scripts a loss with torch.jit.script at import, which this torch deprecates.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    import fvcore.nn as _fvnn
    from fvcore.nn import parameter_count, parameter_count_table

__all__ = [
    "activation_count_operators",
    "flop_count_operators",
    "parameter_count_table",
    "parameter_count",
    "FlopCountAnalysis",
]

# Ops counted as zero without fvcore's "unsupported operator" warning (element-wise, pooling,
# sorting, indexing, NMS). An op fvcore has a handle for keeps being counted.
_QUIET_OPS = (
    "aten::add", "aten::add_", "aten::sub", "aten::rsub", "aten::mul", "aten::mul_",
    "aten::div", "aten::div_", "aten::neg", "aten::reciprocal", "aten::exp", "aten::sqrt",
    "aten::log2", "aten::sigmoid", "aten::sigmoid_", "aten::softmax", "aten::max_pool2d",
    "aten::constant_pad_nd", "aten::argmax", "aten::argsort", "aten::sort", "aten::meshgrid",
    "aten::nonzero_numpy", "aten::repeat_interleave", "torchvision::nms",
)


def output_tensors(value: Any) -> List[torch.Tensor]:
    """(segtron addition) Every tensor in a model output, in a fixed order: tensors, dicts
    (sorted keys), lists, ``Instances`` (their fields) and structures with a ``.tensor``
    (``Boxes``, masks)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for key in sorted(value, key=str) for t in output_tensors(value[key])]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in output_tensors(item)]
    if hasattr(value, "get_fields"):
        return output_tensors(value.get_fields())
    if isinstance(getattr(value, "tensor", None), torch.Tensor):
        return [value.tensor]
    return []


class _ImagesToTensors(nn.Module):
    """``model(inputs)`` as a function of the inputs' images only, returning a flat tuple of
    tensors (what fvcore's tracer needs)."""

    def __init__(self, model: nn.Module, inputs: List[Dict[str, Any]]) -> None:
        super().__init__()
        if not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError(
                f"inputs must be a non-empty list of input dicts (Detectron2's batched format), "
                f"got {type(inputs).__name__}; wrap one dict as [{{'image': ...}}]."
            )
        for i, d in enumerate(inputs):
            if not isinstance(d, Mapping) or not isinstance(d.get("image"), torch.Tensor):
                raise ValueError(
                    f"inputs[{i}] must be a dict with an 'image' tensor (CHW); got "
                    f"{type(d).__name__} with keys {sorted(d) if isinstance(d, Mapping) else '-'}."
                )
        self.model = model
        self.inputs = [dict(d) for d in inputs]
        self.images = tuple(d["image"] for d in self.inputs)

    def forward(self, *images: torch.Tensor):
        batch = [{**d, "image": image} for d, image in zip(self.inputs, images)]
        return tuple(output_tensors(self.model(batch)))


class FlopCountAnalysis(_fvnn.FlopCountAnalysis):
    """fvcore's ``FlopCountAnalysis`` of ``model(inputs)`` for a segtron model.

    Args:
        model: takes ``list[dict]`` (each with an ``"image"`` CHW tensor) and returns anything
            holding tensors (``[{"instances": Instances}]``, a loss dict, feature dicts).
        inputs: the batch to count, in Detectron2's input format.

    Use as fvcore's: ``total()``, ``by_operator()``, ``by_module()``; module names carry the
    wrapper's prefix ``model.``. Put the model in the mode you want counted first.
    """

    def __init__(self, model: nn.Module, inputs: List[Dict[str, Any]]) -> None:
        wrapper = _ImagesToTensors(model, inputs)
        super().__init__(wrapper, wrapper.images)
        self.set_op_handle(**{op: None for op in _QUIET_OPS})


def _per_operator(analysis, scale: float) -> Dict[str, float]:
    """``analysis.by_operator()`` divided by ``scale``, traced without autograd and without
    fvcore's warnings about ops it does not count."""
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        counts = analysis.by_operator()
    return defaultdict(float, {op: n / scale for op, n in counts.items()})


def flop_count_operators(model: nn.Module, inputs: List[Dict[str, Any]]) -> Dict[str, float]:
    """Count the flops of one inference of ``model`` on ``inputs``, per operator.

    Args:
        model: a segtron / Detectron2-style model (see ``FlopCountAnalysis``); it runs in eval
            mode and its training flag is restored afterwards.
        inputs: a batch, ``list[dict]`` with ``"image"`` tensors; flops of detection models
            depend on the image (number of proposals, detections), so count typical ones.

    Returns:
        ``defaultdict(float)``: operator name (e.g. "conv", "linear") -> GFlops, one fused
        multiply-add counted as one flop.
    """
    was_training = model.training
    model.eval()
    try:
        return _per_operator(FlopCountAnalysis(model, inputs), 1e9)
    finally:
        model.train(was_training)


def activation_count_operators(
    model: nn.Module, inputs: List[Dict[str, Any]], **kwargs
) -> Dict[str, float]:
    """Count the activations (elements output by convolutions and matrix products) of one
    inference of ``model`` on ``inputs``, per operator.

    Args:
        model, inputs: as for ``flop_count_operators``.
        kwargs: ``supported_ops={op name: handle}`` adds or overrides fvcore's op handles
            (as ``fvcore.nn.activation_count``); nothing else is accepted.

    Returns:
        ``defaultdict(float)``: operator name -> mega-activations (millions of elements).
    """
    unknown = sorted(set(kwargs) - {"supported_ops"})
    if unknown:
        raise ValueError(
            f"activation_count_operators: unknown arguments {unknown}; the only option is "
            "supported_ops={'aten::op': handle}."
        )
    was_training = model.training
    model.eval()
    try:
        wrapper = _ImagesToTensors(model, inputs)
        analysis = _fvnn.ActivationCountAnalysis(wrapper, wrapper.images)
        analysis.set_op_handle(**(kwargs.get("supported_ops") or {}))
        return _per_operator(analysis, 1e6)
    finally:
        model.train(was_training)
