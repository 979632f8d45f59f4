"""ResNet backbone: Detectron2 parameter names, torchvision numerical parity, freezing, variants."""

import json
import re

import pytest
import torch
import torchvision
from torch import nn

from segtron.config import get_cfg
from segtron.layers import CNNBlockBase, FrozenBatchNorm2d, ShapeSpec
from segtron.modeling.backbone import (
    BACKBONE_REGISTRY,
    Backbone,
    BasicBlock,
    BasicStem,
    BottleneckBlock,
    DeformBottleneckBlock,
    ResNet,
    ResNetBlockBase,
    build_backbone,
    build_resnet_backbone,
    make_stage,
)

ALL_STAGES = ["res2", "res3", "res4", "res5"]


def thin_cfg(**resnets):
    """Config of a thin ResNet-50 (every width / 8 or so): full structure, cheap to run."""
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.STEM_OUT_CHANNELS = 8
    r.RES2_OUT_CHANNELS = 16
    r.WIDTH_PER_GROUP = 4
    r.OUT_FEATURES = list(ALL_STAGES)
    for key, value in resnets.items():
        setattr(r, key, value)
    return cfg


def build(cfg, channels=3):
    return build_resnet_backbone(cfg, ShapeSpec(channels=channels))


# ---------------------------------------------------------------- Detectron2 names and shapes


def test_c4_backbone_and_res5_head_keys_match_detectron2(compat_dir):
    shapes = json.loads((compat_dir / "d2_state_dict_shapes.json").read_text())
    expected = shapes["COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"]

    cfg = get_cfg()  # Detectron2 defaults: R50, OUT_FEATURES [res4], FrozenBN, stride in 1x1
    backbone = build(cfg)
    got = {k: list(v.shape) for k, v in backbone.state_dict().items()}
    want = {k[len("backbone."):]: v for k, v in expected.items() if k.startswith("backbone.")}
    assert list(got) == list(want)
    assert got == want
    assert backbone.output_shape() == {"res4": ShapeSpec(channels=1024, stride=16)}

    # The C4 ROI head's res5 is one make_stage call (res5 keeps stride 2, as in Res5ROIHeads).
    res5 = nn.Sequential(
        *ResNet.make_stage(
            BottleneckBlock, 3, stride_per_block=[2, 1, 1], in_channels=1024,
            bottleneck_channels=512, out_channels=2048, norm="FrozenBN", stride_in_1x1=True,
        )
    )
    got = {f"res5.{k}": list(v.shape) for k, v in res5.state_dict().items()}
    prefix = "roi_heads."
    want = {k[len(prefix):]: v for k, v in expected.items() if k.startswith(prefix + "res5.")}
    assert got == want


# ---------------------------------------------------------------- torchvision parity


def _torchvision_to_segtron(name: str) -> str:
    """torchvision ResNet state-dict name -> segtron (Detectron2) name."""
    if name.startswith("conv1."):
        return "stem." + name
    if name.startswith("bn1."):
        return "stem.conv1.norm." + name[len("bn1."):]
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", name)
    assert m, name
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", rest)
    rest = re.sub(r"^downsample\.0\.", "shortcut.", rest)
    rest = re.sub(r"^downsample\.1\.", "shortcut.norm.", rest)
    return f"res{stage}.{block}.{rest}"


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            with torch.no_grad():
                module.weight.copy_(torch.rand(c, generator=g) + 0.5)
                module.bias.copy_(torch.randn(c, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)


def _copy_from_torchvision(tv_model: nn.Module, model: ResNet) -> None:
    mapped = {
        _torchvision_to_segtron(k): v
        for k, v in tv_model.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    assert not unexpected
    assert all(k.endswith("num_batches_tracked") for k in missing), missing


def _torchvision_stages(tv_model, x):
    x = tv_model.maxpool(tv_model.relu(tv_model.bn1(tv_model.conv1(x))))
    out = {}
    for i, name in enumerate(ALL_STAGES, start=1):
        x = getattr(tv_model, f"layer{i}")(x)
        out[name] = x
    return out


def _assert_rel_close(a, b, rel=1e-4):
    assert a.shape == b.shape
    scale = b.abs().max().clamp(min=1e-12)
    assert ((a - b).abs().max() / scale).item() <= rel


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_resnet50_matches_torchvision(norm):
    tv_model = torchvision.models.resnet50(weights=None).eval()
    _randomize_bn(tv_model)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision puts the stride on the 3x3 conv
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.OUT_FEATURES = list(ALL_STAGES)
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    model = build(cfg).eval()
    _copy_from_torchvision(tv_model, model)

    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        got = model(x)
        want = _torchvision_stages(tv_model, x)
    assert list(got) == ALL_STAGES
    for name in ALL_STAGES:
        _assert_rel_close(got[name], want[name])


def test_resnet18_basic_blocks_match_torchvision():
    tv_model = torchvision.models.resnet18(weights=None).eval()
    _randomize_bn(tv_model)
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = list(ALL_STAGES)
    model = build(cfg).eval()
    assert all(isinstance(b, BasicBlock) for s in model.stages for b in s)
    assert [len(s) for s in model.stages] == [2, 2, 2, 2]
    _copy_from_torchvision(tv_model, model)

    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = model(x)
        want = _torchvision_stages(tv_model, x)
    for name in ALL_STAGES:
        _assert_rel_close(got[name], want[name])
    assert {k: (v.channels, v.stride) for k, v in model.output_shape().items()} == {
        "res2": (64, 4), "res3": (128, 8), "res4": (256, 16), "res5": (512, 32)
    }


def test_resnet34_block_counts():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 34
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = list(ALL_STAGES)
    model = build(cfg)
    assert [len(s) for s in model.stages] == [3, 4, 6, 3]
    assert isinstance(model.res3[0], BasicBlock) and model.res3[0].shortcut is not None
    assert model.res2[0].shortcut is None  # 64 -> 64: identity shortcut


def test_basic_block_resnets_of_other_widths(caplog):
    """segtron (not Detectron2) builds basic-block ResNets of any width but 256."""
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 32
    cfg.MODEL.RESNETS.OUT_FEATURES = list(ALL_STAGES)
    with caplog.at_level("INFO", logger="segtron.modeling.backbone.resnet"):
        model = build(cfg)
    assert "stage widths [32, 64, 128, 256]" in caplog.text
    assert {k: v.channels for k, v in model.output_shape().items()} == {
        "res2": 32, "res3": 64, "res4": 128, "res5": 256}
    out = model(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape == (1, 256, 2, 2) and model.res2[0].shortcut is not None


@pytest.mark.parametrize(
    "key, value",
    [("RES2_OUT_CHANNELS", 256), ("NUM_GROUPS", 2),
     ("DEFORM_ON_PER_STAGE", [False, True, False, False])],
)
def test_basic_block_resnets_reject_bottleneck_settings(key, value):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    setattr(cfg.MODEL.RESNETS, key, value)
    with pytest.raises(ValueError, match=key):
        build(cfg)


def test_bad_depth_and_dilation_are_reported():
    cfg = thin_cfg(DEPTH=42)
    with pytest.raises(ValueError, match="DEPTH=42"):
        build(cfg)
    with pytest.raises(ValueError, match="RES5_DILATION"):
        build(thin_cfg(RES5_DILATION=3))


# ---------------------------------------------------------------- structure and variants


def test_stride_in_1x1_places_the_stride():
    model = build(thin_cfg(STRIDE_IN_1X1=True))
    assert model.res3[0].conv1.stride == (2, 2) and model.res3[0].conv2.stride == (1, 1)
    model = build(thin_cfg(STRIDE_IN_1X1=False))
    assert model.res3[0].conv1.stride == (1, 1) and model.res3[0].conv2.stride == (2, 2)


def test_output_shape_and_forward_shapes():
    model = build(thin_cfg()).eval()
    expected = {"res2": (16, 4), "res3": (32, 8), "res4": (64, 16), "res5": (128, 32)}
    assert {k: (v.channels, v.stride) for k, v in model.output_shape().items()} == expected
    assert model.size_divisibility == 0 and model.padding_constraints == {}
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    for name, (channels, stride) in expected.items():
        assert out[name].shape == (2, channels, 64 // stride, 96 // stride)


def test_out_features_truncates_stages_and_can_include_stem():
    model = build(thin_cfg(OUT_FEATURES=["stem", "res3"]))
    assert model.stage_names == ("res2", "res3")
    assert not hasattr(model, "res4")
    out = model(torch.randn(1, 3, 32, 32))
    assert list(out) == ["stem", "res3"]
    assert out["stem"].shape == (1, 8, 8, 8)
    with pytest.raises(ValueError, match="res6"):
        build(thin_cfg(OUT_FEATURES=["res6"]))


def test_resnext_groups():
    model = build(thin_cfg(NUM_GROUPS=4, WIDTH_PER_GROUP=2))  # res2 bottleneck: 4 * 2 = 8
    conv2 = model.res2[0].conv2
    assert conv2.groups == 4 and conv2.weight.shape == (8, 2, 3, 3)
    assert model.res5[0].conv2.weight.shape == (64, 16, 3, 3)  # width doubles per stage
    out = model(torch.randn(1, 3, 32, 32))
    assert out["res5"].shape == (1, 128, 1, 1)


def test_res5_dilation_keeps_stride_16():
    model = build(thin_cfg(RES5_DILATION=2))
    assert model.output_shape()["res5"].stride == 16
    for block in model.res5:
        assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2)
        assert block.stride == 1
    assert model.res4[0].conv2.dilation == (1, 1)
    out = model(torch.randn(1, 3, 64, 64))
    assert out["res5"].shape[-2:] == out["res4"].shape[-2:] == (4, 4)


def test_deformable_stages_from_config():
    cfg = thin_cfg(DEFORM_ON_PER_STAGE=[False, True, False, True], DEFORM_MODULATED=True,
                   DEFORM_NUM_GROUPS=2)
    model = build(cfg)
    assert isinstance(model.res3[0], DeformBottleneckBlock)
    assert isinstance(model.res2[0], BottleneckBlock)
    assert model.res3[0].conv2_offset.weight.shape == (27 * 2, 8, 3, 3)
    keys = model.state_dict().keys()
    assert "res3.0.conv2_offset.bias" in keys and "res3.0.conv2.norm.running_var" in keys
    assert "res3.0.conv2.bias" not in keys
    assert model(torch.randn(1, 3, 32, 32))["res5"].shape == (1, 128, 1, 1)


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_block_with_zero_offsets_equals_bottleneck(modulated):
    kwargs = dict(in_channels=16, out_channels=32, bottleneck_channels=8, stride=2, norm="BN",
                  num_groups=2)
    deform = DeformBottleneckBlock(**kwargs, deform_modulated=modulated, deform_num_groups=2)
    plain = BottleneckBlock(**kwargs)
    assert deform.conv2_offset.weight.shape[0] == (27 if modulated else 18) * 2
    assert not deform.conv2_offset.weight.any() and not deform.conv2_offset.bias.any()
    state = {k: v for k, v in deform.state_dict().items() if "conv2_offset" not in k}
    if modulated:  # zero mask logits: every sample is weighted by sigmoid(0) = 0.5
        state["conv2.weight"] = state["conv2.weight"] * 0.5
    plain.load_state_dict(state)
    deform.eval()
    plain.eval()
    x = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(deform(x), plain(x), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- freezing


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 4, 5])
def test_freeze_at(freeze_at):
    cfg = thin_cfg(NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    model = build(cfg)
    parts = [("stem", model.stem)] + [(n, getattr(model, n)) for n in ALL_STAGES]
    for index, (name, part) in enumerate(parts, start=1):
        frozen = index <= freeze_at
        params = list(part.parameters())
        assert params
        assert all(p.requires_grad != frozen for p in params), name
        norms = [m for m in part.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms
        wanted = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
        assert all(type(m) is wanted for m in norms), name
    # Frozen norms keep their state-dict names (only BN's num_batches_tracked goes away).
    def names(m):
        return {k for k in m.state_dict() if not k.endswith("num_batches_tracked")}

    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    assert names(model) == names(build(cfg))


def test_freeze_keeps_statistics_and_outputs():
    cfg = thin_cfg(NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    model = build(cfg).eval()
    _randomize_bn(model)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)["res5"]
        model.freeze(5)
        after = model(x)["res5"]
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in model.parameters())


# ---------------------------------------------------------------- building blocks and API


def test_make_stage_per_block_arguments_and_alias():
    blocks = make_stage(
        BasicBlock, 3, in_channels=8, out_channels=16, stride_per_block=[2, 1, 1], norm="BN"
    )
    assert [b.stride for b in blocks] == [2, 1, 1]
    assert [b.in_channels for b in blocks] == [8, 16, 16]
    assert blocks[0].shortcut is not None and blocks[1].shortcut is None
    legacy = ResNet.make_stage(BasicBlock, 2, first_stride=2, in_channels=8, out_channels=8)
    assert [b.stride for b in legacy] == [2, 1]
    with pytest.raises(ValueError, match="stride_per_block"):
        make_stage(BasicBlock, 3, in_channels=8, out_channels=8, stride_per_block=[1, 1])


def test_make_default_stages_plain_arguments():
    stages = ResNet.make_default_stages(50, norm="FrozenBN")
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    assert stages[3][0].conv1.weight.shape == (512, 1024, 1, 1)
    model = ResNet(BasicStem(3, 64, norm="FrozenBN"), stages, out_features=["res4", "res5"])
    assert model.output_shape()["res5"] == ShapeSpec(channels=2048, stride=32)
    assert [len(s) for s in ResNet.make_default_stages(101)] == [3, 4, 23, 3]
    assert isinstance(ResNet.make_default_stages(18)[0][0], BasicBlock)


def test_resnet_with_classifier():
    stages = [make_stage(BasicBlock, 1, in_channels=8, out_channels=8, norm="BN")]
    model = ResNet(BasicStem(3, 8), stages, num_classes=5)
    out = model(torch.randn(2, 3, 32, 32))
    assert list(out) == ["linear"] and out["linear"].shape == (2, 5)


def test_stem_and_blocks_are_cnn_blocks():
    stem = BasicStem(in_channels=3, out_channels=8, norm="BN")
    assert isinstance(stem, CNNBlockBase) and stem.stride == 4 and ResNetBlockBase is CNNBlockBase
    assert stem.conv1.bias is None and stem.conv1.weight.shape == (8, 3, 7, 7)
    assert stem(torch.randn(1, 3, 33, 31)).shape == (1, 8, 9, 8)
    block = BottleneckBlock(8, 16, bottleneck_channels=4)
    assert block.conv1.norm is not None and block.conv1.bias is None


def test_build_backbone_defaults_and_type_check(monkeypatch):
    cfg = thin_cfg()
    cfg.MODEL.PIXEL_MEAN = [0.0, 0.0, 0.0, 0.0]
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0, 1.0]
    model = build_backbone(cfg)
    assert isinstance(model, Backbone) and model.stem.conv1.weight.shape[1] == 4

    def not_a_backbone(cfg, input_shape):
        return nn.Conv2d(3, 3, 1)

    monkeypatch.setitem(BACKBONE_REGISTRY._obj_map, "_NotABackbone", not_a_backbone)
    cfg.MODEL.BACKBONE.NAME = "_NotABackbone"
    with pytest.raises(TypeError, match="_NotABackbone"):
        build_backbone(cfg)
