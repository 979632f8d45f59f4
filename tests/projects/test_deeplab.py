"""DeepLab project: its config keys, DeepLabCE, WarmupPolyLR, the DeepLab ResNet and the two
heads, on hand-computed cases and tiny models; the errors a bad config gets."""

import argparse
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import train_net
from projects.DeepLab import (
    DeepLabCE,
    DeepLabStem,
    DeepLabV3Head,
    DeepLabV3PlusHead,
    WarmupPolyLR,
    add_deeplab_config,
    build_lr_scheduler,
)
from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling import build_model
from segtron.solver import build_lr_scheduler as core_build_lr_scheduler
from segtron.utils.events import EventStorage

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "projects/DeepLab/configs/Shapes"


def _shapes_cfg(name="deeplab_v3_plus_R_18_os16_dsconv.yaml", *opts):
    return train_net.build_config(
        argparse.Namespace(config_file=str(SHAPES / name), opts=list(opts))
    )


# -- config ------------------------------------------------------------------------------------


def test_add_deeplab_config_adds_detectron2_defaults_and_keeps_existing_values():
    cfg = get_cfg()
    cfg.MODEL.RESNETS.RES4_DILATION = 2
    add_deeplab_config(cfg)
    head = cfg.MODEL.SEM_SEG_HEAD
    assert head.ASPP_DILATIONS == [6, 12, 18] and head.ASPP_CHANNELS == 256
    assert head.PROJECT_FEATURES == ["res2"] and head.PROJECT_CHANNELS == [48]
    assert head.LOSS_TYPE == "hard_pixel_mining" and head.ASPP_DROPOUT == 0.1
    assert head.USE_DEPTHWISE_SEPARABLE_CONV is False
    assert cfg.SOLVER.POLY_LR_POWER == 0.9 and cfg.SOLVER.POLY_LR_CONSTANT_ENDING == 0.0
    assert cfg.MODEL.RESNETS.RES5_MULTI_GRID == [1, 2, 4]
    assert cfg.MODEL.RESNETS.STEM_TYPE == "deeplab"
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0
    assert cfg.MODEL.RESNETS.RES4_DILATION == 2  # already there: kept
    head.ASPP_CHANNELS = 64
    add_deeplab_config(cfg)
    assert head.ASPP_CHANNELS == 64


def test_train_net_adds_the_keys_without_a_flag():
    cfg = _shapes_cfg()
    assert cfg.MODEL.SEM_SEG_HEAD.NAME == "DeepLabV3PlusHead"
    assert cfg.MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV is True


# -- DeepLabCE -----------------------------------------------------------------------------------


def _five_pixels():
    """Two classes, five pixels with cross-entropies log 2, log 4, log 4/3, log 8 and one
    ignored pixel (loss 0): logit differences chosen so the softmax is a simple fraction."""
    ln3, ln7 = math.log(3), math.log(7)
    logits = torch.tensor([[0.0, 0.0], [0.0, ln3], [ln3, 0.0], [0.0, ln7], [5.0, -5.0]])
    labels = torch.tensor([1, 0, 0, 0, 255])
    # (N, C, H, W) = (1, 2, 1, 5)
    return logits.t().reshape(1, 2, 1, 5), labels.reshape(1, 1, 5)


def test_deeplab_ce_top_k_by_hand():
    logits, labels = _five_pixels()
    log2 = math.log(2)
    # k = int(0.4 * 5) = 2: the two largest, log 8 and log 4.
    top2 = DeepLabCE(ignore_label=255, top_k_percent_pixels=0.4)(logits, labels)
    assert top2.item() == pytest.approx((3 * log2 + 2 * log2) / 2, rel=1e-6)
    # All pixels: the ignored one counts as a zero in the mean (DeepLab's convention).
    everything = DeepLabCE(ignore_label=255)(logits, labels)
    assert everything.item() == pytest.approx((6 * log2 + math.log(4 / 3)) / 5, rel=1e-6)
    # k = int(0.1 * 5) = 0 is raised to one pixel, the hardest.
    hardest = DeepLabCE(ignore_label=255, top_k_percent_pixels=0.1)(logits, labels)
    assert hardest.item() == pytest.approx(3 * log2, rel=1e-6)


def test_deeplab_ce_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DeepLabCE(top_k_percent_pixels=0.0)


# -- WarmupPolyLR --------------------------------------------------------------------------------


def _lrs(scheduler, optimizer, iterations):
    seen = {}
    for it in range(max(iterations) + 1):
        if it in iterations:
            seen[it] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_poly_lr_values():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    scheduler = WarmupPolyLR(optimizer, max_iters=100, warmup_factor=0.1, warmup_iters=10,
                             power=0.9)
    lrs = _lrs(scheduler, optimizer, {0, 5, 10, 50, 99})
    assert lrs[0] == pytest.approx(0.01 * 0.1)
    # warmup 0.1 * (1 - 0.5) + 0.5 = 0.55, times the poly factor 0.95 ** 0.9
    assert lrs[5] == pytest.approx(0.01 * 0.55 * 0.95 ** 0.9)
    assert lrs[10] == pytest.approx(0.01 * 0.9 ** 0.9)
    assert lrs[50] == pytest.approx(0.01 * 0.5 ** 0.9)
    assert lrs[99] == pytest.approx(0.01 * 0.01 ** 0.9)


def test_warmup_poly_lr_constant_ending():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = WarmupPolyLR(optimizer, max_iters=100, warmup_iters=0, power=1.0,
                             constant_ending=0.1)
    lrs = _lrs(scheduler, optimizer, {80, 89, 91, 99})
    assert lrs[80] == pytest.approx(0.2) and lrs[89] == pytest.approx(0.11)
    assert lrs[91] == pytest.approx(0.1) and lrs[99] == pytest.approx(0.1)


def test_warmup_poly_lr_from_config_through_the_core_builder():
    cfg = get_cfg()
    add_deeplab_config(cfg)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.POLY_LR_POWER = 200, 0, 2.0
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    for build in (core_build_lr_scheduler, build_lr_scheduler):
        scheduler = build(cfg, optimizer)
        assert isinstance(scheduler, WarmupPolyLR)
        assert scheduler.max_iters == 200 and scheduler.power == 2.0
        assert scheduler._factor(100) == pytest.approx(0.25)


def test_unknown_scheduler_name_lists_the_registered_ones():
    cfg = get_cfg()
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLRR"
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    with pytest.raises(ValueError, match="'WarmupPolyLRR'.*WarmupPolyLR"):
        core_build_lr_scheduler(cfg, optimizer)


# -- the DeepLab ResNet --------------------------------------------------------------------------


def test_deeplab_stem_layout_and_stride():
    stem = DeepLabStem(3, 32, norm="BN")
    assert [stem.conv1.stride, stem.conv2.stride, stem.conv3.stride] == [(2, 2), (1, 1), (1, 1)]
    assert stem.conv2.weight.shape == (16, 16, 3, 3) and stem.conv3.weight.shape == (32, 16, 3, 3)
    assert stem(torch.randn(1, 3, 64, 48)).shape == (1, 32, 16, 12) and stem.stride == 4


def test_multi_grid_dilations_and_output_stride():
    cfg = _shapes_cfg("deeplab_v3_plus_R_18_os16.yaml", "MODEL.RESNETS.RES5_MULTI_GRID", "[1, 3]")
    backbone = build_model(cfg).backbone
    assert [b.conv1.dilation[0] for b in backbone.res5] == [2, 6]  # RES5_DILATION 2 x (1, 3)
    shapes = backbone.output_shape()
    assert shapes["res5"].stride == 16 and shapes["res2"].stride == 4


@pytest.mark.parametrize("opts,match", [
    (["MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2, 4]"], "res5 has 2 blocks.*RES5_MULTI_GRID"),
    (["MODEL.RESNETS.STEM_TYPE", "deep"], "STEM_TYPE='deep'"),
    (["MODEL.RESNETS.RES4_DILATION", "2", "MODEL.RESNETS.RES5_DILATION", "2"],
     r"RES5_DILATION\)=\(2, 2\)"),
    (["MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", "[2, 4]"], "MODEL.SEM_SEG_HEAD.ASPP_DILATIONS"),
    (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE",
      "[200, 224]"],
     r"INPUT.CROP.SIZE=\[200, 224\] must be divisible by the stride 16"),
    (["MODEL.SEM_SEG_HEAD.COMMON_STRIDE", "8"], "COMMON_STRIDE=8.*set COMMON_STRIDE to 4"),
    (["MODEL.SEM_SEG_HEAD.LOSS_TYPE", "focal"], "LOSS_TYPE='focal'"),
    (["INPUT.CROP.ENABLED", "True"], "INPUT.CROP.TYPE 'absolute'"),
    (["MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", "[16, 16]"], "PROJECT_CHANNELS"),
])
def test_bad_config_fails_naming_the_key(opts, match):
    cfg = _shapes_cfg("deeplab_v3_plus_R_18_os16.yaml", *opts)
    with pytest.raises(ValueError, match=match):
        build_model(cfg)


def test_crop_fixes_the_aspp_pooling_kernel():
    cfg = _shapes_cfg("deeplab_v3_R_18_os16.yaml", "INPUT.CROP.ENABLED", "True",
                      "INPUT.CROP.TYPE", "absolute", "INPUT.CROP.SIZE", "[160, 192]")
    aspp = build_model(cfg).sem_seg_head.aspp
    assert aspp.pool_kernel_size == (10, 12)


# -- the heads -----------------------------------------------------------------------------------


def _features(n=2, h=8, w=10):
    return {"res2": torch.randn(n, 12, 4 * h, 4 * w), "res5": torch.randn(n, 24, h, w)}


SHAPES_IN = {"res2": ShapeSpec(channels=12, stride=4), "res5": ShapeSpec(channels=24, stride=16)}


@pytest.mark.parametrize("separable", [False, True])
def test_v3_plus_head_shapes_and_names(separable):
    torch.manual_seed(0)
    head = DeepLabV3PlusHead(
        SHAPES_IN, project_channels=[6], aspp_dilations=[1, 2, 3], aspp_dropout=0.0,
        decoder_channels=[8, 10], common_stride=4, norm="", num_classes=5,
        use_depthwise_separable_conv=separable, ignore_value=255,
    ).eval()
    keys = set(head.state_dict())
    fuse = "decoder.res2.fuse_conv.depthwise.weight" if separable else \
        "decoder.res2.fuse_conv.1.weight"
    assert {fuse, "decoder.res2.project_conv.weight", "decoder.res5.project_conv.project.weight",
            "predictor.weight"} <= keys
    if separable:
        assert head.decoder["res2"]["fuse_conv"].depthwise.kernel_size == (5, 5)
    logits, losses = head(_features())
    assert logits.shape == (2, 5, 128, 160) and losses == {}
    head.train()
    targets = torch.randint(0, 5, (2, 128, 160))
    targets[:, :10] = 255
    _, losses = head(_features(), targets)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])


def test_v3_plus_decoder_only_returns_features():
    head = DeepLabV3PlusHead(
        SHAPES_IN, project_channels=[6], aspp_dilations=[1, 2, 3], aspp_dropout=0.0,
        decoder_channels=[8, 10], common_stride=4, norm="",
    ).eval()
    assert not hasattr(head, "predictor")
    assert head(_features()).shape == (2, 8, 32, 40)


def test_v3_head_predicts_from_aspp():
    head = DeepLabV3Head(
        {"res5": SHAPES_IN["res5"]}, aspp_channels=8, aspp_dilations=[1, 2, 3],
        aspp_dropout=0.0, norm="", num_classes=3, common_stride=16,
    ).eval()
    logits, _ = head({"res5": torch.randn(1, 24, 4, 6)})
    assert logits.shape == (1, 3, 64, 96)
    assert head.predictor.weight.shape == (3, 8, 1, 1)


def test_v3_head_rejects_two_features():
    with pytest.raises(ValueError, match="one feature.*DeepLabV3PlusHead"):
        DeepLabV3Head(SHAPES_IN, aspp_channels=8, aspp_dilations=[1, 2, 3], aspp_dropout=0.0,
                      norm="", num_classes=3, common_stride=16)


def test_loss_crops_logits_that_overhang_the_labels():
    """An input whose size is not a multiple of 16: the upsampled logits overhang the labels at
    the bottom/right and the loss is taken on their top-left part, the pixels that
    sem_seg_postprocess keeps at inference."""
    torch.manual_seed(0)
    head = DeepLabV3Head(
        {"res5": SHAPES_IN["res5"]}, aspp_channels=8, aspp_dilations=[1, 2, 3],
        aspp_dropout=0.0, norm="", num_classes=3, common_stride=16,
        loss_type="cross_entropy",
    ).train()
    features = {"res5": torch.randn(1, 24, 3, 4)}   # from a 40 x 57 input, say
    targets = torch.randint(0, 3, (1, 40, 57))
    _, losses = head(features, targets)
    upsampled = head._upsample(head.layers(features))
    assert upsampled.shape[-2:] == (48, 64)
    expected = nn.functional.cross_entropy(upsampled[..., :40, :57], targets)
    assert losses["loss_sem_seg"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_shapes_model_trains_a_step_with_hard_pixel_mining():
    cfg = _shapes_cfg("deeplab_v3_plus_R_18_os16_dsconv.yaml",
                      "MODEL.SEM_SEG_HEAD.LOSS_TYPE", "hard_pixel_mining")
    model = build_model(cfg)
    assert isinstance(model.sem_seg_head.loss, DeepLabCE)
    batch = [{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8),
              "sem_seg": torch.randint(0, 9, (64, 80))} for _ in range(2)]
    with EventStorage():
        losses = model(batch)
    losses["loss_sem_seg"].backward()
    assert model.sem_seg_head.predictor.weight.grad.abs().sum() > 0
    assert model.backbone.stem.conv1.weight.grad.abs().sum() > 0
