"""RegNet (Detectron2's ``modeling.backbone.RegNet``): numeric parity with torchvision's RegNet,
published sizes of the 4GF model-zoo trunks, Detectron2 checkpoint names, freezing and output
selection, and a Mask R-CNN step with a RegNet-FPN backbone."""

import re

import pytest
import torch
from torch import nn

from segtron.config import get_cfg
from segtron.layers import FrozenBatchNorm2d, ShapeSpec
from segtron.modeling.backbone import FPN, Backbone, LastLevelMaxPool, RegNet
from segtron.modeling.backbone.regnet import (
    AnyNet,
    ResBasicBlock,
    ResBottleneckBlock,
    ResStem,
    SimpleStem,
    VanillaBlock,
    generate_regnet_parameters,
)
from segtron.modeling.meta_arch import GeneralizedRCNN
from segtron.modeling.proposal_generator import build_proposal_generator
from segtron.modeling.roi_heads import build_roi_heads
from segtron.structures import BitMasks, Boxes, Instances
from segtron.utils.events import EventStorage
from tests.conftest import REPO_ROOT

torchvision = pytest.importorskip("torchvision")

# Design parameters of the Detectron2 new-baseline trunks (configs/new_baselines/
# mask_rcnn_regnet{x,y}_4gf_dds_FPN_*.py), which are pycls' RegNetX-4.0GF / RegNetY-4.0GF.
REGNETX_4GF = dict(depth=23, w_a=38.65, w_0=96, w_m=2.43, group_width=40)
REGNETY_4GF = dict(depth=22, w_a=31.41, w_0=96, w_m=2.24, group_width=64, se_ratio=0.25)
# torchvision.models.regnet_x_800mf / regnet_y_400mf: the BlockParams.from_init_params(...)
# arguments (stem width 32). regnet_x_400mf is not used: torchvision rounds a tie in its last
# width up (400) where pycls/Detectron2 round half to even (384), see test_width_rounding_*.
TV_X_800MF = dict(depth=16, w_0=56, w_a=35.73, w_m=2.28, group_width=16)
TV_Y_400MF = dict(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8, se_ratio=0.25)
RX_400MF = dict(depth=22, w_0=24, w_a=24.48, w_m=2.54, group_width=16)
STAGES = ["s1", "s2", "s3", "s4"]


def _regnet(design, **kwargs):
    kwargs.setdefault("out_features", STAGES)
    return RegNet(stem_class=SimpleStem, stem_width=32, block_class=ResBottleneckBlock,
                  **design, **kwargs)


def _tv_to_segtron(name: str) -> str:
    """torchvision RegNet state-dict key -> Detectron2/segtron key, by module structure.

    torchvision: stem.{0 conv, 1 bn}; trunk_output.block{i}.block{i}-{j}.{proj, f.a, f.b, f.c}
    each a (conv, bn[, act]) Sequential; f.se.{fc1, fc2}. Detectron2: stem.{conv, bn};
    s{i}.b{j+1}.{proj, bn}; f.{a, a_bn, b, b_bn, c, c_bn}; f.se.f_ex.{0, 2}.
    """
    m = re.fullmatch(r"stem\.(0|1)\.(.+)", name)
    if m:
        return f"stem.{'conv' if m.group(1) == '0' else 'bn'}.{m.group(2)}"
    m = re.fullmatch(r"trunk_output\.block(\d+)\.block\d+-(\d+)\.(.+)", name)
    assert m, name
    prefix, rest = f"s{m.group(1)}.b{int(m.group(2)) + 1}", m.group(3)
    m = re.fullmatch(r"proj\.(0|1)\.(.+)", rest)
    if m:
        return f"{prefix}.{'proj' if m.group(1) == '0' else 'bn'}.{m.group(2)}"
    m = re.fullmatch(r"f\.([abc])\.(0|1)\.(.+)", rest)
    if m:
        layer = m.group(1) if m.group(2) == "0" else f"{m.group(1)}_bn"
        return f"{prefix}.f.{layer}.{m.group(3)}"
    m = re.fullmatch(r"f\.se\.fc(1|2)\.(.+)", rest)
    assert m, name
    return f"{prefix}.f.se.f_ex.{0 if m.group(1) == '1' else 2}.{m.group(2)}"


def _randomize_bn(module: nn.Module, generator: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=generator) * 0.5 + 0.5
            m.bias.data = torch.randn(n, generator=generator) * 0.1
            m.running_mean = torch.randn(n, generator=generator) * 0.1
            m.running_var = torch.rand(n, generator=generator) + 0.5


@pytest.mark.parametrize("tv_name, design", [
    ("regnet_x_800mf", TV_X_800MF), ("regnet_y_400mf", TV_Y_400MF)])
def test_stage_outputs_match_torchvision(tv_name, design):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    reference = getattr(torchvision.models, tv_name)(weights=None)
    _randomize_bn(reference, g)
    reference.eval()
    ours = _regnet(design).eval()
    mapped = {_tv_to_segtron(k): v for k, v in reference.state_dict().items()
              if not k.startswith("fc.")}
    ours.load_state_dict(mapped, strict=True)  # every parameter and buffer has a counterpart

    x = torch.randn(2, 3, 64, 96, generator=g)
    with torch.no_grad():
        expected, y = [], reference.stem(x)
        for stage in reference.trunk_output:
            y = stage(y)
            expected.append(y)
        got = ours(x)
    assert list(got) == STAGES
    for name, want in zip(STAGES, expected):
        torch.testing.assert_close(got[name], want, atol=1e-5, rtol=1e-5, msg=name)
    # The strides reported by output_shape are those of the maps actually produced.
    for name, spec in ours.output_shape().items():
        assert got[name].shape[1:] == (spec.channels, 64 // spec.stride, 96 // spec.stride)


@pytest.mark.parametrize("design, depths, widths, published_m", [
    # Widths/depths and params (incl. the 1000-way classifier) from pycls MODEL_ZOO.md and the
    # RegNet paper: RegNetX-4.0GF 22.1M, RegNetY-4.0GF 20.6M.
    (REGNETX_4GF, [2, 5, 14, 2], [80, 240, 560, 1360], 22.1),
    (REGNETY_4GF, [2, 6, 12, 2], [128, 192, 512, 1088], 20.6),
])
def test_4gf_trunks_match_published_sizes(design, depths, widths, published_m):
    assert generate_regnet_parameters(design["w_a"], design["w_0"], design["w_m"],
                                      design["depth"])[1] == depths
    with torch.device("meta"):
        model = _regnet(design)
    assert {k: (v.channels, v.stride) for k, v in model.output_shape().items()} == {
        f"s{i + 1}": (w, 2 ** (i + 2)) for i, w in enumerate(widths)}
    assert [len(list(getattr(model, s).children())) for s in STAGES] == depths
    trunk = sum(p.numel() for p in model.parameters())
    with_classifier = trunk + widths[-1] * 1000 + 1000
    assert round(with_classifier / 1e6, 1) == published_m


@pytest.mark.parametrize("design, widths", [
    # pycls RegNetX-400MF and RegNetY-800MF stage widths (as in timm's regnetx_004 and
    # regnety_008). Quantized widths 392 and 136 are 24.5 and 8.5 groups of 16, rounded half
    # to even to 384 and 128; torchvision's regnet_x_400mf / regnet_y_800mf have 400 and 144.
    (RX_400MF, [32, 64, 160, 384]),
    (dict(depth=14, w_0=56, w_a=38.84, w_m=2.4, group_width=16, se_ratio=0.25),
     [64, 128, 320, 768]),
])
def test_width_rounding_follows_pycls(design, widths):
    with torch.device("meta"):
        model = _regnet(design)
    assert [model.output_shape()[s].channels for s in STAGES] == widths


def test_regnetx_4gf_fpn_parameter_names_follow_detectron2():
    with torch.device("meta"):
        fpn = FPN(bottom_up=_regnet(REGNETX_4GF), in_features=STAGES, out_channels=256,
                  top_block=LastLevelMaxPool())
    keys = {f"backbone.{k}" for k in fpn.state_dict()}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = {"backbone.bottom_up.stem.conv.weight"}
    expected |= {f"backbone.bottom_up.stem.bn.{s}" for s in bn}
    # s1.b1 changes width and stride: a projection shortcut; X has no SE.
    expected |= {"backbone.bottom_up.s1.b1.proj.weight"}
    expected |= {f"backbone.bottom_up.s1.b1.bn.{s}" for s in bn}
    for layer in "abc":
        expected |= {f"backbone.bottom_up.s1.b1.f.{layer}.weight"}
        expected |= {f"backbone.bottom_up.s1.b1.f.{layer}_bn.{s}" for s in bn}
    for i in range(2, 6):
        expected |= {f"backbone.fpn_lateral{i}.weight", f"backbone.fpn_lateral{i}.bias",
                     f"backbone.fpn_output{i}.weight", f"backbone.fpn_output{i}.bias"}
    assert expected <= keys, sorted(expected - keys)
    assert not any(".se." in k for k in keys)
    assert "backbone.bottom_up.s1.b2.f.a.weight" in keys  # s1 has 2 blocks
    assert "backbone.bottom_up.s1.b2.proj.weight" not in keys  # identity shortcut
    assert "backbone.bottom_up.s3.b14.f.c_bn.running_var" in keys
    assert "backbone.bottom_up.s3.b15.f.a.weight" not in keys
    assert fpn.bottom_up.s3.b1.f.b.groups == 560 // 40
    assert fpn.state_dict()["fpn_lateral5.weight"].shape == (256, 1360, 1, 1)


def test_regnety_has_squeeze_excitation_named_like_detectron2():
    with torch.device("meta"):
        model = _regnet(REGNETY_4GF)
    sd = model.state_dict()
    # SE width = round(0.25 * block input width): 32 -> 8 in s1.b1, 128 -> 32 in s1.b2.
    assert sd["s1.b1.f.se.f_ex.0.weight"].shape == (8, 128, 1, 1)
    assert sd["s1.b1.f.se.f_ex.2.bias"].shape == (128,)
    assert sd["s1.b2.f.se.f_ex.0.weight"].shape == (32, 128, 1, 1)


def _trainable_parts(model):
    return {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}


def test_freeze_at_and_out_features():
    design = RX_400MF
    assert _trainable_parts(_regnet(design)) == {"stem", *STAGES}
    frozen = _regnet(design, freeze_at=2)
    assert _trainable_parts(frozen) == {"s2", "s3", "s4"}
    assert isinstance(frozen.stem.bn, FrozenBatchNorm2d)
    assert isinstance(frozen.s1.b1.f.a_bn, FrozenBatchNorm2d)
    assert isinstance(frozen.s2.b1.f.a_bn, nn.BatchNorm2d)
    frozen.train()
    x = torch.randn(2, 3, 64, 64)
    before = frozen.s1.b1.f.a_bn.running_mean.clone()
    frozen(x)
    assert torch.equal(frozen.s1.b1.f.a_bn.running_mean, before)  # no stat updates when frozen
    assert _trainable_parts(_regnet(design, freeze_at=5)) == set()
    assert _trainable_parts(_regnet(design).freeze(1)) == set(STAGES)

    default = _regnet(design, out_features=None)
    assert list(default.output_shape()) == ["s4"]
    some = _regnet(design, out_features=["stem", "s2"])
    assert some.output_shape() == {"stem": ShapeSpec(channels=32, stride=2),
                                   "s2": ShapeSpec(channels=some.s2.b1.out_channels, stride=8)}
    assert {k: tuple(v.shape) for k, v in some(x).items()} == {
        "stem": (2, 32, 32, 32), "s2": (2, some.s2.b1.out_channels, 8, 8)}
    with pytest.raises(ValueError, match="s5"):
        _regnet(design, out_features=["s5"])
    with pytest.raises(ValueError, match="w_0"):
        _regnet(dict(design, w_0=20))  # not a multiple of 8


def test_anynet_with_other_stems_and_blocks():
    act = nn.SiLU
    for stem, block, stem_stride in [(ResStem, ResBasicBlock, 4), (SimpleStem, VanillaBlock, 2)]:
        net = AnyNet(stem_class=stem, stem_width=8, block_class=block, depths=[1, 2],
                     widths=[8, 16], group_widths=[8, 8], strides=[1, 2],
                     bottleneck_ratios=[1.0, 1.0], se_ratio=0.0, activation_class=act,
                     out_features=["s1", "s2"], norm="")
        assert isinstance(net, Backbone)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert isinstance(net.s1.b1.f.a_af if block is ResBasicBlock else net.s1.b1.a_af, act)
        out = net(torch.randn(1, 3, 32, 32))
        assert out["s1"].shape == (1, 8, 32 // stem_stride, 32 // stem_stride)
        assert out["s2"].shape == (1, 16, 16 // stem_stride, 16 // stem_stride)
    basic = AnyNet(stem_class=SimpleStem, stem_width=8, block_class=ResBasicBlock,
                   depths=[2], widths=[8], group_widths=[8], strides=[1],
                   bottleneck_ratios=[1.0], se_ratio=0.0, activation_class=act)
    assert basic.s1.b1.proj is None and basic.s1.b1.bn is None  # same shape: identity shortcut
    with pytest.raises(ValueError, match="one entry per stage"):
        AnyNet(stem_class=SimpleStem, stem_width=8, block_class=ResBasicBlock, depths=[1, 1],
               widths=[8], group_widths=[8], strides=[1], bottleneck_ratios=[1.0],
               se_ratio=0.0, activation_class=act)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        basic(torch.randn(3, 32, 32))


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        inst = Instances((size, size))
        boxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 62.0]])
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, 2])
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": inst})
    return batch


def test_mask_rcnn_with_regnet_fpn_trains_one_step():
    cfg = get_cfg()
    cfg.merge_from_file(str(REPO_ROOT / "configs" / "Shapes" / "mask_rcnn_R_18_FPN_demo.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    torch.manual_seed(0)
    bottom_up = _regnet(RX_400MF, freeze_at=2)
    backbone = FPN(bottom_up=bottom_up, in_features=["s1", "s2", "s3", "s4"],
                   out_channels=cfg.MODEL.FPN.OUT_CHANNELS, top_block=LastLevelMaxPool())
    assert set(backbone.output_shape()) == set(cfg.MODEL.RPN.IN_FEATURES)
    model = GeneralizedRCNN(
        backbone=backbone,
        proposal_generator=build_proposal_generator(cfg, backbone.output_shape()),
        roi_heads=build_roi_heads(cfg, backbone.output_shape()),
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format=cfg.INPUT.FORMAT,
    ).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = {n: p.detach().clone() for n, p in bottom_up.named_parameters()}
    with EventStorage():
        losses = model(_batch())
    assert {"loss_mask", "loss_rpn_cls", "loss_cls"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    changed = {n.split(".")[0] for n, p in bottom_up.named_parameters()
               if not torch.equal(p, before[n])}
    assert changed == {"s2", "s3", "s4"}  # trainable stages moved, frozen stem and s1 did not
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"]} for b in _batch(1)])
    assert outputs[0]["instances"].image_size == (64, 64)
