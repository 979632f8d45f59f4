"""Mask R-CNN head, loss and inference.

References: the loss worked out by hand on masks whose crop is exact (box on the pixel grid,
one ROIAlign sample per bin lands on a pixel centre); torchvision's ``maskrcnn_inference`` and
its ``MaskRCNNHeads`` + ``MaskRCNNPredictor`` with the same weights (same layers and order).
"""

import math

import pytest
import torch
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_inference

from segtron.config import get_cfg
from segtron.layers import ShapeSpec, enable_winograd_conv
from segtron.layers.winograd import winograd_available
from segtron.modeling.roi_heads import MaskRCNNConvUpsampleHead, build_mask_head
from segtron.modeling.roi_heads.mask_head import mask_rcnn_inference, mask_rcnn_loss
from segtron.structures import BitMasks, Boxes, Instances
from segtron.utils.events import EventStorage
from tests.conftest import lift_winograd_limits


def _train_instances(masks, boxes, classes, image_hw=(8, 8)):
    inst = Instances(image_hw)
    inst.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.tensor(classes)
    inst.gt_masks = BitMasks(torch.as_tensor(masks, dtype=torch.bool))
    return inst


def _bce(x, t):
    return math.log(1 + math.exp(-x)) if t else math.log(1 + math.exp(x))


def test_loss_by_hand_on_exact_crop():
    # One 8x8 image, two instances, each proposal box = the whole image: with M = 8 each bin is
    # one pixel and the crop equals the mask.
    mask_a = torch.zeros(8, 8, dtype=torch.bool)
    mask_a[2:6, 1:4] = True
    mask_b = torch.zeros(8, 8, dtype=torch.bool)
    mask_b[:, 4:] = True
    inst = _train_instances(torch.stack([mask_a, mask_b]), [[0, 0, 8, 8]] * 2, [2, 0])
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    with EventStorage() as storage:
        loss = mask_rcnn_loss(logits, [inst])
        stats = {k: v[0] for k, v in storage.latest().items()}

    chosen = [(logits[0, 2], mask_a), (logits[1, 0], mask_b)]
    total = sum(
        _bce(x, t)
        for pred, gt in chosen
        for x, t in zip(pred.flatten().tolist(), gt.flatten().tolist())
    )
    assert loss.item() == pytest.approx(total / (2 * 64), rel=1e-5)

    predicted = torch.stack([p > 0 for p, _ in chosen])
    gt = torch.stack([g for _, g in chosen])
    wrong = predicted != gt
    assert stats["mask_rcnn/accuracy"] == pytest.approx(1 - wrong.sum().item() / 128)
    assert stats["mask_rcnn/false_positive"] == pytest.approx(
        (wrong & ~gt).sum().item() / (~gt).sum().item()
    )
    assert stats["mask_rcnn/false_negative"] == pytest.approx(
        (wrong & gt).sum().item() / gt.sum().item()
    )
    loss.backward()
    assert logits.grad[0, :2].abs().sum() == 0 and logits.grad[0, 2].abs().sum() > 0


def test_loss_crops_to_the_proposal_box():
    # The box covers the right half of the image: at M = 4 each bin is 1 px wide and 2 px tall,
    # sampled at two pixel centres with equal weight -> the crop is the mean of two rows.
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[:, 6:] = True
    inst = _train_instances(mask[None], [[4, 0, 8, 8]], [0])
    logits = torch.zeros(1, 1, 4, 4)  # class-agnostic, sigmoid 0.5 everywhere
    with EventStorage():
        loss = mask_rcnn_loss(logits, [inst])
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)
    logits[0, 0, :, 2:] = 5.0  # right half of the crop is the mask
    logits[0, 0, :, :2] = -5.0
    with EventStorage() as storage:
        loss = mask_rcnn_loss(logits, [inst])
        assert storage.latest()["mask_rcnn/accuracy"][0] == 1.0
    assert loss.item() == pytest.approx(_bce(5.0, 1), rel=1e-5)


def test_loss_without_foreground_is_zero_with_gradient():
    empty = _train_instances(torch.zeros(0, 8, 8), torch.zeros(0, 4).tolist(), [])
    empty.proposal_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    logits = torch.zeros(0, 3, 28, 28, requires_grad=True)
    with EventStorage():
        loss = mask_rcnn_loss(logits, [empty])
    assert loss.item() == 0
    loss.backward()
    assert logits.grad.shape == logits.shape


def test_inference_matches_torchvision():
    logits = torch.randn(7, 4, 28, 28)
    classes = [torch.tensor([0, 3, 3]), torch.tensor([1, 2, 0, 2])]
    instances = []
    for c in classes:
        inst = Instances((50, 50))
        inst.pred_classes = c
        instances.append(inst)
    mask_rcnn_inference(logits, instances)
    expected = maskrcnn_inference(logits, classes)
    for inst, ref in zip(instances, expected):
        assert inst.pred_masks.shape == (len(inst), 1, 28, 28)
        torch.testing.assert_close(inst.pred_masks, ref)

    agnostic = [Instances((5, 5), pred_classes=torch.tensor([2, 0]))]
    single = torch.randn(2, 1, 28, 28)
    mask_rcnn_inference(single, agnostic)
    torch.testing.assert_close(agnostic[0].pred_masks, single.sigmoid())


def _mask_cfg(num_conv=2, conv_dim=16, num_classes=5):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = num_conv
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = conv_dim
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


def test_head_matches_torchvision_layers():
    head = build_mask_head(_mask_cfg(), ShapeSpec(channels=8, height=14, width=14))
    assert isinstance(head, MaskRCNNConvUpsampleHead)
    assert [n for n, _ in head.named_children()] == [
        "mask_fcn1", "mask_fcn2", "deconv", "deconv_relu", "predictor"
    ]
    tv_heads = MaskRCNNHeads(8, [16, 16], dilation=1)
    tv_predictor = MaskRCNNPredictor(16, 16, 5)
    tv_convs = [m for m in tv_heads.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for ours, theirs in zip([head.mask_fcn1, head.mask_fcn2], tv_convs):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        tv_predictor.conv5_mask.weight.copy_(head.deconv.weight)
        tv_predictor.conv5_mask.bias.copy_(head.deconv.bias)
        tv_predictor.mask_fcn_logits.weight.copy_(head.predictor.weight)
        head.predictor.bias.copy_(torch.randn(5))
        tv_predictor.mask_fcn_logits.bias.copy_(head.predictor.bias)
    x = torch.randn(3, 8, 14, 14)
    torch.testing.assert_close(head.layers(x), tv_predictor(tv_heads(x)))


def test_head_init_and_forward_modes():
    head = MaskRCNNConvUpsampleHead(
        ShapeSpec(channels=256), num_classes=80, conv_dims=[256, 256], loss_weight=2.0
    )
    # c2_msra_fill: normal with std sqrt(2 / fan_out), zero bias; predictor std 0.001.
    assert head.mask_fcn1.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)
    assert head.mask_fcn1.bias.abs().sum() == 0 and head.deconv.bias.abs().sum() == 0
    assert head.predictor.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert head.predictor.bias.abs().sum() == 0

    small = MaskRCNNConvUpsampleHead(
        ShapeSpec(channels=4), num_classes=1, conv_dims=[8], loss_weight=2.0
    )
    assert [n for n, _ in small.named_children()] == ["deconv", "deconv_relu", "predictor"]
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    inst = _train_instances(mask, [[0, 0, 8, 8]], [0])
    x = torch.randn(1, 4, 4, 4)
    with EventStorage():
        losses = small(x, [inst])
        single = mask_rcnn_loss(small.layers(x), [inst])
    assert list(losses) == ["loss_mask"]
    torch.testing.assert_close(losses["loss_mask"], 2.0 * single)

    small.eval()
    det = Instances((8, 8), pred_classes=torch.tensor([0]))
    out = small(x, [det])
    assert out[0].pred_masks.shape == (1, 1, 8, 8)


def test_from_config_options():
    cfg = _mask_cfg(num_conv=0, conv_dim=8)
    cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = True
    cfg.MODEL.ROI_MASK_HEAD.NORM = "GN"
    cfg.VIS_PERIOD = 3
    head = build_mask_head(cfg, ShapeSpec(channels=8, height=14, width=14))
    assert head.predictor.out_channels == 1 and head.vis_period == 3
    cfg = _mask_cfg(num_conv=1, conv_dim=32)
    cfg.MODEL.ROI_MASK_HEAD.NORM = "GN"
    head = build_mask_head(cfg, ShapeSpec(channels=8, height=14, width=14))
    assert head.mask_fcn1.bias is None and isinstance(head.mask_fcn1.norm, torch.nn.GroupNorm)
    with pytest.raises(ValueError, match="CONV_DIM"):
        MaskRCNNConvUpsampleHead(ShapeSpec(channels=8), num_classes=2, conv_dims=[])


@pytest.mark.skipif(not winograd_available(), reason="no NNPACK in this build")
def test_winograd_convs_hand_nhwc_maps_to_the_deconv(monkeypatch):
    """With MODEL.WINOGRAD_CONV the 3x3 convs write NCHW; channels-last pooled features go back
    to NHWC before the transposed conv (faster there), and the output is unchanged."""
    lift_winograd_limits(monkeypatch)
    torch.manual_seed(0)
    head = MaskRCNNConvUpsampleHead(ShapeSpec(channels=16, height=14, width=14),
                                    num_classes=3, conv_dims=[16, 16, 16]).eval()
    x = torch.randn(30, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = head.layers(x)
        enable_winograd_conv(head)
        seen = []
        head.deconv.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        out = head.layers(x)
    assert not seen[0].is_contiguous() and seen[0].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
