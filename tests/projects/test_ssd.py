"""SSD project: its config keys, default boxes, matching, hard negative mining and losses on
hand-computed cases; the VGG backbone's maps; one training step of SSD300; the errors a bad
config gets. (Output parity with torchvision: test_ssd_parity.py.)"""

import argparse
import math
from pathlib import Path

import pytest
import torch

import train_net
from projects.SSD import (
    SSD,
    PriorBoxGenerator,
    SSDVGGBackbone,
    add_ssd_config,
    grid_prior_boxes,
    hard_negative_mask,
    match_priors,
    prior_scales,
    prior_shapes,
    ssd_losses,
)
from segtron.config import get_cfg
from segtron.modeling import build_model
from segtron.structures import Boxes, Instances

REPO = Path(__file__).resolve().parents[2]
SSD300_YAML = REPO / "projects/SSD/configs/COCO-Detection/ssd300_vgg16.yaml"


def _ssd300_cfg(*opts):
    return train_net.build_config(
        argparse.Namespace(config_file=str(SSD300_YAML), opts=["MODEL.DEVICE", "cpu", *opts])
    )


@pytest.fixture(scope="module")
def ssd300():
    """SSD300 from the shipped config with 5 classes and nothing frozen."""
    torch.manual_seed(0)
    return build_model(_ssd300_cfg("MODEL.SSD.NUM_CLASSES", "5", "MODEL.BACKBONE.FREEZE_AT", "0"))


# -- config --------------------------------------------------------------------------------------


def test_add_ssd_config_adds_torchvision_defaults_and_keeps_existing_values():
    cfg = get_cfg()
    add_ssd_config(cfg)
    ssd = cfg.MODEL.SSD
    assert ssd.SCALES == [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]
    assert ssd.ASPECT_RATIOS == [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    assert ssd.STEPS == [8, 16, 32, 64, 100, 300]
    assert (ssd.IOU_THRESHOLD, ssd.NEG_POS_RATIO) == (0.5, 3.0)
    assert tuple(ssd.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
    assert (ssd.SCORE_THRESH_TEST, ssd.TOPK_CANDIDATES_TEST, ssd.NMS_THRESH_TEST) == (
        0.01, 400, 0.45,
    )
    assert (ssd.MIN_SCALE, ssd.MAX_SCALE, ssd.IMAGE_SIZE) == (0.2, 0.9, 300)
    ssd.NUM_CLASSES = 20
    add_ssd_config(cfg)
    assert cfg.MODEL.SSD.NUM_CLASSES == 20


def test_shipped_config_is_torchvisions_ssd300():
    cfg = _ssd300_cfg()
    assert cfg.MODEL.META_ARCHITECTURE == "SSD" and cfg.MODEL.SSD.NUM_CLASSES == 80
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 200
    # torchvision's mean (0.48235, 0.45882, 0.40784) and std 1/255 on 0..1 images, in 0..255.
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx([255 * 0.48235, 255 * 0.45882, 255 * 0.40784])
    assert cfg.MODEL.PIXEL_STD == [1.0, 1.0, 1.0] and cfg.INPUT.FORMAT == "RGB"


def test_project_is_importable_by_detectron2_style_name():
    import projects.SSD
    import segtron.projects.ssd

    assert segtron.projects.ssd is projects.SSD


# -- default boxes -------------------------------------------------------------------------------


def test_default_boxes_of_a_2x2_map_by_hand():
    """100x100 image, 2x2 map (centres 25 and 75 px), s_k = 0.2, s_{k+1} = 0.5, ratio 2.

    Per cell: square of side 0.2 * 100 = 20; extra square of side sqrt(0.2 * 0.5) * 100 =
    31.6227766; 0.2 * sqrt(2) * 100 = 28.2842712 wide by 0.2 / sqrt(2) * 100 = 14.1421356
    high; and that box turned."""
    shapes = prior_shapes(0.2, 0.5, [2])
    boxes = grid_prior_boxes((2, 2), (100, 100), shapes)
    cell = torch.tensor(
        [
            [15.0, 15.0, 35.0, 35.0],
            [9.1886117, 9.1886117, 40.8113883, 40.8113883],
            [10.8578644, 17.9289322, 39.1421356, 32.0710678],
            [17.9289322, 10.8578644, 32.0710678, 39.1421356],
        ],
        dtype=torch.float64,
    )
    # Rows (y * 2 + x) * 4 + a: cells (0, 0), (0, 1), (1, 0), (1, 1).
    shift = {0: (0, 0), 1: (50, 0), 2: (0, 50), 3: (50, 50)}
    expected = torch.cat(
        [cell + torch.tensor([dx, dy, dx, dy], dtype=torch.float64) for dx, dy in shift.values()]
    )
    assert boxes.shape == (16, 4)
    torch.testing.assert_close(boxes, expected, rtol=0, atol=1e-6)
    # An explicit step of 40 px puts the centres at 20 and 60.
    stepped = grid_prior_boxes((2, 2), (100, 100), shapes, step=40)
    torch.testing.assert_close(stepped[0], torch.tensor([10.0, 10, 30, 30], dtype=torch.float64))
    torch.testing.assert_close(stepped[12], torch.tensor([50.0, 50, 70, 70], dtype=torch.float64))


def test_default_boxes_clip_sizes_on_a_non_square_image():
    """One cell on a 100 (high) x 200 (wide) image, s_k = 0.8, s_{k+1} = 1.25, ratio 2: the
    ratio-2 box would be 0.8 * sqrt(2) = 1.1314 of the width; clipped, it is the full width
    and 0.8 / sqrt(2) = 0.5657 of the height."""
    shapes = prior_shapes(0.8, 1.25, [2])
    clipped = grid_prior_boxes((1, 1), (100, 200), shapes, clip=True)
    expected = torch.tensor(
        [
            [20.0, 10.0, 180.0, 90.0],  # 160 x 80
            [0.0, 0.0, 200.0, 100.0],  # sqrt(0.8 * 1.25) = 1
            [0.0, 21.7157288, 200.0, 78.2842712],  # 200 x 56.5685425
            [43.4314575, 0.0, 156.5685425, 100.0],  # 113.137085 x 100
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(clipped, expected, rtol=0, atol=1e-6)
    unclipped = grid_prior_boxes((1, 1), (100, 200), shapes, clip=False)
    assert unclipped[2, 0].item() == pytest.approx(100 - 113.137085, abs=1e-5)


def test_paper_scales_and_ssd300_box_count():
    assert prior_scales(6, 0.2, 0.9) == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.0])
    generator = PriorBoxGenerator(
        scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
        aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
        steps=[8, 16, 32, 64, 100, 300],
    )
    assert generator.num_cell_anchors == [4, 6, 6, 6, 4, 4]
    maps = [torch.zeros(1, 1, s, s) for s in (38, 19, 10, 5, 3, 1)]
    boxes = generator(maps, (300, 300))
    # 38^2 * 4 + 19^2 * 6 + 10^2 * 6 + 5^2 * 6 + 3^2 * 4 + 4: the paper's 8732 boxes.
    assert sum(len(b) for b in boxes) == 8732
    # Last map: one cell centred at 150; its square is 0.87 * 300 = 261 px.
    torch.testing.assert_close(boxes[5].tensor[0], torch.tensor([19.5, 19.5, 280.5, 280.5]))


# -- matching ------------------------------------------------------------------------------------


def test_match_priors_threshold_and_forced_best_prior():
    iou = torch.tensor(
        [
            [0.3, 0.8, 0.0, 0.0, 0.0, 0.0],  # gt 0 takes prior 1 (>= 0.5)
            [0.0, 0.0, 0.8, 0.7, 0.0, 0.0],  # gt 1: priors 2 and 3 by threshold
            [0.0, 0.0, 0.0, 0.6, 0.4, 0.0],  # gt 2's best is prior 3: it takes it from gt 1
            [0.0, 0.0, 0.0, 0.0, 0.45, 0.1],  # gt 3's best, prior 4, is below 0.5: forced
        ]
    )
    assert match_priors(iou, 0.5).tolist() == [-1, 0, 1, 2, 3, -1]
    # Two gts with the same best prior: the later one gets it.
    assert match_priors(torch.tensor([[0.9, 0.2], [0.6, 0.1]]), 0.5).tolist() == [1, -1]
    assert match_priors(torch.zeros(0, 3), 0.5).tolist() == [-1, -1, -1]


def test_label_priors_scales_the_ground_truth_and_encodes_the_matches(ssd300):
    """Ground truth on a 200x200 image, default boxes on the 100x100 network input (so the gt
    is halved). Network-pixel IoUs: g0 [0,0,18,18] / p1 [0,0,20,20] = 324/400 = 0.81;
    g1 [52,50,72,70] / p2 [50,50,70,70] = 360/440 = 0.818 and / p3 [55,50,75,70] =
    340/460 = 0.739; g2 [92,80,100,100] / p4 [80,80,100,100] = 160/400 = 0.4 (forced);
    g3 [60,55,75,70] / p3 = 225/400 = 0.5625 (its best: p3 goes to g3), / p2 = 150/475."""
    priors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 20.0, 20.0],
            [50.0, 50.0, 70.0, 70.0],
            [55.0, 50.0, 75.0, 70.0],
            [80.0, 80.0, 100.0, 100.0],
            [0.0, 80.0, 20.0, 100.0],
        ]
    )
    gt = Instances(
        (200, 200),
        gt_boxes=Boxes(torch.tensor(
            [[0.0, 0, 36, 36], [104, 100, 144, 140], [184, 160, 200, 200], [120, 110, 150, 140]]
        )),
        gt_classes=torch.tensor([4, 0, 2, 1]),
    )
    labels, deltas = ssd300.label_priors(priors, [gt], [(100, 100)])
    assert labels.tolist() == [[0, 5, 1, 2, 3, 0]]  # class + 1; 0 is background
    # p1 (centre 10, side 20) -> g0 (centre 9, side 18): (10 * -1/20, same, 5 ln 0.9, same).
    ln09, ln04 = 5 * math.log(0.9), 5 * math.log(0.4)
    torch.testing.assert_close(deltas[0, 1], torch.tensor([-0.5, -0.5, ln09, ln09]))
    # p4 (centre 90, 90, 20 x 20) -> g2 (centre 96, 90, 8 x 20): (10 * 6/20, 0, 5 ln 0.4, 0).
    torch.testing.assert_close(deltas[0, 4], torch.tensor([3.0, 0.0, ln04, 0.0]))
    assert deltas[0, [0, 5]].abs().sum() == 0


# -- hard negative mining and losses -------------------------------------------------------------


def _softplus(x):
    return math.log1p(math.exp(x))


def test_hard_negative_mining_and_losses_by_hand():
    """Image 0: prior 0 positive (class 0, logits (bg 0, obj 2): loss softplus(-2) = 0.1269);
    priors 1-7 negative with logit gaps obj - bg = 3, -1, 2, 0, 5, 1, -2 (loss softplus(gap)).
    3:1 keeps the three largest: priors 5 (5.0067), 1 (3.0486) and 3 (2.1269). Image 1 has no
    positive, so none of its (large-loss) negatives count. One positive in the batch: the
    losses are sums. Box loss on prior 0 only: smooth-L1 (beta 1) of (0.5, -2, 0, -0.5) =
    0.125 + 1.5 + 0 + 0.125 = 1.75."""
    gaps = [3.0, -1.0, 2.0, 0.0, 5.0, 1.0, -2.0]
    logits = torch.zeros(2, 8, 2)
    logits[0, 0, 1] = 2.0
    logits[0, 1:, 1] = torch.tensor(gaps)
    logits[1, :, 1] = 10.0
    labels = torch.zeros(2, 8, dtype=torch.int64)
    labels[0, 0] = 1
    pred = torch.full((2, 8, 4), 50.0)  # only positives' deltas count
    pred[0, 0] = torch.tensor([0.5, -2.0, 0.0, 0.0])
    target = torch.zeros(2, 8, 4)
    target[0, 0, 3] = 0.5

    per_prior = torch.nn.functional.softplus(logits[..., 1] - logits[..., 0])
    per_prior[0, 0] = _softplus(-2.0)
    kept = hard_negative_mask(per_prior, labels > 0, 3.0)
    assert kept[0].nonzero().flatten().tolist() == [1, 3, 5]
    assert not kept[1].any()

    losses = ssd_losses(logits, pred, labels, target, neg_pos_ratio=3.0, smooth_l1_beta=1.0)
    expected_cls = _softplus(-2.0) + _softplus(5.0) + _softplus(3.0) + _softplus(2.0)
    assert expected_cls == pytest.approx(0.126928 + 5.006715 + 3.048587 + 2.126928, abs=1e-5)
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-6)
    assert losses["loss_box_reg"].item() == pytest.approx(1.75, rel=1e-6)


def test_hard_negative_quota_rounds_up_and_is_capped_by_the_negatives():
    loss = torch.tensor([[9.0, 1.0, 4.0, 3.0, 2.0, 0.5]])
    positive = torch.tensor([[True, True, False, False, False, False]])
    # 1.5 * 2 positives = 3 negatives: 4.0, 3.0, 2.0 (the positives' losses never count).
    assert hard_negative_mask(loss, positive, 1.5).nonzero()[:, 1].tolist() == [2, 3, 4]
    # 10 * 2 = 20 > the 4 negatives: all of them.
    assert hard_negative_mask(loss, positive, 10.0).sum().item() == 4


# -- backbone ------------------------------------------------------------------------------------


def test_ssd300_backbone_maps_and_strides(ssd300):
    backbone = ssd300.backbone
    shapes = backbone.output_shape()
    assert [(n, s.channels, s.stride) for n, s in shapes.items()] == [
        ("conv4_3", 512, 8), ("conv7", 1024, 16), ("conv8_2", 512, 32),
        ("conv9_2", 256, 64), ("conv10_2", 256, 100), ("conv11_2", 256, 300),
    ]
    with torch.no_grad():
        features = backbone(torch.zeros(1, 3, 300, 300))
    assert {n: tuple(f.shape[-2:])[0] for n, f in features.items()} == {
        "conv4_3": 38, "conv7": 19, "conv8_2": 10, "conv9_2": 5, "conv10_2": 3, "conv11_2": 1,
    }
    assert backbone.conv6.dilation == (6, 6) and backbone.pools[2].ceil_mode
    assert torch.all(backbone.conv4_3_norm.weight == 20.0)


def test_ssd512_extra_layers_shrink_conv7_to_1x1():
    backbone = SSDVGGBackbone(extra_layers="SSD512", input_size=512)
    strides = [s.stride for s in backbone.output_shape().values()]
    assert strides == [8, 16, 32, 64, 128, 256, 512]
    x, sizes = torch.zeros(1, 1024, 32, 32), []  # conv7 at 512 px
    with torch.no_grad():
        for first, second in backbone._extra_convs:
            x = getattr(backbone, second)(getattr(backbone, first)(x))
            sizes.append(x.shape[-1])
    assert sizes == [16, 8, 4, 2, 1]


def test_freeze_at_freezes_vgg_stages():
    backbone = SSDVGGBackbone(freeze_at=2)
    frozen = {n.split(".")[0] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}


# -- training ------------------------------------------------------------------------------------


def test_training_step_is_finite_and_reaches_every_parameter(ssd300):
    """One ground-truth box per map's scale (21, 45, 99, 153, 207 and 261 px on a 300x300
    image), so that every map's head has positives and gets gradients."""
    ssd300.train()
    image = torch.rand(3, 300, 300) * 255
    gt = Instances(
        (300, 300),
        gt_boxes=Boxes(torch.tensor([
            [80.0, 80, 101, 101], [20, 150, 65, 195], [150, 20, 249, 119],
            [100, 100, 253, 253], [50, 40, 257, 247], [20, 20, 281, 281],
        ])),
        gt_classes=torch.tensor([1, 4, 0, 2, 3, 1]),
    )
    losses = ssd300([{"image": image, "instances": gt}])
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    ssd300.zero_grad()
    sum(losses.values()).backward()
    without = [n for n, p in ssd300.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert without == []
    assert all(torch.isfinite(p.grad).all() for p in ssd300.parameters())
    ssd300.eval()


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opts, error, match",
    [
        (["MODEL.SSD.SCALES", "[0.1, 0.2]"], ValueError, "MODEL.SSD.SCALES"),
        (["MODEL.SSD.ASPECT_RATIOS", "[[2]]"], ValueError, "MODEL.SSD.ASPECT_RATIOS"),
        (["MODEL.SSD.STEPS", "[8, 16]"], ValueError, "MODEL.SSD.STEPS"),
        (["MODEL.SSD.EXTRA_LAYERS", "SSD600"], ValueError, "MODEL.SSD.EXTRA_LAYERS"),
        (["MODEL.SSD.IMAGE_SIZE", "200"], ValueError, "MODEL.SSD.IMAGE_SIZE"),
        (["MODEL.SSD.NUM_CLASSES", "0"], ValueError, "MODEL.SSD.NUM_CLASSES"),
        (["MODEL.BACKBONE.FREEZE_AT", "6"], ValueError, "MODEL.BACKBONE.FREEZE_AT"),
    ],
)
def test_bad_config_fails_naming_the_key(opts, error, match):
    with pytest.raises(error, match=match):
        build_model(_ssd300_cfg(*opts))


def test_unknown_in_feature_names_the_key():
    opts = ["MODEL.SSD.IN_FEATURES", "['conv4_3', 'fc7']", "MODEL.SSD.ASPECT_RATIOS", "[[2], [2]]",
            "MODEL.SSD.SCALES", "[0.1, 0.2, 0.3]", "MODEL.SSD.STEPS", "[]"]
    with pytest.raises(ValueError, match="MODEL.SSD.IN_FEATURES"):
        build_model(_ssd300_cfg(*opts))


def test_model_is_the_registered_ssd(ssd300):
    assert isinstance(ssd300, SSD)
    assert [len(m.weight) for m in ssd300.head.cls_score] == [4 * 6, 6 * 6, 6 * 6, 6 * 6,
                                                             4 * 6, 4 * 6]
