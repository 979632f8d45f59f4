"""SSD's training augmentations (projects/SSD/photometric_distortion.py, expand.py and
min_iou_crop.py): hand-computed cases for the colour jitter, the zoom-out canvas and the
min-IoU crop, the crop's constraints over many seeds, and their use in an AugmentationList and
in the dataset mapper's annotation path."""

import numpy as np
import pytest
from PIL import Image

from projects.SSD.augmentations import (
    MeanPadTransform,
    SSDCropTransform,
    SSDExpand,
    SSDMinIoURandomCrop,
    SSDPhotometricDistortion,
    filter_boxes_outside_crop,
)
from projects.SSD.photometric_distortion import _distort_colors
from segtron.data import detection_utils as utils
from segtron.data import transforms as T
from segtron.data.dataset_mapper import DatasetMapper
from segtron.structures import BoxMode

NO_COLOR = dict(brightness_prob=0.0, contrast_prob=0.0, saturation_prob=0.0, hue_prob=0.0)


def _image(h=40, w=60, dtype=np.uint8, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3))
    return img.astype(dtype)


def _iou(window, boxes):
    """Independent numpy IoU of one XYXY window with (N, 4) boxes."""
    ix = np.clip(np.minimum(window[2], boxes[:, 2]) - np.maximum(window[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(window[3], boxes[:, 3]) - np.maximum(window[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area_w = (window[2] - window[0]) * (window[3] - window[1])
    area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area_w + area_b - inter)


class _FakeDraws:
    """Stands in for np.random.uniform / randint, returning queued values in order and
    recording the bounds each call asked for."""

    def __init__(self, uniform, randint):
        self.uniform_values, self.randint_values = list(uniform), list(randint)
        self.uniform_calls, self.randint_calls = [], []

    def uniform(self, low=0.0, high=1.0, size=None):
        self.uniform_calls.append((low, high))
        return self.uniform_values.pop(0)

    def randint(self, low, high=None, size=None):
        self.randint_calls.append((low, high))
        return self.randint_values.pop(0)


# -- photometric distortion --------------------------------------------------------------------


def test_distort_colors_hand_computed():
    px = np.array([[[10, 250, 100]]], dtype=np.uint8)
    # brightness: + delta, saturating at 255
    np.testing.assert_array_equal(
        _distort_colors(px, image_format="BGR", brightness_delta=10.0), [[[20, 255, 110]]]
    )
    # contrast: a plain product
    np.testing.assert_array_equal(
        _distort_colors(px, image_format="BGR", contrast_alpha=0.5), [[[5, 125, 50]]]
    )
    # saturation x0: every channel becomes the HSV value, i.e. the max channel
    np.testing.assert_array_equal(
        _distort_colors(px, image_format="RGB", saturation_alpha=0.0), [[[250, 250, 250]]]
    )
    # channel permutation
    np.testing.assert_array_equal(
        _distort_colors(px, image_format="BGR", channel_order=(2, 0, 1)), [[[100, 10, 250]]]
    )


def test_hue_rotation_depends_on_the_channel_order():
    px = np.array([[[0, 0, 255]]], dtype=np.uint8)
    # As BGR this is pure red (hue 0); +120 degrees is green.
    np.testing.assert_array_equal(
        _distort_colors(px, image_format="BGR", hue_delta=120.0), [[[0, 255, 0]]]
    )
    # As RGB it is pure blue (hue 240); +120 degrees wraps to red.
    np.testing.assert_array_equal(
        _distort_colors(px, image_format="RGB", hue_delta=120.0), [[[255, 0, 0]]]
    )
    # A full turn is the identity (up to float32 round-off, removed by the rounding).
    img = _image(8, 8)
    np.testing.assert_array_equal(_distort_colors(img, image_format="BGR", hue_delta=360.0), img)


def test_contrast_before_or_after_saturation():
    px = np.array([[[34, 250, 66]]], dtype=np.uint8)
    # contrast first: [51, 375 -> 255, 99]; then saturation x0.5 around V=255: 127.5 + c/2
    first = _distort_colors(px, image_format="BGR", contrast_alpha=1.5, contrast_first=True,
                            saturation_alpha=0.5)
    np.testing.assert_array_equal(first, [[[153, 255, 177]]])
    # saturation first around V=250: 125 + c/2 = [142, 250, 158]; then x1.5 -> [213, 255, 237]
    last = _distort_colors(px, image_format="BGR", contrast_alpha=1.5, contrast_first=False,
                           saturation_alpha=0.5)
    np.testing.assert_array_equal(last, [[[213, 255, 237]]])


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_photometric_all_probabilities_zero_is_identity(dtype):
    aug = SSDPhotometricDistortion(**NO_COLOR)
    img = _image(dtype=dtype) + (0.25 if dtype == np.float32 else 0)
    boxes = np.array([[1.0, 2.0, 30.0, 20.0]])
    for seed in range(20):
        np.random.seed(seed)
        aug_input = T.AugInput(img.copy(), boxes=boxes.copy())
        tfm = aug(aug_input)
        assert isinstance(tfm, T.NoOpTransform)
        np.testing.assert_array_equal(aug_input.image, img)
        assert aug_input.image.dtype == img.dtype
        np.testing.assert_array_equal(aug_input.boxes, boxes)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_photometric_keeps_dtype_shape_boxes_and_sem_seg(dtype):
    aug = SSDPhotometricDistortion(channel_swap_prob=0.5)
    img = _image(dtype=dtype)
    boxes = np.array([[1.0, 2.0, 30.0, 20.0], [5.0, 5.0, 59.0, 39.0]])
    sem_seg = np.random.default_rng(1).integers(0, 5, size=img.shape[:2]).astype(np.uint8)
    changed = 0
    for seed in range(30):
        np.random.seed(seed)
        aug_input = T.AugInput(img.copy(), boxes=boxes.copy(), sem_seg=sem_seg.copy())
        aug(aug_input)
        out = aug_input.image
        assert out.shape == img.shape and out.dtype == img.dtype
        assert out.min() >= 0 and out.max() <= 255
        np.testing.assert_array_equal(aug_input.boxes, boxes)
        np.testing.assert_array_equal(aug_input.sem_seg, sem_seg)
        changed += not np.array_equal(out, img)
    assert changed > 20  # with 4 steps at p=0.5, nearly every draw changes the image
    np.testing.assert_array_equal(img, _image(dtype=dtype))  # the input is not modified


def test_photometric_draws_each_step_and_both_orders():
    aug = SSDPhotometricDistortion()
    seen, orders = {}, set()
    for seed in range(200):
        np.random.seed(seed)
        tfm = aug.get_transform(_image(4, 4))
        params = {} if isinstance(tfm, T.NoOpTransform) else tfm.op.keywords
        for key in ("brightness_delta", "contrast_alpha", "saturation_alpha", "hue_delta"):
            seen[key] = seen.get(key, 0) + (key in params)
        assert "channel_order" not in params  # off by default
        if "contrast_alpha" in params:
            orders.add(params["contrast_first"])
            assert 0.5 <= params["contrast_alpha"] <= 1.5
        if "saturation_alpha" in params:
            assert 0.5 <= params["saturation_alpha"] <= 1.5
        assert abs(params.get("brightness_delta", 0.0)) <= 32
        assert abs(params.get("hue_delta", 0.0)) <= 18
    assert all(60 < count < 140 for count in seen.values()), seen  # about half of 200 each
    assert orders == {True, False}


def test_photometric_applies_recorded_parameters():
    img = _image(6, 7)
    np.random.seed(3)
    tfm = SSDPhotometricDistortion(brightness_prob=1.0, contrast_prob=0.0, saturation_prob=0.0,
                                   hue_prob=0.0).get_transform(img)
    delta = tfm.op.keywords["brightness_delta"]
    expected = np.rint(np.clip(img.astype(np.float32) + np.float32(delta), 0, 255))
    np.testing.assert_array_equal(tfm.apply_image(img), expected.astype(np.uint8))

    np.random.seed(3)
    tfm = SSDPhotometricDistortion(**NO_COLOR, channel_swap_prob=1.0).get_transform(img)
    order = list(tfm.op.keywords["channel_order"])
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_array_equal(tfm.apply_image(img), img[..., order])


def test_photometric_errors_and_repr():
    with pytest.raises(ValueError, match="image_format"):
        SSDPhotometricDistortion(image_format="L")
    with pytest.raises(ValueError, match="hue_prob"):
        SSDPhotometricDistortion(hue_prob=1.5)
    with pytest.raises(ValueError, match="contrast_range"):
        SSDPhotometricDistortion(contrast_range=(1.5, 0.5))
    with pytest.raises(ValueError, match="HxWx3"):
        SSDPhotometricDistortion().get_transform(np.zeros((4, 4), np.uint8))
    assert repr(SSDPhotometricDistortion()) == "SSDPhotometricDistortion()"
    assert repr(SSDPhotometricDistortion(hue_delta=9.0, image_format="RGB")) == (
        "SSDPhotometricDistortion(hue_delta=9.0, image_format='RGB')"
    )


# -- expand (zoom out) -------------------------------------------------------------------------


def test_expand_places_image_at_drawn_offset(monkeypatch):
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) + 100
    # draws: apply? (0.0 < prob), ratio 2.0 -> 4x6 canvas, left 1, top 2
    fake = _FakeDraws(uniform=[0.0, 2.0], randint=[1, 2])
    monkeypatch.setattr(np.random, "uniform", fake.uniform)
    monkeypatch.setattr(np.random, "randint", fake.randint)
    sem_seg = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    aug_input = T.AugInput(img, boxes=np.array([[0.0, 0.0, 3.0, 2.0], [1.0, 0.5, 2.0, 1.5]]),
                           sem_seg=sem_seg)
    tfm = SSDExpand(pixel_mean=(10, 20, 30), prob=1.0)(aug_input)
    monkeypatch.undo()

    assert fake.uniform_calls[1] == (1.0, 4.0)  # r ~ U(1, max_ratio)
    # every integer offset that keeps the 2x3 image inside the 4x6 canvas is possible
    assert fake.randint_calls == [(0, 4), (0, 3)]
    assert isinstance(tfm, MeanPadTransform)
    assert (tfm.x0, tfm.y0, tfm.x1, tfm.y1) == (1, 2, 2, 0)

    expected = np.empty((4, 6, 3), dtype=np.uint8)
    expected[...] = (10, 20, 30)
    expected[2:4, 1:4] = img
    np.testing.assert_array_equal(aug_input.image, expected)
    np.testing.assert_array_equal(aug_input.boxes, [[1, 2, 4, 4], [2, 2.5, 3, 3.5]])
    expected_seg = np.full((4, 6), 255, dtype=np.uint8)
    expected_seg[2:4, 1:4] = sem_seg
    np.testing.assert_array_equal(aug_input.sem_seg, expected_seg)
    # an instance bitmask is padded with False, not with the ignore label
    mask = np.array([[True, False, True], [False, True, False]])
    padded = tfm.apply_segmentation(mask)
    assert padded.dtype == bool and padded.sum() == mask.sum()
    np.testing.assert_array_equal(padded[2:4, 1:4], mask)
    # the inverse crops the original back
    np.testing.assert_array_equal(tfm.inverse().apply_image(aug_input.image), img)


def test_expand_over_seeds():
    img = _image(10, 16)
    aug = SSDExpand(pixel_mean=[103.53, 116.28, 123.675])
    expanded = 0
    for seed in range(100):
        np.random.seed(seed)
        aug_input = T.AugInput(img.copy(), boxes=np.array([[2.0, 3.0, 8.0, 9.0]]))
        tfm = aug(aug_input)
        if isinstance(tfm, T.NoOpTransform):
            np.testing.assert_array_equal(aug_input.image, img)
            continue
        expanded += 1
        out = aug_input.image
        h, w = out.shape[:2]
        assert 10 <= h < 40 and 16 <= w < 64
        assert tfm.x0 + 16 + tfm.x1 == w and tfm.y0 + 10 + tfm.y1 == h
        np.testing.assert_array_equal(out[tfm.y0:tfm.y0 + 10, tfm.x0:tfm.x0 + 16], img)
        outside = np.ones((h, w), bool)
        outside[tfm.y0:tfm.y0 + 10, tfm.x0:tfm.x0 + 16] = False
        assert (out[outside] == (104, 116, 124)).all()  # the mean, rounded for uint8
        np.testing.assert_allclose(
            aug_input.boxes, [[2 + tfm.x0, 3 + tfm.y0, 8 + tfm.x0, 9 + tfm.y0]]
        )
    assert 30 < expanded < 70  # prob 0.5


def test_expand_float_image_scalar_mean_and_errors():
    img = _image(3, 4, dtype=np.float32)
    tfm = MeanPadTransform(1, 0, 0, 2, orig_w=4, orig_h=3, pad_value=7.5)
    out = tfm.apply_image(img)
    assert out.dtype == np.float32 and out.shape == (5, 5, 3)
    assert (out[:, 0] == 7.5).all() and (out[3:] == 7.5).all()
    with pytest.raises(ValueError, match="channel"):
        MeanPadTransform(1, 1, 1, 1, pad_value=(1, 2)).apply_image(img)
    with pytest.raises(ValueError, match="max_ratio"):
        SSDExpand(0, max_ratio=0.5)
    np.random.seed(0)
    assert isinstance(SSDExpand(0, prob=0.0).get_transform(img), T.NoOpTransform)
    assert repr(SSDExpand((1, 2, 3), max_ratio=3.0)) == (
        "SSDExpand(pixel_mean=(1, 2, 3), max_ratio=3.0)"
    )


# -- min-IoU random crop (zoom in) -------------------------------------------------------------

BOXES = np.array(
    [
        [15.0, 15.0, 25.0, 25.0],  # inside the window below
        [50.0, 20.0, 70.0, 30.0],  # centre (60, 25) inside, sticks out on the right
        [0.0, 0.0, 16.0, 12.0],  # overlaps the window, centre (8, 6) outside
        [80.0, 60.0, 90.0, 70.0],  # far outside
    ]
)


def test_crop_transform_keeps_centre_inside_boxes_clipped():
    crop = SSDCropTransform(10, 10, 52, 40, orig_w=100, orig_h=80)  # window [10, 10, 62, 50]
    kept, keep = filter_boxes_outside_crop(BOXES, crop)
    assert keep.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(kept, [[5, 5, 15, 15], [40, 10, 52, 20]])
    np.testing.assert_array_equal(
        crop.apply_box(BOXES.copy()), [[5, 5, 15, 15], [40, 10, 52, 20], [0, 0, 0, 0], [0, 0, 0, 0]]
    )
    # a centre exactly on the border is outside (strict inequality)
    assert not filter_boxes_outside_crop([[0.0, 0.0, 20.0, 20.0]], crop)[1][0]
    # the image itself is cropped like a CropTransform
    img = _image(80, 100)
    np.testing.assert_array_equal(crop.apply_image(img), img[10:50, 10:62])


def test_min_iou_crop_fixed_seed_keeps_and_drops():
    img = _image(80, 100)
    aug = SSDMinIoURandomCrop()
    crops = 0
    for seed in range(40):
        np.random.seed(seed)
        aug_input = T.AugInput(img.copy(), boxes=BOXES.copy())
        tfm = aug(aug_input)
        if isinstance(tfm, T.NoOpTransform):
            np.testing.assert_array_equal(aug_input.boxes, BOXES)
            continue
        crops += 1
        x0, y0, x1, y1 = tfm.x0, tfm.y0, tfm.x0 + tfm.w, tfm.y0 + tfm.h
        np.testing.assert_array_equal(aug_input.image, img[y0:y1, x0:x1])
        for box, out in zip(BOXES, aug_input.boxes):
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            if x0 < cx < x1 and y0 < cy < y1:
                clipped = np.clip(box - [x0, y0, x0, y0], 0, [tfm.w, tfm.h, tfm.w, tfm.h])
                np.testing.assert_allclose(out, clipped)
                assert out[2] > out[0] and out[3] > out[1]
            else:
                np.testing.assert_array_equal(out, [0, 0, 0, 0])
    assert crops > 20  # 6 of the 7 default modes crop


@pytest.mark.parametrize("criterion,min_iou", [("best", 0.5), ("best", 0.3), ("all", 0.1)])
def test_min_iou_crop_constraints_over_many_seeds(criterion, min_iou):
    h, w = 80, 100
    img = _image(h, w)
    boxes = np.array([[10.0, 10.0, 60.0, 60.0], [40.0, 30.0, 95.0, 75.0], [5, 50, 30, 78]])
    aug = SSDMinIoURandomCrop(min_ious=(min_iou,), iou_criterion=criterion, mode_trials=3)
    crops = 0
    for seed in range(300):
        np.random.seed(seed)
        tfm = aug.get_transform(img, boxes)
        if isinstance(tfm, T.NoOpTransform):
            continue
        crops += 1
        assert isinstance(tfm, SSDCropTransform)
        window = np.array([tfm.x0, tfm.y0, tfm.x0 + tfm.w, tfm.y0 + tfm.h], dtype=float)
        assert 0 <= window[0] and window[2] <= w and 0 <= window[1] and window[3] <= h
        assert int(0.3 * w) <= tfm.w <= w and int(0.3 * h) <= tfm.h <= h
        assert 0.5 <= tfm.h / tfm.w <= 2.0
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        inside = (
            (window[0] < centres[:, 0]) & (centres[:, 0] < window[2])
            & (window[1] < centres[:, 1]) & (centres[:, 1] < window[3])
        )
        assert inside.any()
        ious = _iou(window, boxes)
        if criterion == "best":
            assert ious[inside].max() >= min_iou
        else:
            assert ious.min() >= min_iou
    assert crops > 100


def test_best_versus_all_criterion():
    img = _image(80, 100)
    # a big box and a tiny one far from it: no patch has IoU >= 0.5 with both
    boxes = np.array([[10.0, 10.0, 70.0, 70.0], [90.0, 2.0, 92.0, 4.0]])
    for seed in range(20):
        np.random.seed(seed)
        all_rule = SSDMinIoURandomCrop(min_ious=(0.5,), iou_criterion="all", mode_trials=5)
        assert isinstance(all_rule.get_transform(img, boxes), T.NoOpTransform)
    found = 0
    for seed in range(20):
        np.random.seed(seed)
        best_rule = SSDMinIoURandomCrop(min_ious=(0.5,), iou_criterion="best", mode_trials=5)
        found += isinstance(best_rule.get_transform(img, boxes), SSDCropTransform)
    assert found > 10


def test_min_iou_crop_no_crop_cases_and_errors():
    img = _image(20, 30)
    np.random.seed(0)
    assert isinstance(SSDMinIoURandomCrop(min_ious=(None,)).get_transform(img, BOXES),
                      T.NoOpTransform)
    assert isinstance(SSDMinIoURandomCrop().get_transform(img, np.zeros((0, 4))), T.NoOpTransform)
    # boxes without area are ignored (e.g. ones a previous crop emptied)
    assert isinstance(SSDMinIoURandomCrop().get_transform(img, np.zeros((3, 4))), T.NoOpTransform)
    with pytest.raises(ValueError, match="DatasetMapper"):
        SSDMinIoURandomCrop().get_transform(img, None)
    with pytest.raises(ValueError, match="iou_criterion"):
        SSDMinIoURandomCrop(iou_criterion="any")
    with pytest.raises(ValueError, match="min_ious"):
        SSDMinIoURandomCrop(min_ious=(0.5, 2.0))
    assert repr(SSDMinIoURandomCrop()) == "SSDMinIoURandomCrop()"
    assert repr(SSDMinIoURandomCrop(min_ious=(None, 0.5), iou_criterion="all")) == (
        "SSDMinIoURandomCrop(min_ious=(None, 0.5), iou_criterion='all')"
    )


def test_default_modes_are_uniform():
    img = _image(80, 100)
    boxes = np.array([[20.0, 20.0, 80.0, 60.0]])
    aug = SSDMinIoURandomCrop()
    no_crop = 0
    for seed in range(700):
        np.random.seed(seed)
        no_crop += isinstance(aug.get_transform(img, boxes), T.NoOpTransform)
    assert 60 < no_crop < 140  # about 1/7 of 700 (a patch is always found for one big box)


# -- in a pipeline and in the mapper -----------------------------------------------------------


def _annotations():
    segm = lambda b: [[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]]  # noqa: E731
    return [
        {"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": i, "iscrowd": 0,
         "segmentation": segm(b)}
        for i, b in enumerate(BOXES)
    ]


def test_mapper_annotation_path_drops_centre_outside_instances():
    """What a mapper passing boxes to AugInput does: the stock transform/filter functions drop
    the instances whose centre left the crop, with their classes and masks."""
    img = _image(80, 100)
    aug_input = T.AugInput(img, boxes=BOXES.copy())
    augs = T.AugmentationList([
        T.AugmentationList([]),  # nested lists are fine
        SSDCropTransform(10, 10, 52, 40, orig_w=100, orig_h=80),  # a fixed transform
        T.Resize((20, 26)),  # half size
        T.RandomFlip(prob=1.0),
    ])
    transforms = augs(aug_input)
    image_shape = aug_input.image.shape[:2]
    assert image_shape == (20, 26)
    annos = [utils.transform_instance_annotations(a, transforms, image_shape)
             for a in _annotations()]
    instances = utils.annotations_to_instances(annos, image_shape, mask_format="polygon")
    instances = utils.filter_empty_instances(instances)
    assert instances.gt_classes.tolist() == [0, 1]
    # crop -> [[5,5,15,15],[40,10,52,20]], half size -> [[2.5,2.5,7.5,7.5],[20,5,26,10]], flip
    np.testing.assert_allclose(instances.gt_boxes.tensor.numpy(),
                               [[18.5, 2.5, 23.5, 7.5], [0, 5, 6, 10]])
    assert len(instances.gt_masks) == 2
    # the AugInput's own boxes went through the same transforms
    np.testing.assert_allclose(aug_input.boxes[:2], [[18.5, 2.5, 23.5, 7.5], [0, 5, 6, 10]])
    assert (aug_input.boxes[2:, 2] - aug_input.boxes[2:, 0] == 0).all()


def test_full_ssd_pipeline_over_seeds():
    img = _image(80, 100)
    augs = T.AugmentationList([
        SSDPhotometricDistortion(),
        SSDExpand(pixel_mean=(104, 117, 123)),
        SSDMinIoURandomCrop(),
        T.Resize((30, 30)),
        T.RandomFlip(),
    ])
    for seed in range(30):
        np.random.seed(seed)
        aug_input = T.AugInput(img.copy(), boxes=BOXES.copy())
        transforms = augs(aug_input)
        assert aug_input.image.shape == (30, 30, 3) and aug_input.image.dtype == np.uint8
        annos = [utils.transform_instance_annotations(a, transforms, (30, 30))
                 for a in _annotations()]
        instances = utils.filter_empty_instances(
            utils.annotations_to_instances(annos, (30, 30))
        )
        assert 1 <= len(instances) <= len(BOXES)  # the crop keeps at least one centre
        boxes = instances.gt_boxes.tensor.numpy()
        assert (boxes >= 0).all() and (boxes <= 30).all()


def test_stock_dataset_mapper(tmp_path):
    img = _image(40, 60)
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)
    record = {
        "file_name": str(path), "height": 40, "width": 60, "image_id": 0,
        "annotations": [{"bbox": [10, 5, 30, 25], "bbox_mode": BoxMode.XYXY_ABS,
                         "category_id": 3, "iscrowd": 0}],
    }
    # photometric (all probabilities 0): five probability draws and the contrast-order coin;
    # expand: apply, ratio 1.5 -> 60x90 canvas, image at (left, top) = (7, 4)
    fake = _FakeDraws(uniform=[0.5] * 5 + [0.0, 1.5], randint=[1, 7, 4])
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[SSDPhotometricDistortion(**NO_COLOR), SSDExpand((0, 0, 0), prob=1.0)],
        image_format="BGR",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np.random, "uniform", fake.uniform)
        patch.setattr(np.random, "randint", fake.randint)
        out = mapper(record)
    assert not fake.uniform_values and not fake.randint_values
    assert out["image"].shape == (3, 60, 90)
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy()[4:44, 7:67],
                                  img[:, :, ::-1])  # read as BGR
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor.numpy(), [[17, 9, 37, 29]])

    # the crop reads the annotations' boxes, which the stock mapper passes as AugInput.boxes:
    # over seeds it crops (the image shrinks) and the box, whose centre every accepted crop
    # contains, is kept inside the crop
    mapper = DatasetMapper(is_train=True, augmentations=[SSDMinIoURandomCrop()], image_format="BGR")
    shrunk = 0
    for seed in range(20):
        np.random.seed(seed)
        out = mapper(record)
        height, width = out["image"].shape[-2:]
        shrunk += (height, width) != (40, 60)
        (box,) = out["instances"].gt_boxes.tensor.numpy()
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height
    assert shrunk > 5
