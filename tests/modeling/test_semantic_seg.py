"""SemanticSegmentor and SemSegFPNHead: Detectron2 parity on the golden fixture, the head's
layout, the loss on a hand-made case, label checks and build-time errors."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling import build_model
from segtron.modeling.backbone import Backbone
from segtron.modeling.meta_arch import SemanticSegmentor, SemSegFPNHead
from tests.modeling.golden import (
    MODES,
    assert_feature_matches,
    assert_input_sizes,
    golden_forward,
    golden_mode,
)

FIXTURE = "golden/semantic_R50_FPN_thin"


@pytest.fixture(scope="module", params=MODES)
def golden(compat_dir, request):
    with golden_mode(request.param):
        run = golden_forward(compat_dir / FIXTURE, request.param)
    run["sem_seg"] = run["outputs"][0]["sem_seg"].numpy()
    run["expected"] = run["expected"]["sem_seg"]
    yield run


def test_golden_input_sizes(golden):
    assert_input_sizes(golden["images"], golden["summary"])


@pytest.mark.parametrize("level", ["p2", "p3", "p4", "p5", "p6"])
def test_golden_fpn_features(golden, level):
    assert_feature_matches(golden["features"][level], golden["summary"], level)


def test_golden_sem_seg(golden):
    """Logits within 1e-3 of the largest |logit| and argmax equal on >= 99.9% of pixels
    (../shared/compat/README.md)."""
    ours, theirs = golden["sem_seg"], golden["expected"]
    assert ours.shape == theirs.shape == (4, 240, 320)
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
    assert (ours.argmax(0) == theirs.argmax(0)).mean() >= 0.999


# -- the head ------------------------------------------------------------------------------


def _levels(channels=8):
    return {f"p{k}": ShapeSpec(channels=channels, stride=2 ** k) for k in (2, 3, 4, 5)}


def test_head_layout_matches_detectron2_names():
    """Stride 4 -> 1 stage without upsampling; 8 -> 1 stage + 2x; 16 -> 2 stages; 32 -> 3."""
    head = SemSegFPNHead(_levels(), num_classes=5, conv_dims=32, common_stride=4, norm="GN")
    keys = set(head.state_dict())
    convs = {"p2": [0], "p3": [0], "p4": [0, 2], "p5": [0, 2, 4]}
    expected = {f"{level}.{i}.{p}" for level, idx in convs.items() for i in idx
                for p in ("weight", "norm.weight", "norm.bias")}
    assert keys == expected | {"predictor.weight", "predictor.bias"}
    assert isinstance(head.p5[1], nn.Upsample) and len(head.p2) == 1
    assert head.p2[0].bias is None  # no bias with a norm
    assert head.in_features == ["p2", "p3", "p4", "p5"]


def test_head_forward_shapes_and_inference_upsampling():
    torch.manual_seed(0)
    head = SemSegFPNHead(_levels(), num_classes=5, conv_dims=32, common_stride=4, norm="")
    features = {f"p{k}": torch.randn(2, 8, 64 // 2 ** k, 96 // 2 ** k) for k in (2, 3, 4, 5)}
    head.eval()
    logits, losses = head(features)
    assert logits.shape == (2, 5, 64, 96) and losses == {}
    coarse = head.layers(features)
    assert coarse.shape == (2, 5, 16, 24)
    up = F.interpolate(coarse, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(logits, up)


def test_loss_is_mean_cross_entropy_over_labelled_pixels():
    """Predictor forced to logits (0, log 3) everywhere: p(class 1) = 3/4, so a pixel labelled
    1 costs ln(4/3) and one labelled 0 costs ln 4; ignored pixels (255) do not count."""
    head = SemSegFPNHead({"p2": ShapeSpec(channels=4, stride=4)}, num_classes=2, conv_dims=4,
                         common_stride=4, ignore_value=255, loss_weight=2.0)
    with torch.no_grad():
        head.predictor.weight.zero_()
        head.predictor.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    targets = torch.full((1, 8, 8), 255, dtype=torch.int64)
    targets[0, :2] = 1  # 16 pixels of class 1
    targets[0, 2:3] = 0  # 8 pixels of class 0
    head.train()
    _, losses = head({"p2": torch.randn(1, 4, 2, 2)}, targets)
    expected = (16 * math.log(4 / 3) + 8 * math.log(4)) / 24
    assert losses["loss_sem_seg"].item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_head_rejects_bad_arguments():
    with pytest.raises(ValueError, match="COMMON_STRIDE"):
        SemSegFPNHead(_levels(), num_classes=3, conv_dims=8, common_stride=8)
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        SemSegFPNHead(_levels(), num_classes=0, conv_dims=8, common_stride=4)
    with pytest.raises(ValueError, match="IN_FEATURES"):
        SemSegFPNHead({}, num_classes=3, conv_dims=8, common_stride=4)


# -- the meta-architecture -----------------------------------------------------------------


class _OneLevelBackbone(Backbone):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 4, stride=4)
        self._out_features = ["p2"]
        self._out_feature_channels = {"p2": 8}
        self._out_feature_strides = {"p2": 4}

    @property
    def size_divisibility(self):
        return 8

    def forward(self, x):
        return {"p2": self.conv(x)}


def _segmentor():
    head = SemSegFPNHead({"p2": ShapeSpec(channels=8, stride=4)}, num_classes=3, conv_dims=8,
                         common_stride=4, ignore_value=255)
    return SemanticSegmentor(backbone=_OneLevelBackbone(), sem_seg_head=head,
                             pixel_mean=[0.0, 0.0, 0.0], pixel_std=[1.0, 1.0, 1.0])


def test_training_pads_labels_with_the_ignore_value_and_checks_them():
    model = _segmentor().train()
    labels = torch.randint(0, 3, (20, 30))
    batch = [{"image": torch.rand(3, 20, 30) * 255, "sem_seg": labels},
             {"image": torch.rand(3, 24, 24) * 255, "sem_seg": torch.full((24, 24), 255)}]
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()

    bad = torch.zeros(20, 30, dtype=torch.int64)
    bad[0, 0] = 7
    with pytest.raises(ValueError, match=r"a.png.*labels \[7\].*0..2.*255"):
        model([{"image": torch.rand(3, 20, 30), "sem_seg": bad, "file_name": "a.png"}])
    with pytest.raises(ValueError, match=r"b.png.*\(20, 31\).*\(20, 30\)"):
        model([{"image": torch.rand(3, 20, 30), "sem_seg": torch.zeros(20, 31, dtype=torch.int64),
                "file_name": "b.png"}])
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": torch.rand(3, 20, 30)}])


def test_inference_crops_padding_and_resizes_to_the_output_size():
    model = _segmentor().eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 20, 30) * 255, "height": 40, "width": 60},
                     {"image": torch.rand(3, 24, 24) * 255}])
    assert out[0]["sem_seg"].shape == (3, 40, 60)
    assert out[1]["sem_seg"].shape == (3, 24, 24)


def test_build_from_config_and_in_features_error():
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "SemanticSegmentor", "MODEL.DEVICE", "cpu",
        "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone", "MODEL.RESNETS.DEPTH", "18",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "16", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
        "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    ])
    model = build_model(cfg)
    assert isinstance(model, SemanticSegmentor) and model.sem_seg_head.ignore_value == 255
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p9"]
    with pytest.raises(ValueError, match=r"MODEL.SEM_SEG_HEAD.IN_FEATURES.*\['p9'\]"):
        build_model(cfg)
