"""GeneralizedRCNN / ProposalNetwork / build_model with a tiny stub backbone and stub ROI heads.

The real RPN runs inside; the ROI heads are a recorder that follows the interface
``roi_heads(images, features, proposals, gt_instances) -> (results, losses)``.
"""

import logging

import pytest
import torch
from torch import nn

from segtron.config import get_cfg
from segtron.modeling.anchor_generator import DefaultAnchorGenerator
from segtron.modeling.backbone import Backbone
from segtron.modeling.box_regression import Box2BoxTransform
from segtron.modeling.matcher import Matcher
from segtron.modeling.meta_arch import (
    META_ARCH_REGISTRY,
    GeneralizedRCNN,
    ProposalNetwork,
    build_model,
)
from segtron.modeling.proposal_generator import RPN, StandardRPNHead
from segtron.modeling.registries import BACKBONE_REGISTRY, ROI_HEADS_REGISTRY
from segtron.structures import Boxes, ImageList, Instances
from segtron.utils.events import EventStorage

MEAN = [100.0, 110.0, 120.0]
STD = [2.0, 4.0, 8.0]


class _TinyBackbone(Backbone):
    """One stride-8 conv producing "p3" (4 channels); inputs padded to multiples of 16."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=8, stride=8)
        self._out_features = ["p3"]
        self._out_feature_channels = {"p3": 4}
        self._out_feature_strides = {"p3": 8}
        self.last_input = None

    @property
    def size_divisibility(self):
        return 16

    def forward(self, x):
        self.last_input = x
        return {"p3": self.conv(x)}


class _RecordingROIHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images, features, proposals, targets=None):
        self.calls.append({"proposals": proposals, "targets": targets, "features": features})
        if self.training:
            return [], {"loss_cls": torch.tensor(1.5), "loss_box_reg": torch.tensor(0.5)}
        results = []
        for p in proposals:
            inst = Instances(p.image_size)
            inst.pred_boxes = Boxes(p.proposal_boxes.tensor[:2].clone())
            inst.scores = torch.ones(len(inst.pred_boxes))
            inst.pred_classes = torch.zeros(len(inst.pred_boxes), dtype=torch.int64)
            results.append(inst)
        return results, {}

    def forward_with_given_boxes(self, features, instances):
        self.calls.append({"given": instances})
        return instances


def _rpn():
    return RPN(
        in_features=["p3"],
        head=StandardRPNHead(in_channels=4, num_anchors=1),
        anchor_generator=DefaultAnchorGenerator(sizes=[[16]], aspect_ratios=[[1.0]], strides=[8]),
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=32,
        positive_fraction=0.5,
        pre_nms_topk=(100, 100),
        post_nms_topk=(20, 20),
    )


def _model(proposal_generator="rpn", vis_period=0):
    return GeneralizedRCNN(
        backbone=_TinyBackbone(),
        proposal_generator=_rpn() if proposal_generator == "rpn" else proposal_generator,
        roi_heads=_RecordingROIHeads(),
        pixel_mean=MEAN,
        pixel_std=STD,
        input_format="BGR",
        vis_period=vis_period,
    )


def _gt(size, boxes=((4.0, 4.0, 30.0, 20.0),)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes))
    inst.gt_classes = torch.zeros(len(boxes), dtype=torch.int64)
    return inst


def _inputs(with_gt=False, with_size=True):
    images = [torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8),
              torch.randint(0, 256, (3, 32, 36), dtype=torch.uint8)]
    out = []
    for img in images:
        item = {"image": img}
        if with_size:
            item["height"], item["width"] = img.shape[1] * 2, img.shape[2] * 2
        if with_gt:
            item["instances"] = _gt(tuple(img.shape[1:]))
        out.append(item)
    return out


def test_preprocess_normalises_and_pads():
    model = _model()
    inputs = _inputs()
    images = model.preprocess_image(inputs)
    assert isinstance(images, ImageList)
    assert images.image_sizes == [(40, 50), (32, 36)]
    assert tuple(images.tensor.shape) == (2, 3, 48, 64)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(images.tensor[0, :, :40, :50], (inputs[0]["image"] - mean) / std)
    assert images.tensor[1, :, 32:, :].abs().sum() == 0
    assert images.tensor[1, :, :, 36:].abs().sum() == 0
    assert model.pixel_mean.shape == (3, 1, 1) and model.pixel_std.shape == (3, 1, 1)
    assert "pixel_mean" not in model.state_dict() and "pixel_std" not in model.state_dict()
    assert model.device == torch.device("cpu")


def test_pixel_stat_length_mismatch():
    with pytest.raises(ValueError, match="PIXEL_MEAN"):
        GeneralizedRCNN(backbone=_TinyBackbone(), proposal_generator=None,
                        roi_heads=_RecordingROIHeads(), pixel_mean=[1.0, 2.0, 3.0],
                        pixel_std=[1.0])


def test_training_merges_losses():
    model = _model().train()
    inputs = _inputs(with_gt=True)
    with EventStorage():
        losses = model(inputs)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    assert losses["loss_cls"].item() == 1.5
    call = model.roi_heads.calls[-1]
    assert [len(p) for p in call["proposals"]] == [20, 20]
    assert call["targets"][0].gt_boxes.tensor.tolist() == [[4.0, 4.0, 30.0, 20.0]]
    sum(v for k, v in losses.items() if k.startswith("loss_rpn")).backward()
    assert model.proposal_generator.rpn_head.objectness_logits.weight.grad is not None


def test_training_with_precomputed_proposals():
    model = _model(proposal_generator=None).train()
    inputs = _inputs(with_gt=True)
    for item in inputs:
        props = Instances(tuple(item["image"].shape[1:]))
        props.proposal_boxes = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
        props.objectness_logits = torch.tensor([1.0])
        item["proposals"] = props
    losses = model(inputs)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    assert model.roi_heads.calls[-1]["proposals"][0] is not None
    for item in inputs:
        del item["proposals"]
    with pytest.raises(KeyError, match="proposals"):
        model(inputs)


def test_inference_postprocesses_to_requested_size():
    model = _model().eval()
    inputs = _inputs()
    with torch.no_grad():
        outputs = model(inputs)
        raw = model.inference(inputs, do_postprocess=False)
    assert len(outputs) == 2 and set(outputs[0]) == {"instances"}
    for out, item, r in zip(outputs, inputs, raw):
        inst = out["instances"]
        assert inst.image_size == (item["height"], item["width"])
        assert r.image_size == tuple(item["image"].shape[1:])
        expected = r.pred_boxes.tensor * 2
        expected[:, 0::2] = expected[:, 0::2].clamp(0, item["width"])
        expected[:, 1::2] = expected[:, 1::2].clamp(0, item["height"])
        torch.testing.assert_close(inst.pred_boxes.tensor, expected)

    # Without "height"/"width" the outputs stay in the network input size.
    with torch.no_grad():
        outputs = model(_inputs(with_size=False))
    assert [o["instances"].image_size for o in outputs] == [(40, 50), (32, 36)]


def test_inference_with_given_boxes():
    model = _model().eval()
    inputs = _inputs()
    given = []
    for item in inputs:
        inst = Instances(tuple(item["image"].shape[1:]))
        inst.pred_boxes = Boxes(torch.tensor([[1.0, 2.0, 11.0, 12.0]]))
        inst.pred_classes = torch.tensor([0])
        given.append(inst)
    with torch.no_grad():
        outputs = model.inference(inputs, detected_instances=given)
    assert "given" in model.roi_heads.calls[-1]
    torch.testing.assert_close(outputs[0]["instances"].pred_boxes.tensor,
                               torch.tensor([[2.0, 4.0, 22.0, 24.0]]))


def test_proposal_network():
    model = ProposalNetwork(backbone=_TinyBackbone(), proposal_generator=_rpn(),
                            pixel_mean=MEAN, pixel_std=STD)
    model.train()
    losses = model(_inputs(with_gt=True))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    model.eval()
    inputs = _inputs()
    with torch.no_grad():
        outputs = model(inputs)
    assert set(outputs[0]) == {"proposals"}
    assert outputs[0]["proposals"].image_size == (80, 100)
    assert outputs[0]["proposals"].has("objectness_logits")
    assert "pixel_mean" not in model.state_dict()


# -- build_model ------------------------------------------------------------------------------

def _rcnn_test_tiny_backbone(cfg, input_shape):
    return _TinyBackbone()


def _rcnn_test_recording_roi_heads(cfg, input_shape):
    return _RecordingROIHeads()


_BACKBONE_NAME = _rcnn_test_tiny_backbone.__name__
_ROI_HEADS_NAME = _rcnn_test_recording_roi_heads.__name__
if _BACKBONE_NAME not in BACKBONE_REGISTRY:
    BACKBONE_REGISTRY.register(_rcnn_test_tiny_backbone)
if _ROI_HEADS_NAME not in ROI_HEADS_REGISTRY:
    ROI_HEADS_REGISTRY.register(_rcnn_test_recording_roi_heads)


def _tiny_cfg(meta_arch):
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.META_ARCHITECTURE = meta_arch
    cfg.MODEL.BACKBONE.NAME = _BACKBONE_NAME
    cfg.MODEL.ROI_HEADS.NAME = _ROI_HEADS_NAME
    cfg.MODEL.RPN.IN_FEATURES = ["p3"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16, 32]]
    cfg.MODEL.PIXEL_MEAN = MEAN
    cfg.MODEL.PIXEL_STD = STD
    return cfg


def test_build_model_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _tiny_cfg("ProposalNetwork")
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(RuntimeError, match="MODEL.DEVICE cpu"):
        build_model(cfg)
    cfg.MODEL.DEVICE = "not-a-device"
    with pytest.raises(RuntimeError, match="MODEL.DEVICE"):
        build_model(cfg)


def test_build_proposal_network_from_config(caplog):
    assert "GeneralizedRCNN" in META_ARCH_REGISTRY and "ProposalNetwork" in META_ARCH_REGISTRY
    with caplog.at_level(logging.INFO, logger="segtron.modeling.meta_arch.build"):
        model = build_model(_tiny_cfg("ProposalNetwork"))
    assert isinstance(model, ProposalNetwork) and model.device == torch.device("cpu")
    assert isinstance(model.proposal_generator, RPN)
    assert model.proposal_generator.rpn_head.objectness_logits.out_channels == 6
    num_params = sum(p.numel() for p in model.parameters())
    assert f"{num_params:,}" in caplog.text
    torch.testing.assert_close(model.pixel_std.flatten(), torch.tensor(STD))


def test_build_generalized_rcnn_from_config():
    cfg = _tiny_cfg("GeneralizedRCNN")
    cfg.VIS_PERIOD = 0
    model = build_model(cfg)
    assert isinstance(model, GeneralizedRCNN)
    assert isinstance(model.roi_heads, _RecordingROIHeads)
    assert model.input_format == cfg.INPUT.FORMAT
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    assert build_model(cfg).proposal_generator is None
