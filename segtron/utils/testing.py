"""Helpers for writing tests, with the names and signatures of ``detectron2.utils.testing``.

Differences from Detectron2, all forced by segtron running without network or COCO:

* ``get_sample_coco_image`` does not read COCO's ``000000000009.jpg``; it draws one fixed
  image of segtron's synthetic shapes dataset (same size, 480x640, BGR uint8, same return
  types), identical on every call and machine. Tests that need its content to be a real photo
  (e.g. "a person is detected") do not carry over; tests of shapes, dtypes, tracing and
  export do.
* ``get_model_no_weights`` takes YAML model-zoo configs only (no LazyConfig ``.py``).
* ``has_dynamic_axes`` checks that every axis is symbolic; Detectron2's version also accepts
  static axes (it only rejects numeric ``dim_param`` strings).
* ``register_custom_op_onnx_export`` logs its success instead of printing it.
"""

import functools
import io
import logging
import os
import re
import unittest
from typing import Any, Callable, Optional

import numpy as np
import torch

__all__ = [
    "get_model_no_weights",
    "random_boxes",
    "get_sample_coco_image",
    "convert_scripted_instances",
    "assert_instances_allclose",
    "reload_script_model",
    "reload_lazy_config",
    "min_torch_version",
    "has_dynamic_axes",
    "skipIfOnCPUCI",
    "skipIfUnsupportedMinOpsetVersion",
    "skipIfUnsupportedMinTorchVersion",
    "register_custom_op_onnx_export",
    "unregister_custom_op_onnx_export",
]

logger = logging.getLogger(__name__)

# The sample image: COCO's 000000000009.jpg is 480x640; ours is drawn at the same size.
_SAMPLE_HEIGHT, _SAMPLE_WIDTH = 480, 640
_SAMPLE_SEED = 5  # a seed whose image has 7 shapes of all 5 classes


def get_model_no_weights(config_path: str) -> torch.nn.Module:
    """Build the model of a model-zoo config without loading any weights (not even ImageNet).

    Args:
        config_path: a YAML config path relative to ``configs/`` (as for
            ``segtron.model_zoo.get_config``).

    Returns:
        The randomly initialised model, on CUDA when available (as its config says), else on
        the CPU.
    """
    from segtron import model_zoo
    from segtron.modeling import build_model

    cfg = model_zoo.get_config(config_path)
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return build_model(cfg)


def random_boxes(num_boxes: int, max_coord: float = 100, device: Any = "cpu") -> torch.Tensor:
    """Random valid XYXY boxes: ``(num_boxes, 4)`` float32 on ``device``, every coordinate in
    ``[1, max_coord)``, with ``x1 >= x0`` and ``y1 >= y0`` (width and height at least 1)."""
    if num_boxes < 0:
        raise ValueError(f"random_boxes: num_boxes must be >= 0, got {num_boxes}.")
    if max_coord <= 2:
        raise ValueError(
            f"random_boxes: max_coord must be > 2 (boxes are at least 1 pixel from 0 and 1 "
            f"pixel wide), got {max_coord}."
        )
    # Top-left corner and size, each in [1, max_coord / 2): the far corner stays < max_coord.
    corner_and_size = (torch.rand(num_boxes, 4, device=device) * (max_coord / 2)).clamp_(min=1.0)
    top_left, size = corner_and_size[:, :2], corner_and_size[:, 2:]
    return torch.cat([top_left, top_left + size], dim=1)


@functools.lru_cache(maxsize=1)
def _sample_image_bgr() -> np.ndarray:
    """Draw the sample image once: a shapes-dataset image (1-8 shapes on a textured background),
    HWC uint8 BGR, a pure function of ``_SAMPLE_SEED``."""
    from segtron.data.datasets import shapes_drawing as drawing

    rng = drawing._image_rng(_SAMPLE_SEED, "sample_image", 0)
    image_size = int(round((_SAMPLE_HEIGHT * _SAMPLE_WIDTH) ** 0.5))
    shapes = drawing._place_shapes(rng, _SAMPLE_HEIGHT, _SAMPLE_WIDTH, image_size)
    image = drawing._render(rng, shapes, _SAMPLE_HEIGHT, _SAMPLE_WIDTH)
    image.setflags(write=False)
    return image


def get_sample_coco_image(tensor: bool = True):
    """A fixed sample image in BGR, 480x640, uint8: a synthetic shapes image standing in for
    the COCO image Detectron2 reads (see the module docstring).

    Args:
        tensor: True for a ``(3, H, W)`` torch tensor, False for an ``(H, W, 3)`` numpy array.

    Returns:
        A new array / tensor on every call (writable; changing it does not change later calls).
    """
    image = _sample_image_bgr()
    if tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return image.copy()


def convert_scripted_instances(instances: Any):
    """Copy ``instances`` into a regular ``segtron.structures.Instances``.

    Takes an ``Instances``, or a scripted / exported instances object in Detectron2's layout
    (``image_size`` plus ``_field_names``, each field stored in attribute ``_<name>``, None when
    unset). Returns a new ``Instances`` with the same image size and the set fields.
    """
    from segtron.structures import Instances

    if not hasattr(instances, "image_size"):
        raise ValueError(
            f"Expected an Instances-like object with an image_size, got {type(instances)}."
        )
    result = Instances(instances.image_size)
    if hasattr(instances, "get_fields"):
        for name, value in instances.get_fields().items():
            result.set(name, value)
        return result
    names = getattr(instances, "_field_names", None)
    if names is None:
        raise ValueError(
            f"{type(instances).__name__} has neither get_fields() nor _field_names; pass an "
            "Instances or a scripted instances object."
        )
    for name in names:
        value = getattr(instances, "_" + name, None)
        if value is not None:
            result.set(name, value)
    return result


def _fail(message: str) -> None:
    """Raise AssertionError (an explicit raise, so it also works under ``python -O``)."""
    raise AssertionError(message)


def _assert_field_close(name: str, val1: Any, val2: Any, rtol: float, msg: str) -> None:
    """Compare one Instances field the way ``assert_instances_allclose`` documents."""
    from segtron.structures import Boxes, ROIMasks

    if isinstance(val1, (Boxes, ROIMasks)):
        # Box coordinates are O(100) pixels: an absolute tolerance of 100 * rtol.
        val1, val2, atol = val1.tensor, val2.tensor, 100 * rtol
    elif isinstance(val1, torch.Tensor) and val1.dtype.is_floating_point:
        atol = float(val1.abs().max()) * rtol if val1.numel() else 0.0
    elif isinstance(val1, torch.Tensor):
        atol = None  # integer / bool tensors must be equal
    else:
        raise ValueError(
            f"assert_instances_allclose: don't know how to compare field '{name}' of type "
            f"{type(val1).__name__}; compare it yourself or remove it first."
        )
    if not isinstance(val2, torch.Tensor) or val1.shape != val2.shape:
        _fail(msg + f"Field {name} has shape {tuple(val1.shape)} vs "
              f"{tuple(getattr(val2, 'shape', ()))}!")
    same = torch.equal(val1, val2) if atol is None else torch.allclose(val1, val2, atol=atol)
    if not same:
        _fail(msg + f"Field {name} differs{'' if atol is None else ' too much'}!")


def assert_instances_allclose(input, other, *, rtol: float = 1e-5, msg: str = "",
                              size_as_tensor: bool = False) -> None:
    """Assert two ``Instances`` (or scripted instances) are equal up to tolerance.

    Args:
        input, other: the two instances.
        rtol: floating-point fields may differ by ``rtol`` times the largest magnitude of the
            field in ``input``; boxes (``Boxes``, ``ROIMasks``) by ``100 * rtol`` absolute.
            Integer and bool fields must be equal.
        msg: prefix of the failure message.
        size_as_tensor: compare ``image_size`` as tensors (tracing makes them tensors).

    Raises:
        AssertionError: naming the first difference (size, field names, or a field).
        ValueError: a field of a type it cannot compare.
    """
    from segtron.structures import Instances

    if not isinstance(input, Instances):
        input = convert_scripted_instances(input)
    if not isinstance(other, Instances):
        other = convert_scripted_instances(other)
    msg = (msg.rstrip() + " ") if msg else "Two Instances are different! "
    size1, size2 = input.image_size, other.image_size
    if size_as_tensor:
        same_size = torch.equal(torch.as_tensor(size1), torch.as_tensor(size2))
    else:
        same_size = tuple(size1) == tuple(size2)
    if not same_size:
        _fail(msg + f"image_size is {size1} vs. {size2}!")
    fields1, fields2 = sorted(input.get_fields()), sorted(other.get_fields())
    if fields1 != fields2:
        _fail(msg + f"Fields are {fields1} vs {fields2}!")
    for name in fields1:
        _assert_field_close(name, input.get(name), other.get(name), rtol, msg)


def reload_script_model(module: torch.jit.ScriptModule) -> torch.jit.ScriptModule:
    """Save a TorchScript module to memory and load it back (checks it serializes); returns
    the loaded module."""
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    buffer.seek(0)
    return torch.jit.load(buffer)


def reload_lazy_config(cfg: Any) -> Any:
    """Save ``cfg`` with ``LazyConfig.save`` and load it back (checks it survives the trip)."""
    import tempfile

    from segtron.config import LazyConfig

    with tempfile.TemporaryDirectory(prefix="segtron") as d:
        path = os.path.join(d, "lazy_config.yaml")
        LazyConfig.save(cfg, path)
        return LazyConfig.load(path)


def _release(version: str) -> tuple:
    """The release numbers of a version string: "2.14.1+cu130" -> (2, 14, 1)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(version))
    if match is None:
        raise ValueError(f"Cannot parse version {version!r}; use a form like '2.1' or '1.13.1'.")
    return tuple(int(part) for part in match.group(1).split("."))


def min_torch_version(min_version: str) -> bool:
    """True when the installed torch is at least ``min_version`` (e.g. ``"1.13"``), comparing
    release numbers only (a local suffix such as ``+cu130`` or a pre-release tag is ignored)."""

    def padded(numbers: tuple, length: int) -> tuple:
        return numbers + (0,) * (length - len(numbers))

    installed, wanted = _release(torch.__version__), _release(min_version)
    length = max(len(installed), len(wanted))
    return padded(installed, length) >= padded(wanted, length)


def _all_axes_symbolic(values: Any) -> bool:
    """True when every axis of every value info has a symbolic name and no fixed size."""
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            param = getattr(dim, "dim_param", "")
            if not param or param.isnumeric() or getattr(dim, "dim_value", 0):
                return False
    return True


def has_dynamic_axes(onnx_model: Any) -> bool:
    """True when every axis of every graph input and output of ``onnx_model`` (an
    ``onnx.ModelProto``) is dynamic, i.e. has a symbolic ``dim_param`` and no ``dim_value``."""
    graph = onnx_model.graph
    return _all_axes_symbolic(graph.input) and _all_axes_symbolic(graph.output)


skipIfOnCPUCI = unittest.skipIf(
    bool(os.environ.get("CI")) and not torch.cuda.is_available(),
    "The test is too slow on CPUs and runs on the GPU jobs of the CI.",
)
"""Skip a test on a CI machine (``$CI`` set) without CUDA."""


def skipIfUnsupportedMinOpsetVersion(min_opset_version: int,
                                     current_opset_version: Optional[int] = None) -> Callable:
    """Decorator for ``unittest.TestCase`` methods: skip when the ONNX opset in use (the test
    case's ``opset_version`` attribute, else ``current_opset_version``) is below
    ``min_opset_version``. Returns the decorator."""

    def decorator(test_method: Callable) -> Callable:
        @functools.wraps(test_method)
        def wrapper(self):
            opset = getattr(self, "opset_version", current_opset_version)
            if opset is None:
                raise ValueError(
                    f"{test_method.__name__}: no ONNX opset to compare with {min_opset_version}; "
                    "set `opset_version` on the test case or pass current_opset_version."
                )
            if opset < min_opset_version:
                raise unittest.SkipTest(
                    f"Unsupported opset_version {opset}, required is {min_opset_version}"
                )
            return test_method(self)

        return wrapper

    return decorator


def skipIfUnsupportedMinTorchVersion(min_version: str) -> Callable:
    """Decorator skipping a test when torch is older than ``min_version``; returns it."""
    reason = f"torch is {torch.__version__}, the test needs at least {min_version}"
    return unittest.skipIf(not min_torch_version(min_version), reason)


def register_custom_op_onnx_export(opname: str, symbolic_fn: Callable, opset_version: int,
                                   min_version: str) -> None:
    """Register ``symbolic_fn`` as the ONNX symbolic of ``opname`` at ``opset_version``, for
    the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``).

    As in Detectron2 this backfills a symbolic that newer torch releases have: it registers
    only when the installed torch is older than ``min_version`` and does nothing otherwise.
    Undo it with :func:`unregister_custom_op_onnx_export` (same arguments but the function)
    when the caller is done: the registration is global.

    Args:
        opname: ``"<domain>::<op>"``, e.g. ``"aten::cummax"`` or ``"::cummax"`` (aten).
        symbolic_fn: ``fn(g, *inputs, **attrs)`` building the ONNX nodes with ``g.op(...)``.
        opset_version: the opset the symbolic is for.
        min_version: the first torch version that no longer needs it, e.g. ``"1.13"``.
    """
    if min_torch_version(min_version):
        return
    from torch.onnx import register_custom_op_symbolic

    register_custom_op_symbolic(opname, symbolic_fn, opset_version)
    logger.info("register_custom_op_onnx_export(%s, %s) succeeded.", opname, opset_version)


def unregister_custom_op_onnx_export(opname: str, opset_version: int, min_version: str) -> None:
    """Undo :func:`register_custom_op_onnx_export` (a no-op when torch is at least
    ``min_version``, where nothing was registered)."""
    if min_torch_version(min_version):
        return
    from torch.onnx import unregister_custom_op_symbolic

    unregister_custom_op_symbolic(opname, opset_version)
