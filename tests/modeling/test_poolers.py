"""ROIPooler against a brute-force per-box reference and torchvision's MultiScaleRoIAlign.

The brute force computes each box's level with plain Python math (FACTS.md:
floor(4 + log2(sqrt(area) / 224 + 1e-8)) clamped to the levels present) and calls
torchvision.ops.roi_align / roi_pool on that level directly. MultiScaleRoIAlign uses aligned=False
and floor(4 + log2(sqrt(area) / 224) + 1e-6); it is compared for pooler_type "ROIAlign" on
boxes whose level both formulas agree on.
"""

import math

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align, roi_pool

from segtron.modeling.poolers import (
    ROIPooler,
    assign_boxes_to_levels,
    convert_boxes_to_pooler_format,
)
from segtron.structures import Boxes, RotatedBoxes

SCALES = (1 / 4, 1 / 8, 1 / 16, 1 / 32)
IMAGE_HW = (256, 320)


def _features(batch=2, channels=3):
    h, w = IMAGE_HW
    return [torch.randn(batch, channels, h // s, w // s) for s in (4, 8, 16, 32)]


def _python_level(box, lo=2, hi=5):
    x0, y0, x1, y1 = box
    size = math.sqrt((x1 - x0) * (y1 - y0))
    return min(max(math.floor(4 + math.log2(size / 224 + 1e-8)), lo), hi)


def _boxes_for_all_levels(n):
    """Boxes with sizes spread over 8..600 px, kept 1% away from the level boundaries."""
    out = []
    while len(out) < n:
        size = math.exp(torch.empty(1).uniform_(math.log(8), math.log(600)).item())
        level_float = 4 + math.log2(size / 224)
        if abs(level_float - round(level_float)) < 0.02:
            continue
        aspect = torch.empty(1).uniform_(0.5, 2.0).item()
        w, h = size * math.sqrt(aspect), size / math.sqrt(aspect)
        x0 = torch.empty(1).uniform_(-20, IMAGE_HW[1] - 20).item()
        y0 = torch.empty(1).uniform_(-20, IMAGE_HW[0] - 20).item()
        out.append([x0, y0, x0 + w, y0 + h])
    return torch.tensor(out)


def _brute_force(features, box_lists, output_size, sampling_ratio, pooler_type):
    rows = []
    for image, boxes in enumerate(box_lists):
        for box in boxes.tensor:
            level = _python_level(box.tolist())
            feat = features[level - 2][image : image + 1]
            rois = torch.cat([torch.zeros(1, 1), box[None]], dim=1)
            scale = 1.0 / 2**level
            if pooler_type == "ROIPool":
                rows.append(roi_pool(feat, rois, output_size, scale))
            else:
                aligned = pooler_type == "ROIAlignV2"
                rows.append(roi_align(feat, rois, output_size, scale, sampling_ratio, aligned))
    return torch.cat(rows)


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign", "ROIPool"])
def test_multilevel_matches_brute_force(pooler_type):
    feats = _features()
    box_lists = [Boxes(_boxes_for_all_levels(25)), Boxes(_boxes_for_all_levels(17))]
    levels = {_python_level(b) for bl in box_lists for b in bl.tensor.tolist()}
    assert levels == {2, 3, 4, 5}  # every level is exercised
    pooler = ROIPooler(7, SCALES, sampling_ratio=0, pooler_type=pooler_type)
    out = pooler(feats, box_lists)
    assert out.shape == (42, 3, 7, 7)
    expected = _brute_force(feats, box_lists, (7, 7), 0, pooler_type)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("pooler_type", ["ROIAlignV2", "ROIAlign"])
def test_channels_last_features_pool_to_channels_last_boxes(pooler_type):
    """NHWC feature maps (MODEL.CHANNELS_LAST) give NHWC pooled features, so the mask head's
    convolutions stay NHWC, with the values of the brute force and gradients reaching every
    level."""
    feats = [f.contiguous(memory_format=torch.channels_last).requires_grad_()
             for f in _features(channels=8)]
    box_lists = [Boxes(_boxes_for_all_levels(20)), Boxes(_boxes_for_all_levels(11))]
    out = ROIPooler(7, SCALES, sampling_ratio=0, pooler_type=pooler_type)(feats, box_lists)
    assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    plain = [f.detach().contiguous() for f in feats]
    expected = _brute_force(plain, box_lists, (7, 7), 0, pooler_type)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_matches_torchvision_multiscale_roi_align():
    feats = _features()
    names = ["p2", "p3", "p4", "p5"]
    box_lists = []
    for n in (30, 20):
        boxes = _boxes_for_all_levels(n)
        tv_levels = [
            min(max(math.floor(4 + math.log2(math.sqrt(area) / 224) + 1e-6), 2), 5)
            for area in ((b[2] - b[0]) * (b[3] - b[1]) for b in boxes.tolist())
        ]
        agree = torch.tensor([_python_level(b) == t for b, t in zip(boxes.tolist(), tv_levels)])
        box_lists.append(Boxes(boxes[agree]))
    tv = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    expected = tv(dict(zip(names, feats)), [b.tensor for b in box_lists], [IMAGE_HW, IMAGE_HW])
    pooler = ROIPooler((7, 7), SCALES, sampling_ratio=2, pooler_type="ROIAlign")
    torch.testing.assert_close(pooler(feats, box_lists), expected, rtol=1e-5, atol=1e-6)


def test_single_level_pools_every_box_from_it():
    feat = torch.randn(1, 2, 16, 16)
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 2.0, 60.0, 50.0], [3.0, 3.0, 500.0, 500.0]])
    pooler = ROIPooler((3, 5), [1 / 4], sampling_ratio=2, pooler_type="ROIAlignV2")
    rois = torch.cat([torch.zeros(3, 1), boxes], dim=1)
    expected = roi_align(feat, rois, (3, 5), 0.25, 2, True)
    torch.testing.assert_close(pooler([feat], [Boxes(boxes)]), expected)


def test_empty_inputs():
    pooler = ROIPooler(7, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    feats = _features(batch=2)
    out = pooler(feats, [Boxes(torch.zeros(0, 4)), Boxes(torch.zeros(0, 4))])
    assert out.shape == (0, 3, 7, 7)
    assert pooler([f[:0] for f in feats], []).shape == (0, 3, 7, 7)
    # One image without boxes: the other image's boxes keep their batch index.
    boxes = _boxes_for_all_levels(6)
    out = pooler(feats, [Boxes(torch.zeros(0, 4)), Boxes(boxes)])
    expected = _brute_force(
        feats, [Boxes(torch.zeros(0, 4)), Boxes(boxes)], (7, 7), 0, "ROIAlignV2"
    )
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    single = ROIPooler(7, [1 / 4], 0, "ROIPool")
    assert single([feats[0]], [Boxes(torch.zeros(0, 4))] * 2).shape == (0, 3, 7, 7)


def test_every_level_stays_in_the_graph():
    feats = [f.requires_grad_() for f in _features(batch=1)]
    pooler = ROIPooler(7, SCALES, sampling_ratio=0, pooler_type="ROIAlignV2")
    small_only = Boxes(torch.tensor([[10.0, 10.0, 30.0, 30.0]]))  # level 2 only
    pooler(feats, [small_only]).sum().backward()
    assert all(f.grad is not None for f in feats)
    assert feats[0].grad.abs().sum() > 0 and feats[3].grad.abs().sum() == 0


def test_convert_boxes_to_pooler_format():
    a = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    b = Boxes(torch.zeros(0, 4))
    c = Boxes(torch.tensor([[5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]]))
    out = convert_boxes_to_pooler_format([a, b, c])
    expected = torch.tensor(
        [[0.0, 1, 2, 3, 4], [2.0, 5, 6, 7, 8], [2.0, 9, 10, 11, 12]]
    )
    assert torch.equal(out, expected)


def test_assign_boxes_to_levels_hand_computed():
    def square(side):
        return [0.0, 0.0, side, side]

    # sizes 224 -> 4, 112 -> 3, 448 -> 5, 10 -> floor(-0.49) = -1 -> clamped 2, 1000 -> 6 -> 5.
    boxes = [
        Boxes(torch.tensor([square(224), square(112)])),
        Boxes(torch.tensor([square(448), square(10), square(1000)])),
    ]
    levels = assign_boxes_to_levels(boxes, 2, 5, 224, 4)
    assert levels.dtype == torch.int64
    assert levels.tolist() == [2, 1, 3, 0, 3]  # offsets from min_level 2


def test_invalid_configurations():
    with pytest.raises(ValueError, match="powers of 2"):
        ROIPooler(7, [1 / 4, 1 / 6], 0, "ROIAlignV2")
    with pytest.raises(ValueError, match="pyramid"):
        ROIPooler(7, [1 / 4, 1 / 16], 0, "ROIAlignV2")
    with pytest.raises(ValueError, match="ROIAlignRotated"):
        ROIPooler(7, [1 / 4], 0, "ROIAlignV2")(
            [torch.zeros(1, 1, 8, 8)], [RotatedBoxes(torch.zeros(1, 5))]
        )
    with pytest.raises(ValueError, match="'ROIAlignV3'"):
        ROIPooler(7, [1 / 4], 0, "ROIAlignV3")
    pooler = ROIPooler(7, SCALES, 0, "ROIAlignV2")
    feats = _features(batch=2)
    with pytest.raises(ValueError, match="4 levels"):
        pooler(feats[:3], [Boxes(torch.zeros(0, 4))] * 2)
    with pytest.raises(ValueError, match="one Boxes per image"):
        pooler(feats, [Boxes(torch.zeros(0, 4))])
