"""scripting_with_instances (typed Instances stand-in) and dump_torchscript_IR."""

from typing import List

import pytest
import torch
from torch import nn

from segtron.export import dump_torchscript_IR, scripting_with_instances
from segtron.export.scripting import patch_instances
from segtron.structures import Boxes, Instances

from .ts_models import ROTATED_RCNN_OPTS, tiny_model


class _ScoreHead(nn.Module):
    """Writes per-image scores into Instances (reads their length, sets a field)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, instances: List[Instances]) -> List[Instances]:
        scores = self.fc(x).softmax(-1)[:, 0]
        start = 0
        for inst in instances:
            count = len(inst)
            inst.scores = scores[start:start + count]
            start += count
        return instances


def test_module_using_instances_scripts_and_matches_eager():
    torch.manual_seed(0)
    head = _ScoreHead().eval()
    fields = {"proposal_boxes": torch.Tensor, "scores": torch.Tensor}
    scripted = scripting_with_instances(head, fields)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert "ScriptedInstances" in scripted.code
    with patch_instances(fields) as typed:
        pass
    boxes = [torch.rand(3, 4), torch.rand(2, 4)]
    x = torch.rand(5, 4)
    inputs = [typed.from_instances(Instances((8, 9), proposal_boxes=b)) for b in boxes]
    with torch.no_grad():
        out = scripted(x, inputs)
        expected = head(x, [Instances((8, 9), proposal_boxes=b) for b in boxes])
    assert [len(o) for o in out] == [3, 2]
    for got, want in zip(out, expected):
        torch.testing.assert_close(got.scores, want.scores)
        assert got.has("scores") and not got.has("pred_classes")
    # The real class is back after scripting.
    assert isinstance(expected[0], Instances)


def test_real_box_predictor_scripts_and_matches_eager():
    model = tiny_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    predictor = model.roi_heads.box_predictor
    scripted = scripting_with_instances(predictor, {"proposal_boxes": torch.Tensor})
    x = torch.rand(6, predictor.cls_score.in_features)
    with torch.no_grad():
        for got, want in zip(scripted(x), predictor(x)):
            torch.testing.assert_close(got, want)


def test_unscriptable_code_names_the_module_and_construct():
    # Rotated proposals (RRPN) are not scriptable (the keypoint and mask heads now are).
    model = tiny_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", *ROTATED_RCNN_OPTS)
    expected = r"(?s)cannot compile RRPN.*rpn.py.*HERE"
    with pytest.raises(RuntimeError, match=expected):
        scripting_with_instances(model.proposal_generator, {
            "proposal_boxes": Boxes, "objectness_logits": torch.Tensor,
        })


def test_unscriptable_field_type_is_reported():
    class NotScriptable:
        def __init__(self, *args, **kwargs):
            pass

    with pytest.raises(RuntimeError, match="Field types must be torch.Tensor"):
        scripting_with_instances(_ScoreHead(), {"thing": NotScriptable})
    with pytest.raises(ValueError, match="at least one field"):
        scripting_with_instances(_ScoreHead(), {})


def test_dump_torchscript_ir_writes_nonempty_files(tmp_path):
    head = torch.jit.script(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    paths = dump_torchscript_IR(head, str(tmp_path / "dump"))
    assert sorted(paths) == ["model.txt", "model_ts_IR.txt", "model_ts_IR_inlined.txt",
                             "model_ts_code.txt"]
    texts = {name: open(path).read() for name, path in paths.items()}
    assert all(texts.values())
    assert "Code for root model" in texts["model_ts_code.txt"]
    assert "aten::linear" in texts["model_ts_IR_inlined.txt"]
    assert "Code for 0" in texts["model_ts_code.txt"]  # submodules too
    with pytest.raises(ValueError, match="scripted or traced"):
        dump_torchscript_IR(nn.Linear(2, 2), str(tmp_path / "x"))
