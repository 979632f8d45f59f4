"""Every geometric augmentation keeps image, boxes, polygons and label map consistent.

The scene (see ``_scene.py``) has a red rectangle (label 1, box 0) and a green L-shaped polygon
(label 2, box 1). After running an augmentation through ``AugInput`` (image + boxes + sem_seg)
and replaying the returned transforms on the polygons, we check:

- the rectangle's box equals the tight box of its transformed mask (after clipping to the
  image), within interpolation tolerance;
- for axis-preserving transforms, the polygon's box too;
- each transformed polygon, rasterised, matches its transformed mask (IoU > 0.9);
- the painted pixels of the transformed image sit on the transformed mask.
"""

import numpy as np
import pytest

from segtron.data import transforms as T

from ._scene import (
    POLY_COLOR,
    RECT_COLOR,
    clip_box,
    color_mask,
    iou,
    make_scene,
    rasterize,
    tight_box,
)

# (augmentation factory, box tolerance in output pixels, whether axes stay aligned)
GEOMETRIC = {
    "hflip": (lambda: T.RandomFlip(prob=1.0), 0.0, True),
    "vflip": (lambda: T.RandomFlip(prob=1.0, horizontal=False, vertical=True), 0.0, True),
    "resize": (lambda: T.Resize((60, 200)), 1.01, True),
    "resize_int": (lambda: T.Resize(77), 1.01, True),
    "shortest_edge_range": (lambda: T.ResizeShortestEdge((64, 160), max_size=180), 1.01, True),
    "shortest_edge_choice": (
        lambda: T.ResizeShortestEdge([64, 120], sample_style="choice"), 1.01, True),
    "resize_scale": (lambda: T.ResizeScale(0.5, 1.5, 96, 128), 1.01, True),
    "random_resize": (lambda: T.RandomResize([(50, 70), (120, 140)]), 1.01, True),
    "rotation_expand": (lambda: T.RandomRotation([-40, 40]), 2.0, False),
    "rotation_crop": (lambda: T.RandomRotation([-30, 30], expand=False), 2.0, False),
    "rotation_choice_center": (
        lambda: T.RandomRotation([90, -90, 15], expand=False, center=[(0.5, 0.5), (0.4, 0.6)],
                                 sample_style="choice"), 2.0, False),
    "crop_relative": (lambda: T.RandomCrop("relative", (0.6, 0.7)), 0.0, True),
    "crop_relative_range": (lambda: T.RandomCrop("relative_range", (0.3, 0.5)), 0.0, True),
    "crop_absolute": (lambda: T.RandomCrop("absolute", (64, 90)), 0.0, True),
    "crop_absolute_range": (lambda: T.RandomCrop("absolute_range", (40, 100)), 0.0, True),
    "crop_category": (
        lambda: T.RandomCrop_CategoryAreaConstraint("relative", (0.7, 0.7), 0.6, 0), 0.0, True),
    "fixed_size_crop": (lambda: T.FixedSizeCrop((80, 100)), 0.0, True),
    "fixed_size_pad": (lambda: T.FixedSizeCrop((120, 150)), 0.0, True),
    "extent": (lambda: T.RandomExtent((0.8, 1.2), (0.3, 0.3)), 1.5, True),
    "min_iou_crop": (lambda: T.MinIoURandomCrop(min_ious=(0.1, 0.3)), 0.0, True),
    "random_apply": (lambda: T.RandomApply(T.RandomRotation([-20, 20]), prob=0.7), 2.0, False),
    "pipeline": (
        lambda: T.AugmentationList([
            T.ResizeShortestEdge((80, 120), max_size=200),
            T.RandomFlip(),
            T.RandomCrop("relative_range", (0.7, 0.7)),
            T.RandomFlip(horizontal=False, vertical=True),
        ]), 1.01, True),
}

MIN_AREA = 40  # masks smaller than this are too coarse for an IoU check


def _run(aug):
    image, boxes, sem_seg, polygons = make_scene()
    aug_input = T.AugInput(image, boxes=boxes, sem_seg=sem_seg)
    tfms = aug(aug_input)
    if not isinstance(tfms, T.TransformList):
        tfms = T.TransformList([tfms])
    out_polys = [tfms.apply_polygons([p.copy()]) for p in polygons]
    return aug_input, out_polys


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_geometric_augmentation_is_consistent(name):
    factory, box_tol, axis_aligned = GEOMETRIC[name]
    aug = factory()
    for _ in range(6):
        out, polys = _run(aug)
        h, w = out.sem_seg.shape
        assert out.image.shape[:2] == (h, w)
        assert out.image.dtype == np.uint8 and out.sem_seg.dtype == np.uint8
        assert out.boxes.shape == (2, 4)
        for label, color, box, poly in ((1, RECT_COLOR, out.boxes[0], polys[0]),
                                        (2, POLY_COLOR, out.boxes[1], polys[1])):
            mask = out.sem_seg == label
            if mask.sum() < MIN_AREA:
                continue
            if label == 1 or axis_aligned and name not in _CROPPING:
                np.testing.assert_allclose(
                    clip_box(box, h, w), tight_box(mask), atol=box_tol + 1e-6,
                    err_msg=f"{name}: box {label} vs mask")
            raster = rasterize(poly, h, w)
            assert iou(raster, mask) > 0.9, f"{name}: polygon {label} vs mask"
            if axis_aligned:
                poly_box = np.concatenate([np.min(np.concatenate(poly), axis=0),
                                           np.max(np.concatenate(poly), axis=0)])
                np.testing.assert_allclose(poly_box, tight_box(mask), atol=box_tol + 1.01)
            assert iou(color_mask(out.image, color), mask) > 0.7, f"{name}: image vs mask"


# Crops can cut the L-shape so that its (clipped) original box is looser than its mask.
_CROPPING = {"crop_relative", "crop_relative_range", "crop_absolute", "crop_absolute_range",
             "crop_category", "fixed_size_crop", "min_iou_crop", "pipeline", "extent"}


def test_hflip_maps_x_to_width_minus_x_exactly():
    image, boxes, sem_seg, polygons = make_scene()
    w = image.shape[1]
    aug_input = T.AugInput(image.copy(), boxes=boxes.copy(), sem_seg=sem_seg.copy())
    tfm = T.RandomFlip(prob=1.0)(aug_input)
    assert isinstance(tfm, T.HFlipTransform)
    expected = boxes.copy()
    expected[:, [0, 2]] = w - boxes[:, [2, 0]]
    np.testing.assert_array_equal(aug_input.boxes, expected)
    np.testing.assert_array_equal(aug_input.image, image[:, ::-1])
    np.testing.assert_array_equal(aug_input.sem_seg, sem_seg[:, ::-1])
    flipped = tfm.apply_polygons([p.copy() for p in polygons])
    for before, after in zip(polygons, flipped):
        np.testing.assert_array_equal(after[:, 0], w - before[:, 0])
        np.testing.assert_array_equal(after[:, 1], before[:, 1])
    np.testing.assert_array_equal(tight_box(aug_input.sem_seg == 1), expected[0])


def test_vflip_maps_y_to_height_minus_y_exactly():
    image, boxes, sem_seg, _ = make_scene()
    h = image.shape[0]
    aug_input = T.AugInput(image, boxes=boxes.copy(), sem_seg=sem_seg)
    T.RandomFlip(prob=1.0, horizontal=False, vertical=True)(aug_input)
    np.testing.assert_array_equal(aug_input.boxes[:, [1, 3]], h - boxes[:, [3, 1]])
    np.testing.assert_array_equal(aug_input.sem_seg, sem_seg[::-1])


@pytest.mark.parametrize("shape", [(48, 64), (192, 256), (60, 200), (150, 90)])
def test_resize_scales_areas_by_the_factors(shape):
    image, boxes, sem_seg, _ = make_scene()
    h, w = sem_seg.shape
    aug_input = T.AugInput(image, boxes=boxes.copy(), sem_seg=sem_seg)
    T.Resize(shape)(aug_input)
    sy, sx = shape[0] / h, shape[1] / w
    box_area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    np.testing.assert_allclose(box_area(aug_input.boxes), box_area(boxes) * sx * sy)
    for label in (1, 2):
        before = (sem_seg == label).sum()
        after = (aug_input.sem_seg == label).sum()
        assert after == pytest.approx(before * sx * sy, rel=0.1)


def test_uniform_resize_scales_area_by_square_of_factor():
    image, _, sem_seg, polygons = make_scene()
    aug_input = T.AugInput(image, sem_seg=sem_seg)
    tfm = T.ResizeShortestEdge(192)(aug_input)  # 96x128 -> 192x256: factor 2
    assert aug_input.sem_seg.shape == (192, 256)
    for label in (1, 2):
        assert (aug_input.sem_seg == label).sum() == pytest.approx(
            4 * (sem_seg == label).sum(), rel=0.02)
    poly = tfm.apply_polygons([polygons[1].copy()])[0]
    np.testing.assert_allclose(poly, polygons[1] * 2)


def test_photometric_augmentations_leave_geometry_alone():
    for aug in (T.RandomContrast(0.5, 1.5), T.RandomBrightness(0.5, 1.5),
                T.RandomSaturation(0.5, 1.5), T.RandomLighting(0.5),
                T.RandomApply(T.RandomBrightness(0.1, 0.2), prob=1.0)):
        image, boxes, sem_seg, polygons = make_scene()
        aug_input = T.AugInput(image.copy(), boxes=boxes.copy(), sem_seg=sem_seg.copy())
        tfm = aug(aug_input)
        np.testing.assert_array_equal(aug_input.boxes, boxes)
        np.testing.assert_array_equal(aug_input.sem_seg, sem_seg)
        assert aug_input.image.shape == image.shape and aug_input.image.dtype == np.uint8
        for p, q in zip(polygons, tfm.apply_polygons([p.copy() for p in polygons])):
            np.testing.assert_array_equal(p, q)
