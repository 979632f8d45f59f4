"""Small modules with Detectron2 parameter names, for checkpoint tests (no real backbone needed)."""

from typing import Sequence

import torch
from torch import nn

from segtron.layers import Conv2d, FrozenBatchNorm2d


def conv_norm(cin: int, cout: int, kernel: int, stride: int = 1, frozen: bool = True) -> Conv2d:
    """A bias-free conv with a ``.norm`` child, as Detectron2's ResNet builds them."""
    norm = FrozenBatchNorm2d(cout) if frozen else nn.BatchNorm2d(cout)
    return Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False, norm=norm)


class BasicBlock(nn.Module):
    """``conv1``, ``conv2`` and (when the shape changes) ``shortcut``, like Detectron2's."""

    def __init__(self, cin: int, cout: int, stride: int, frozen: bool):
        super().__init__()
        if cin != cout or stride != 1:
            self.shortcut = conv_norm(cin, cout, 1, stride, frozen)
        self.conv1 = conv_norm(cin, cout, 3, stride, frozen)
        self.conv2 = conv_norm(cout, cout, 3, 1, frozen)


class Stem(nn.Module):
    def __init__(self, cout: int, frozen: bool):
        super().__init__()
        self.conv1 = conv_norm(3, cout, 7, 2, frozen)


class TinyResNet(nn.Module):
    """``stem.conv1`` + ``res2..res5`` of BasicBlocks; resnet18's shapes with the defaults."""

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (2, 2, 2, 2),
                 stem_width: int = 64, frozen: bool = True):
        super().__init__()
        self.stem = Stem(stem_width, frozen)
        cin = stem_width
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                blocks.append(BasicBlock(cin, width, 2 if (j == 0 and i > 0) else 1, frozen))
                cin = width
            self.add_module(f"res{i + 2}", nn.Sequential(*blocks))


class TinyDetector(nn.Module):
    """``backbone.bottom_up`` (a TinyResNet), a box predictor and GeneralizedRCNN's pixel buffers."""

    def __init__(self, num_classes: int = 3, **resnet_kwargs):
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.bottom_up = TinyResNet(**resnet_kwargs)
        self.roi_heads = nn.Module()
        self.roi_heads.box_predictor = nn.Module()
        self.roi_heads.box_predictor.cls_score = nn.Linear(8, num_classes + 1)
        self.roi_heads.box_predictor.bbox_pred = nn.Linear(8, num_classes * 4)
        self.register_buffer("pixel_mean", torch.tensor([103.53, 116.28, 123.675]).view(-1, 1, 1))
        self.register_buffer("pixel_std", torch.ones(3, 1, 1))


TINY = dict(widths=(4, 8), depths=(1, 1), stem_width=4)


def randomize(model: nn.Module) -> nn.Module:
    """Fill every float parameter and buffer with random values (FrozenBN has no real init)."""
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.1)
    return model


def assert_same_weights(model: nn.Module, expected: dict) -> None:
    """Every model key equals ``expected[key]`` exactly."""
    state = model.state_dict()
    for key, value in expected.items():
        assert key in state, key
        assert torch.equal(state[key], torch.as_tensor(value)), key
