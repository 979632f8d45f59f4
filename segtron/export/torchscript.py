"""TorchScript helpers: scripting models that use ``Instances``, and dumping TorchScript IR.

Detectron2 path: ``detectron2.export.torchscript``.
"""

import logging
import os
from typing import Any, Dict, List

import torch
from torch import nn

from ..structures import Boxes
from .scripting import scripting_with_instances

logger = logging.getLogger(__name__)

__all__ = [
    "scripting_with_instances",
    "dump_torchscript_IR",
    "detectron2_export_fields",
    "scriptable_adapter",
    "RCNNScriptableAdapter",
    "DenseScriptableAdapter",
]


def _script_module(module: nn.Module):
    """The ``torch._C.ScriptModule`` behind a scripted/traced module (None for plain ones)."""
    return getattr(module, "_c", None) if isinstance(module, torch.jit.ScriptModule) else None


def _code_of(module: nn.Module) -> str:
    """TorchScript code of ``module``'s own methods ("" when it has no compiled forward)."""
    try:
        return module.code
    except (AttributeError, RuntimeError):
        return ""


def _write_code(out, prefix: str, module: nn.Module) -> None:
    code = _code_of(module)
    if code:
        name = prefix or "root model"
        kind = getattr(module, "original_name", type(module).__name__)
        out.write(f"Code for {name}, type={kind}:\n{code}\n{'-' * 80}\n")
    for child_name, child in module.named_children():
        _write_code(out, f"{prefix}.{child_name}" if prefix else child_name, child)


def _write_ir(out, prefix: str, module: nn.Module) -> None:
    c_module = _script_module(module)
    if c_module is not None:
        name = prefix or "root model"
        ir = c_module.dump_to_str(True, False, False)
        out.write(f"IR for {name}:\n{ir}\n{'-' * 80}\n")
    for child_name, child in module.named_children():
        _write_ir(out, f"{prefix}.{child_name}" if prefix else child_name, child)


def dump_torchscript_IR(model: nn.Module, dir: str) -> Dict[str, str]:
    """Write text views of a scripted or traced module, for debugging an export.

    Args:
        model: a ``torch.jit.ScriptModule`` (from ``torch.jit.script`` / ``torch.jit.trace``).
        dir: output folder (created if missing).

    Writes (Detectron2's file names):
        ``model_ts_code.txt``: the TorchScript code of the model and each submodule;
        ``model_ts_IR.txt``: the IR (graphs with submodule calls) of the model and submodules;
        ``model_ts_IR_inlined.txt``: the forward graph with every call inlined;
        ``model.txt``: ``str(model)``.

    Returns:
        file name -> path of each file written.
    """
    if not isinstance(model, torch.jit.ScriptModule):
        raise ValueError(
            f"dump_torchscript_IR needs a scripted or traced module, got "
            f"{type(model).__name__}; pass the result of torch.jit.script / torch.jit.trace "
            "(e.g. of a TracingAdapter)."
        )
    os.makedirs(dir, exist_ok=True)
    paths = {
        name: os.path.join(dir, name)
        for name in ("model_ts_code.txt", "model_ts_IR.txt", "model_ts_IR_inlined.txt",
                     "model.txt")
    }
    with open(paths["model_ts_code.txt"], "w") as out:
        _write_code(out, "", model)
    with open(paths["model_ts_IR.txt"], "w") as out:
        _write_ir(out, "", model)
    with open(paths["model_ts_IR_inlined.txt"], "w") as out:
        out.write(str(model.inlined_graph))
    with open(paths["model.txt"], "w") as out:
        out.write(str(model))
    logger.info("Wrote TorchScript code and IR of %s to %s", type(model).__name__, dir)
    return paths


def detectron2_export_fields() -> Dict[str, Any]:
    """The ``Instances`` fields Detectron2's ``export_model.py`` scripts R-CNNs and RetinaNet
    with: proposal_boxes / pred_boxes (Boxes) and tensors for the others."""
    return {
        "proposal_boxes": Boxes,
        "objectness_logits": torch.Tensor,
        "pred_boxes": Boxes,
        "scores": torch.Tensor,
        "pred_classes": torch.Tensor,
        "pred_masks": torch.Tensor,
        "pred_keypoints": torch.Tensor,
        "pred_keypoint_heatmaps": torch.Tensor,
    }


class _ScriptableAdapter(nn.Module):
    """Holds the model; the scripted module returns ``Instances`` as dicts of tensors (a
    TorchScript class cannot leave a saved module usable without its source)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.eval()


class RCNNScriptableAdapter(_ScriptableAdapter):
    """``forward(inputs)`` = ``model.inference(inputs, do_postprocess=False)`` as one
    ``{field: tensor}`` per image (boxes in the network input's resolution, masks as (N, 1,
    M, M) probabilities), as Detectron2's export_model.py scripts a GeneralizedRCNN."""

    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


class DenseScriptableAdapter(_ScriptableAdapter):
    """``forward(inputs)`` = ``model(inputs)`` as one ``{field: tensor}`` per image; a
    scripted dense detector (RetinaNet) returns its raw detections in the network input's
    resolution, as Detectron2's does."""

    def forward(self, inputs: List[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        instances = self.model(inputs)
        return [i.get_fields() for i in instances]


def scriptable_adapter(model: nn.Module) -> nn.Module:
    """The adapter Detectron2's export_model.py scripts for ``model``: an
    :class:`RCNNScriptableAdapter` for a GeneralizedRCNN, a :class:`DenseScriptableAdapter`
    otherwise (RetinaNet). Script it with ``scripting_with_instances(adapter,
    detectron2_export_fields())``; the scripted module takes ``[{"image": (C, H, W)}, ...]``."""
    from ..modeling import GeneralizedRCNN  # (segtron.modeling imports much; only when used)

    if isinstance(model, GeneralizedRCNN):
        return RCNNScriptableAdapter(model)
    return DenseScriptableAdapter(model)
