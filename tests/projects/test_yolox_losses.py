"""YOLOX's losses (projects/YOLO/losses.py) and training forward: the anchor-point convention
against decoding; a hand-made 4x4 grid where SimOTA must pick one known cell, with every loss
value computed by hand (IoU / GIoU / L1 / BCE); normalisation by the batch's foreground count;
an image without GT; errors naming the config keys; a thin YOLOX-nano training step on two
images; a 30-iteration overfit of one synthetic image."""

import argparse
import math
from pathlib import Path

import pytest
import torch

import train_net
from projects.YOLO import add_yolox_config
from projects.YOLO.decode import decode_boxes, grid_points
from projects.YOLO.losses import anchor_centers, assign_targets, iou_loss, yolox_losses
from segtron.config import get_cfg
from segtron.modeling import build_model
from segtron.structures import Boxes, Instances
from segtron.utils.events import EventStorage

CONFIGS = Path(__file__).resolve().parents[2] / "projects/YOLO/configs/COCO-Detection"

STRIDE = 8
GT_BOX = torch.tensor([[8.0, 8.0, 16.0, 16.0]])  # exactly cell (1, 1) of the 4x4 grid
GT_CLASS = torch.tensor([1])
FG = 5  # flattened index of cell (i=1, j=1): j * 4 + i
CLS_FG = (-2.0, 3.0)  # class logits of the foreground cell (K = 2, GT class 1)
OBJ_FG, OBJ_BG = 2.0, -3.0


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def bce(logit: float, target: float) -> float:
    """Binary cross-entropy with logits, by hand: softplus(x) - x * t."""
    return softplus(logit) - logit * target


def _grid():
    return grid_points([(4, 4)], [STRIDE])


def _hand_predictions(tw_fg: float = 0.0, batch: int = 1):
    """(N, 16, 2) class logits, (N, 16, 4) box values, (N, 16) objectness logits. Cell 5
    predicts (0.5, 0.5, tw_fg, 0): centre (12, 12), width 8 e^tw_fg, height 8 (tw_fg = 0: the
    GT box itself); every other cell predicts a box 10 cells up-left of itself (IoU 0)."""
    cls = torch.zeros(batch, 16, 2)
    cls[:, FG] = torch.tensor(CLS_FG)
    box = torch.tensor([-10.0, -10.0, 0.0, 0.0]).repeat(batch, 16, 1)
    box[:, FG] = torch.tensor([0.5, 0.5, tw_fg, 0.0])
    obj = torch.full((batch, 16), OBJ_BG)
    obj[:, FG] = OBJ_FG
    return cls, box, obj


def _cfg(*opts):
    return train_net.build_config(
        argparse.Namespace(
            config_file=str(CONFIGS / "yolox_nano.yaml"),
            opts=["MODEL.DEVICE", "cpu", "MODEL.YOLOX.WIDTH", "0.125",
                  "MODEL.YOLOX.NUM_CLASSES", "3", *opts],
        )
    )


# -- conventions ---------------------------------------------------------------------------------


def test_training_config_defaults():
    cfg = get_cfg()
    add_yolox_config(cfg)
    y = cfg.MODEL.YOLOX
    assert (y.IOU_LOSS_TYPE, y.IOU_LOSS_WEIGHT, y.USE_L1_LOSS) == ("iou", 5.0, False)


def test_anchor_points_are_the_centres_of_the_cells_decoding_uses():
    offsets, strides = grid_points([(2, 3), (1, 2)], [8, 16])
    centres = anchor_centers(offsets, strides)
    assert centres[:4].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12]]
    assert centres[6:].tolist() == [[8, 8], [24, 8]]
    # (0.5, 0.5, 0, 0) decodes to the cell itself, centred on SimOTA's anchor point.
    boxes = decode_boxes(torch.tensor([0.5, 0.5, 0.0, 0.0]).repeat(8, 1), offsets, strides)
    torch.testing.assert_close((boxes[:, :2] + boxes[:, 2:]) / 2, centres)
    torch.testing.assert_close(boxes[:, 2] - boxes[:, 0], strides)


def test_iou_loss_by_hand():
    pred = torch.tensor([[8.0, 8.0, 16.0, 16.0], [4.0, 8.0, 20.0, 16.0], [0.0, 0.0, 4.0, 4.0]])
    target = GT_BOX.repeat(3, 1)
    # IoU 1, 1/2, 0 -> 1 - IoU^2 = 0, 3/4, 1; GIoU: enclosing box of the third pair is 16 x 16
    # (area 256, union 80): 0 - 176 / 256 -> 1 - GIoU = 1.6875.
    torch.testing.assert_close(iou_loss(pred, target, "iou"), torch.tensor([0.0, 0.75, 1.0]))
    torch.testing.assert_close(
        iou_loss(pred, target, "giou"), torch.tensor([0.0, 0.5, 1.6875])
    )


# -- hand-made assignment and loss values -------------------------------------------------------


def test_hand_made_case_assigns_the_matching_cell():
    offsets, strides = _grid()
    cls, box, obj = _hand_predictions()
    (res,) = assign_targets(
        cls, decode_boxes(box, offsets, strides), obj, offsets, strides, [GT_BOX], [GT_CLASS]
    )
    # Every cell is within 2.5 strides of the GT centre, only cell 5 is also inside the box;
    # the IoUs sum to 1 -> k = 1.
    assert res.num_fg == 1 and res.fg_mask.nonzero().flatten().tolist() == [FG]
    assert res.cls_target[FG].tolist() == [0.0, 1.0]


def test_perfect_box_has_zero_iou_loss_and_bce_values_by_hand():
    offsets, strides = _grid()
    losses = yolox_losses(*_hand_predictions(), offsets, strides, [GT_BOX], [GT_CLASS])
    assert sorted(losses) == ["loss_cls", "loss_iou", "loss_obj"]
    assert losses["loss_iou"].item() == pytest.approx(0.0, abs=1e-6)
    # One foreground cell (normaliser 1): objectness 1 there, 0 on the 15 others.
    assert losses["loss_obj"].item() == pytest.approx(bce(OBJ_FG, 1) + 15 * bce(OBJ_BG, 0))
    # Class target one-hot(1) x IoU 1 = (0, 1).
    assert losses["loss_cls"].item() == pytest.approx(bce(CLS_FG[0], 0) + bce(CLS_FG[1], 1))
    # 0.126928 + 15 x 0.048587 and 0.126928 + 0.048587:
    assert losses["loss_obj"].item() == pytest.approx(0.855738, abs=1e-5)
    assert losses["loss_cls"].item() == pytest.approx(0.175515, abs=1e-5)


@pytest.mark.parametrize("loss_type, expected_iou_loss", [("iou", 5 * 0.75), ("giou", 5 * 0.5)])
def test_half_overlapping_box_by_hand(loss_type, expected_iou_loss):
    """Cell 5 predicts a box twice as wide as the GT, [4, 8, 20, 16]: IoU 1/2."""
    offsets, strides = _grid()
    losses = yolox_losses(
        *_hand_predictions(tw_fg=math.log(2)), offsets, strides, [GT_BOX], [GT_CLASS],
        iou_loss_type=loss_type, use_l1_loss=True,
    )
    assert losses["loss_iou"].item() == pytest.approx(expected_iou_loss, abs=1e-5)
    # Class target one-hot x IoU = (0, 0.5).
    assert losses["loss_cls"].item() == pytest.approx(
        bce(CLS_FG[0], 0) + bce(CLS_FG[1], 0.5), abs=1e-5
    )
    # L1 target (12 / 8 - 1, 12 / 8 - 1, log(8 / 8), log(8 / 8)) = (0.5, 0.5, 0, 0).
    assert losses["loss_l1"].item() == pytest.approx(math.log(2), abs=1e-5)


def test_losses_are_normalised_by_the_batch_foreground_count():
    offsets, strides = _grid()
    single = yolox_losses(*_hand_predictions(math.log(2)), offsets, strides, [GT_BOX],
                          [GT_CLASS], use_l1_loss=True)
    with EventStorage() as storage:
        double = yolox_losses(*_hand_predictions(math.log(2), batch=2), offsets, strides,
                              [GT_BOX, GT_BOX], [GT_CLASS, GT_CLASS], use_l1_loss=True)
        assert storage.latest()["num_fg_per_image"][0] == 1.0
    for name in single:  # two images, each with the single one's sum, over 2 foreground cells
        assert double[name].item() == pytest.approx(single[name].item(), abs=1e-6)


def test_image_without_gt_only_pushes_objectness_to_zero():
    offsets, strides = _grid()
    cls, box, obj = _hand_predictions(batch=2)
    obj.requires_grad_(True)
    no_gt = (torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    with EventStorage() as storage:
        losses = yolox_losses(cls, box, obj, offsets, strides, [GT_BOX, no_gt[0]],
                              [GT_CLASS, no_gt[1]])
        assert storage.latest()["num_fg_per_image"][0] == 0.5
    # The image without GT adds BCE(x, 0) of its 16 cells to loss_obj, and nothing else.
    assert losses["loss_obj"].item() == pytest.approx(
        bce(OBJ_FG, 1) + 15 * bce(OBJ_BG, 0) + bce(OBJ_FG, 0) + 15 * bce(OBJ_BG, 0), abs=1e-5
    )
    assert losses["loss_cls"].item() == pytest.approx(bce(CLS_FG[0], 0) + bce(CLS_FG[1], 1))

    # A batch of only that image: loss_obj alone, normalised by 1, its gradient sigmoid(x) > 0
    # (descent lowers every objectness), and it vanishes as the logits go to -inf.
    obj = obj[1:].detach().requires_grad_(True)
    losses = yolox_losses(cls[1:], box[1:], obj, offsets, strides, [no_gt[0]], [no_gt[1]])
    assert losses["loss_iou"].item() == 0.0 and losses["loss_cls"].item() == 0.0
    assert losses["loss_obj"].item() == pytest.approx(bce(OBJ_FG, 0) + 15 * bce(OBJ_BG, 0))
    sum(losses.values()).backward()
    torch.testing.assert_close(obj.grad, obj.detach().sigmoid())
    low = yolox_losses(cls[1:], box[1:], torch.full((1, 16), -10.0), offsets, strides,
                       [no_gt[0]], [no_gt[1]])
    assert low["loss_obj"].item() == pytest.approx(16 * bce(-10.0, 0), rel=0.02)  # 7.3e-4


def test_low_precision_predictions_give_float32_losses():
    offsets, strides = _grid()
    reference = yolox_losses(*_hand_predictions(), offsets, strides, [GT_BOX], [GT_CLASS])
    low = yolox_losses(*(x.bfloat16() for x in _hand_predictions()), offsets, strides,
                       [GT_BOX], [GT_CLASS])
    for name, value in low.items():
        assert value.dtype == torch.float32
        assert value.item() == pytest.approx(reference[name].item(), abs=2e-2)


def test_errors_name_the_config_key():
    offsets, strides = _grid()
    with pytest.raises(ValueError, match=r"MODEL\.YOLOX\.IOU_LOSS_TYPE"):
        yolox_losses(*_hand_predictions(), offsets, strides, [GT_BOX], [GT_CLASS],
                     iou_loss_type="ciou")
    with pytest.raises(ValueError, match=r"MODEL\.YOLOX\.NUM_CLASSES = 2"):
        yolox_losses(*_hand_predictions(), offsets, strides, [GT_BOX], [torch.tensor([2])])
    for opts, key in (
        (["MODEL.YOLOX.IOU_LOSS_TYPE", "l1"], "MODEL.YOLOX.IOU_LOSS_TYPE"),
        (["MODEL.YOLOX.IOU_LOSS_WEIGHT", "-1.0"], "MODEL.YOLOX.IOU_LOSS_WEIGHT"),
        (["MODEL.YOLOX.CENTER_RADIUS", "0.0"], "MODEL.YOLOX.CENTER_RADIUS"),
        (["MODEL.YOLOX.DYNAMIC_K_CANDIDATES", "0"], "MODEL.YOLOX.DYNAMIC_K_CANDIDATES"),
    ):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build_model(_cfg(*opts))


# -- the model ------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """Run the model single-threaded: at 64 x 64 a second OpenMP thread gains nothing, and on a
    loaded machine (or under nice) waiting for it made the overfit test 10-400x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_step_of_a_thin_nano_backpropagates_into_the_stem(one_thread):
    torch.manual_seed(0)
    model = build_model(_cfg()).train()
    inputs = [
        {"image": torch.rand(3, 64, 64) * 255,
         "instances": Instances((64, 64), gt_boxes=Boxes(torch.tensor(
             [[4.0, 4.0, 40.0, 40.0], [30.0, 10.0, 60.0, 30.0]])),
             gt_classes=torch.tensor([2, 0]))},
        # 56 x 64, padded to 64 x 64 at the bottom: the GT stays in input pixels.
        {"image": torch.rand(3, 56, 64) * 255,
         "instances": Instances((56, 64), gt_boxes=Boxes(torch.tensor([[20.0, 16.0, 52.0, 50.0]])),
                                gt_classes=torch.tensor([1]))},
    ]
    with EventStorage() as storage:
        losses = model(inputs)
        assert storage.latest()["num_fg_per_image"][0] >= 1
    assert sorted(losses) == ["loss_cls", "loss_iou", "loss_obj"]
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    stem = model.backbone.bottom_up.stem.conv.conv.weight.grad
    assert stem is not None and torch.isfinite(stem).all() and stem.abs().sum() > 0

    model.use_l1_loss = True  # what a late-epoch hook would do
    with torch.no_grad():
        losses = model(inputs)
    assert "loss_l1" in losses and torch.isfinite(losses["loss_l1"])


def test_overfitting_one_synthetic_image_reduces_the_loss(one_thread):
    torch.manual_seed(0)
    model = build_model(_cfg()).train()
    image = torch.full((3, 64, 64), 114.0)
    # Three solid rectangles (blue, green, red in BGR) of classes 0, 1, 2 on grey.
    boxes = torch.tensor([[4.0, 6.0, 28.0, 30.0], [34.0, 8.0, 60.0, 26.0],
                          [12.0, 36.0, 52.0, 60.0]])
    colours = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    for (x0, y0, x1, y1), colour in zip(boxes.int().tolist(), colours):
        image[:, y0:y1, x0:x1] = torch.tensor(colour, dtype=torch.float32)[:, None, None]
    inputs = [{"image": image, "instances": Instances(
        (64, 64), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 1, 2]))}]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    totals = []
    for _ in range(30):
        total = sum(model(inputs).values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert all(math.isfinite(t) for t in totals)
    # The foreground count (the normaliser) changes with the assignment, so the curve is not
    # monotone: compare the last five iterations' mean with the start.
    assert sum(totals[-5:]) / 5 < 0.8 * totals[0], totals
