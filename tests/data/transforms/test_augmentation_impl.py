"""Built-in augmentations: output sizes, sampling rules, photometric maths and argument errors."""

import sys

import numpy as np
import pytest
from PIL import Image

from segtron.data import transforms as T

# (h, w, short_edge_length, max_size) -> (new_h, new_w), worked out by hand:
# the short side becomes `short`, the long one scales with it; if the long side then exceeds
# max_size both shrink so that it equals max_size; each side is rounded half up.
SHORTEST_EDGE_CASES = [
    ((480, 640, 800, 1333), (800, 1067)),   # 640 * 800/480 = 1066.67
    ((640, 480, 800, 1333), (1067, 800)),   # portrait
    ((240, 320, 256, 512), (256, 341)),     # golden fixture's input: 341.33
    ((400, 1000, 800, 1333), (533, 1333)),  # 2000 > 1333: 800 * 1333/2000 = 533.2
    ((1000, 400, 800, 1333), (1333, 533)),  # same, portrait
    ((10, 30, 20, 45), (15, 45)),           # 60 > 45: x0.75
    ((300, 500, 600, 1000), (600, 1000)),   # long side == max_size: not above, no shrink
    ((100, 100, 50, 1000), (50, 50)),       # square
    ((4, 5, 2, sys.maxsize), (2, 3)),       # 2.5 rounds up
    ((7, 2, 1, sys.maxsize), (4, 1)),       # 3.5 rounds up
    ((2, 4, 4, 5), (3, 5)),                 # 8 > 5: 4 * 5/8 = 2.5 rounds up (max_size hit)
    ((3, 7, 2, sys.maxsize), (2, 5)),       # 4.67 -> 5
    ((3, 8, 2, sys.maxsize), (2, 5)),       # 5.33 -> 5
    ((800, 1200, 640, 1000), (640, 960)),   # 960 <= 1000
    # An exact .5 tie decided by floating point: Detectron2's order (short side := 1179, long
    # := 3144, then both x 340/3144) gives 127.4999..., so 127; the closed form
    # 567 * (340/1512) of FACTS.md would give 127.5000... and 128. Detectron2's order wins.
    ((1512, 567, 1179, 340), (340, 127)),
]


@pytest.mark.parametrize("args,expected", SHORTEST_EDGE_CASES)
def test_resize_shortest_edge_output_shape(args, expected):
    h, w, short, max_size = args
    assert T.ResizeShortestEdge.get_output_shape(h, w, short, max_size) == expected
    tfm = T.ResizeShortestEdge(short, max_size).get_transform(np.zeros((h, w), np.uint8))
    assert isinstance(tfm, T.ResizeTransform)
    assert (tfm.h, tfm.w, tfm.new_h, tfm.new_w) == (h, w, *expected)
    assert tfm.interp == Image.BILINEAR


def test_resize_shortest_edge_zero_is_noop():
    image = np.zeros((30, 40, 3), np.uint8)
    assert isinstance(T.ResizeShortestEdge(0).get_transform(image), T.NoOpTransform)
    assert isinstance(T.ResizeShortestEdge([0], sample_style="choice").get_transform(image),
                      T.NoOpTransform)


def test_resize_shortest_edge_range_vs_choice_sampling():
    image = np.zeros((100, 200), np.uint8)  # landscape: new_h is the sampled length
    ranged = T.ResizeShortestEdge((10, 14))
    drawn = [ranged.get_transform(image).new_h for _ in range(300)]
    assert set(drawn) == {10, 11, 12, 13, 14}  # every integer of [min, max], both ends included
    chosen = T.ResizeShortestEdge((10, 14), sample_style="choice")
    drawn = [chosen.get_transform(image).new_h for _ in range(100)]
    assert set(drawn) == {10, 14}
    three = T.ResizeShortestEdge([16, 32, 64], sample_style="choice")
    drawn = [three.get_transform(image).new_h for _ in range(150)]
    counts = np.bincount(drawn)[[16, 32, 64]]
    assert set(drawn) == {16, 32, 64} and counts.min() > 25


def test_resize_shortest_edge_argument_errors():
    with pytest.raises(ValueError, match=r"sample_style must be one of \['range', 'choice'\], "
                                         r"got 'uniform'"):
        T.ResizeShortestEdge(800, sample_style="uniform")
    with pytest.raises(ValueError, match=r"two values.*\(640, 672, 704\)"):
        T.ResizeShortestEdge((640, 672, 704), 1333, "range")
    T.ResizeShortestEdge((640, 672, 704), 1333, "choice")  # fine with "choice"


# --- crops -----------------------------------------------------------------------------------
H, W = 96, 128


def _crop_sizes(aug, n=200):
    image = np.zeros((H, W), np.uint8)
    out = []
    for _ in range(n):
        t = aug.get_transform(image)
        assert isinstance(t, T.CropTransform)
        assert 0 <= t.x0 and t.x0 + t.w <= W and 0 <= t.y0 and t.y0 + t.h <= H
        assert t.apply_image(image).shape == (t.h, t.w)
        out.append((t.h, t.w))
    return np.array(out)


def test_random_crop_relative():
    sizes = _crop_sizes(T.RandomCrop("relative", (0.5, 0.25)), n=20)
    assert set(map(tuple, sizes)) == {(48, 32)}  # int(96*0.5 + 0.5), int(128*0.25 + 0.5)


def test_random_crop_relative_range():
    sizes = _crop_sizes(T.RandomCrop("relative_range", (0.3, 0.6)))
    assert sizes[:, 0].min() >= int(H * 0.3 + 0.5) and sizes[:, 0].max() <= H
    assert sizes[:, 1].min() >= int(W * 0.6 + 0.5) and sizes[:, 1].max() <= W
    assert sizes[:, 0].min() < 40 and sizes[:, 0].max() > 85  # spans the range
    assert sizes[:, 1].min() < 85 and sizes[:, 1].max() > 120


def test_random_crop_absolute():
    sizes = _crop_sizes(T.RandomCrop("absolute", (50, 200)), n=20)
    assert set(map(tuple, sizes)) == {(50, 128)}  # clamped to the image


def test_random_crop_absolute_range():
    sizes = _crop_sizes(T.RandomCrop("absolute_range", (40, 100)))
    assert sizes[:, 0].min() >= 40 and sizes[:, 0].max() <= 96  # [40, min(H, 100)]
    assert sizes[:, 1].min() >= 40 and sizes[:, 1].max() <= 100  # [40, min(W, 100)]
    assert sizes[:, 0].max() == 96 and sizes[:, 1].max() >= 95
    small = T.RandomCrop("absolute_range", (200, 300)).get_crop_size((H, W))
    assert small == (H, W)


def test_random_crop_positions_cover_the_image():
    image = np.zeros((H, W), np.uint8)
    aug = T.RandomCrop("absolute", (10, 10))
    starts = np.array([(t.y0, t.x0) for t in (aug.get_transform(image) for _ in range(400))])
    assert starts.min() == 0 and starts[:, 0].max() == H - 10 and starts[:, 1].max() >= W - 12


def test_random_crop_argument_errors():
    with pytest.raises(ValueError, match=r"crop_type must be one of \['relative_range', "
                                         r"'relative', 'absolute', 'absolute_range'\], "
                                         r"got 'fixed'"):
        T.RandomCrop("fixed", (0.5, 0.5))
    with pytest.raises(ValueError, match="min <= max"):
        T.RandomCrop("absolute_range", (100, 40))


def test_category_area_constraint():
    sem_seg = np.zeros((H, W), np.uint8)
    sem_seg[:, 64:] = 1
    sem_seg[:10, :10] = 255
    image = np.zeros((H, W, 3), np.uint8)

    def satisfied(t):
        window = sem_seg[t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w]
        labels, counts = np.unique(window[window != 255], return_counts=True)
        return len(labels) > 1 and counts.max() < 0.75 * counts.sum()

    # A random 40x40 window meets the constraint ~22% of the time; with up to 10 attempts the
    # constrained crop should meet it ~92% of the time (it keeps the 10th window otherwise).
    aug = T.RandomCrop_CategoryAreaConstraint("absolute", (40, 40), 0.75, ignored_category=255)
    constrained = [satisfied(aug.get_transform(image, sem_seg)) for _ in range(100)]
    plain = T.RandomCrop_CategoryAreaConstraint("absolute", (40, 40))
    unconstrained = [satisfied(plain.get_transform(image, sem_seg)) for _ in range(100)]
    assert sum(constrained) > 80 and sum(unconstrained) < 40
    aug_input = T.AugInput(image, sem_seg=sem_seg)
    aug(aug_input)
    assert aug_input.sem_seg.shape == (40, 40)


def test_fixed_size_crop_and_pad():
    image = np.full((H, W, 3), 7, np.uint8)
    sem_seg = np.ones((H, W), np.uint8)
    boxes = np.array([[10.0, 10.0, 30.0, 40.0]])
    aug_input = T.AugInput(image, boxes=boxes.copy(), sem_seg=sem_seg)
    T.FixedSizeCrop((120, 150))(aug_input)  # larger: pad bottom/right, no shift
    assert aug_input.image.shape == (120, 150, 3)
    assert aug_input.image[H:].min() == 128 and aug_input.image[:, W:].max() == 128
    assert aug_input.sem_seg[H:].min() == 255 and aug_input.sem_seg[:H, :W].max() == 1
    np.testing.assert_array_equal(aug_input.boxes, boxes)
    t = T.FixedSizeCrop((80, 100), pad_value=0.0, seg_pad_value=0).get_transform(image)
    assert isinstance(t, T.TransformList)
    crop = t[0]
    assert (crop.h, crop.w) == (80, 100) and crop.x0 <= 28 and crop.y0 <= 16
    assert t.apply_image(image).shape == (80, 100, 3)
    no_pad = T.FixedSizeCrop((120, 150), pad=False)
    assert no_pad.get_transform(image).apply_image(image).shape == (H, W, 3)


def test_resize_scale_fits_scaled_target():
    image = np.zeros((100, 200), np.uint8)
    t = T.ResizeScale(0.5, 2.0, 64, 64)._get_resize(image, 1.0)
    assert (t.new_h, t.new_w) == (32, 64)  # min(64/100, 64/200) = 0.32
    for _ in range(20):
        t = T.ResizeScale(0.5, 2.0, 64, 64).get_transform(image)
        assert 16 <= t.new_w <= 128 and abs(t.new_h * 2 - t.new_w) <= 1


def test_random_resize_picks_from_list():
    image = np.zeros((30, 40), np.uint8)
    aug = T.RandomResize([(10, 20), (50, 60)])
    shapes = {(t.new_h, t.new_w) for t in (aug.get_transform(image) for _ in range(40))}
    assert shapes == {(10, 20), (50, 60)}


def test_random_rotation_sampling():
    image = np.zeros((30, 40), np.uint8)
    angles = [T.RandomRotation([-10, 10]).get_transform(image).angle for _ in range(30)]
    assert min(angles) >= -10 and max(angles) <= 10 and len(set(angles)) == 30
    chosen = {T.RandomRotation([15, 45], sample_style="choice").get_transform(image).angle
              for _ in range(30)}
    assert chosen == {15, 45}
    assert isinstance(T.RandomRotation(360).get_transform(image), T.NoOpTransform)
    t = T.RandomRotation(30, expand=False, center=(0.25, 0.5)).get_transform(image)
    np.testing.assert_allclose(t.center, (10.0, 15.0))
    with pytest.raises(ValueError, match="sample_style"):
        T.RandomRotation(30, sample_style="any")


def test_random_flip_probability_and_errors():
    image = np.zeros((4, 6), np.uint8)
    flips = [isinstance(T.RandomFlip().get_transform(image), T.HFlipTransform)
             for _ in range(400)]
    assert 150 < sum(flips) < 250
    assert isinstance(T.RandomFlip(0.0).get_transform(image), T.NoOpTransform)
    v = T.RandomFlip(1.0, horizontal=False, vertical=True).get_transform(image)
    assert isinstance(v, T.VFlipTransform) and v.height == 4
    with pytest.raises(ValueError, match="both"):
        T.RandomFlip(horizontal=True, vertical=True)
    with pytest.raises(ValueError, match="one of horizontal or vertical"):
        T.RandomFlip(horizontal=False)


def test_random_apply():
    image = np.zeros((4, 6, 3), np.uint8)
    assert isinstance(T.RandomApply(T.RandomFlip(1.0), 0.0).get_transform(image),
                      T.NoOpTransform)
    assert isinstance(T.RandomApply(T.HFlipTransform(6), 1.0).get_transform(image),
                      T.HFlipTransform)
    aug_input = T.AugInput(image)
    assert isinstance(T.RandomApply(T.Resize((2, 3)), prob=1.0)(aug_input), T.ResizeTransform)
    assert aug_input.image.shape == (2, 3, 3)
    applied = [not isinstance(T.RandomApply(T.RandomFlip(1.0), 0.3)(T.AugInput(image)),
                              T.NoOpTransform) for _ in range(400)]
    assert 80 < sum(applied) < 160
    with pytest.raises(ValueError, match="between 0.0 and 1.0.*1.5"):
        T.RandomApply(T.RandomFlip(), prob=1.5)


def test_random_extent_output_size_and_centre():
    image = np.zeros((40, 60, 3), np.uint8)
    t = T.RandomExtent((1.0, 1.0), (0.0, 0.0)).get_transform(image)
    np.testing.assert_allclose(t.src_rect, (0, 0, 60, 40))
    assert t.output_size == (40, 60)
    for _ in range(10):
        t = T.RandomExtent((0.5, 2.0), (0.5, 0.5)).get_transform(image)
        x0, y0, x1, y1 = t.src_rect
        assert t.output_size == (int(y1 - y0), int(x1 - x0))
        assert abs((x0 + x1) / 2 - 30) <= 0.25 * 60 + 1e-9  # shift within +-w/2 * range/2


# --- photometric -----------------------------------------------------------------------------
def test_photometric_maths():
    rng = np.random.RandomState(0)
    image = rng.randint(0, 200, (8, 10, 3)).astype(np.uint8)
    out = T.RandomBrightness(1.5, 1.5).get_transform(image).apply_image(image)
    np.testing.assert_array_equal(out, np.clip(image * 1.5, 0, 255).astype(np.uint8))
    out = T.RandomContrast(0.0, 0.0).get_transform(image).apply_image(image)
    assert np.all(out == np.uint8(image.mean()))
    gray = T.RandomSaturation(0.0, 0.0).get_transform(image).apply_image(image)
    expected = (image.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    for c in range(3):
        np.testing.assert_array_equal(gray[:, :, c], expected)
    unchanged = T.RandomLighting(0.0).get_transform(image.astype(np.float32))
    np.testing.assert_array_equal(unchanged.apply_image(image.astype(np.float32)), image)
    shift = T.RandomLighting(10.0).get_transform(image.astype(np.float32)).src_image
    assert shift.shape == (3,) and np.abs(shift).max() > 0
    with pytest.raises(ValueError, match="HxWx3"):
        T.RandomSaturation(0.5, 1.5).get_transform(image[:, :, :2])
    with pytest.raises(ValueError, match="HxWx3"):
        T.RandomLighting(0.1).get_transform(image[:, :, 0])


def test_random_lighting_uses_imagenet_pca():
    aug = T.RandomLighting(0.1)
    np.testing.assert_allclose(aug.eigen_vals, [0.2175, 0.0188, 0.0045])
    np.testing.assert_allclose(aug.eigen_vecs[0], [-0.5675, 0.7192, 0.4009])
    # columns are (nearly) orthonormal principal axes
    np.testing.assert_allclose(aug.eigen_vecs.T @ aug.eigen_vecs, np.eye(3), atol=2e-3)


# --- MinIoURandomCrop ------------------------------------------------------------------------
def test_min_iou_random_crop():
    image = np.zeros((H, W, 3), np.uint8)
    boxes = np.array([[30.0, 20.0, 70.0, 60.0], [80.0, 50.0, 120.0, 90.0]])
    aug = T.MinIoURandomCrop()
    crops = 0
    for _ in range(40):
        t = aug.get_transform(image, boxes)
        if isinstance(t, T.NoOpTransform):
            continue
        crops += 1
        assert isinstance(t, T.CropTransform)
        assert t.x0 >= 0 and t.y0 >= 0 and t.x0 + t.w <= W and t.y0 + t.h <= H
        assert 0.5 <= t.h / t.w <= 2.0 or min(t.h, t.w) < 3
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        assert np.any((centers[:, 0] > t.x0) & (centers[:, 0] < t.x0 + t.w)
                      & (centers[:, 1] > t.y0) & (centers[:, 1] < t.y0 + t.h))
    assert crops > 10
    assert isinstance(aug.get_transform(image, None), T.NoOpTransform)
    assert T.MinIoURandomCrop().input_args is None
    aug_input = T.AugInput(image, boxes=boxes.copy())
    T.MinIoURandomCrop(min_ious=(0.1,))(aug_input)
    assert aug_input.image.shape[0] <= H
