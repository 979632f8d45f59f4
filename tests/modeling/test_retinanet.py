"""RetinaNet: Detectron2 parity on the golden fixture, the losses and anchor labels on
hand-computed cases, the head's layout and norms, build-time errors, and a training step."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from segtron.config import get_cfg
from segtron.layers import CycleBatchNormList, ShapeSpec
from segtron.modeling import build_model
from segtron.modeling.anchor_generator import DefaultAnchorGenerator
from segtron.modeling.backbone import Backbone
from segtron.modeling.box_regression import Box2BoxTransform
from segtron.modeling.matcher import Matcher
from segtron.modeling.meta_arch import RetinaNet, RetinaNetHead
from segtron.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from segtron.structures import Boxes, Instances
from segtron.utils.events import EventStorage
from tests.modeling.golden import (
    MODES,
    assert_feature_matches,
    assert_input_sizes,
    golden_forward,
    golden_mode,
)

FIXTURE = "golden/retinanet_R50_FPN_thin"


# -- parity with Detectron2 ------------------------------------------------------------------


@pytest.fixture(scope="module", params=MODES)
def golden(compat_dir, request):
    with golden_mode(request.param):
        run = golden_forward(compat_dir / FIXTURE, request.param)
    run["instances"] = run["outputs"][0]["instances"]
    yield run


def test_golden_input_sizes(golden):
    assert_input_sizes(golden["images"], golden["summary"])


@pytest.mark.parametrize("level", ["p3", "p4", "p5", "p6", "p7"])
def test_golden_fpn_features(golden, level):
    assert_feature_matches(golden["features"][level], golden["summary"], level)


def test_golden_detections(golden):
    """Same detections in the same order: boxes within 1e-2 px and scores within 1e-4 of
    Detectron2's (../shared/compat/README.md). The faster modes fold the frozen norms into the
    convs and reorder sums, which moves features by ~1e-4 relative (the fixture's feature
    tolerance); the head's deltas carry that into box corners in proportion to the box's size,
    so there the box tolerance is 1e-2 px plus 3e-4 of the box's larger side (measured: at most
    1.6e-4 of it, 0.04 px on a 273 px box)."""
    expected, instances = golden["expected"], golden["instances"]
    assert instances.image_size == (240, 320)
    assert len(instances) == golden["summary"]["num_detections"] == len(expected["boxes"]) == 78
    np.testing.assert_array_equal(instances.pred_classes.numpy(), expected["classes"])
    np.testing.assert_allclose(instances.scores.numpy(), expected["scores"], rtol=0, atol=1e-4)
    boxes, want = instances.pred_boxes.tensor.numpy(), expected["boxes"]
    if golden["mode"] == "exact":
        np.testing.assert_allclose(boxes, want, rtol=0, atol=1e-2)
        return
    side = np.maximum(want[:, 2] - want[:, 0], want[:, 3] - want[:, 1])
    tolerance = 1e-2 + 3e-4 * side
    error = np.abs(boxes - want).max(axis=1)
    assert (error <= tolerance).all(), f"worst box {error.argmax()}: {error.max():.4f} px"


# -- a small RetinaNet built from plain arguments ----------------------------------------------


class _GridBackbone(Backbone):
    """Two levels, "p3" (stride 8) and "p4" (stride 16), each a strided conv of the input."""

    def __init__(self, channels=4):
        super().__init__()
        self.c3 = nn.Conv2d(3, channels, 8, stride=8)
        self.c4 = nn.Conv2d(3, channels, 16, stride=16)
        self._out_features = ["p3", "p4"]
        self._out_feature_channels = {"p3": channels, "p4": channels}
        self._out_feature_strides = {"p3": 8, "p4": 16}

    @property
    def size_divisibility(self):
        return 16

    def forward(self, x):
        return {"p3": self.c3(x), "p4": self.c4(x)}


def _retinanet(num_classes=2, **kwargs):
    shapes = [ShapeSpec(channels=4, stride=8), ShapeSpec(channels=4, stride=16)]
    args = dict(
        backbone=_GridBackbone(),
        head=RetinaNetHead(
            input_shape=shapes, num_classes=num_classes, num_anchors=1, conv_dims=[4]
        ),
        head_in_features=["p3", "p4"],
        anchor_generator=DefaultAnchorGenerator(
            sizes=[[16], [32]], aspect_ratios=[1.0], strides=[8, 16]
        ),
        box2box_transform=Box2BoxTransform((1.0, 1.0, 1.0, 1.0)),
        anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
        num_classes=num_classes,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[1.0, 1.0, 1.0],
    )
    args.update(kwargs)
    return RetinaNet(**args)


def _instances(boxes, classes, size=(32, 32)):
    inst = Instances(size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
    return inst


def test_label_anchors_hand_case():
    """Anchors (x0, y0, x1, y1): A=(0,0,10,10), B=(0,0,20,20), C=(30,30,40,40). One gt
    (0,0,10,14) of class 1: IoU with A = 100/140 = 0.71 (foreground), with B = 140/400 = 0.35
    (background), with C = 0 (background). A second image without gt: all background."""
    model = _retinanet()
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20]])),
               Boxes(torch.tensor([[30.0, 30, 40, 40]]))]
    labels, boxes = model.label_anchors(anchors, [_instances([0, 0, 10, 14], [1]),
                                                  _instances([], [])])
    assert labels[0].tolist() == [1, 2, 2]
    assert boxes[0][0].tolist() == [0, 0, 10, 14]
    assert labels[1].tolist() == [2, 2, 2]
    assert boxes[1].abs().sum() == 0


def test_label_anchors_ignores_between_thresholds_and_keeps_best_match():
    """Anchors A=(0,0,10,10), B=(0,0,10,20). gt (0,0,10,9): IoU 0.9 with A (foreground), 0.45
    with B (between 0.4 and 0.5: ignored). gt (0,0,10,60) of class 0: IoU 1/6 with A and 1/3
    with B, both below 0.4, but B is the gt's best anchor, so it is foreground anyway
    (allow_low_quality_matches) and A is background."""
    model = _retinanet()
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 20]]))]
    labels, _ = model.label_anchors(anchors, [_instances([0, 0, 10, 9], [1])])
    assert labels[0].tolist() == [1, -1]
    labels, boxes = model.label_anchors(anchors, [_instances([0, 0, 10, 60], [0])])
    assert labels[0].tolist() == [2, 0]
    assert boxes[0][1].tolist() == [0, 0, 10, 60]


def _focal(logit, target, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-logit))
    ce = -math.log(p) if target else -math.log(1 - p)
    p_t = p if target else 1 - p
    a_t = alpha if target else 1 - alpha
    return a_t * (1 - p_t) ** gamma * ce


def test_losses_hand_computed_and_normaliser_moving_average():
    """One image, three anchors of one level, K = 2: labels [0, 2 (background), -1 (ignored)].
    loss_cls sums the focal loss over both classes of the two valid anchors; loss_box_reg is L1
    on the foreground anchor's deltas; both are divided by 0.9 * 100 + 0.1 * 1 = 90.1, then by
    0.9 * 90.1 + 0.1 * 3 = 81.39 after a batch with three foreground anchors."""
    model = _retinanet()
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 15, 15]]))]
    logits = torch.tensor([[[0.0, math.log(3.0)], [-1.0, 2.0], [5.0, 5.0]]])
    deltas = torch.tensor([[[0.5, -0.25, 0.0, 0.0], [9.0, 9, 9, 9], [9.0, 9, 9, 9]]])
    gt_boxes = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 1, 1], [0, 0, 1, 1]])]
    labels = [torch.tensor([0, 2, -1])]

    losses = model.losses(anchors, [logits], labels, [deltas], gt_boxes)
    cls = _focal(0.0, 1) + _focal(math.log(3.0), 0) + _focal(-1.0, 0) + _focal(2.0, 0)
    assert losses["loss_cls"].item() == pytest.approx(cls / 90.1, rel=1e-6)
    assert losses["loss_box_reg"].item() == pytest.approx(0.75 / 90.1, rel=1e-6)
    assert model.loss_normalizer == pytest.approx(90.1)

    labels = [torch.tensor([0, 1, 0])]
    gt_boxes = [torch.tensor([[0.0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 15, 15]])]
    with EventStorage() as storage:
        losses = model.losses(anchors, [logits], labels, [deltas], gt_boxes)
        assert storage.latest()["num_pos_anchors"][0] == 3
    assert model.loss_normalizer == pytest.approx(81.39)
    box = 0.75 + 36 + 36  # L1 of the deltas against zero targets (the anchors are the gt)
    assert losses["loss_box_reg"].item() == pytest.approx(box / 81.39, rel=1e-6)


def test_giou_box_loss_and_focal_parameters_are_used():
    model = _retinanet(box_reg_loss_type="giou", focal_loss_alpha=-1, focal_loss_gamma=0.0)
    anchors = [Boxes(torch.tensor([[0.0, 0, 10, 10]]))]
    logits = torch.tensor([[[0.0, 0.0]]])
    # dx = 0.5 shifts the 10x10 anchor by 5 px: IoU 50/150, the enclosing box is 15x10 = area
    # of the union, so GIoU = 1/3 and the loss is 2/3.
    deltas = torch.tensor([[[0.5, 0.0, 0.0, 0.0]]])
    losses = model.losses(anchors, [logits], [torch.tensor([1])], [deltas],
                          [torch.tensor([[0.0, 0, 10, 10]])])
    assert losses["loss_box_reg"].item() == pytest.approx((2 / 3) / 90.1, rel=1e-5)
    # gamma 0 and no alpha weighting: plain binary cross-entropy, ln 2 per class.
    assert losses["loss_cls"].item() == pytest.approx(2 * math.log(2) / 90.1, rel=1e-6)


def test_permute_to_n_hwa_k_matches_anchor_order():
    """Channel a * K + k at (y, x) becomes row (y * W + x) * A + a, column k; NHWC inputs too."""
    n, a, k, h, w = 2, 3, 4, 2, 5
    x = torch.arange(n * a * k * h * w, dtype=torch.float32).reshape(n, a * k, h, w)
    out = permute_to_N_HWA_K(x, k)
    assert out.shape == (n, h * w * a, k)
    for y, xx, aa, kk in [(0, 0, 0, 0), (1, 3, 2, 1), (1, 4, 1, 3)]:
        assert out[1, (y * w + xx) * a + aa, kk] == x[1, aa * k + kk, y, xx]
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(permute_to_N_HWA_K(nhwc, k), out)
    with pytest.raises(ValueError, match="multiple of K=5"):
        permute_to_N_HWA_K(x, 5)


def test_inference_threshold_topk_nms_and_postprocess():
    """Scores above the threshold only, at most top-k per level, NMS per class, at most
    max_detections_per_image, scaled to the requested output size."""
    torch.manual_seed(0)
    model = _retinanet(test_score_thresh=0.3, test_topk_candidates=5, max_detections_per_image=4)
    model.eval()
    with torch.no_grad():
        model.head.cls_score.bias.fill_(0.0)  # probabilities around 0.5
        model.head.cls_score.weight.normal_(std=1.0)
        out = model([{"image": torch.rand(3, 32, 48) * 255, "height": 64, "width": 96}])
    inst = out[0]["instances"]
    assert inst.image_size == (64, 96)
    assert 0 < len(inst) <= 4
    assert (inst.scores > 0.3).all()
    assert torch.all(inst.scores[:-1] >= inst.scores[1:])
    assert inst.pred_classes.max() < 2
    # Decoding one level: 12 anchors x 2 classes; only the 5 best above 0.3 survive.
    anchors = Boxes(torch.tensor([[0.0, 0, 8, 8]]).repeat(12, 1))
    scores = torch.linspace(0.0, 0.95, 24).reshape(12, 2)
    pred = model._decode_per_level_predictions(
        anchors, scores, torch.zeros(12, 4), 0.3, 5, (32, 48)
    )
    best_five = scores.flatten().sort(descending=True).values[:5]
    assert pred.scores.tolist() == pytest.approx(best_five.tolist())
    assert pred.pred_classes.tolist() == [1, 0, 1, 0, 1]


@pytest.mark.parametrize("num_anchors,k,thresh", [(600, 50, 0.0), (600, 50, 0.9), (30, 50, 0.0)])
def test_decoding_searches_only_rows_that_can_hold_the_top_k(num_anchors, k, thresh):
    """Decoding finds the top-k (anchor, class) pairs above the threshold among the rows whose
    maximum reaches the k-th largest row maximum; it must pick exactly what a search of every
    entry picks (distinct scores), in the same order."""
    torch.manual_seed(1)
    model = _retinanet()
    scores = torch.rand(num_anchors, 7)
    anchors = Boxes(torch.rand(num_anchors, 4) * 10 + torch.tensor([0.0, 0, 20, 20]))
    deltas = torch.randn(num_anchors, 4) * 0.1
    pred = model._decode_per_level_predictions(anchors, scores, deltas, thresh, k, (64, 64))

    flat = scores.flatten()
    keep = torch.nonzero(flat > thresh).squeeze(1)
    top, order = flat[keep].topk(min(k, len(keep)))
    want = keep[order]
    assert pred.scores.tolist() == top.tolist()
    anchor_idx = [int(i) // 7 for i in want]
    assert pred.pred_classes.tolist() == [int(i) % 7 for i in want]
    expected_boxes = model.box2box_transform.apply_deltas(
        deltas[anchor_idx], anchors.tensor[anchor_idx]
    )
    assert torch.equal(pred.pred_boxes.tensor, expected_boxes)


def test_training_step_returns_detectron2_loss_keys_and_gradients():
    model = _retinanet()
    model.train()
    batch = [
        {"image": torch.rand(3, 32, 32) * 255, "instances": _instances([[2, 2, 20, 18]], [1])},
        {"image": torch.rand(3, 32, 32) * 255, "instances": _instances([], [])},
    ]
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.head.parameters())
    with pytest.raises(ValueError, match="instances"):
        model([{"image": torch.rand(3, 32, 32)}])


def test_vis_period_puts_a_picture():
    model = _retinanet(vis_period=1, input_format="BGR")
    batch = [{"image": (torch.rand(3, 32, 32) * 255).to(torch.uint8),
              "instances": _instances([[2, 2, 20, 18]], [1])}]
    with EventStorage() as storage:
        model(batch)
        (name, picture, _), = storage.vis_data
    assert name == "Top: GT bounding boxes; Bottom: 20 Highest Scoring Results"  # Detectron2's
    assert picture.shape == (3, 64, 32)


# -- head ------------------------------------------------------------------------------------


def test_head_parameter_names_init_and_shapes():
    shapes = [ShapeSpec(channels=8, stride=s) for s in (8, 16)]
    head = RetinaNetHead(input_shape=shapes, num_classes=3, num_anchors=9, conv_dims=[8, 8],
                         prior_prob=0.01)
    names = {k for k in head.state_dict()}
    assert names == {f"{s}.{i}.{p}" for s in ("cls_subnet", "bbox_subnet") for i in (0, 2)
                     for p in ("weight", "bias")} | {
        f"{c}.{p}" for c in ("cls_score", "bbox_pred") for p in ("weight", "bias")}
    assert torch.allclose(head.cls_score.bias, torch.full((27,), -math.log(99.0)))
    assert head.bbox_pred.bias.abs().sum() == 0
    assert head.cls_subnet[0].weight.std().item() == pytest.approx(0.01, rel=0.3)
    logits, deltas = head([torch.rand(2, 8, 6, 5), torch.rand(2, 8, 3, 3)])
    assert [tuple(t.shape) for t in logits] == [(2, 27, 6, 5), (2, 27, 3, 3)]
    assert [tuple(t.shape) for t in deltas] == [(2, 36, 6, 5), (2, 36, 3, 3)]


def test_head_norms():
    shapes = [ShapeSpec(channels=32, stride=s) for s in (8, 16, 32)]
    gn = RetinaNetHead(input_shape=shapes, num_classes=2, num_anchors=1, conv_dims=[32],
                       norm="GN")
    assert isinstance(gn.cls_subnet[1], nn.GroupNorm)
    assert "cls_subnet.1.weight" in gn.state_dict()

    bn = RetinaNetHead(input_shape=shapes, num_classes=2, num_anchors=1, conv_dims=[32],
                       norm="BN")
    norm = bn.cls_subnet[1]
    assert isinstance(norm, CycleBatchNormList) and len(norm) == 3
    bn.train()
    levels = [torch.randn(2, 32, 4, 4) + 10 * i for i in range(3)]
    bn(levels)
    # Each level has its own running statistics.
    means = [norm[i].running_mean.mean().item() for i in range(3)]
    assert means[0] < means[1] < means[2]
    assert {"cls_subnet.1.weight", "cls_subnet.1.0.running_mean"} <= set(bn.state_dict())

    sync = RetinaNetHead(input_shape=shapes, num_classes=2, num_anchors=1, conv_dims=[32],
                         norm="SyncBN")
    assert isinstance(sync.bbox_subnet[1][0], nn.SyncBatchNorm)


def test_head_rejects_bad_arguments():
    shapes = [ShapeSpec(channels=8, stride=8), ShapeSpec(channels=16, stride=16)]
    with pytest.raises(ValueError, match="same number of channels"):
        RetinaNetHead(input_shape=shapes, num_classes=2, num_anchors=1, conv_dims=[8])
    with pytest.raises(ValueError, match="NUM_CONVS"):
        RetinaNetHead(input_shape=shapes[:1], num_classes=2, num_anchors=1, conv_dims=[])
    with pytest.raises(ValueError, match="PRIOR_PROB"):
        RetinaNetHead(input_shape=shapes[:1], num_classes=2, num_anchors=1, conv_dims=[8],
                      prior_prob=1.0)


# -- built from the config -------------------------------------------------------------------


def tiny_retinanet_cfg():
    """Base-RetinaNet with a quarter-width ResNet-18 and a 16-channel FPN, 3 classes."""
    from segtron import model_zoo

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("COCO-Detection/retinanet_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "16",
        "MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.RETINANET.NUM_CONVS", "1",
    ])
    return cfg


def test_build_from_config_and_forward():
    cfg = tiny_retinanet_cfg()
    model = build_model(cfg)
    assert isinstance(model, RetinaNet)
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert model.anchor_generator.num_cell_anchors == [9] * 5
    assert model.head.cls_score.out_channels == 27
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 100, 130) * 255}])
    assert out[0]["instances"].image_size == (100, 130)


@pytest.mark.parametrize("features", [["p3", "p9"], []])
def test_wrong_in_features_fails_at_build_naming_the_key(features):
    cfg = tiny_retinanet_cfg()
    cfg.MODEL.RETINANET.IN_FEATURES = features
    valid = r"'p3', 'p4', 'p5', 'p6', 'p7'"
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.IN_FEATURES.*" + valid):
        build_model(cfg)


@pytest.mark.parametrize("num_classes", [0, -3])
def test_bad_num_classes_fails_at_build_naming_the_key(num_classes):
    cfg = tiny_retinanet_cfg()
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.NUM_CLASSES = .*>= 1"):
        build_model(cfg)


def test_bad_loss_type_fails_at_build():
    cfg = tiny_retinanet_cfg()
    cfg.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "l2"
    with pytest.raises(ValueError, match=r"MODEL.RETINANET.BBOX_REG_LOSS_TYPE = 'l2'.*giou"):
        build_model(cfg)


def test_model_zoo_format_checkpoint_loads_with_no_renaming(compat_dir, tmp_path):
    """A Detectron2 model-zoo pickle ({"model": name -> ndarray, "__author__": ...}) holding
    every key of Detectron2's RetinaNet R50-FPN (names and shapes from
    d2_state_dict_shapes.json, random values) loads into the model-zoo config's model: every
    parameter and buffer takes the file's value."""
    import pickle

    from segtron import model_zoo
    from segtron.checkpoint import DetectionCheckpointer

    config = "COCO-Detection/retinanet_R_50_FPN_1x.yaml"
    shapes = json.loads((compat_dir / "d2_state_dict_shapes.json").read_text())[config]
    rng = np.random.default_rng(0)
    weights = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)

    cfg = model_zoo.get_config(config)
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(path))
    state = model.state_dict()
    assert set(state) == set(weights)
    for name, value in weights.items():
        assert torch.equal(state[name], torch.from_numpy(value)), name
