"""Keypoint R-CNN head, loss and inference.

References: the loss worked out by hand on a 2x2 heatmap; torchvision's ``keypointrcnn_loss``
(same heatmap encoding, mean over visible keypoints) and its ``KeypointRCNNHeads`` +
``KeypointRCNNPredictor`` with the same weights (same layers, 4x4/2 deconv, bilinear x2).
"""

import math

import pytest
import torch
from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads, KeypointRCNNPredictor
from torchvision.models.detection.roi_heads import keypointrcnn_loss

from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling.roi_heads import KRCNNConvDeconvUpsampleHead, build_keypoint_head
from segtron.modeling.roi_heads.keypoint_head import keypoint_rcnn_inference, keypoint_rcnn_loss
from segtron.structures import Boxes, Instances, Keypoints, heatmaps_to_keypoints
from segtron.utils.events import EventStorage


def _train_instances(boxes, keypoints, image_hw=(100, 100)):
    inst = Instances(image_hw)
    inst.proposal_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    inst.gt_keypoints = Keypoints(torch.as_tensor(keypoints, dtype=torch.float32))
    return inst


def test_loss_by_hand():
    # One region (0, 0, 2, 2) on a 2x2 heatmap. Keypoint 0 at (0.5, 1.5) is visible -> cell
    # row 1, col 0 = index 2; keypoint 1 is not labelled.
    inst = _train_instances([[0, 0, 2, 2]], [[[0.5, 1.5, 2], [0, 0, 0]]])
    logits = torch.tensor([[[[0.1, 0.2], [0.3, 0.4]], [[5.0, 0.0], [0.0, 0.0]]]])
    logits.requires_grad_(True)
    with EventStorage():
        loss = keypoint_rcnn_loss(logits, [inst], normalizer=None)
        fixed = keypoint_rcnn_loss(logits, [inst], normalizer=4.0)
    row = [0.1, 0.2, 0.3, 0.4]
    expected = math.log(sum(math.exp(v) for v in row)) - row[2]
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert fixed.item() == pytest.approx(expected / 4, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 1].abs().sum() == 0


def test_loss_matches_torchvision():
    num_kpts, side = 5, 8
    boxes = torch.tensor([[10.0, 10, 50, 60], [0, 0, 30, 30], [20, 5, 40, 45]])
    kpts = torch.rand(3, num_kpts, 3) * 60
    kpts[..., 2] = torch.tensor([[2, 1, 0, 2, 2], [0, 2, 2, 1, 0], [2, 2, 2, 2, 2]])
    logits = torch.randn(3, num_kpts, side, side)
    instances = [
        _train_instances(boxes[:2], kpts[:2]),
        _train_instances(boxes[2:], kpts[2:]),
    ]
    with EventStorage():
        ours = keypoint_rcnn_loss(logits, instances, normalizer=None)
    theirs = keypointrcnn_loss(
        logits, [boxes[:2], boxes[2:]], [kpts[:2], kpts[2:]], [torch.arange(2), torch.arange(1)]
    )
    torch.testing.assert_close(ours, theirs)


def test_loss_without_visible_keypoints_is_zero_and_counted():
    inst = _train_instances([[0, 0, 10, 10]], [[[1, 1, 0], [50, 50, 2]]])  # outside the box
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    with EventStorage() as storage:
        loss = keypoint_rcnn_loss(logits, [inst], normalizer=None)
        assert "kpts_num_skipped_batches" in storage.latest()
    assert loss.item() == 0
    loss.backward()


def test_inference_sets_keypoints_and_heatmaps():
    logits = torch.randn(3, 4, 56, 56)
    boxes = [torch.tensor([[0.0, 0, 20, 30], [5, 5, 60, 40]]), torch.tensor([[10.0, 20, 30, 50]])]
    instances = [Instances((64, 64), pred_boxes=Boxes(b)) for b in boxes]
    keypoint_rcnn_inference(logits, instances)
    decoded = heatmaps_to_keypoints(logits, torch.cat(boxes))
    torch.testing.assert_close(
        torch.cat([i.pred_keypoints for i in instances]), decoded[:, :, [0, 1, 3]]
    )
    assert instances[0].pred_keypoints.shape == (2, 4, 3)
    torch.testing.assert_close(instances[1].pred_keypoint_heatmaps, logits[2:])


def _kpt_cfg(conv_dims=(16, 16), num_keypoints=3):
    cfg = get_cfg()
    cfg.MODEL.KEYPOINT_ON = True
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = conv_dims
    cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = num_keypoints
    return cfg


def test_head_matches_torchvision_layers():
    head = build_keypoint_head(_kpt_cfg(), ShapeSpec(channels=8, height=14, width=14))
    assert isinstance(head, KRCNNConvDeconvUpsampleHead)
    assert [n for n, _ in head.named_children()] == [
        "conv_fcn1", "conv_fcn_relu1", "conv_fcn2", "conv_fcn_relu2", "score_lowres"
    ]
    tv_heads = KeypointRCNNHeads(8, [16, 16])
    tv_predictor = KeypointRCNNPredictor(16, 3)
    tv_convs = [m for m in tv_heads.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for ours, theirs in zip([head.conv_fcn1, head.conv_fcn2], tv_convs):
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
        head.score_lowres.bias.copy_(torch.randn(3))
        tv_predictor.kps_score_lowres.weight.copy_(head.score_lowres.weight)
        tv_predictor.kps_score_lowres.bias.copy_(head.score_lowres.bias)
    x = torch.randn(2, 8, 14, 14)
    out = head.layers(x)
    assert out.shape == (2, 3, 56, 56)
    torch.testing.assert_close(out, tv_predictor(tv_heads(x)))


def test_head_init_and_loss_normaliser_from_config():
    cfg = _kpt_cfg(conv_dims=(64,), num_keypoints=17)
    head = build_keypoint_head(cfg, ShapeSpec(channels=64, height=14, width=14))
    # Kaiming normal, fan_out, ReLU gain: std sqrt(2 / (out_channels * 9)); biases 0.
    assert head.conv_fcn1.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert head.conv_fcn1.bias.abs().sum() == 0 and head.score_lowres.bias.abs().sum() == 0
    assert head.loss_normalizer == "visible" and head.num_keypoints == 17

    cfg.MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = False
    cfg.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT = 3.0
    head = build_keypoint_head(cfg, ShapeSpec(channels=64, height=14, width=14))
    assert head.loss_normalizer == pytest.approx(17 * 512 * 0.25)
    assert head.loss_weight == 3.0


def test_forward_training_and_eval():
    head = KRCNNConvDeconvUpsampleHead(
        ShapeSpec(channels=4), num_keypoints=2, conv_dims=[8], loss_weight=2.0,
        loss_normalizer=3.0,
    )
    images = [
        _train_instances([[0, 0, 16, 16]], [[[4, 4, 2], [12, 3, 2]]]),
        _train_instances([[2, 2, 10, 10]], [[[5, 5, 2], [0, 0, 0]]]),
    ]
    x = torch.randn(2, 4, 4, 4)
    with EventStorage():
        losses = head(x, images)
        reference = keypoint_rcnn_loss(head.layers(x), images, normalizer=2 * 3.0)
    assert list(losses) == ["loss_keypoint"]
    torch.testing.assert_close(losses["loss_keypoint"], 2.0 * reference)

    head.eval()
    dets = [Instances((16, 16), pred_boxes=Boxes(torch.tensor([[0.0, 0, 16, 16]])))]
    out = head(x[:1], dets)
    assert out[0].pred_keypoints.shape == (1, 2, 3)
    assert out[0].pred_keypoint_heatmaps.shape == (1, 2, 16, 16)
    with pytest.raises(ValueError, match="loss_normalizer"):
        KRCNNConvDeconvUpsampleHead(
            ShapeSpec(channels=4), num_keypoints=2, conv_dims=[8], loss_normalizer="all"
        )
