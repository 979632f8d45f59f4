"""SSD's ResNet backbone (projects/SSD/resnet.py) and its two configs: the maps of the "nvidia"
and "multi_level" layouts, the default boxes the shapes model builds, one training step, and
the errors a bad config gets."""

import argparse
from pathlib import Path

import pytest
import torch

import train_net
from projects.SSD import SSDResNetBackbone, build_ssd_resnet_backbone
from segtron.checkpoint.c2_model_loading import align_and_update_state_dicts
from segtron.layers import ShapeSpec
from segtron.modeling import build_model
from segtron.modeling.backbone.resnet import build_resnet_backbone
from segtron.structures import Boxes, Instances

REPO = Path(__file__).resolve().parents[2]
R50_YAML = REPO / "projects/SSD/configs/COCO-Detection/ssd300_R_50.yaml"
SHAPES_YAML = REPO / "projects/SSD/configs/Shapes/ssd_R_18.yaml"


def _cfg(path, *opts):
    return train_net.build_config(
        argparse.Namespace(config_file=str(path), opts=["MODEL.DEVICE", "cpu", *opts])
    )


def _side(size, *layers):
    """Side of a map after convs / poolings given as (kernel, stride, padding)."""
    for kernel, stride, padding in layers:
        size = (size + 2 * padding - kernel) // stride + 1
    return size


def _maps(backbone, size):
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.rand(1, 3, size, size))
    return {name: tuple(x.shape[1:]) for name, x in out.items()}


@pytest.fixture(scope="module")
def shapes_model():
    torch.manual_seed(0)
    return build_model(_cfg(SHAPES_YAML))


# -- the maps ------------------------------------------------------------------------------------


def test_nvidia_layout_of_ssd300_R_50_gives_38_19_10_5_3_1():
    backbone = build_model(_cfg(R50_YAML)).backbone
    assert isinstance(backbone, SSDResNetBackbone)
    # By hand, at 300 px: stem conv 7x7/2 pad 3 -> 150, max-pool 3x3/2 pad 1 -> 75, res2 keeps
    # it, res3's stride-2 first block -> 38, res4 (first stride 1) keeps 38; then the extras'
    # 3x3 convs: /2 pad 1 -> 19 -> 10 -> 5, /1 pad 0 -> 3 -> 1.
    stem = _side(300, (7, 2, 3), (3, 2, 1))
    res4 = _side(stem, (3, 2, 1))
    sides = [res4]
    for layer in [(3, 2, 1)] * 3 + [(3, 1, 0)] * 2:
        sides.append(_side(sides[-1], layer))
    assert sides == [38, 19, 10, 5, 3, 1]
    names = ["res4", "extra1", "extra2", "extra3", "extra4", "extra5"]
    channels = [1024, 512, 512, 256, 256, 256]
    assert _maps(backbone, 300) == {n: (c, s, s) for n, c, s in zip(names, channels, sides)}
    shapes = backbone.output_shape()
    assert list(shapes) == names
    assert [shapes[n].channels for n in names] == channels
    # Strided layers give 8 .. 64; the unpadded 3x3 convs leave maps of 3 and 1 on 300 px.
    assert [shapes[n].stride for n in names] == [8, 16, 32, 64, 100, 300]


def test_nvidia_res4_keeps_the_plain_resnets_parameters():
    """Only strides change: MSRA / torchvision ResNet-50 weights load into res4 unchanged."""
    cfg = _cfg(R50_YAML)
    model = build_model(cfg)
    ssd_resnet = model.backbone.bottom_up
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    plain = build_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert {k: v.shape for k, v in ssd_resnet.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    # A (converted) ImageNet checkpoint's names, "res4.0.conv1.weight", reach every ResNet
    # parameter of the detector, "backbone.bottom_up.res4.0.conv1.weight".
    aligned = align_and_update_state_dicts(model.state_dict(), plain.state_dict(), False)
    ours = {"backbone.bottom_up." + k for k in ssd_resnet.state_dict()}
    assert ours <= set(aligned)
    first = ssd_resnet.res4[0]
    assert first.stride == 1 and first.conv1.stride == (1, 1) and first.shortcut.stride == (1, 1)
    assert plain.res4[0].stride == 2


def test_nvidia_layout_on_a_thin_resnet_18():
    cfg = _cfg(R50_YAML, "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
               "MODEL.RESNETS.STEM_OUT_CHANNELS", "32",
               "MODEL.SSD.RESNET_EXTRA_CHANNELS", "[128, 128, 64, 64, 64]")
    backbone = build_ssd_resnet_backbone(cfg, ShapeSpec(channels=3))
    maps = _maps(backbone, 300)
    assert [maps[n] for n in backbone.output_shape()] == [
        (128, 38, 38), (128, 19, 19), (128, 10, 10), (64, 5, 5), (64, 3, 3), (64, 1, 1),
    ]


def test_multi_level_layout_of_the_shapes_config_at_256(shapes_model):
    backbone = shapes_model.backbone
    # 256 -> stem 128 -> pool 64 -> res2 64 -> res3 32 -> res4 16 -> res5 8; extras 3x3/2 pad
    # 1: 4, 2, 1.
    sides = [_side(256, (7, 2, 3), (3, 2, 1), (3, 2, 1))]
    for _ in range(5):
        sides.append(_side(sides[-1], (3, 2, 1)))
    assert sides == [32, 16, 8, 4, 2, 1]
    names = ["res3", "res4", "res5", "extra1", "extra2", "extra3"]
    channels = [64, 128, 256, 256, 256, 256]  # half-width ResNet-18; extras as wide as res5
    assert _maps(backbone, 256) == {n: (c, s, s) for n, c, s in zip(names, channels, sides)}
    shapes = backbone.output_shape()
    assert list(shapes) == names
    assert [shapes[n].channels for n in names] == channels
    assert [shapes[n].stride for n in names] == [8, 16, 32, 64, 128, 256]
    # Each extra: 1x1 conv to half its width, then 3x3 stride 2, both normalised.
    extra = backbone.extra1
    assert (extra.conv1.out_channels, extra.conv2.stride) == (128, (2, 2))
    assert extra.conv1.norm is not None and extra.conv2.norm is not None


@pytest.mark.parametrize("depth, res_channels", [(18, [128, 256, 512]), (34, [128, 256, 512]),
                                                 (50, [512, 1024, 2048]),
                                                 (101, [512, 1024, 2048])])
def test_every_resnet_depth_in_both_layouts(depth, res_channels):
    opts = ["MODEL.RESNETS.DEPTH", str(depth), "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64" if depth < 50 else "256", "MODEL.RESNETS.STEM_OUT_CHANNELS", "64",
            "MODEL.SSD.IMAGE_SIZE", "128"]
    multi = build_ssd_resnet_backbone(
        _cfg(SHAPES_YAML, *opts, "MODEL.SSD.IN_FEATURES", '["res3", "res4", "res5", "extra1"]',
             "MODEL.SSD.RESNET_EXTRA_CHANNELS", "[64]"),
        ShapeSpec(channels=3),
    )
    assert _maps(multi, 128) == {
        "res3": (res_channels[0], 16, 16), "res4": (res_channels[1], 8, 8),
        "res5": (res_channels[2], 4, 4), "extra1": (64, 2, 2),
    }
    nvidia = build_ssd_resnet_backbone(
        _cfg(R50_YAML, *opts, "MODEL.SSD.IN_FEATURES", '["res4", "extra1"]',
             "MODEL.SSD.RESNET_EXTRA_CHANNELS", "[64]"),
        ShapeSpec(channels=3),
    )
    assert _maps(nvidia, 128) == {"res4": (res_channels[1], 16, 16), "extra1": (64, 8, 8)}
    assert nvidia.output_shape()["res4"].stride == 8


def test_multi_level_extra_channels_and_fewer_maps():
    cfg = _cfg(SHAPES_YAML, "MODEL.SSD.IN_FEATURES", '["res4", "extra1", "extra2"]',
               "MODEL.SSD.RESNET_EXTRA_CHANNELS", "[96, 48]")
    backbone = build_ssd_resnet_backbone(cfg, ShapeSpec(channels=3))
    assert _maps(backbone, 256) == {
        "res4": (128, 16, 16), "extra1": (96, 4, 4), "extra2": (48, 2, 2),
    }
    assert not hasattr(backbone, "extra3")


# -- default boxes and training ------------------------------------------------------------------


def test_shapes_model_builds_sum_of_hwa_default_boxes(shapes_model):
    ssd = _cfg(SHAPES_YAML).MODEL.SSD
    size = ssd.IMAGE_SIZE
    backbone = shapes_model.backbone
    backbone.eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, size, size))
    maps = [features[name] for name in ssd.IN_FEATURES]
    # A = 2 squares + 2 boxes per aspect ratio, per map.
    per_location = [2 + 2 * len(ratios) for ratios in ssd.ASPECT_RATIOS]
    expected = sum(f.shape[-2] * f.shape[-1] * a for f, a in zip(maps, per_location))
    assert expected == (32 * 32 + 16 * 16 + 8 * 8 + 4 * 4 + 2 * 2 + 1) * 4
    priors = shapes_model.prior_generator(maps, (size, size))
    assert sum(len(b) for b in priors) == expected
    logits, deltas = shapes_model.head(maps)
    assert sum(x[0].numel() for x in deltas) == expected * 4
    assert sum(x[0].numel() for x in logits) == expected * (ssd.NUM_CLASSES + 1)


def test_one_training_step_of_the_shapes_config(shapes_model):
    torch.manual_seed(1)
    inputs = []
    for height, width in [(240, 272), (256, 230)]:
        instances = Instances(
            (height, width),
            # Boxes for the fine maps to the coarsest (1 x 1, 240 px default boxes).
            gt_boxes=Boxes(torch.tensor([[10.0, 20.0, 30.0, 40.0], [100.0, 90.0, 220.0, 200.0],
                                         [5.0, 5.0, 225.0, 225.0]])),
            gt_classes=torch.tensor([0, 3, 4]),
        )
        inputs.append({"image": torch.rand(3, height, width) * 255, "instances": instances})
    shapes_model.train()
    shapes_model.zero_grad()
    losses = shapes_model(inputs)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    stem_grad = shapes_model.backbone.bottom_up.stem.conv1.weight.grad
    assert stem_grad is not None and torch.isfinite(stem_grad).all() and stem_grad.abs().sum() > 0
    extra_grad = shapes_model.backbone.extra3.conv2.weight.grad
    assert extra_grad is not None and extra_grad.abs().sum() > 0


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, opts, words",
    [
        (SHAPES_YAML, ["MODEL.SSD.RESNET_LAYOUT", "fpn"], "MODEL.SSD.RESNET_LAYOUT"),
        (SHAPES_YAML, ["MODEL.SSD.RESNET_EXTRA_NORM", "FrozenBN"], "MODEL.SSD.RESNET_EXTRA_NORM"),
        (SHAPES_YAML, ["MODEL.SSD.RESNET_EXTRA_CHANNELS", "[64]"],
         "MODEL.SSD.RESNET_EXTRA_CHANNELS"),
        (SHAPES_YAML, ["MODEL.SSD.IN_FEATURES", '["res3", "p4"]'], "MODEL.SSD.IN_FEATURES"),
        (SHAPES_YAML, ["MODEL.SSD.IN_FEATURES", "[]"], "MODEL.SSD.IN_FEATURES"),
        (SHAPES_YAML, ["MODEL.SSD.IN_FEATURES", '["extra0"]'], "MODEL.SSD.IN_FEATURES"),
        (SHAPES_YAML, ["MODEL.RESNETS.RES5_DILATION", "2"], "MODEL.RESNETS.RES5_DILATION"),
        # 100 px: res4 13, extras 7, 4, 2, then an unpadded 3x3 conv on 2 x 2.
        (R50_YAML, ["MODEL.SSD.IMAGE_SIZE", "100"], "MODEL.SSD.IMAGE_SIZE"),
        (R50_YAML, ["MODEL.SSD.IN_FEATURES", '["res4", "extra6"]'], "extra5"),
        (R50_YAML, ["MODEL.SSD.IN_FEATURES", '["res4", "res5"]'], "MODEL.SSD.RESNET_LAYOUT"),
    ],
)
def test_bad_configs_name_the_key(path, opts, words):
    cfg = _cfg(path, *opts)
    with pytest.raises(ValueError, match=words):
        build_ssd_resnet_backbone(cfg, ShapeSpec(channels=3))
