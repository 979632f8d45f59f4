"""RPN: head structure, prediction layout vs anchor order, hand-computed training losses, config
wiring, and proposal parity with Detectron2 on the golden fixture."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling.anchor_generator import DefaultAnchorGenerator
from segtron.modeling.box_regression import Box2BoxTransform
from segtron.modeling.matcher import Matcher
from segtron.modeling.proposal_generator import (
    PROPOSAL_GENERATOR_REGISTRY,
    RPN,
    RPN_HEAD_REGISTRY,
    StandardRPNHead,
    build_proposal_generator,
    build_rpn_head,
)
from segtron.structures import Boxes, ImageList, Instances
from segtron.utils.events import EventStorage

# -- StandardRPNHead ---------------------------------------------------------------------------


def test_head_single_conv_structure_and_forward():
    head = StandardRPNHead(in_channels=6, num_anchors=3)
    keys = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert keys == {
        "conv.weight": (6, 6, 3, 3),
        "conv.bias": (6,),
        "objectness_logits.weight": (3, 6, 1, 1),
        "objectness_logits.bias": (3,),
        "anchor_deltas.weight": (12, 6, 1, 1),
        "anchor_deltas.bias": (12,),
    }
    assert isinstance(head.conv.activation, nn.ReLU)
    for module in (head.conv, head.objectness_logits, head.anchor_deltas):
        assert torch.count_nonzero(module.bias) == 0
    for p in head.parameters():
        nn.init.normal_(p)  # non-trivial biases for the forward check
    feats = [torch.randn(2, 6, 5, 7), torch.randn(2, 6, 3, 4)]
    logits, deltas = head(feats)
    for x, lg, dl in zip(feats, logits, deltas):
        hidden = F.relu(F.conv2d(x, head.conv.weight, head.conv.bias, padding=1))
        torch.testing.assert_close(
            lg, F.conv2d(hidden, head.objectness_logits.weight, head.objectness_logits.bias)
        )
        torch.testing.assert_close(
            dl, F.conv2d(hidden, head.anchor_deltas.weight, head.anchor_deltas.bias)
        )
        assert lg.shape == (2, 3, *x.shape[-2:]) and dl.shape == (2, 12, *x.shape[-2:])


def test_head_init_std():
    head = StandardRPNHead(in_channels=128, num_anchors=3)
    assert head.conv.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_head_several_convs():
    head = StandardRPNHead(in_channels=4, num_anchors=2, box_dim=4, conv_dims=(8, -1))
    keys = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert keys["conv.conv0.weight"] == (8, 4, 3, 3)
    assert keys["conv.conv1.weight"] == (8, 8, 3, 3)
    assert keys["objectness_logits.weight"] == (2, 8, 1, 1)
    assert keys["anchor_deltas.weight"] == (8, 8, 1, 1)
    logits, deltas = head([torch.randn(1, 4, 3, 3)])
    assert logits[0].shape == (1, 2, 3, 3) and deltas[0].shape == (1, 8, 3, 3)
    with pytest.raises(ValueError, match="CONV_DIMS"):
        StandardRPNHead(in_channels=4, num_anchors=2, conv_dims=(8, 0))


def test_head_from_config():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64]]
    shapes = [ShapeSpec(channels=16, stride=4), ShapeSpec(channels=16, stride=8)]
    head = build_rpn_head(cfg, shapes)
    assert isinstance(head, StandardRPNHead) and "StandardRPNHead" in RPN_HEAD_REGISTRY
    assert head.objectness_logits.out_channels == 3 and head.conv.in_channels == 16
    with pytest.raises(ValueError, match="same channels"):
        build_rpn_head(cfg, [ShapeSpec(channels=16, stride=4), ShapeSpec(channels=8, stride=8)])
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64, 128]]
    with pytest.raises(ValueError, match="same number of anchors"):
        build_rpn_head(cfg, shapes)


# -- layout: predictions flattened in the anchor order ----------------------------------------


class _FixedHead(nn.Module):
    """Returns the given (trainable) prediction tensors whatever the features."""

    def __init__(self, logits, deltas):
        super().__init__()
        self.logits = nn.ParameterList([nn.Parameter(t.clone()) for t in logits])
        self.deltas = nn.ParameterList([nn.Parameter(t.clone()) for t in deltas])

    def forward(self, features):
        return list(self.logits), list(self.deltas)


def _rpn(head, anchor_generator, in_features, **kwargs):
    args = dict(
        in_features=in_features,
        head=head,
        anchor_generator=anchor_generator,
        anchor_matcher=Matcher([0.3, 0.7], [0, -1, 1], allow_low_quality_matches=True),
        box2box_transform=Box2BoxTransform(weights=(1.0, 1.0, 1.0, 1.0)),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(2000, 1000),
        post_nms_topk=(1000, 1000),
    )
    args.update(kwargs)
    return RPN(**args)


def _coded_predictions(num_images, num_anchors, grids):
    """objectness[n, a, y, x] and deltas[n, a*4+k, y, x] each get a distinct value encoding
    their indices."""
    logits, deltas = [], []
    for level, (h, w) in enumerate(grids):
        n, a, y, x = torch.meshgrid(
            torch.arange(num_images), torch.arange(num_anchors), torch.arange(h),
            torch.arange(w), indexing="ij",
        )
        code = level * 1e6 + n * 1e5 + y * 1e3 + x * 10 + a
        logits.append(code.float())
        k = torch.arange(4).view(1, 1, 4, 1, 1)
        d = (code.unsqueeze(2) * 10 + k).float()  # (N, A, 4, H, W)
        deltas.append(d.reshape(num_images, num_anchors * 4, h, w))
    return logits, deltas


def test_flattening_follows_anchor_order():
    grids, strides, num_images, num_anchors = [(3, 5), (2, 2)], [8, 16], 2, 3
    anchor_gen = DefaultAnchorGenerator(
        sizes=[[16], [32]], aspect_ratios=[[0.5, 1.0, 2.0]], strides=strides
    )
    logits, deltas = _coded_predictions(num_images, num_anchors, grids)
    rpn = _rpn(_FixedHead(logits, deltas), anchor_gen, ["a", "b"]).eval()
    captured = {}

    def capture(anchors, pred_logits, pred_deltas, image_sizes):
        captured.update(anchors=anchors, logits=pred_logits, deltas=pred_deltas)
        return []

    rpn.predict_proposals = capture
    features = {name: torch.zeros(num_images, 1, h, w) for name, (h, w) in zip("ab", grids)}
    rpn(ImageList(torch.zeros(num_images, 3, 24, 40), [(24, 40)] * num_images), features)

    for level, ((h, w), stride) in enumerate(zip(grids, strides)):
        flat_logits = captured["logits"][level]
        flat_deltas = captured["deltas"][level]
        anchors = captured["anchors"][level].tensor
        assert flat_logits.shape == (num_images, h * w * num_anchors)
        assert flat_deltas.shape == (num_images, h * w * num_anchors, 4)
        assert anchors.shape == (h * w * num_anchors, 4)
        cells = list(anchor_gen.cell_anchors)[level]
        for n in range(num_images):
            for y in range(h):
                for x in range(w):
                    for a in range(num_anchors):
                        row = (y * w + x) * num_anchors + a
                        code = level * 1e6 + n * 1e5 + y * 1e3 + x * 10 + a
                        assert flat_logits[n, row].item() == code
                        assert flat_deltas[n, row].tolist() == [code * 10 + k for k in range(4)]
                        shift = torch.tensor([x * stride, y * stride] * 2, dtype=torch.float32)
                        torch.testing.assert_close(anchors[row], cells[a] + shift)


def test_top_proposal_pairs_logit_delta_and_anchor():
    """End to end: the highest logit at (a, y, x) with a delta there decodes that anchor."""
    h, w, num_anchors, stride = 4, 6, 3, 8
    anchor_gen = DefaultAnchorGenerator(sizes=[[8]], aspect_ratios=[[0.5, 1.0, 2.0]],
                                        strides=[stride], offset=0.5)
    logits = torch.zeros(1, num_anchors, h, w)
    deltas = torch.zeros(1, num_anchors * 4, h, w)
    a, y, x = 2, 1, 4
    logits[0, a, y, x] = 5.0
    deltas[0, a * 4 + 0, y, x] = 0.25  # dx: move right by a quarter of the anchor width
    deltas[0, a * 4 + 3, y, x] = math.log(2.0)  # dh: double the height
    rpn = _rpn(_FixedHead([logits], [deltas]), anchor_gen, ["p"]).eval()
    proposals, losses = rpn(ImageList(torch.zeros(1, 3, 32, 48), [(32, 48)]),
                            {"p": torch.zeros(1, 1, h, w)})
    assert losses == {}
    cell = anchor_gen.generate_cell_anchors([8], [2.0])[0]
    cw, ch = (cell[2] - cell[0]).item(), (cell[3] - cell[1]).item()
    cx, cy = (x + 0.5) * stride + 0.25 * cw, (y + 0.5) * stride
    expected = torch.tensor([cx - cw / 2, cy - ch, cx + cw / 2, cy + ch])
    assert expected.min() > 0 and expected[2] < 48 and expected[3] < 32  # no clipping involved
    top = proposals[0]
    assert top.objectness_logits[0].item() == 5.0
    torch.testing.assert_close(top.proposal_boxes.tensor[0], expected)


# -- training: labels, sampling and losses, computed by hand -----------------------------------
#
# One 2x2 level, stride 32, one 32x32 anchor per location centred in its cell: anchors
# A0 = [0,0,32,32], A1 = [32,0,64,32], A2 = [0,32,32,64], A3 = [32,32,64,64] (row-major).
# The gt box [0,0,32,24] has IoU 0.75 with A0 (positive) and 0 with the others (negative).

LOGITS = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])  # A0 .. A3 = 0.5, -1, 2, 0
DELTAS_A0 = torch.tensor([0.1, -0.2, 0.05, 0.0])
GT = [0.0, 0.0, 32.0, 24.0]
TARGET_A0 = [0.0, (12.0 - 16.0) / 32.0, 0.0, math.log(24.0 / 32.0)]


def _softplus(v):
    return math.log1p(math.exp(v))


def _loss_rpn(num_images=1, **kwargs):
    logits = LOGITS.expand(num_images, -1, -1, -1).clone()
    deltas = torch.randn(num_images, 4, 2, 2)
    deltas[:, :, 0, 0] = DELTAS_A0
    anchor_gen = DefaultAnchorGenerator(sizes=[[32]], aspect_ratios=[[1.0]], strides=[32],
                                        offset=0.5)
    return _rpn(_FixedHead([logits], [deltas]), anchor_gen, ["p5"], **kwargs).train()


def _inputs(gts, image_size=(64, 64)):
    n = len(gts)
    images = ImageList(torch.zeros(n, 3, 64, 64), [image_size] * n)
    features = {"p5": torch.zeros(n, 1, 2, 2)}
    instances = []
    for boxes in gts:
        inst = Instances(image_size)
        inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.append(inst)
    return images, features, instances


def test_losses_by_hand():
    rpn = _loss_rpn()
    images, features, gts = _inputs([[GT]])
    with EventStorage() as storage:
        proposals, losses = rpn(images, features, gts)
        latest = storage.latest()
    cls = (_softplus(-0.5) + _softplus(-1.0) + _softplus(2.0) + _softplus(0.0)) / 256
    loc = sum(abs(p - t) for p, t in zip(DELTAS_A0.tolist(), TARGET_A0)) / 256
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc"}
    assert losses["loss_rpn_cls"].item() == pytest.approx(cls, rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(loc, rel=1e-5)
    assert latest["rpn/num_pos_anchors"][0] == 1
    assert latest["rpn/num_neg_anchors"][0] == 3

    (losses["loss_rpn_cls"] + losses["loss_rpn_loc"]).backward()
    grad = rpn.rpn_head.logits[0].grad
    expected = torch.sigmoid(LOGITS) - torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(grad, expected / 256)
    assert not proposals[0].proposal_boxes.tensor.requires_grad
    assert not proposals[0].objectness_logits.requires_grad


def test_losses_weights_and_no_storage():
    rpn = _loss_rpn(loss_weight={"loss_rpn_cls": 2.0, "loss_rpn_loc": 0.5})
    _, losses = rpn(*_inputs([[GT]]))  # no EventStorage: still works
    cls = (_softplus(-0.5) + _softplus(-1.0) + _softplus(2.0) + _softplus(0.0)) / 256
    loc = sum(abs(p - t) for p, t in zip(DELTAS_A0.tolist(), TARGET_A0)) / 256
    assert losses["loss_rpn_cls"].item() == pytest.approx(2.0 * cls, rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(0.5 * loc, rel=1e-5)


def test_empty_gt_image_is_all_background():
    rpn = _loss_rpn(num_images=2)
    images, features, gts = _inputs([[GT], []])
    with EventStorage() as storage:
        _, losses = rpn(images, features, gts)
        latest = storage.latest()
    per_image_cls = _softplus(-0.5) + _softplus(-1.0) + _softplus(2.0) + _softplus(0.0)
    empty_cls = _softplus(0.5) + _softplus(-1.0) + _softplus(2.0) + _softplus(0.0)
    loc = sum(abs(p - t) for p, t in zip(DELTAS_A0.tolist(), TARGET_A0))
    assert losses["loss_rpn_cls"].item() == pytest.approx((per_image_cls + empty_cls) / 512,
                                                          rel=1e-5)
    assert losses["loss_rpn_loc"].item() == pytest.approx(loc / 512, rel=1e-5)
    assert latest["rpn/num_pos_anchors"][0] == 0.5
    assert latest["rpn/num_neg_anchors"][0] == 3.5

    labels, matched = rpn.label_and_sample_anchors(
        [Boxes(torch.tensor([[0.0, 0, 32, 32], [32, 0, 64, 32], [0, 32, 32, 64],
                             [32, 32, 64, 64]]))], gts)
    assert labels[0].tolist() == [1, 0, 0, 0] and labels[1].tolist() == [0, 0, 0, 0]
    torch.testing.assert_close(matched[1], torch.zeros(4, 4))
    torch.testing.assert_close(matched[0][0], torch.tensor(GT))


def test_boundary_thresh_ignores_outside_anchors():
    rpn = _loss_rpn(anchor_boundary_thresh=0)
    # In a 48x48 image only A0 lies inside; the others are ignored (label -1).
    _, losses = rpn(*_inputs([[GT]], image_size=(48, 48)))
    assert losses["loss_rpn_cls"].item() == pytest.approx(_softplus(-0.5) / 256, rel=1e-5)


def test_sampling_limits_anchors():
    rpn = _loss_rpn(batch_size_per_image=2, positive_fraction=0.5)
    rpn.rpn_head.logits[0].data[0, 0, 0, 1:] = 0.3  # equal negatives: any sample gives one value
    rpn.rpn_head.logits[0].data[0, 0, 1, :] = 0.3
    _, losses = rpn(*_inputs([[GT]]))
    assert losses["loss_rpn_cls"].item() == pytest.approx(
        (_softplus(-0.5) + _softplus(0.3)) / 2, rel=1e-5
    )


def test_training_needs_gt_and_uses_train_topk():
    rpn = _loss_rpn(post_nms_topk=(1, 3))
    images, features, gts = _inputs([[GT]])
    with pytest.raises(ValueError, match="gt_instances"):
        rpn(images, features)
    proposals, _ = rpn(images, features, gts)
    assert len(proposals[0]) == 1
    rpn.eval()
    proposals, losses = rpn(images, features)
    assert len(proposals[0]) == 3 and losses == {}


# -- config wiring ----------------------------------------------------------------------------


def _fpn_cfg():
    cfg = get_cfg()
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3"]
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64]]
    cfg.MODEL.RPN.LOSS_WEIGHT = 2.0
    cfg.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 3.0
    cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 2
    shapes = {"p2": ShapeSpec(channels=8, stride=4), "p3": ShapeSpec(channels=8, stride=8),
              "p4": ShapeSpec(channels=8, stride=16)}
    return cfg, shapes


def test_rpn_from_config():
    cfg, shapes = _fpn_cfg()
    rpn = build_proposal_generator(cfg, shapes)
    assert isinstance(rpn, RPN) and "RPN" in PROPOSAL_GENERATOR_REGISTRY
    r = cfg.MODEL.RPN
    assert rpn.in_features == ["p2", "p3"]
    assert rpn.pre_nms_topk == {True: r.PRE_NMS_TOPK_TRAIN, False: r.PRE_NMS_TOPK_TEST}
    assert rpn.post_nms_topk == {True: r.POST_NMS_TOPK_TRAIN, False: r.POST_NMS_TOPK_TEST}
    assert rpn.loss_weight == {"loss_rpn_cls": 2.0, "loss_rpn_loc": 6.0}
    assert rpn.min_box_size == 2 and rpn.nms_thresh == r.NMS_THRESH
    assert rpn.batch_size_per_image == r.BATCH_SIZE_PER_IMAGE
    assert rpn.anchor_matcher.allow_low_quality_matches
    assert rpn.box2box_transform.weights == tuple(r.BBOX_REG_WEIGHTS)
    assert {k.split(".")[0] for k in rpn.state_dict()} == {"rpn_head"}
    assert rpn.anchor_generator.strides == [4, 8]
    # A number for loss_weight applies to both losses.
    assert _loss_rpn(loss_weight=0.5).loss_weight == {"loss_rpn_cls": 0.5, "loss_rpn_loc": 0.5}


def test_build_proposal_generator_names():
    cfg, shapes = _fpn_cfg()
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "PrecomputedProposals"
    assert build_proposal_generator(cfg, shapes) is None
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPNN"
    with pytest.raises(KeyError, match="RPN"):
        build_proposal_generator(cfg, shapes)
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p7"]
    with pytest.raises(KeyError, match="p7"):
        build_proposal_generator(cfg, shapes)


# -- parity with Detectron2 on the golden fixture ---------------------------------------------

FIXTURE = "golden/mask_rcnn_R50_FPN_thin"


def _golden_state(path, prefix):
    """Entries of the fixture's state dict under ``prefix`` (prefix stripped); float16 arrays
    are cast to float32, integer buffers kept as stored."""
    out = {}
    with np.load(path) as npz:
        for name in npz.files:
            if name.startswith(prefix):
                array = npz[name]
                if array.dtype == np.float16:
                    array = array.astype(np.float32)
                out[name[len(prefix):]] = torch.from_numpy(array)
    return out


def test_golden_proposals(compat_dir):
    from segtron.data import detection_utils
    from segtron.data import transforms as T
    from segtron.modeling.backbone import build_backbone

    root = compat_dir / FIXTURE
    cfg = get_cfg()
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    backbone = build_backbone(cfg)
    rpn = build_proposal_generator(cfg, backbone.output_shape())
    weights = root / "weights_fp16.npz"
    for module, prefix in ((backbone, "backbone."), (rpn, "proposal_generator.")):
        result = module.load_state_dict(_golden_state(weights, prefix), strict=True)
        assert not result.missing_keys and not result.unexpected_keys
    backbone.eval()
    rpn.eval()

    image = detection_utils.read_image(str(root / "image.png"), format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))).float()
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    images = ImageList.from_tensors(
        [(tensor - mean) / std], backbone.size_divisibility,
        padding_constraints=backbone.padding_constraints,
    )
    assert images.image_sizes == [(256, 341)] and tuple(images.tensor.shape) == (1, 3, 256, 352)
    with torch.no_grad():
        proposals, losses = rpn(images, backbone(images.tensor))
    assert losses == {}

    with np.load(root / "proposals.npz") as expected:
        boxes, logits = expected["boxes"], expected["objectness_logits"]
    ours = proposals[0]
    assert ours.image_size == (256, 341)
    assert len(ours) == len(boxes) == 300
    np.testing.assert_allclose(ours.proposal_boxes.tensor.numpy(), boxes, rtol=0, atol=1e-3)
    np.testing.assert_allclose(ours.objectness_logits.numpy(), logits, rtol=0, atol=1e-4)
