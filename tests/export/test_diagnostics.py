"""Export failures name the module (its path in the model) and the op, with a fix hint,
instead of surfacing a bare tracer / exporter traceback."""

import io

import pytest
import torch
from torch import nn

from segtron.export.diagnostics import ExportFailure, export_diagnostics, resolve_scope
from segtron.export.onnx_export import export_onnx
from segtron.utils.testing import (
    register_custom_op_onnx_export,
    unregister_custom_op_onnx_export,
)

from .ts_models import images, tiny_model


class CumMax(nn.Module):
    """Uses aten::cummax, which the TorchScript-based ONNX exporter has no symbolic for."""

    def forward(self, x):
        return torch.cummax(x, dim=-1).values


class Head(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), inner)

    def forward(self, x):
        return self.body(x + 1)


class Net(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.stem = nn.Identity()
        self.head = Head(inner)

    def forward(self, x):
        return self.head(self.stem(x))


def _export(model, x, opset=16):
    with export_diagnostics(model, opset_version=opset):
        torch.onnx.export(model, (x,), io.BytesIO(), dynamo=False, opset_version=opset)


def test_unsupported_aten_op_names_module_op_and_fix():
    model = Net(CumMax())
    with pytest.raises(ExportFailure) as info:
        _export(model, torch.rand(2, 5))
    failure = info.value
    assert failure.module_path == "head.body.1"
    assert failure.module_type == "CumMax"
    assert failure.op == "aten::cummax"
    assert failure.source is not None and failure.source.startswith(__file__)
    message = str(failure)
    assert "'head.body.1' (CumMax)" in message and "'aten::cummax'" in message
    assert "converting the traced graph to ONNX" in message
    assert "register_custom_op_onnx_export('aten::cummax'" in message
    # The exporter's own error stays attached.
    assert isinstance(failure.__cause__, torch.onnx.errors.UnsupportedOperatorError)


def _cummax_symbolic(g, x, dim):
    # Enough for the test: the running maximum as a (wrong but exportable) identity plus
    # indices, i.e. two outputs of the right types.
    return g.op("Identity", x), g.op("Cast", x, to_i=7)


def test_registered_symbolic_makes_the_op_exportable_until_unregistered():
    model = Net(CumMax())
    x = torch.rand(2, 5)
    # min_version far in the future: registers (a backport for "older" torch versions).
    register_custom_op_onnx_export("::cummax", _cummax_symbolic, 16, "999.0")
    try:
        _export(model, x)
    finally:
        unregister_custom_op_onnx_export("::cummax", 16, "999.0")
    with pytest.raises(ExportFailure, match="aten::cummax"):
        _export(model, x)


def test_register_is_a_no_op_when_torch_is_new_enough():
    register_custom_op_onnx_export("::cummax", _cummax_symbolic, 16, "1.0")
    with pytest.raises(ExportFailure, match="aten::cummax"):
        _export(Net(CumMax()), torch.rand(2, 5))
    unregister_custom_op_onnx_export("::cummax", 16, "1.0")  # nothing to undo: no error


@torch.library.custom_op("segtron_export_test::double", mutates_args=())
def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


class CustomOp(nn.Module):
    """Calls a custom (torch.library) op that has no ONNX symbolic."""

    def forward(self, x):
        return _double(x)


def test_custom_op_without_symbolic_is_named():
    with pytest.raises(ExportFailure) as info:
        _export(Net(CustomOp()), torch.rand(2, 5))
    assert info.value.module_path == "head.body.1"
    assert info.value.op == "segtron_export_test::double"
    assert "register_custom_op_onnx_export('segtron_export_test::double'" in info.value.hint


class BadReshape(nn.Module):
    def forward(self, x):
        return x.reshape(7, 3)


def test_failure_while_tracing_names_the_innermost_running_module():
    model = Net(BadReshape())
    with pytest.raises(ExportFailure) as info:
        with export_diagnostics(model, export_format="TorchScript (tracing)"):
            torch.jit.trace(model, (torch.rand(2, 5),))
    failure = info.value
    assert failure.module_path == "head.body.1" and failure.module_type == "BadReshape"
    assert "TorchScript (tracing) export failed while tracing the model" in str(failure)
    assert "--export-method scripting" in failure.hint
    # The hooks are gone afterwards: the model runs (and fails) as before, untouched.
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    with pytest.raises(RuntimeError, match="shape"):
        model(torch.rand(2, 5))


def test_successful_export_leaves_no_trace_of_the_diagnostics():
    from torch.onnx._internal.torchscript_exporter import utils as exporter_utils

    original = exporter_utils._run_symbolic_function
    model = Net(nn.Identity())
    _export(model, torch.rand(2, 5))
    assert exporter_utils._run_symbolic_function is original
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_resolve_scope_follows_paths_from_root_or_parent():
    model = Net(CumMax())
    prefix = f"{__name__}.Net::/"
    # The tracer names a module by its path from the root ...
    scope = prefix + f"{__name__}.Head::head/torch.nn.modules.container.Sequential::head.body"
    assert resolve_scope(model, scope) is model.head.body
    # ... or by its name under the module above it.
    scope = prefix + f"{__name__}.Head::head/torch.nn.modules.container.Sequential::body"
    assert resolve_scope(model, scope) is model.head.body
    assert resolve_scope(model, prefix) is model
    assert resolve_scope(model, "") is None
    assert resolve_scope(model, prefix + "x.Missing::nowhere") is None


def test_detector_with_unexportable_mask_layer_names_its_path():
    # The acceptance example: a Mask R-CNN whose first mask-head conv calls an op ONNX lacks.
    model = tiny_model("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    conv = model.roi_heads.mask_head.mask_fcn1

    class ConvThenCumMax(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return torch.cummax(self.conv(x), dim=-1).values

    model.roi_heads.mask_head.mask_fcn1 = ConvThenCumMax()
    with pytest.raises(ExportFailure) as info:
        export_onnx(model, images()[0], io.BytesIO())
    assert info.value.module_path == "roi_heads.mask_head.mask_fcn1"
    assert info.value.op == "aten::cummax"
    assert "module 'roi_heads.mask_head.mask_fcn1' (ConvThenCumMax)" in str(info.value)
