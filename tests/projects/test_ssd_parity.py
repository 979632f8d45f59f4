"""SSD project: output parity with torchvision's ``ssd300_vgg16`` (random weights, loaded with
``load_torchvision_ssd300_vgg16``): the same detections on an image both resize to 300x300, the
same training losses, and the loaders' errors on state dicts that do not fit."""

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.detection import ssd300_vgg16

from projects.SSD import (
    SSDVGGBackbone,
    add_ssd_config,
    load_torchvision_ssd300_vgg16,
    load_torchvision_vgg16_features,
    torchvision_ssd_key_map,
)
from segtron.config import get_cfg
from segtron.modeling import build_model
from segtron.structures import Boxes, Instances

REPO = Path(__file__).resolve().parents[2]
SSD300_YAML = REPO / "projects/SSD/configs/COCO-Detection/ssd300_vgg16.yaml"

K = 3  # object classes; torchvision counts background too (num_classes=K + 1)
HEIGHT, WIDTH = 240, 320  # not 300x300: both models resize it


def _image() -> torch.Tensor:
    """(3, 240, 320) RGB in 0..1 (multiples of 1/255): gradients, a sine pattern, a red block
    and a little noise."""
    y = torch.linspace(0, 1, HEIGHT)[:, None].expand(HEIGHT, WIDTH)
    x = torch.linspace(0, 1, WIDTH)[None, :].expand(HEIGHT, WIDTH)
    image = torch.stack([x, y, 0.5 + 0.5 * torch.sin(12 * x) * torch.cos(9 * y)])
    image[:, 60:150, 80:200] = torch.tensor([0.9, 0.2, 0.1])[:, None, None]
    noise = torch.rand(image.shape, generator=torch.Generator().manual_seed(1))
    return ((image + 0.05 * noise).clamp(0, 1) * 255).round() / 255


@pytest.fixture(scope="module")
def models():
    """torchvision's model and ours with the same weights. With random weights the head's
    logits are ~4 apart and its softmax saturates to exactly 1.0 (ties everywhere); both
    heads are scaled by 0.1 (identically, through the state dict) so the scores are distinct
    and the 0.01 threshold keeps every candidate (no threshold change needed)."""
    torch.manual_seed(0)
    theirs = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=K + 1)
    state = {k: v * 0.1 if k.startswith("head.") else v for k, v in theirs.state_dict().items()}
    theirs.load_state_dict(state)
    cfg = get_cfg()
    add_ssd_config(cfg)
    cfg.merge_from_file(str(SSD300_YAML))
    cfg.MODEL.SSD.NUM_CLASSES = K
    cfg.MODEL.DEVICE = "cpu"
    ours = build_model(cfg)
    load_torchvision_ssd300_vgg16(ours, state)
    return theirs.eval(), ours.eval(), state


def test_every_torchvision_key_has_a_place(models):
    _, ours, state = models
    mapping = torchvision_ssd_key_map()
    assert set(mapping) == set(state)
    assert set(mapping.values()) == set(ours.state_dict())
    # the loader copied the tensors unchanged
    for key in ("backbone.features.21.weight", "backbone.scale_weight", "backbone.extra.0.7.1.bias",
                "backbone.extra.4.2.weight", "head.classification_head.module_list.5.weight"):
        assert torch.equal(ours.state_dict()[mapping[key]], state[key])


def test_same_detections_as_torchvision(models):
    theirs, ours, _ = models
    image = _image()
    with torch.no_grad():
        expected = theirs([image])[0]
        # segtron images are 0..255; the config's PIXEL_MEAN / STD are torchvision's in 0..255
        got = ours([{"image": image * 255}])[0]["instances"]
    assert got.image_size == (HEIGHT, WIDTH)
    assert len(got) == len(expected["boxes"]) == 200  # DETECTIONS_PER_IMAGE
    assert torch.equal(got.pred_classes, expected["labels"] - 1)
    torch.testing.assert_close(got.pred_boxes.tensor, expected["boxes"], rtol=0, atol=1e-2)
    torch.testing.assert_close(got.scores, expected["scores"], rtol=0, atol=1e-4)
    assert expected["labels"].unique().numel() == K  # every class is represented


def test_same_training_losses_as_torchvision(models):
    theirs, ours, _ = models
    image = _image()
    boxes = torch.tensor([[30.0, 50, 200, 180], [100, 20, 300, 230], [5, 5, 40, 30]])
    classes = torch.tensor([0, 2, 1])
    theirs.train(), ours.train()
    try:
        expected = theirs([image], [{"boxes": boxes, "labels": classes + 1}])
        gt = Instances((HEIGHT, WIDTH), gt_boxes=Boxes(boxes), gt_classes=classes)
        got = ours([{"image": image * 255, "instances": gt}])
    finally:
        theirs.eval(), ours.eval()
    assert got["loss_cls"].item() == pytest.approx(expected["classification"].item(), rel=1e-4)
    assert got["loss_box_reg"].item() == pytest.approx(expected["bbox_regression"].item(), rel=1e-4)


def test_loader_names_unused_and_missing_keys(models):
    _, ours, state = models
    bad = dict(state)
    bad["backbone.extra.0.7.9.weight"] = torch.zeros(1)
    del bad["head.regression_head.module_list.2.bias"]
    unused_then_missing = r"backbone\.extra\.0\.7\.9\.weight.*head\.bbox_pred\.2\.bias"
    with pytest.raises(KeyError, match=unused_then_missing):
        load_torchvision_ssd300_vgg16(ours, bad)
    wrong = dict(state)
    wrong["head.classification_head.module_list.0.bias"] = torch.zeros(4 * (K + 2))
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        load_torchvision_ssd300_vgg16(ours, wrong)


def test_vgg16_features_loader_fills_the_13_convs_only():
    """torchvision's vgg16() layout (built on the meta device: names and shapes only) with
    random features and placeholder classifier tensors, which are ignored."""
    with torch.device("meta"):
        layout = torchvision.models.vgg16(weights=None).state_dict()
    state = {
        k: torch.randn(v.shape) if k.startswith("features.") else torch.zeros(1)
        for k, v in layout.items()
    }
    backbone = SSDVGGBackbone()
    conv6 = backbone.conv6.weight.clone()
    load_torchvision_vgg16_features(backbone, state)
    assert torch.equal(backbone.conv1_1.bias, state["features.0.bias"])
    assert torch.equal(backbone.conv4_3.weight, state["features.21.weight"])
    assert torch.equal(backbone.conv5_3.weight, state["features.28.weight"])
    assert torch.equal(backbone.conv6.weight, conv6)  # not VGG's: kept
    with pytest.raises(KeyError, match="features.1.weight"):
        load_torchvision_vgg16_features(backbone, {**state, "features.1.weight": torch.zeros(1)})
