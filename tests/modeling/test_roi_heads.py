"""ROIHeads (proposal sampling), StandardROIHeads and Res5ROIHeads.

Checks: labelling and sampling against hand-built proposals (gt appended, background class K,
foreground fraction); parameter names and shapes against Detectron2's state dicts
(``../shared/compat/d2_state_dict_shapes.json``, read at test time); training / eval forward
passes with masks and keypoints, with and without ground truth; Detectron2's detections on
the golden fixture computed from the fixture's own proposals.
"""

import json

import numpy as np
import pytest
import torch

from segtron import model_zoo
from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling.matcher import Matcher
from segtron.modeling.roi_heads import (
    FastRCNNConvFCHead,
    ROIHeads,
    Res5ROIHeads,
    StandardROIHeads,
    build_roi_heads,
    select_foreground_proposals,
)
from segtron.modeling.roi_heads.roi_heads import select_proposals_with_visible_keypoints
from segtron.structures import BitMasks, Boxes, Instances, Keypoints, pairwise_iou
from segtron.utils.events import EventStorage

IMAGE_HW = (64, 96)
FPN_SHAPES = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in range(2, 6)}


# -- proposal labelling and sampling -----------------------------------------------------------


def _proposals(boxes, image_hw=IMAGE_HW):
    inst = Instances(image_hw)
    inst.proposal_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    inst.objectness_logits = torch.zeros(len(inst.proposal_boxes))
    return inst


def _targets(boxes, classes, image_hw=IMAGE_HW, **fields):
    inst = Instances(image_hw)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
    for name, value in fields.items():
        inst.set(name, value)
    return inst


def _sampler(batch_size=8, fraction=0.25, append_gt=True, num_classes=3):
    return ROIHeads(
        num_classes=num_classes, batch_size_per_image=batch_size, positive_fraction=fraction,
        proposal_matcher=Matcher([0.5], [0, 1]), proposal_append_gt=append_gt,
    )


GT = [[10.0, 10, 40, 40], [50, 20, 90, 60]]
FAR = [[0.0, 50, 4, 54], [60, 0, 64, 4], [0, 0, 5, 5], [90, 58, 95, 63], [20, 50, 24, 60]]


def test_sampling_labels_and_copies_gt_fields():
    near_gt0 = [[11.0, 10, 40, 41], [10, 12, 39, 40], [9, 9, 41, 41]]
    props = [_proposals(FAR * 2 + near_gt0), _proposals(FAR)]
    targets = [
        _targets(GT, [2, 0], gt_ids=torch.tensor([100, 200])),
        _targets(torch.zeros(0, 4), []),
    ]
    with EventStorage() as storage:
        out = _sampler().label_and_sample_proposals(props, targets)
        fg_mean = storage.latest()["roi_head/num_fg_samples"][0]
        bg_mean = storage.latest()["roi_head/num_bg_samples"][0]

    first = out[0]
    assert len(first) == 8
    # At most int(8 * 0.25) = 2 foreground (5 available: 3 near gt0 + 2 appended gt), first.
    assert (first.gt_classes[:2] != 3).all()
    assert (first.gt_classes[2:] == 3).all()
    iou = pairwise_iou(first.proposal_boxes, Boxes(torch.tensor(GT)))
    for i in range(2):
        best = int(iou[i].argmax())
        assert iou[i, best] >= 0.5
        assert first.gt_classes[i].item() == [2, 0][best]
        assert first.gt_ids[i].item() == [100, 200][best]
        torch.testing.assert_close(first.gt_boxes.tensor[i], torch.tensor(GT[best]).float())

    second = out[1]  # no gt: everything background, zero gt boxes, no other gt fields
    assert len(second) == len(FAR) and (second.gt_classes == 3).all()
    assert second.gt_boxes.tensor.abs().sum() == 0 and not second.has("gt_ids")
    assert fg_mean == pytest.approx(1.0) and bg_mean == pytest.approx((6 + 5) / 2)


def test_gt_boxes_are_appended_as_proposals():
    props = [_proposals(FAR)]
    targets = [_targets(GT, [1, 2])]
    with EventStorage():
        out = _sampler(batch_size=64, fraction=0.5).label_and_sample_proposals(props, targets)[0]
    assert len(out) == len(FAR) + 2
    fg = out[out.gt_classes != 3]
    assert sorted(fg.proposal_boxes.tensor.tolist()) == sorted(GT)
    with EventStorage():
        no_append = _sampler(batch_size=64, append_gt=False).label_and_sample_proposals(
            [_proposals(FAR)], targets
        )[0]
    assert len(no_append) == len(FAR) and (no_append.gt_classes == 3).all()


def test_foreground_fraction_is_respected():
    torch.manual_seed(3)
    jitter = torch.rand(40, 4) * 2
    many_fg = (torch.tensor(GT[0]) + jitter).tolist()
    with EventStorage():
        out = _sampler(batch_size=16, fraction=0.25).label_and_sample_proposals(
            [_proposals(many_fg + FAR * 4)], [_targets(GT, [0, 1])]
        )[0]
    assert len(out) == 16
    assert (out.gt_classes != 3).sum() == 4 and (out.gt_classes[:4] != 3).all()


def test_select_foreground_and_visible_keypoints():
    inst = _proposals([[0, 0, 10, 10]] * 4)
    inst.gt_classes = torch.tensor([0, 3, -1, 2])
    fg, masks = select_foreground_proposals([inst], bg_label=3)
    assert masks[0].tolist() == [True, False, False, True] and len(fg[0]) == 2

    kp = _proposals([[0, 0, 10, 10]] * 3)
    kp.gt_keypoints = Keypoints(
        torch.tensor([[[5, 5, 2], [0, 0, 0]], [[5, 5, 0], [1, 1, 0]], [[20, 5, 2], [5, 15, 1]]])
    )
    with EventStorage() as storage:
        kept = select_proposals_with_visible_keypoints([kp, kp[[]]])
        assert storage.latest()["keypoint_head/num_fg_samples"][0] == 1
    assert len(kept[0]) == 1 and len(kept[1]) == 0
    with pytest.raises(ValueError, match="label_and_sample_proposals"):
        select_foreground_proposals([_proposals([[0, 0, 1, 1]])], 3)


# -- state-dict compatibility with Detectron2 --------------------------------------------------

ZOO = {
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml": StandardROIHeads,
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml": StandardROIHeads,
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml": StandardROIHeads,
    "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml": None,  # CascadeROIHeads, see test_cascade.py
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml": Res5ROIHeads,
}


@pytest.fixture(scope="module")
def d2_shapes(compat_dir):
    return json.loads((compat_dir / "d2_state_dict_shapes.json").read_text())


@pytest.mark.parametrize("config_path", list(ZOO))
def test_parameter_names_and_shapes_match_detectron2(config_path, d2_shapes):
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(config_path))
    if "C4" in config_path:
        input_shape = {"res4": ShapeSpec(channels=1024, stride=16)}
    else:
        input_shape = dict(FPN_SHAPES, p6=ShapeSpec(channels=256, stride=64))
    heads = build_roi_heads(cfg, input_shape)
    if ZOO[config_path] is not None:
        assert type(heads) is ZOO[config_path]
    ours = {f"roi_heads.{k}": list(v.shape) for k, v in heads.state_dict().items()}
    theirs = {k: v for k, v in d2_shapes[config_path].items() if k.startswith("roi_heads.")}
    assert sorted(set(theirs) - set(ours)) == [], "missing from segtron"
    assert sorted(set(ours) - set(theirs)) == [], "not in Detectron2"
    assert {k: ours[k] for k in theirs if ours[k] != theirs[k]} == {}


# -- forward passes ------------------------------------------------------------------------------


def _small_cfg(mask=True, keypoint=True):
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = mask
    cfg.MODEL.KEYPOINT_ON = keypoint
    heads = cfg.MODEL.ROI_HEADS
    heads.NAME = "StandardROIHeads"
    heads.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    heads.NUM_CLASSES = 3
    heads.BATCH_SIZE_PER_IMAGE = 32
    heads.SCORE_THRESH_TEST = 0.0
    box = cfg.MODEL.ROI_BOX_HEAD
    box.NAME = "FastRCNNConvFCHead"
    box.NUM_FC = 2
    box.FC_DIM = 32
    box.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = 2
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (16, 16)
    cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 4
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    return cfg


def _features(shapes=FPN_SHAPES, batch=2):
    h, w = IMAGE_HW
    return {
        k: torch.randn(batch, s.channels, h // s.stride, w // s.stride) for k, s in shapes.items()
    }


def _annotated_targets(with_gt=(True, False)):
    out = []
    for has_gt in with_gt:
        if not has_gt:
            no_masks = BitMasks(torch.zeros(0, *IMAGE_HW, dtype=torch.bool))
            no_kpts = Keypoints(torch.zeros(0, 4, 3))
            out.append(_targets(torch.zeros(0, 4), [], gt_masks=no_masks, gt_keypoints=no_kpts))
            continue
        masks = torch.zeros(2, *IMAGE_HW, dtype=torch.bool)
        masks[0, 12:38, 12:38] = True
        masks[1, 22:58, 52:88] = True
        kpts = torch.tensor([
            [[20, 20, 2], [30, 25, 2], [15, 35, 1], [0, 0, 0]],
            [[60, 30, 2], [70, 40, 2], [80, 50, 0], [85, 55, 2]],
        ], dtype=torch.float32)
        out.append(_targets(GT, [2, 0], gt_masks=BitMasks(masks), gt_keypoints=Keypoints(kpts)))
    return out


def _random_proposals(n=40):
    props = []
    for _ in range(2):
        xy = torch.rand(n, 2) * torch.tensor([80.0, 50.0])
        wh = torch.rand(n, 2) * 30 + 4
        props.append(_proposals(torch.cat([xy, xy + wh], dim=1)))
    return props


def test_standard_training_forward_with_masks_and_keypoints():
    heads = build_roi_heads(_small_cfg(), FPN_SHAPES)
    assert isinstance(heads, StandardROIHeads) and heads.mask_on and heads.keypoint_on
    features = _features()
    with EventStorage():
        proposals, losses = heads(None, features, _random_proposals(), _annotated_targets())
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_keypoint"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    assert all(v.item() > 0 for v in losses.values())
    assert len(proposals) == 2 and proposals[0].has("gt_masks")
    sum(losses.values()).backward()
    for module in (heads.box_head.fc1, heads.box_predictor.bbox_pred, heads.mask_head.predictor,
                   heads.keypoint_head.score_lowres):
        assert module.weight.grad is not None and torch.isfinite(module.weight.grad).all()
        assert module.weight.grad.abs().sum() > 0


def test_training_without_any_ground_truth():
    heads = build_roi_heads(_small_cfg(), FPN_SHAPES)
    with EventStorage():
        targets = _annotated_targets((False, False))
        _, losses = heads(None, _features(), _random_proposals(), targets)
    assert losses["loss_box_reg"].item() == 0
    assert losses["loss_mask"].item() == 0 and losses["loss_keypoint"].item() == 0
    assert losses["loss_cls"].item() > 0
    sum(losses.values()).backward()


def test_train_on_pred_boxes_replaces_the_proposal_boxes():
    cfg = _small_cfg(mask=False, keypoint=False)
    cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = True
    heads = build_roi_heads(cfg, FPN_SHAPES)
    with torch.no_grad():
        heads.box_predictor.bbox_pred.weight.zero_()
        heads.box_predictor.bbox_pred.bias.zero_()
        heads.box_predictor.bbox_pred.bias[0::4] = 10.0  # dx = 1 box width for every class
    with EventStorage():
        targets = _annotated_targets((False, False))
        proposals, _ = heads(None, _features(), [_proposals(FAR)] * 2, targets)
    # Every region is background, so the boxes of class K - 1 are used: shifted by one width.
    far = torch.tensor(FAR)
    shifted = far + (far[:, 2:3] - far[:, 0:1]) * torch.tensor([1.0, 0, 1, 0])
    got = proposals[0].proposal_boxes.tensor
    torch.testing.assert_close(
        torch.tensor(sorted(got.tolist())), torch.tensor(sorted(shifted.tolist()))
    )


def test_standard_eval_forward():
    heads = build_roi_heads(_small_cfg(), FPN_SHAPES).eval()
    with torch.no_grad():
        results, losses = heads(None, _features(), _random_proposals())
    assert losses == {} and len(results) == 2
    for inst in results:
        assert 0 < len(inst) <= 10 and inst.image_size == IMAGE_HW
        assert (inst.scores[:-1] >= inst.scores[1:]).all()
        assert inst.pred_masks.shape == (len(inst), 1, 28, 28)
        assert inst.pred_keypoints.shape == (len(inst), 4, 3)
        assert inst.pred_keypoint_heatmaps.shape == (len(inst), 4, 56, 56)
    with pytest.raises(RuntimeError, match="eval"):
        heads.train().forward_with_given_boxes(_features(), results)


def test_eval_without_detections():
    cfg = _small_cfg()
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 1.0
    heads = build_roi_heads(cfg, FPN_SHAPES).eval()
    with torch.no_grad():
        results, _ = heads(None, _features(), _random_proposals())
    assert [len(r) for r in results] == [0, 0]
    assert results[0].pred_masks.shape == (0, 1, 28, 28)
    assert results[1].pred_keypoints.shape == (0, 4, 3)


def test_standard_from_plain_arguments():
    from segtron.modeling.poolers import ROIPooler
    from segtron.modeling.box_regression import Box2BoxTransform
    from segtron.modeling.roi_heads import FastRCNNConvFCHead, FastRCNNOutputLayers

    head = FastRCNNConvFCHead(
        ShapeSpec(channels=256, height=7, width=7), conv_dims=[], fc_dims=[16]
    )
    heads = StandardROIHeads(
        num_classes=2, batch_size_per_image=16, positive_fraction=0.25,
        proposal_matcher=Matcher([0.5], [0, 1]), box_in_features=["p3"],
        box_pooler=ROIPooler(7, (1 / 8,), 0, "ROIAlignV2"), box_head=head,
        box_predictor=FastRCNNOutputLayers(
            head.output_shape, box2box_transform=Box2BoxTransform((10, 10, 5, 5)), num_classes=2
        ),
    ).eval()
    assert not heads.mask_on and not heads.keypoint_on
    with torch.no_grad():
        results, _ = heads(None, _features(), _random_proposals())
    assert not results[0].has("pred_masks")


def test_config_errors_name_the_key():
    cfg = _small_cfg()
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p7"]
    with pytest.raises(ValueError, match=r"MODEL.ROI_HEADS.IN_FEATURES.*p7"):
        build_roi_heads(cfg, FPN_SHAPES)
    cfg = _small_cfg()
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p4"]
    with pytest.raises(ValueError, match="KEYPOINT_ON"):
        build_roi_heads(cfg, FPN_SHAPES)


def _c4_cfg():
    cfg = get_cfg()
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16  # res5: 64 -> 128 channels
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 4  # bottleneck 32
    cfg.TEST.DETECTIONS_PER_IMAGE = 5
    return cfg


def test_res5_heads_training_and_eval():
    heads = build_roi_heads(_c4_cfg(), {"res4": ShapeSpec(channels=64, stride=16)})
    assert isinstance(heads, Res5ROIHeads) and heads.mask_on
    assert [n for n, _ in heads.res5.named_children()] == ["0", "1", "2"]
    assert heads.res5[0].conv1.stride == (2, 2)  # STRIDE_IN_1X1 default True
    assert heads.box_predictor.cls_score.in_features == 128
    features = {"res4": torch.randn(2, 64, 4, 6)}
    with EventStorage():
        out, losses = heads(None, features, _random_proposals(12), _annotated_targets())
    assert out == [] and set(losses) == {"loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert heads.res5[2].conv3.weight.grad is not None

    heads.eval()
    with torch.no_grad():
        results, _ = heads(None, features, _random_proposals(12))
    # Pooled 14x14 -> res5 7x7 -> deconv 14x14 masks.
    assert results[0].pred_masks.shape == (len(results[0]), 1, 14, 14) and len(results[0]) == 5


def test_golden_fixture_detections_from_its_proposals(compat_dir):
    """Backbone + these ROI heads on the fixture's image and proposals give Detectron2's
    detections (isolates the ROI heads from the RPN)."""
    from segtron.data import detection_utils
    from segtron.data import transforms as T
    from segtron.modeling.backbone import build_backbone
    from segtron.modeling.postprocessing import detector_postprocess
    from segtron.structures import ImageList

    root = compat_dir / "golden" / "mask_rcnn_R50_FPN_thin"
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    backbone = build_backbone(cfg).eval()
    heads = build_roi_heads(cfg, backbone.output_shape()).eval()
    with np.load(root / "weights_fp16.npz") as npz:
        weights = {k: torch.from_numpy(npz[k].astype(np.float32) if npz[k].dtype == np.float16
                                       else npz[k]) for k in npz.files}
    for prefix, module in (("backbone.", backbone), ("roi_heads.", heads)):
        module.load_state_dict(
            {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True
        )

    image = detection_utils.read_image(str(root / "image.png"), format=cfg.INPUT.FORMAT)
    resized = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) \
        .get_transform(image).apply_image(image)
    x = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    images = ImageList.from_tensors([(x - mean) / std], backbone.size_divisibility)
    with np.load(root / "proposals.npz") as saved:
        proposals = _proposals(saved["boxes"], images.image_sizes[0])
        proposals.objectness_logits = torch.from_numpy(saved["objectness_logits"])
    with torch.no_grad():
        results, _ = heads(images, backbone(images.tensor), [proposals])
        detections = detector_postprocess(results[0], image.shape[0], image.shape[1])

    with np.load(root / "expected.npz") as expected:
        assert len(detections) == len(expected["boxes"])
        np.testing.assert_array_equal(detections.pred_classes.numpy(), expected["classes"])
        np.testing.assert_allclose(
            detections.pred_boxes.tensor.numpy(), expected["boxes"], rtol=0, atol=1e-2
        )
        np.testing.assert_allclose(detections.scores.numpy(), expected["scores"], rtol=0, atol=1e-4)
        ours, theirs = detections.pred_masks.numpy(), expected["masks"]
    inter = (ours & theirs).reshape(len(ours), -1).sum(1)
    union = (ours | theirs).reshape(len(ours), -1).sum(1)
    assert np.where(union > 0, inter / np.maximum(union, 1), 1.0).min() >= 0.99


def test_box_head_reads_nhwc_maps_as_a_convolution_in_inference():
    """fc1 on channels-last pooled features (MODEL.CHANNELS_LAST) skips the flatten copy in
    inference; the output equals flatten + linear on the same features."""
    torch.manual_seed(0)
    head = FastRCNNConvFCHead(ShapeSpec(channels=8, height=7, width=7), conv_dims=[],
                              fc_dims=[16, 16]).eval()
    x = torch.randn(5, 8, 7, 7)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = head(x)
        assert head._fc1_on_map.cached_kernel is None  # NCHW: the plain flatten + linear
        calls = []
        original = head.flatten.forward
        head.flatten.forward = lambda t: calls.append(1) or original(t)
        out = head(nhwc)
    assert not calls, "the NHWC map went through the flatten copy"
    assert head._fc1_on_map.cached_kernel is not None, "fc1 did not run as a convolution"
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(head(nhwc), head(x))  # with autograd: the usual flatten + linear


def test_box_head_nhwc_kernel_follows_weight_updates():
    """The channels-last fc1 kernel kept between inference calls is rebuilt when the weight
    changes in place (an optimizer step, load_state_dict) and dropped by train()."""
    torch.manual_seed(0)
    head = FastRCNNConvFCHead(ShapeSpec(channels=8, height=7, width=7), conv_dims=[],
                              fc_dims=[16]).eval()
    x = torch.randn(3, 8, 7, 7)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        head(nhwc)
        kernel = head._fc1_on_map.cached_kernel
        head(nhwc)
        assert head._fc1_on_map.cached_kernel is kernel  # reused while the weight is unchanged
        head.fc1.weight.mul_(2.0)
        torch.testing.assert_close(head(nhwc), head(x), rtol=1e-5, atol=1e-6)
        head.load_state_dict({k: v * 0.5 for k, v in head.state_dict().items()})
        torch.testing.assert_close(head(nhwc), head(x), rtol=1e-5, atol=1e-6)
    head.train()
    assert head._fc1_on_map.cached_kernel is None
