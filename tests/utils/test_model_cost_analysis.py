"""segtron.utils.model_cost's fvcore analyses of one inference, of a whole model or of one of
its submodules fed what inference gives it, against hand counts."""

import pytest
import torch
from fvcore.nn import flop_count_table
from torch import nn

from segtron.utils import model_cost


class _TwoStage(nn.Module):
    """List-of-dicts model: image / 2 -> conv3x3 (3 -> 4, no bias) -> linear on the mean of
    each channel (4 -> 5); ``pair`` is only called with two tensors, ``tail`` with a list."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 5, bias=False)
        self.unused = nn.Linear(2, 2)

    def forward(self, batched_inputs):
        x = torch.stack([b["image"].float() for b in batched_inputs]) / 2
        features = self.conv(x)
        return [{"logits": self.fc(features.mean(dim=(2, 3)))}]


def _input(h, w):
    return {"image": torch.ones(3, h, w), "height": h, "width": w}


def test_whole_model_and_submodule_flops_by_hand():
    model = _TwoStage()
    whole = model_cost.flop_count_analysis(model, _input(10, 6))
    conv = 4 * 3 * 9 * 10 * 6  # multiply-adds per output element x output elements
    fc = 4 * 5
    assert whole.by_operator()["conv"] == conv
    assert whole.by_operator()["linear"] == fc
    assert whole.by_module()["model.conv"] == conv  # names under the wrapper
    assert "conv.weight" in flop_count_table(whole)
    only_conv = model_cost.flop_count_analysis(model, _input(10, 6), module="conv")
    assert only_conv.total() == conv
    only_fc = model_cost.flop_count_analysis(model, _input(10, 6), module="fc")
    assert only_fc.total() == fc


def test_activation_count_by_hand():
    model = _TwoStage()
    acts = model_cost.activation_count_analysis(model, _input(10, 6))
    assert acts.total() == 4 * 10 * 6 + 5  # conv output elements + linear outputs


def test_submodule_arguments_are_the_ones_inference_gives():
    model = _TwoStage()
    seen = {}
    model.conv.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].clone()))
    model_cost.flop_count_analysis(model, {"image": torch.full((3, 4, 4), 8.0)}, module="conv")
    assert torch.equal(seen["x"], torch.full((1, 3, 4, 4), 4.0))  # halved by the model first


def test_find_submodule_and_errors():
    model = _TwoStage()
    assert model_cost.find_submodule(model, "conv") is model.conv
    with pytest.raises(KeyError, match="'conv.nope'.*conv, fc, unused"):
        model_cost.find_submodule(model, "conv.nope")
    with pytest.raises(ValueError, match="'unused' was not called"):
        model_cost.flop_count_analysis(model, _input(4, 4), module="unused")
