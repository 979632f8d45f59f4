"""Detectron2's analysis API on a model taking list[dict] and returning Instances."""

import pytest
import torch
from torch import nn

from segtron.structures import Boxes, Instances
from segtron.utils.analysis import (
    FlopCountAnalysis,
    activation_count_operators,
    flop_count_operators,
    parameter_count,
    parameter_count_table,
)

# conv 3->4, 3x3, on an 8x8 image (padding 1): 4 * 3 * 9 multiply-adds per output pixel.
CONV_FLOPS = 4 * 3 * 9 * 8 * 8


class TinyDetector(nn.Module):
    """Conv + BatchNorm, then one box and score per image, as ``[{"instances": ...}]``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)

    def forward(self, batched_inputs):
        outputs = []
        for inputs in batched_inputs:
            features = self.norm(self.conv(inputs["image"][None].float()))
            score = features.mean()
            instances = Instances(tuple(inputs["image"].shape[-2:]))
            instances.pred_boxes = Boxes(torch.stack([score, score, score + 1, score + 1])[None])
            instances.scores = score[None]
            outputs.append({"instances": instances})
        return outputs


def _inputs(n=1):
    return [{"image": torch.rand(3, 8, 8), "height": 8, "width": 8} for _ in range(n)]


def test_flop_count_analysis_traces_list_of_dicts_and_instances(caplog):
    analysis = FlopCountAnalysis(TinyDetector().eval(), _inputs())
    by_operator = analysis.by_operator()
    assert by_operator["conv"] == CONV_FLOPS
    assert analysis.total() == CONV_FLOPS + by_operator["batch_norm"]  # fvcore counts norms
    assert analysis.by_module()["model.conv"] == CONV_FLOPS
    assert "aten::add" not in caplog.text  # element-wise ops: zero, without a warning
    batch_of_two = FlopCountAnalysis(TinyDetector().eval(), _inputs(2))
    assert batch_of_two.by_operator()["conv"] == 2 * CONV_FLOPS


def test_flop_and_activation_counts_per_operator():
    model = TinyDetector().train()
    flops = flop_count_operators(model, _inputs())
    assert flops["conv"] == pytest.approx(CONV_FLOPS / 1e9)
    assert flops["no_such_op"] == 0.0  # a defaultdict, as in Detectron2
    assert model.training  # mode restored
    activations = activation_count_operators(model, _inputs())
    assert activations["conv"] == pytest.approx(4 * 8 * 8 / 1e6)
    with pytest.raises(ValueError, match="supported_ops"):
        activation_count_operators(model, _inputs(), verbose=True)


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="list of input dicts"):
        FlopCountAnalysis(TinyDetector(), {"image": torch.rand(3, 8, 8)})
    with pytest.raises(ValueError, match=r"inputs\[0\]"):
        FlopCountAnalysis(TinyDetector(), [{"img": torch.rand(3, 8, 8)}])


def test_parameter_counts_are_fvcores():
    model = TinyDetector()
    assert parameter_count(model)[""] == 4 * 3 * 9 + 4 + 4 + 4
    assert "conv" in parameter_count_table(model)
