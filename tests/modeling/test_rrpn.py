"""Rotated Faster R-CNN: RRPN + RROIHeads built from a config, one training step and inference
on random rotated ground truth, plus the rotated proposal selection and post-processing."""

import pytest
import torch

from segtron.config import get_cfg
from segtron.modeling import build_model, detector_postprocess
from segtron.modeling.proposal_generator import RRPN
from segtron.modeling.proposal_generator.rrpn import find_top_rrpn_proposals
from segtron.modeling.registries import PROPOSAL_GENERATOR_REGISTRY, ROI_HEADS_REGISTRY
from segtron.modeling.roi_heads import RROIHeads
from segtron.modeling.roi_heads.rotated_fast_rcnn import RotatedFastRCNNOutputLayers
from segtron.structures import Instances, RotatedBoxes
from segtron.utils.events import EventStorage


def rotated_rcnn_cfg():
    """A thin R50-FPN rotated Faster R-CNN (widths / 16) for 3 classes on ~128 px inputs."""
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
        "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
        "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.FPN.OUT_CHANNELS", "16",
        "MODEL.PROPOSAL_GENERATOR.NAME", "RRPN",
        "MODEL.ANCHOR_GENERATOR.NAME", "RotatedAnchorGenerator",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
        "MODEL.ANCHOR_GENERATOR.ANGLES", "[[-60, 0, 60]]",
        "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p6']",
        "MODEL.RPN.BBOX_REG_WEIGHTS", "(1, 1, 1, 1, 1)",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "MODEL.RPN.PRE_NMS_TOPK_TEST", "300",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100",
        "MODEL.ROI_HEADS.NAME", "RROIHeads",
        "MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_FC", "1",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "4",
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignRotated",
        "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "(10, 10, 5, 5, 1)",
    ])
    return cfg


def random_batch(num_images=2, size=128, seed=0):
    gen = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(num_images):
        n = 3 + i
        centres = 32 + torch.rand(n, 2, generator=gen) * (size - 64)
        sizes = 12 + torch.rand(n, 2, generator=gen) * 40
        angles = torch.rand(n, 1, generator=gen) * 360 - 180
        inst = Instances((size, size))
        inst.gt_boxes = RotatedBoxes(torch.cat([centres, sizes, angles], dim=1))
        inst.gt_classes = torch.randint(0, 3, (n,), generator=gen)
        image = (torch.rand(3, size, size, generator=gen) * 255).to(torch.uint8)
        batch.append({"image": image, "instances": inst, "height": size, "width": size})
    return batch


def test_rotated_faster_rcnn_trains_one_step_and_predicts():
    torch.manual_seed(0)
    model = build_model(rotated_rcnn_cfg())
    assert isinstance(model.proposal_generator, RRPN)
    assert isinstance(model.roi_heads, RROIHeads)
    assert isinstance(model.roi_heads.box_predictor, RotatedFastRCNNOutputLayers)
    # 3 classes x 5 deltas; 1 size x 3 ratios x 3 angles = 9 anchors x 5 deltas per location.
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 15
    assert model.proposal_generator.rpn_head.anchor_deltas.out_channels == 45

    batch = random_batch()
    model.train()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    assert losses["loss_rpn_loc"] > 0 and losses["loss_box_reg"] > 0
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        outputs = model([{k: v for k, v in b.items() if k != "instances"} for b in batch])
    assert len(outputs) == 2
    for out in outputs:
        inst = out["instances"]
        assert isinstance(inst.pred_boxes, RotatedBoxes)
        assert len(inst) > 0
        assert inst.pred_boxes.tensor.shape[1] == 5
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 3)).all()
        assert (inst.scores[:-1] >= inst.scores[1:]).all()  # by decreasing score
        assert torch.isfinite(inst.pred_boxes.tensor).all()


def test_registered_names():
    assert PROPOSAL_GENERATOR_REGISTRY.get("RRPN") is RRPN
    assert ROI_HEADS_REGISTRY.get("RROIHeads") is RROIHeads


def test_rroi_heads_need_the_rotated_pooler():
    cfg = rotated_rcnn_cfg()
    cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
    with pytest.raises(ValueError, match="ROIAlignRotated"):
        build_model(cfg)


def test_rpn_weights_must_have_five_numbers():
    cfg = rotated_rcnn_cfg()
    cfg.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="5 numbers"):
        build_model(cfg)


def test_find_top_rrpn_proposals_by_hand():
    # One image, one level: four candidates. Box 1 overlaps box 0 (IoU ~0.8 > 0.5) and scores
    # lower; box 3 is too small; box 2 (angle 400 -> 40 after clipping's normalisation) stays.
    boxes = torch.tensor([[[20.0, 20, 10, 10, 0], [21, 20, 10, 10, 0.5], [60, 60, 10, 4, 400],
                           [5, 5, 1, 1, 0]]])
    logits = torch.tensor([[3.0, 2.0, 1.0, 4.0]])
    (result,) = find_top_rrpn_proposals(
        [boxes], [logits], [(100, 100)], nms_thresh=0.5, pre_nms_topk=10, post_nms_topk=10,
        min_box_size=2.0, training=True,
    )
    assert isinstance(result.proposal_boxes, RotatedBoxes)
    assert result.objectness_logits.tolist() == [3.0, 1.0]
    torch.testing.assert_close(
        result.proposal_boxes.tensor, torch.tensor([[20.0, 20, 10, 10, 0], [60, 60, 10, 4, 40]])
    )


def test_detector_postprocess_scales_rotated_boxes():
    inst = Instances((100, 200))
    inst.pred_boxes = RotatedBoxes([[50.0, 40, 20, 10, 90], [10, 10, 0, 5, 0]])
    inst.scores = torch.tensor([0.9, 0.8])
    out = detector_postprocess(inst, 200, 400)  # both axes x2
    assert isinstance(out.pred_boxes, RotatedBoxes) and len(out) == 1  # the empty box is gone
    torch.testing.assert_close(out.pred_boxes.tensor, torch.tensor([[100.0, 80, 40, 20, 90]]))
    assert inst.pred_boxes.tensor[0, 0] == 50  # the input is not modified
