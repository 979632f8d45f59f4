"""FCNHead and the dilated (output stride 8) ResNet it sits on: dilation rule and errors,
exact equivalence with the undilated network, head layout and torchvision parity, the loss on
hand-made cases, build from config and plain arguments, a SemanticSegmentor step, the configs."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segtron.config import get_cfg
from segtron.data import MetadataCatalog
from segtron.layers import ShapeSpec
from segtron.modeling import build_model
from segtron.modeling.backbone import BasicBlock, build_resnet_backbone
from segtron.modeling.feature_names import UnknownFeatureError
from segtron.modeling.meta_arch import FCNHead, SemanticSegmentor, build_sem_seg_head
from segtron.utils.events import EventStorage

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL_STAGES = ["res2", "res3", "res4", "res5"]


def thin_resnet_cfg(depth=50, res4=1, res5=1, **resnets):
    """A thin ResNet (full structure, ~1/8 of the widths) with the given dilations."""
    cfg = get_cfg()
    r = cfg.MODEL.RESNETS
    r.DEPTH = depth
    r.STEM_OUT_CHANNELS = 8
    r.RES2_OUT_CHANNELS = 16 if depth >= 50 else 8
    r.WIDTH_PER_GROUP = 4
    r.OUT_FEATURES = list(ALL_STAGES)
    r.RES4_DILATION = res4
    r.RES5_DILATION = res5
    for key, value in resnets.items():
        setattr(r, key, value)
    return cfg


def build(cfg):
    return build_resnet_backbone(cfg, ShapeSpec(channels=3))


# -- the dilated ResNet -------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 18])
def test_dc8_resnet_has_output_stride_8_and_the_same_parameters(depth):
    dilated = build(thin_resnet_cfg(depth, res4=2, res5=4))
    plain = build(thin_resnet_cfg(depth))
    assert {k: v.stride for k, v in dilated.output_shape().items()} == {
        "res2": 4, "res3": 8, "res4": 8, "res5": 8}
    with torch.no_grad():
        out = dilated(torch.randn(1, 3, 64, 96))
    assert [tuple(out[k].shape[-2:]) for k in ALL_STAGES] == [(16, 24), (8, 12), (8, 12), (8, 12)]
    # Dilation changes no parameter name or shape: Detectron2 / ImageNet checkpoints load.
    assert {k: v.shape for k, v in dilated.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()}


def test_dc8_bottleneck_layout():
    model = build(thin_resnet_cfg(50, res4=2, res5=4))
    assert model.res3[0].stride == 2 and model.res3[0].conv2.dilation == (1, 1)
    for stage, d in ((model.res4, 2), (model.res5, 4)):
        assert [b.stride for b in stage] == [1] * len(stage)
        for block in stage:
            assert block.conv2.dilation == (d, d) and block.conv2.padding == (d, d)
            assert block.conv1.stride == block.conv2.stride == (1, 1)
        assert stage[0].shortcut.stride == (1, 1)


def test_dc8_basic_blocks_dilate_both_convs():
    model = build(thin_resnet_cfg(18, res4=2, res5=4))
    assert all(isinstance(b, BasicBlock) for s in model.stages for b in s)
    for stage, d in ((model.res4, 2), (model.res5, 4)):
        for block in stage:
            for conv in (block.conv1, block.conv2):
                assert conv.dilation == (d, d) and conv.padding == (d, d) and conv.stride == (1, 1)
    assert model.res3[0].conv1.stride == (2, 2) and model.res3[0].conv1.dilation == (1, 1)


def test_dc5_still_builds_as_before():
    model = build(thin_resnet_cfg(50, res4=1, res5=2))
    assert model.output_shape()["res4"].stride == 16 and model.output_shape()["res5"].stride == 16
    assert all(b.conv2.dilation == (1, 1) for b in model.res4)
    assert all(b.conv2.dilation == (2, 2) for b in model.res5)


def test_dilated_resnet_is_the_a_trous_form_of_the_plain_one():
    """With the stride on the 1x1 conv, removing a stride and dilating the later 3x3 convs
    accordingly computes the plain network on a finer grid: the DC8 res4 sampled every 2nd
    pixel and res5 every 4th equal the plain res4 / res5 with the same weights (feature sides
    even at stride 8 and 16, so the zero padding lines up)."""
    torch.manual_seed(0)
    plain = build(thin_resnet_cfg(50, STRIDE_IN_1X1=True)).eval()
    dilated = build(thin_resnet_cfg(50, res4=2, res5=4, STRIDE_IN_1X1=True)).eval()
    dilated.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        a, b = plain(x), dilated(x)
    assert b["res5"].shape[-2:] == (8, 12) and a["res5"].shape[-2:] == (2, 3)
    torch.testing.assert_close(b["res3"], a["res3"])
    torch.testing.assert_close(b["res4"][..., ::2, ::2], a["res4"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["res5"][..., ::4, ::4], a["res5"], rtol=1e-4, atol=1e-5)
    # The odd positions are new samples, not copies.
    assert not torch.allclose(b["res5"][..., 1::4, 1::4], a["res5"], atol=1e-3)


@pytest.mark.parametrize("res4, res5", [(2, 2), (2, 1), (1, 4), (3, 4), (1, 3), (4, 8)])
def test_unsupported_dilations_name_both_keys_and_the_allowed_pairs(res4, res5):
    with pytest.raises(ValueError) as info:
        build(thin_resnet_cfg(50, res4=res4, res5=res5))
    message = str(info.value)
    assert f"MODEL.RESNETS.RES4_DILATION={res4}" in message
    assert f"MODEL.RESNETS.RES5_DILATION={res5}" in message
    assert "(1, 1)" in message and "(1, 2)" in message and "(2, 4)" in message


def test_res4_dilation_key_defaults_to_1():
    assert get_cfg().MODEL.RESNETS.RES4_DILATION == 1


# -- the head -----------------------------------------------------------------------------------


def _shape(channels=64, stride=8, name="res5"):
    return {name: ShapeSpec(channels=channels, stride=stride)}


def test_head_layout_and_state_dict_names():
    head = FCNHead(_shape(64), num_classes=5)
    assert head.in_features == ["res5"] and head.stride == 8
    assert head.num_classes == 5 and head.ignore_value == -1
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "conv.weight": (16, 64, 3, 3),  # width 64 / 4 by default
        "conv.norm.weight": (16,), "conv.norm.bias": (16,),
        "conv.norm.running_mean": (16,), "conv.norm.running_var": (16,),
        "conv.norm.num_batches_tracked": (),
        "predictor.weight": (5, 16, 1, 1), "predictor.bias": (5,),
    }
    assert isinstance(head.conv.norm, nn.BatchNorm2d) and head.conv.bias is None
    assert head.conv.padding == (1, 1) and head.conv.activation is F.relu
    assert isinstance(head.dropout, nn.Dropout) and head.dropout.p == 0.1

    bare = FCNHead(_shape(64), num_classes=5, conv_dims=24, norm="", dropout=0.0)
    assert set(bare.state_dict()) == {
        "conv.weight", "conv.bias", "predictor.weight", "predictor.bias"}
    assert bare.conv.weight.shape == (24, 64, 3, 3) and bare.dropout.p == 0.0


def _randomize_bn(bn: nn.BatchNorm2d, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    c = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)


def test_head_matches_torchvision_fcn_head():
    """torchvision's FCNHead (the head of fcn_resnet50) with its weights copied in: same
    logits at the feature resolution, in eval mode."""
    from torchvision.models.segmentation.fcn import FCNHead as TorchvisionFCNHead

    torch.manual_seed(0)
    theirs = TorchvisionFCNHead(64, 7).eval()
    _randomize_bn(theirs[1], seed=1)
    ours = FCNHead(_shape(64), num_classes=7).eval()
    rename = {"0.": "conv.", "1.": "conv.norm.", "4.": "predictor."}
    state = {rename[k[:2]] + k[2:]: v for k, v in theirs.state_dict().items()}
    ours.load_state_dict(state)
    x = torch.randn(2, 64, 8, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours.layers({"res5": x}), theirs(x), rtol=1e-5, atol=1e-5)


def test_eval_logits_are_upsampled_by_the_stride():
    torch.manual_seed(0)
    head = FCNHead(_shape(32, stride=8), num_classes=4).eval()
    features = {"res5": torch.randn(2, 32, 8, 12)}
    with torch.no_grad():
        logits, losses = head(features)
        coarse = head.layers(features)
    assert logits.shape == (2, 4, 64, 96) and losses == {}
    up = F.interpolate(coarse, size=(64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, up)


def _constant_head(loss_weight=1.0, stride=8):
    """A 2-class head whose predictor outputs the logits (0, log 3) at every pixel."""
    head = FCNHead(_shape(4, stride=stride), num_classes=2, conv_dims=4, ignore_value=255,
                   loss_weight=loss_weight)
    with torch.no_grad():
        head.predictor.weight.zero_()
        head.predictor.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    return head.train()


def test_loss_is_mean_cross_entropy_over_labelled_pixels():
    """p(class 1) = 3/4 everywhere: a pixel labelled 1 costs ln(4/3), one labelled 0 ln 4;
    pixels labelled 255 do not count. Targets 13x14, smaller than the 16x16 logits of a 2x2
    feature at stride 8 (an input padded up to the stride): the logits are cropped."""
    head = _constant_head(loss_weight=2.0)
    targets = torch.full((1, 13, 14), 255, dtype=torch.int64)
    targets[0, :2] = 1  # 28 pixels of class 1
    targets[0, 2:3, :10] = 0  # 10 pixels of class 0
    _, losses = head({"res5": torch.randn(1, 4, 2, 2)}, targets)
    expected = (28 * math.log(4 / 3) + 10 * math.log(4)) / 38
    assert set(losses) == {"loss_sem_seg"}
    assert losses["loss_sem_seg"].item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_loss_upsamples_by_the_stride_then_crops():
    """Coarse logits 1x2 at stride 8, class-1 logit ln 3 then -ln 3 (class 0: 0). Upsampled x8
    (align_corners=False), output column i reads coarse column (i + 0.5) / 8 - 0.5, clamped:
    column 3 -> 0 (exactly the first), column 12 -> 1.06 (the second), column 7 -> 0.4375,
    a class-1 logit ln 3 * (0.5625 - 0.4375). Targets 5x14 (cropped, not resized, to)."""
    head = _constant_head()
    log3 = math.log(3.0)
    predictions = torch.tensor([[[[0.0, 0.0]], [[log3, -log3]]]])  # (1, 2, 1, 2)
    targets = torch.full((1, 5, 14), 255, dtype=torch.int64)
    targets[0, :, 3] = 1  # p(1) = 3/4: ln(4/3)
    targets[0, :, 12] = 0  # p(1) = 1/4, so p(0) = 3/4: ln(4/3)
    targets[0, :, 7] = 1  # -log sigmoid(0.125 ln 3) = log(1 + 3 ** -0.125)
    loss = head.losses(predictions, targets)["loss_sem_seg"]
    expected = (2 * math.log(4 / 3) + math.log(1 + 3 ** -0.125)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_loss_of_a_batch_without_labelled_pixels_is_zero_not_nan():
    head = _constant_head()
    features = {"res5": torch.randn(1, 4, 2, 2, requires_grad=True)}
    _, losses = head(features, torch.full((1, 16, 16), 255, dtype=torch.int64))
    assert losses["loss_sem_seg"].item() == 0.0
    losses["loss_sem_seg"].backward()
    assert torch.isfinite(features["res5"].grad).all()


def test_loss_rejects_targets_larger_than_the_logits_and_missing_targets():
    head = _constant_head()
    with pytest.raises(ValueError, match=r"\(17, 16\).*stride 8"):
        head({"res5": torch.randn(1, 4, 2, 2)}, torch.zeros(1, 17, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match="targets"):
        head({"res5": torch.randn(1, 4, 2, 2)})


def test_fresh_head_predicts_near_uniform_classes():
    """Small-std predictor init: the first loss is ~ ln K (an MSRA-initialised predictor of
    this width would start ~0.4 nats higher); the hidden conv is MSRA (fan_out) initialised."""
    torch.manual_seed(0)
    head = FCNHead(_shape(256), num_classes=150, conv_dims=128, ignore_value=255).train()
    features = {"res5": torch.randn(2, 256, 8, 8).relu()}
    targets = torch.randint(0, 150, (2, 64, 64))
    _, losses = head(features, targets)
    assert losses["loss_sem_seg"].item() == pytest.approx(math.log(150), abs=0.02)
    assert head.conv.weight.std().item() == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.05)
    assert head.predictor.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.predictor.bias.abs().max().item() == 0.0


def test_head_rejects_bad_arguments():
    two = {"res4": ShapeSpec(channels=8, stride=8), "res5": ShapeSpec(channels=8, stride=8)}
    with pytest.raises(ValueError, match=r"exactly one.*MODEL.SEM_SEG_HEAD.IN_FEATURES"):
        FCNHead(two, num_classes=3)
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.IN_FEATURES"):
        FCNHead({}, num_classes=3)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        FCNHead(_shape(8), num_classes=0)
    with pytest.raises(ValueError, match="dropout"):
        FCNHead(_shape(8), num_classes=3, dropout=1.0)
    with pytest.raises(ValueError, match="CONVS_DIM"):
        FCNHead(_shape(8), num_classes=3, conv_dims=0)


# -- from a config, inside SemanticSegmentor ------------------------------------------------------


def fcn_cfg(**head):
    """A thin DC8 ResNet-18 + FCNHead SemanticSegmentor config."""
    cfg = thin_resnet_cfg(18, res4=2, res5=4, OUT_FEATURES=["res5"], NORM="BN")
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    h = cfg.MODEL.SEM_SEG_HEAD
    h.NAME = "FCNHead"
    h.IN_FEATURES = ["res5"]
    h.NUM_CLASSES = 3
    h.CONVS_DIM = 16
    h.NORM = "BN"
    h.LOSS_WEIGHT = 0.5
    for key, value in head.items():
        setattr(h, key, value)
    return cfg


def test_build_from_config_and_from_plain_arguments():
    cfg = fcn_cfg()
    model = build_model(cfg)
    head = model.sem_seg_head
    assert isinstance(model, SemanticSegmentor) and isinstance(head, FCNHead)
    assert head.stride == 8 and head.num_classes == 3 and head.ignore_value == 255
    assert head.loss_weight == 0.5 and head.conv.weight.shape == (16, 64, 3, 3)

    shapes = {"res5": ShapeSpec(channels=64, stride=8), "res4": ShapeSpec(channels=32, stride=8)}
    from_cfg = FCNHead(cfg, shapes)  # @configurable: the config and the backbone's outputs
    assert from_cfg.in_features == ["res5"] and from_cfg.conv.weight.shape == (16, 64, 3, 3)
    from_args = FCNHead({"res5": shapes["res5"]}, num_classes=3)
    assert from_args.conv.weight.shape == (16, 64, 3, 3) and from_args.ignore_value == -1
    assert set(from_args.state_dict()) == set(from_cfg.state_dict())


def test_config_errors_name_the_key():
    shapes = {"res4": ShapeSpec(channels=32, stride=8), "res5": ShapeSpec(channels=64, stride=8)}
    with pytest.raises(ValueError, match=r"MODEL.SEM_SEG_HEAD.IN_FEATURES=\['res4', 'res5'\]"
                                         r".*exactly one"):
        build_sem_seg_head(fcn_cfg(IN_FEATURES=["res4", "res5"]), shapes)
    with pytest.raises(UnknownFeatureError, match=r"MODEL.SEM_SEG_HEAD.IN_FEATURES.*\['p5'\]"):
        build_sem_seg_head(fcn_cfg(IN_FEATURES=["p5"]), shapes)
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.IN_FEATURES is empty"):
        build_sem_seg_head(fcn_cfg(IN_FEATURES=[]), shapes)


def test_semantic_segmentor_training_step_and_inference_sizes():
    """Images of 64x96 and 60x90 (not multiples of 8: the batch is padded to 64x96 only by
    the head's cropping, the plain ResNet has no size divisibility)."""
    torch.manual_seed(0)
    model = build_model(fcn_cfg()).train()
    assert model.backbone.size_divisibility == 0
    batch = [
        {"image": torch.rand(3, 64, 96) * 255, "sem_seg": torch.randint(0, 3, (64, 96))},
        {"image": torch.rand(3, 60, 90) * 255, "sem_seg": torch.full((60, 90), 255)},
    ]
    batch[1]["sem_seg"][:30] = 2
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg"}
    loss = losses["loss_sem_seg"]
    # Near-uniform fresh predictions over 3 classes, times LOSS_WEIGHT 0.5.
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.5 * math.log(3), abs=0.05)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 60, 90) * 255},
                     {"image": torch.rand(3, 64, 96) * 255, "height": 32, "width": 48}])
    assert out[0]["sem_seg"].shape == (3, 60, 90) and out[1]["sem_seg"].shape == (3, 32, 48)


# -- the shipped configs --------------------------------------------------------------------------


@pytest.mark.parametrize("rel", [
    "ADE20K-SemanticSegmentation/fcn_R_50_DC8.yaml",
    "Cityscapes-SemanticSegmentation/fcn_R_50_DC8.yaml",
])
def test_fcn_configs_match_their_datasets_and_build_an_output_stride_8_r50(rel):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / rel))
    meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
    assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == len(meta.stuff_classes)
    assert cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE == meta.ignore_label
    assert MetadataCatalog.get(cfg.DATASETS.TEST[0]).ignore_label == meta.ignore_label
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "FCNHead" and cfg.MODEL.RESNETS.DEPTH == 50
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert backbone.output_shape() == {"res5": ShapeSpec(channels=2048, stride=8)}
    head = build_sem_seg_head(cfg, backbone.output_shape())
    assert head.conv.weight.shape == (512, 2048, 3, 3)  # torchvision's width, 2048 / 4
