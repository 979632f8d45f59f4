"""FPN backbones: Detectron2 state-dict parity for every model-zoo config, torchvision parity."""

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TVLastLevelMaxPool

from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling.backbone import (
    FPN,
    Backbone,
    LastLevelMaxPool,
    LastLevelP6P7,
    build_backbone,
    build_resnet_backbone,
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)

STAGES = ["res2", "res3", "res4", "res5"]


def _zoo_cfg(config_name: str):
    """The backbone settings of a Detectron2 model-zoo config (its YAML files set these)."""
    cfg = get_cfg()
    if "retinanet" in config_name:  # Base-RetinaNet.yaml
        cfg.MODEL.BACKBONE.NAME = "build_retinanet_resnet_fpn_backbone"
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    elif "_C4_" in config_name:  # Base-RCNN-C4.yaml: default ResNet, res5 is in the ROI head
        cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    elif "fpn" in config_name.lower():  # Base-RCNN-FPN.yaml (also Panoptic FPN)
        cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
        cfg.MODEL.RESNETS.OUT_FEATURES = list(STAGES)
        cfg.MODEL.FPN.IN_FEATURES = list(STAGES)
    else:
        raise AssertionError(f"no backbone settings known for {config_name}; add them here")
    return cfg


def test_state_dict_matches_detectron2_for_every_config(compat_dir):
    shapes = json.loads((compat_dir / "d2_state_dict_shapes.json").read_text())
    assert len(shapes) >= 7
    built = {}  # the same backbone settings are built once
    for config_name, expected in shapes.items():
        cfg = _zoo_cfg(config_name)
        key = (cfg.MODEL.BACKBONE.NAME, tuple(cfg.MODEL.FPN.IN_FEATURES))
        if key not in built:
            model = build_backbone(cfg)
            built[key] = {k: list(v.shape) for k, v in model.state_dict().items()}
        got = built[key]
        want = {k[len("backbone."):]: v for k, v in expected.items() if k.startswith("backbone.")}
        assert got == want, config_name
        assert list(got) == list(want), config_name  # same order, too


def _thin_cfg(**fpn):
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.WIDTH_PER_GROUP = 8, 16, 4
    r.OUT_FEATURES = list(STAGES)
    cfg.MODEL.FPN.IN_FEATURES = list(STAGES)
    cfg.MODEL.FPN.OUT_CHANNELS = 8
    for k, v in fpn.items():
        setattr(cfg.MODEL.FPN, k, v)
    return cfg


def _randomize(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)


# ---------------------------------------------------------------- torchvision parity


def test_fpn_matches_torchvision_feature_pyramid_network():
    fpn = build_resnet_fpn_backbone(_thin_cfg(), ShapeSpec(channels=3)).eval()
    _randomize(fpn)  # non-zero biases too
    channels = [fpn.bottom_up.output_shape()[f].channels for f in STAGES]
    tv = FeaturePyramidNetwork(channels, 8, extra_blocks=TVLastLevelMaxPool()).eval()
    with torch.no_grad():
        for i, level in enumerate(range(2, 6)):
            for ours, theirs in [(f"fpn_lateral{level}", tv.inner_blocks[i][0]),
                                 (f"fpn_output{level}", tv.layer_blocks[i][0])]:
                theirs.weight.copy_(getattr(fpn, ours).weight)
                theirs.bias.copy_(getattr(fpn, ours).bias)

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got = fpn(x)
        features = fpn.bottom_up(x)
        want = tv(OrderedDict((f, features[f]) for f in STAGES))
    assert list(got) == ["p2", "p3", "p4", "p5", "p6"]
    for ours, theirs in zip(got, list(want)):
        assert got[ours].shape == want[theirs].shape
        torch.testing.assert_close(got[ours], want[theirs], rtol=1e-4, atol=1e-5)
    assert got["p6"].shape == (2, 8, 1, 2)


class _Features(Backbone):
    """A fake backbone returning fixed feature maps (to test FPN on its own)."""

    def __init__(self, features, strides):
        super().__init__()
        self.features = features
        self._out_features = list(features)
        self._out_feature_channels = {k: v.shape[1] for k, v in features.items()}
        self._out_feature_strides = dict(zip(features, strides))

    def forward(self, x):
        return dict(self.features)


def _two_level_features():
    return _Features({"c3": torch.randn(1, 6, 8, 8), "c4": torch.randn(1, 10, 4, 4)}, [8, 16])


@pytest.mark.parametrize("fuse_type", ["sum", "avg"])
def test_top_down_merge(fuse_type):
    fpn = FPN(_two_level_features(), ["c3", "c4"], out_channels=4, fuse_type=fuse_type)
    _randomize(fpn)
    c3, c4 = fpn.bottom_up.features["c3"], fpn.bottom_up.features["c4"]
    with torch.no_grad():
        out = fpn(None)
        top = fpn.fpn_lateral4(c4)
        merged = fpn.fpn_lateral3(c3) + F.interpolate(top, scale_factor=2.0, mode="nearest")
        if fuse_type == "avg":
            merged = merged / 2
        torch.testing.assert_close(out["p4"], fpn.fpn_output4(top))
        torch.testing.assert_close(out["p3"], fpn.fpn_output3(merged))
    assert list(out) == ["p3", "p4"]
    assert fpn.size_divisibility == 16


# ---------------------------------------------------------------- structure


def test_resnet_fpn_shapes_and_padding():
    fpn = build_resnet_fpn_backbone(_thin_cfg(), ShapeSpec(channels=3))
    assert fpn.size_divisibility == 32
    assert fpn.padding_constraints == {"square_size": 0}
    assert {k: (v.channels, v.stride) for k, v in fpn.output_shape().items()} == {
        "p2": (8, 4), "p3": (8, 8), "p4": (8, 16), "p5": (8, 32), "p6": (8, 64)
    }
    out = fpn(torch.randn(1, 3, 64, 64))
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert not fpn.fpn_lateral2.bias.abs().any()  # c2_xavier_fill: zero bias
    square = FPN(fpn.bottom_up, STAGES, 8, square_pad=1024)
    assert square.padding_constraints == {"square_size": 1024}


def test_norm_removes_bias():
    fpn = build_resnet_fpn_backbone(_thin_cfg(NORM="GN", OUT_CHANNELS=32), ShapeSpec(channels=3))
    keys = set(fpn.state_dict())
    assert "fpn_lateral2.bias" not in keys and "fpn_output5.bias" not in keys
    assert {"fpn_lateral2.norm.weight", "fpn_output5.norm.bias"} <= keys
    assert isinstance(fpn.fpn_output3.norm, nn.GroupNorm)


def test_retinanet_p6p7_from_res5():
    cfg = _thin_cfg(IN_FEATURES=["res3", "res4", "res5"])
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
    fpn = build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3)).eval()
    assert fpn.top_block.in_feature == "res5"
    assert fpn.top_block.p6.weight.shape == (8, 128, 3, 3)  # from res5's 128 channels
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {
        "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128
    }
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out = fpn(x)
        res5 = fpn.bottom_up(x)["res5"]
        p6 = fpn.top_block.p6(res5)
    torch.testing.assert_close(out["p6"], p6)
    torch.testing.assert_close(out["p7"], fpn.top_block.p7(F.relu(p6)))
    assert out["p7"].shape == (1, 8, 1, 1)

    cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4"]
    cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4"]
    with pytest.raises(ValueError, match="res5"):
        build_retinanet_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))


def test_p6p7_from_p5_and_maxpool_block():
    bottom_up = build_resnet_backbone(_thin_cfg(), ShapeSpec(channels=3))
    fpn = FPN(bottom_up, ["res3", "res4", "res5"], 8, top_block=LastLevelP6P7(8, 8, "p5"))
    with torch.no_grad():
        out = fpn(torch.randn(1, 3, 64, 64))
        torch.testing.assert_close(out["p6"], fpn.top_block.p6(out["p5"]))
    pool = LastLevelMaxPool()
    assert pool.num_levels == 1 and pool.in_feature == "p5"
    x = torch.randn(1, 2, 5, 7)
    torch.testing.assert_close(pool(x)[0], x[:, :, ::2, ::2])


def test_fpn_argument_errors():
    bottom_up = build_resnet_backbone(_thin_cfg(), ShapeSpec(channels=3))
    with pytest.raises(ValueError, match="twice"):
        FPN(bottom_up, ["res2", "res4"], 8)
    with pytest.raises(ValueError, match="res6"):
        FPN(bottom_up, ["res5", "res6"], 8)
    with pytest.raises(ValueError, match="fuse_type"):
        FPN(bottom_up, STAGES, 8, fuse_type="max")
    with pytest.raises(ValueError, match="p9"):
        FPN(bottom_up, STAGES, 8, top_block=LastLevelP6P7(8, 8, "p9"))


def test_build_backbone_by_name():
    cfg = _thin_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    fpn = build_backbone(cfg)
    assert isinstance(fpn, FPN)
    assert not any(p.requires_grad for p in fpn.bottom_up.res2.parameters())
    assert all(p.requires_grad for p in fpn.bottom_up.res3.parameters())
    assert all(p.requires_grad for n, p in fpn.named_parameters() if n.startswith("fpn_"))


def test_golden_fixture_features_match_detectron2(compat_dir):
    """Backbone alone on the golden fixture: p2..p6 sums within 1e-4 of Detectron2's."""
    import numpy as np

    from segtron.data import detection_utils
    from segtron.data import transforms as T

    root = compat_dir / "golden" / "mask_rcnn_R50_FPN_thin"
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    backbone = build_backbone(cfg).eval()
    with np.load(root / "weights_fp16.npz") as npz:
        state = {
            name[len("backbone."):]: torch.from_numpy(npz[name].astype(np.float32))
            for name in npz.files
            if name.startswith("backbone.")
        }
    backbone.load_state_dict(state, strict=True)

    image = detection_utils.read_image(str(root / "image.png"), format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(image).apply_image(image)
    x = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
    x = (x - torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)) / torch.tensor(
        cfg.MODEL.PIXEL_STD
    ).view(-1, 1, 1)
    divisor = backbone.size_divisibility
    height, width = x.shape[-2:]
    padded = x.new_zeros(1, 3, -(-height // divisor) * divisor, -(-width // divisor) * divisor)
    padded[0, :, :height, :width] = x
    with torch.no_grad():
        features = backbone(padded)

    summary = json.loads((root / "summary.json").read_text())
    assert list(features) == list(summary["features"])
    for level, (shape, total, abs_total) in summary["features"].items():
        feature = features[level].double()
        assert list(feature.shape) == shape, level
        assert feature.sum().item() == pytest.approx(total, abs=1e-4 * abs_total), level
        assert feature.abs().sum().item() == pytest.approx(abs_total, rel=1e-4), level
