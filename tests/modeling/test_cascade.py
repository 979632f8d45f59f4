"""Cascade R-CNN ROI heads.

Checks: construction from the model-zoo config (stages, box coding weights, matcher IoUs);
training losses per stage with gradients into every stage; the gradient scaling; inference
against a hand-assembled reference (when no stage moves the boxes, the result must be
``fast_rcnn_inference`` on the proposals with the three stages' softmax scores averaged).
"""

import pytest
import torch

from segtron import model_zoo
from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling.roi_heads import CascadeROIHeads, build_roi_heads
from segtron.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from segtron.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from segtron.structures import BitMasks, Boxes, Instances
from segtron.utils.events import EventStorage

IMAGE_HW = (64, 96)
FPN_SHAPES = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}


def _cascade_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 1
    cfg.TEST.DETECTIONS_PER_IMAGE = 20
    return cfg


def _features(batch=2):
    h, w = IMAGE_HW
    return {k: torch.randn(batch, 256, h // s.stride, w // s.stride) for k, s in FPN_SHAPES.items()}


def _proposals(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([70.0, 40.0])
        wh = torch.rand(n, 2, generator=g) * 20 + 4
        boxes = torch.cat([xy, xy + wh], dim=1)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(max=IMAGE_HW[1])
        boxes[:, 1::2] = boxes[:, 1::2].clamp(max=IMAGE_HW[0])
        inst = Instances(IMAGE_HW)
        inst.proposal_boxes = Boxes(boxes)
        inst.objectness_logits = torch.zeros(n)
        out.append(inst)
    return out


def _targets():
    with_gt = Instances(IMAGE_HW)
    with_gt.gt_boxes = Boxes(torch.tensor([[10.0, 10, 40, 40], [50, 20, 90, 60]]))
    with_gt.gt_classes = torch.tensor([2, 0])
    masks = torch.zeros(2, *IMAGE_HW, dtype=torch.bool)
    masks[0, 12:38, 12:38] = True
    masks[1, 22:58, 52:88] = True
    with_gt.gt_masks = BitMasks(masks)
    empty = Instances(IMAGE_HW)
    empty.gt_boxes = Boxes(torch.zeros(0, 4))
    empty.gt_classes = torch.zeros(0, dtype=torch.int64)
    empty.gt_masks = BitMasks(torch.zeros(0, *IMAGE_HW, dtype=torch.bool))
    return [with_gt, empty]


def test_built_from_the_model_zoo_config():
    heads = build_roi_heads(_cascade_cfg(), FPN_SHAPES)
    assert isinstance(heads, CascadeROIHeads) and heads.num_cascade_stages == 3
    assert [p.box2box_transform.weights for p in heads.box_predictor] == [
        (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0)
    ]
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]
    assert heads.proposal_matcher is heads.proposal_matchers[0]
    assert all(p.bbox_pred.out_features == 4 for p in heads.box_predictor)
    names = {k.split(".")[0] + "." + k.split(".")[1] for k in heads.state_dict() if "box_" in k}
    assert names == {f"box_{m}.{k}" for m in ("head", "predictor") for k in range(3)}


def test_training_losses_per_stage():
    heads = build_roi_heads(_cascade_cfg(), FPN_SHAPES)
    with EventStorage() as storage:
        proposals, losses = heads(None, _features(), _proposals(), _targets())
        scalars = storage.latest()
    expected = {f"{name}_stage{k}" for name in ("loss_cls", "loss_box_reg") for k in range(3)}
    assert set(losses) == expected | {"loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    for key in ("roi_head/num_fg_samples", "stage1/roi_head/num_fg_samples",
                "stage2/roi_head/num_bg_samples", "stage0/fast_rcnn/cls_accuracy",
                "stage2/fast_rcnn/cls_accuracy"):
        assert key in scalars, key
    assert len(proposals) == 2
    sum(losses.values()).backward()
    for k in range(3):
        grad = heads.box_head[k].fc1.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        assert heads.box_predictor[k].bbox_pred.weight.grad.abs().sum() > 0


def test_scale_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    y = _ScaleGradient.apply(x, 1.0 / 3)
    torch.testing.assert_close(y, x)
    (y * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 4), 2.0 / 3))


def test_inference_averages_the_stage_scores():
    heads = build_roi_heads(_cascade_cfg(), FPN_SHAPES).eval()
    with torch.no_grad():
        for predictor in heads.box_predictor:  # no stage moves the boxes
            predictor.bbox_pred.weight.zero_()
            predictor.bbox_pred.bias.zero_()
            predictor.cls_score.weight.normal_(std=0.5)
    features = _features()
    proposals = _proposals()
    with torch.no_grad():
        results, _ = heads(None, features, proposals)

        boxes = [p.proposal_boxes for p in proposals]
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], boxes)
        probs = sum(
            torch.softmax(heads.box_predictor[k](heads.box_head[k](pooled))[0], dim=1)
            for k in range(3)
        ) / 3
        expected, _ = fast_rcnn_inference(
            [b.tensor for b in boxes], list(probs.split([30, 30])), [IMAGE_HW] * 2, 0.0, 0.5, 20
        )
    for ours, ref in zip(results, expected):
        assert len(ours) == len(ref) == 20
        torch.testing.assert_close(ours.scores, ref.scores)
        torch.testing.assert_close(ours.pred_classes, ref.pred_classes)
        torch.testing.assert_close(ours.pred_boxes.tensor, ref.pred_boxes.tensor)
        assert ours.pred_masks.shape == (20, 1, 28, 28)


def test_run_stage_is_what_each_stage_computes():
    """Detectron2's _run_stage(features, proposals, stage) still answers for code that calls
    it: stage k's (scores, deltas) on the given proposals, as the forward pass computes them."""
    heads = build_roi_heads(_cascade_cfg(), FPN_SHAPES).eval()
    features = [_features()[f] for f in heads.box_in_features]
    proposals = _proposals()
    seen = []
    hooks = [p.register_forward_hook(lambda m, i, o: seen.append(o)) for p in heads.box_predictor]
    with torch.no_grad():
        heads._forward_box({f: x for f, x in zip(heads.box_in_features, features)}, proposals)
    for hook in hooks:
        hook.remove()
    with torch.no_grad():
        first = heads._run_stage(features, proposals, 0)
        pooled = heads.box_pooler(features, [p.proposal_boxes for p in proposals])
        third = heads._run_stage(features, proposals, 2)
    assert len(seen) == 3
    assert all(torch.equal(a, b) for a, b in zip(first, seen[0]))
    expected = heads.box_predictor[2](heads.box_head[2](pooled))
    assert all(torch.equal(a, b) for a, b in zip(third, expected))


def test_config_errors():
    cfg = _cascade_cfg()
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
    with pytest.raises(ValueError, match="CLS_AGNOSTIC_BBOX_REG"):
        build_roi_heads(cfg, FPN_SHAPES)
    cfg = _cascade_cfg()
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.4, 0.6, 0.7)
    with pytest.raises(ValueError, match="IOU_THRESHOLDS"):
        build_roi_heads(cfg, FPN_SHAPES)
    cfg = _cascade_cfg()
    cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6)
    with pytest.raises(ValueError, match="BBOX_REG_WEIGHTS"):
        build_roi_heads(cfg, FPN_SHAPES)
