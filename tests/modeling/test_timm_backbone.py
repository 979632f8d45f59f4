"""TimmBackbone: any timm features_only model as a segtron backbone (random weights, nothing
downloaded), alone, under FPN, and inside Faster R-CNN and RetinaNet."""

import pytest
import torch

from segtron.config import get_cfg
from segtron.layers import FrozenBatchNorm2d, ShapeSpec
from segtron.modeling import build_backbone, build_model
from segtron.modeling.backbone import BACKBONE_REGISTRY, TimmBackbone
from segtron.structures import Boxes, Instances
from segtron.utils.events import EventStorage
from tests.conftest import REPO_ROOT

timm = pytest.importorskip("timm")
SHAPES = REPO_ROOT / "configs" / "Shapes"


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "efficientnet_b0"])
def test_outputs_match_feature_info(name):
    torch.manual_seed(0)
    backbone = TimmBackbone(name, norm="")
    info = timm.create_model(name, features_only=True).feature_info
    expected = {s: c for s, c in zip(info.reduction(), info.channels()) if s >= 4}
    shapes = backbone.output_shape()
    assert list(shapes) == ["res2", "res3", "res4", "res5"]
    assert {s.stride: s.channels for s in shapes.values()} == expected
    assert backbone.size_divisibility == 32
    out = backbone(torch.randn(2, 3, 64, 96))
    for k, s in shapes.items():
        assert out[k].shape == (2, s.channels, 64 // s.stride, 96 // s.stride), k


def test_out_indices_select_levels_and_name_other_strides():
    backbone = TimmBackbone("resnet18", out_indices=(0, 2, 4))
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {
        "stride2": 2, "res3": 8, "res5": 32}
    out = backbone(torch.randn(1, 3, 64, 64))
    assert out["stride2"].shape == (1, 64, 32, 32)
    assert out["res5"].shape == (1, 512, 2, 2)


def test_frozen_bn_conversion():
    frozen = TimmBackbone("resnet18")  # norm="FrozenBN" by default
    kept = TimmBackbone("resnet18", norm="")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == 20
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in kept.modules()) == 20
    # timm's BatchNormAct2d keeps its activation (timm's frozen variant).
    eff = TimmBackbone("efficientnet_b0")
    kinds = {type(m).__name__ for m in eff.modules()}
    assert "FrozenBatchNormAct2d" in kinds and "BatchNormAct2d" not in kinds
    x = torch.randn(1, 3, 64, 64)
    eff.train()
    assert torch.isfinite(eff(x)["res5"]).all()


def _trainable(backbone):
    return {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}


def test_freeze_at_follows_resnet_semantics():
    stages = {"layer1", "layer2", "layer3", "layer4"}
    assert _trainable(TimmBackbone("resnet18", norm="")) == {"conv1", "bn1"} | stages
    assert _trainable(TimmBackbone("resnet18", norm="", freeze_at=1)) == stages
    frozen2 = TimmBackbone("resnet18", norm="", freeze_at=2)
    assert _trainable(frozen2) == stages - {"layer1"}
    # Frozen parts get frozen BatchNorms (no running-statistics updates); the rest keep theirs.
    assert isinstance(frozen2.model.layer1[0].bn1, FrozenBatchNorm2d)
    assert type(frozen2.model.layer2[0].bn1) is not FrozenBatchNorm2d
    convnext = TimmBackbone("convnext_atto", freeze_at=1)
    assert _trainable(convnext) == {"stages_0", "stages_1", "stages_2", "stages_3"}
    with pytest.raises(ValueError, match="MODEL.BACKBONE.FREEZE_AT=6"):
        TimmBackbone("resnet18", freeze_at=6)


def test_errors_name_the_key():
    with pytest.raises(ValueError, match=r"MODEL.TIMM.NAME.*timm.list_models\('resnt\*'\)"):
        TimmBackbone("resnt18")
    with pytest.raises(ValueError, match="MODEL.TIMM.OUT_INDICES"):
        TimmBackbone("convnext_atto", out_indices=(1, 2, 3, 4))  # it has levels 0..3
    with pytest.raises(ValueError, match="MODEL.TIMM.NORM"):
        TimmBackbone("resnet18", norm="SyncBN")


def test_pretrained_failure_names_the_key(monkeypatch):
    def offline(name, **kwargs):
        assert kwargs["pretrained"] is True
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="MODEL.TIMM.PRETRAINED=True.*no network"):
        TimmBackbone("resnet18", pretrained=True)


def _cfg(path, *opts):
    cfg = get_cfg()
    cfg.merge_from_file(str(path))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def test_fpn_builders_from_config():
    assert "build_timm_fpn_backbone" in BACKBONE_REGISTRY
    cfg = _cfg(SHAPES / "faster_rcnn_timm_convnext_FPN.yaml", "MODEL.TIMM.NAME", "resnet18")
    fpn = build_backbone(cfg)
    assert isinstance(fpn.bottom_up, TimmBackbone)
    assert fpn.bottom_up.model_name == "resnet18"
    shapes = fpn.output_shape()
    assert {k: (v.stride, v.channels) for k, v in shapes.items()} == {
        f"p{k}": (2 ** k, cfg.MODEL.FPN.OUT_CHANNELS) for k in range(2, 7)}
    out = fpn(torch.randn(1, 3, 64, 64))
    assert {k: v.shape[-1] for k, v in out.items()} == {"p2": 16, "p3": 8, "p4": 4, "p5": 2,
                                                        "p6": 1}
    cfg = _cfg(SHAPES / "retinanet_R_18_FPN.yaml", "MODEL.BACKBONE.NAME",
               "build_timm_retinanet_fpn_backbone", "MODEL.TIMM.NAME", "efficientnet_b0")
    fpn = BACKBONE_REGISTRY.get("build_timm_retinanet_fpn_backbone")(cfg, ShapeSpec(channels=3))
    assert {k: v.stride for k, v in fpn.output_shape().items()} == {
        f"p{k}": 2 ** k for k in range(3, 8)}


def _batch(n=2, size=64):
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(n):
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 62.0]]))
        inst.gt_classes = torch.tensor([0, 3])
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": inst})
    return batch


@pytest.mark.parametrize("path, opts", [
    ("faster_rcnn_timm_convnext_FPN.yaml", []),
    ("retinanet_R_18_FPN.yaml", ["MODEL.BACKBONE.NAME", "build_timm_retinanet_fpn_backbone",
                                 "MODEL.TIMM.NAME", "resnet18", "INPUT.FORMAT", "RGB"]),
])
def test_detector_trains_one_step_and_predicts(path, opts):
    cfg = _cfg(SHAPES / path, *opts)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert isinstance(model.backbone.bottom_up, TimmBackbone)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.backbone.bottom_up.parameters()]
    with EventStorage():
        losses = model(_batch())
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    after = list(model.backbone.bottom_up.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))  # the backbone trains
    model.eval()
    with torch.no_grad():
        outputs = model([{"image": b["image"]} for b in _batch(1)])
    assert outputs[0]["instances"].image_size == (64, 64)
