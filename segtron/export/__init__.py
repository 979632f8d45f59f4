"""Export models to TorchScript (and ONNX): Detectron2 path ``detectron2.export``.

- :class:`TracingAdapter` flattens ``list[dict]`` inputs and ``Instances`` outputs into tuples
  of tensors so that ``torch.jit.trace`` / ``torch.onnx.export`` accept the model;
- :func:`scripting_with_instances` scripts model code that uses ``Instances``;
- :func:`dump_torchscript_IR` writes a scripted/traced module's code and graphs to text files.
"""

from .compat import STABLE_ONNX_OPSET_VERSION, add_export_config
from .flatten import TracingAdapter, flatten_to_tuple
from .torchscript import dump_torchscript_IR, scripting_with_instances

__all__ = [
    "TracingAdapter",
    "flatten_to_tuple",
    "dump_torchscript_IR",
    "scripting_with_instances",
    "add_export_config",
    "STABLE_ONNX_OPSET_VERSION",
]
