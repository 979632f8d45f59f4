"""Export a model to ONNX, and run an exported file (ONNX or TorchScript) like the model.

Detectron2 has no such module (its ``tools/deploy/export_model.py`` calls ``torch.onnx.export``
itself and cannot run the ONNX file); the name is segtron's.

- :func:`export_onnx` traces a model through :class:`~segtron.export.TracingAdapter` with the
  TorchScript-based ONNX exporter and writes a ``.onnx`` file whose image height and width and
  whose output sizes (number of detections) are dynamic. The structure of the outputs
  (``list[dict[str, Instances]]``) is stored in the file's metadata, so that
- :class:`ONNXRuntimeModel` can run the file in onnxruntime and rebuild the model's outputs,
  and :class:`ExportedModel` turns such a runner (or a traced TorchScript module) back into a
  model that takes ``list[dict]`` and returns results in each input's "height" x "width",
  ready for the usual evaluators.

What stays outside the exported graph (as in Detectron2's export_model.py): the R-CNNs are
exported with ``do_postprocess=False``, so masks come out as (N, 1, M, M) probabilities in
the network input's resolution; pasting them into the image and rescaling boxes to the
original image size is :func:`~segtron.modeling.postprocessing.detector_postprocess`, run in
Python by :class:`ExportedModel`.
"""

import dataclasses
import io
import json
import logging
import warnings
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import flatten as _flatten
from .compat import STABLE_ONNX_OPSET_VERSION
from .diagnostics import export_diagnostics
from .flatten import Schema, TracingAdapter

__all__ = [
    "export_inference_func",
    "export_onnx",
    "schema_to_json",
    "schema_from_json",
    "ONNXRuntimeModel",
    "ExportedModel",
    "OUTPUTS_SCHEMA_KEY",
]

logger = logging.getLogger(__name__)

# Metadata key of an exported ONNX file holding the JSON outputs schema.
OUTPUTS_SCHEMA_KEY = "segtron.outputs_schema"


def export_inference_func(model: nn.Module) -> Optional[Callable[..., Any]]:
    """The ``inference_func`` for :class:`TracingAdapter` that Detectron2's export uses.

    Models with an ``inference(batched_inputs, do_postprocess=...)`` method (the R-CNNs) run
    it with ``do_postprocess=False`` and return ``[{"instances": Instances}]`` in the network
    input's resolution (masks as (N, 1, M, M) probabilities); other models (RetinaNet, FCOS,
    SemanticSegmentor) are called directly (None).
    """
    from ..modeling.meta_arch.rcnn import GeneralizedRCNN

    if isinstance(model, GeneralizedRCNN):
        def inference(model: nn.Module, inputs: List[Dict[str, Any]]):
            instances = model.inference(inputs, do_postprocess=False)
            return [{"instances": x} for x in instances]

        return inference
    return None


def schema_to_json(schema: Schema) -> str:
    """Serialise an outputs schema of :mod:`segtron.export.flatten` to a JSON string."""

    def encode(obj: Any) -> Any:
        if isinstance(obj, Schema):
            fields = {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            return {"__schema__": type(obj).__name__, **fields}
        if isinstance(obj, (list, tuple)):
            return [encode(x) for x in obj]
        return obj

    return json.dumps(encode(schema))


def schema_from_json(text: str) -> Schema:
    """Rebuild a schema written by :func:`schema_to_json`. Raises KeyError for an unknown
    schema class (a file written by a newer segtron)."""

    def decode(obj: Any) -> Any:
        if isinstance(obj, dict) and "__schema__" in obj:
            name = obj["__schema__"]
            klass = getattr(_flatten, name, None)
            if not (isinstance(klass, type) and issubclass(klass, Schema)):
                raise KeyError(
                    f"Unknown outputs schema class '{name}' in an exported file's metadata; "
                    "it was written by another segtron version: re-export the model."
                )
            return klass(**{k: decode(v) for k, v in obj.items() if k != "__schema__"})
        if isinstance(obj, list):
            return [decode(x) for x in obj]
        return obj

    return decode(json.loads(text))


def _model_inputs(inputs: Any) -> List[Dict[str, torch.Tensor]]:
    """Keep only the "image" of each input dict (the other keys are not traced)."""
    if isinstance(inputs, torch.Tensor):
        inputs = [{"image": inputs}]
    if not isinstance(inputs, (list, tuple)) or not all(
        isinstance(x, dict) and isinstance(x.get("image"), torch.Tensor) for x in inputs
    ):
        raise ValueError(
            "export_onnx: inputs must be a (C, H, W) image tensor or a list of dicts with a "
            "tensor under 'image' (the model's usual batched inputs)."
        )
    return [{"image": x["image"]} for x in inputs]


def export_onnx(
    model: nn.Module,
    inputs: Any,
    f: Union[str, BinaryIO],
    *,
    inference_func: Union[str, None, Callable[..., Any]] = "auto",
    opset_version: int = STABLE_ONNX_OPSET_VERSION,
    dynamic_sizes: bool = True,
) -> TracingAdapter:
    """Trace ``model`` on ``inputs`` and write it to ``f`` as ONNX.

    Args:
        model: a model in eval mode (e.g. from ``build_model`` with weights loaded).
        inputs: a (C, H, W) image tensor or the model's batched inputs (only "image" is used).
        f: a path or a writable binary file.
        inference_func: see :class:`TracingAdapter`; "auto" is :func:`export_inference_func`.
        opset_version: the ONNX opset (default ``STABLE_ONNX_OPSET_VERSION``).
        dynamic_sizes: make the image height / width and all output sizes dynamic.

    Returns:
        The :class:`TracingAdapter` used; its ``outputs_schema`` rebuilds the outputs (it is
        also stored in the file's metadata under :data:`OUTPUTS_SCHEMA_KEY`).

    Raises:
        ExportFailure: naming the module and op when tracing or the ONNX conversion fails.
    """
    import onnx

    if model.training:
        raise ValueError("export_onnx: call model.eval() first (export traces inference).")
    if inference_func == "auto":
        inference_func = export_inference_func(model)
    adapter = TracingAdapter(model, _model_inputs(inputs), inference_func)
    # torch.onnx.export restores the exported module's training flag recursively afterwards:
    # an adapter left in training mode would put the whole model in training mode.
    adapter.eval()
    with torch.no_grad():
        outputs = adapter(*adapter.flattened_inputs)
    input_names = [f"image{i}" for i in range(len(adapter.flattened_inputs))]
    output_names = [f"output{i}" for i in range(len(outputs))]
    dynamic_axes = None
    if dynamic_sizes:
        dynamic_axes = {name: [1, 2] for name in input_names}
        for name, out in zip(output_names, outputs):
            dynamic_axes[name] = list(range(out.dim()))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), export_diagnostics(
        model, adapter, export_format="ONNX", opset_version=opset_version
    ):
        # The TorchScript-based exporter (dynamo=False) is deprecated in torch 2.9+, but the
        # dynamo exporter needs onnxscript (not a dependency) and torch.export cannot follow
        # the data-dependent control flow of detection models; silence only that notice.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            adapter, adapter.flattened_inputs, buffer, dynamo=False,
            opset_version=opset_version, input_names=input_names, output_names=output_names,
            dynamic_axes=dynamic_axes,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = OUTPUTS_SCHEMA_KEY, schema_to_json(adapter.outputs_schema)
    data = proto.SerializeToString()
    if isinstance(f, str):
        from ..utils.file_io import PathManager

        with PathManager.open(f, "wb") as out:
            out.write(data)
        logger.info("Wrote the ONNX model to %s (opset %d).", f, opset_version)
    else:
        f.write(data)
    return adapter


# onnxruntime's input type names -> numpy dtypes (the input types an image can have).
_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


class ONNXRuntimeModel:
    """Run an ONNX file written by :func:`export_onnx` in onnxruntime.

    ``runner(image)`` takes the exported inputs (one (C, H, W) uint8 / float tensor per
    exported image) and returns the model's outputs rebuilt from the file's outputs schema,
    e.g. ``[{"instances": Instances}]`` with tensors on the CPU.
    """

    def __init__(self, path_or_bytes: Union[str, bytes],
                 providers: Sequence[str] = ("CPUExecutionProvider",),
                 outputs_schema: Optional[Schema] = None):
        """Args:
            path_or_bytes: the .onnx file (path or its bytes).
            providers: onnxruntime execution providers.
            outputs_schema: overrides the schema stored in the file (needed for files not
                written by :func:`export_onnx`).
        """
        import onnxruntime

        self.session = onnxruntime.InferenceSession(path_or_bytes, providers=list(providers))
        meta = self.session.get_modelmeta().custom_metadata_map
        if outputs_schema is None:
            if OUTPUTS_SCHEMA_KEY not in meta:
                raise KeyError(
                    f"The ONNX file has no '{OUTPUTS_SCHEMA_KEY}' metadata (not written by "
                    "segtron.export.export_onnx); pass outputs_schema= (the TracingAdapter's "
                    "outputs_schema) to rebuild its outputs."
                )
            outputs_schema = schema_from_json(meta[OUTPUTS_SCHEMA_KEY])
        self.outputs_schema = outputs_schema
        self.input_names = [x.name for x in self.session.get_inputs()]
        # Inputs are cast to the exported dtype (a model traced on a float32 sample image
        # also runs on uint8 images from a data loader, as the eager model does).
        self.input_dtypes = [_ORT_DTYPES.get(x.type) for x in self.session.get_inputs()]

    def run_flat(self, *inputs: torch.Tensor) -> tuple:
        """Run the session on flat input tensors; returns the flat output tensors."""
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"The ONNX model takes {len(self.input_names)} inputs ({self.input_names}), "
                f"got {len(inputs)}."
            )
        feed = {}
        for name, dtype, x in zip(self.input_names, self.input_dtypes, inputs):
            array = x.detach().cpu().numpy()
            feed[name] = np.ascontiguousarray(array if dtype is None else array.astype(dtype))
        return tuple(torch.from_numpy(x) for x in self.session.run(None, feed))

    def __call__(self, *inputs: torch.Tensor) -> Any:
        """Run and rebuild the outputs with the schema."""
        return self.outputs_schema(self.run_flat(*inputs))


def _postprocess_output(output: Dict[str, Any], item: Dict[str, Any]) -> Dict[str, Any]:
    """Rescale one image's exported outputs to the input's "height" x "width"."""
    from ..modeling.postprocessing import detector_postprocess, sem_seg_postprocess

    image = item["image"]
    height = int(item.get("height", image.shape[-2]))
    width = int(item.get("width", image.shape[-1]))
    result = {}
    for key, value in output.items():
        if key in ("instances", "proposals"):
            result[key] = detector_postprocess(value, height, width)
        elif key == "sem_seg":
            # Exported at the network input's size (padding already cropped).
            size = (int(value.shape[-2]), int(value.shape[-1]))
            result[key] = sem_seg_postprocess(value, size, height, width)
        else:
            raise KeyError(
                f"ExportedModel: no postprocessing for output '{key}'; exported models "
                "support 'instances', 'proposals' and 'sem_seg'."
            )
    return result


class ExportedModel(nn.Module):
    """A model running an exported file, taking and returning what the eager model does.

    ``forward(batched_inputs)`` runs ``runner`` on each input's "image" (one at a time, as
    exported) and rescales the results to the input's "height" x "width" the way the model's
    own postprocessing does (boxes scaled and clipped, masks pasted, sem_seg resized), so the
    usual evaluators (``inference_on_dataset``) can score it.
    """

    def __init__(self, runner: Callable[..., Any],
                 outputs_schema: Optional[Schema] = None):
        """Args:
            runner: ``runner(image) -> outputs``: an :class:`ONNXRuntimeModel`, or a traced
                TorchScript module (whose flat outputs ``outputs_schema`` rebuilds).
            outputs_schema: rebuilds ``runner``'s flat outputs; None when ``runner`` already
                returns structured outputs.
        """
        super().__init__()
        self.runner = runner
        self.outputs_schema = outputs_schema

    def forward(self, batched_inputs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Run each input's image through the exported model; returns one dict per input."""
        results = []
        for item in batched_inputs:
            with torch.no_grad():
                outputs = self.runner(item["image"])
            if self.outputs_schema is not None:
                outputs = self.outputs_schema(outputs)
            if not (isinstance(outputs, list) and len(outputs) == 1):
                raise ValueError(
                    "ExportedModel: the exported model must return a list with one dict (one "
                    f"image), got {type(outputs).__name__}; export with one image."
                )
            results.append(_postprocess_output(outputs[0], item))
        return results
