"""Deterministic transforms: ResizeTransform, RotationTransform, ExtentTransform, colour
transforms, fvcore re-exports, rotated boxes and polygon cropping."""

import fvcore.transforms.transform as fvt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from segtron.data import transforms as T

from ._scene import iou, rasterize


def _blob(h, w, cx, cy, sigma=2.0, dtype=np.float32):
    """A Gaussian blob centred at continuous coordinates (cx, cy): pixel (i, j) has centre
    (j + 0.5, i + 0.5)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    img = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)) * 200
    return img.astype(dtype)


def _centroid(img):
    img = img.astype(np.float64)
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]] + 0.5
    return np.array([(xs * img).sum(), (ys * img).sum()]) / img.sum()


def test_fvcore_names_are_reexported():
    for name in ("Transform", "TransformList", "NoOpTransform", "HFlipTransform",
                 "VFlipTransform", "CropTransform", "PadTransform", "BlendTransform"):
        assert getattr(T, name) is getattr(fvt, name)
    assert callable(T.Transform.register_type)


# --- ResizeTransform -------------------------------------------------------------------------
@pytest.mark.parametrize("interp", [Image.BILINEAR, Image.NEAREST, Image.BICUBIC])
def test_resize_uint8_is_pil_resize(interp):
    rng = np.random.RandomState(0)
    rgb = rng.randint(0, 256, (23, 37, 3)).astype(np.uint8)
    gray = rgb[:, :, 0].copy()
    t = T.ResizeTransform(23, 37, 41, 19, interp)
    np.testing.assert_array_equal(
        t.apply_image(rgb), np.asarray(Image.fromarray(rgb).resize((19, 41), interp)))
    expected_gray = np.asarray(Image.fromarray(gray).resize((19, 41), interp))
    np.testing.assert_array_equal(t.apply_image(gray), expected_gray)
    one_channel = t.apply_image(gray[:, :, None])
    assert one_channel.shape == (41, 19, 1)
    np.testing.assert_array_equal(one_channel[:, :, 0], expected_gray)


def test_resize_default_interp_is_bilinear():
    assert T.ResizeTransform(4, 4, 8, 8).interp == Image.BILINEAR


def test_resize_float_uses_torch_interpolate():
    rng = np.random.RandomState(1)
    img = rng.rand(20, 30, 3).astype(np.float32)
    t = T.ResizeTransform(20, 30, 33, 14)
    expected = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], (33, 14),
                             mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    out = t.apply_image(img)
    assert out.dtype == np.float32 and out.shape == (33, 14, 3)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    assert t.apply_image(img[:, :, 0]).shape == (33, 14)
    flipped = img[:, ::-1]  # negative strides are fine
    np.testing.assert_allclose(t.apply_image(flipped), t.apply_image(flipped.copy()))


@pytest.mark.parametrize("new_size", [(7, 9), (50, 61), (23, 80), (41, 13)])
def test_resize_segmentation_is_nearest_for_every_dtype(new_size):
    rng = np.random.RandomState(2)
    labels = rng.randint(0, 200, (29, 31)).astype(np.uint8)
    t = T.ResizeTransform(29, 31, *new_size, Image.BILINEAR)
    expected = np.asarray(Image.fromarray(labels).resize(new_size[::-1], Image.NEAREST))
    np.testing.assert_array_equal(t.apply_segmentation(labels), expected)
    for dtype in (np.int32, np.int64, np.uint16):
        out = t.apply_segmentation(labels.astype(dtype) * 300)
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, expected.astype(dtype) * 300)
    out = t.apply_segmentation(labels > 100)
    assert out.dtype == bool
    np.testing.assert_array_equal(out, expected > 100)


def test_resize_coords_scale_and_inverse():
    t = T.ResizeTransform(40, 50, 100, 75)
    coords = np.array([[0.0, 0.0], [50.0, 40.0], [10.0, 4.0]])
    out = t.apply_coords(coords.copy())
    np.testing.assert_allclose(out, coords * [75 / 50, 100 / 40])
    np.testing.assert_allclose(t.inverse().apply_coords(out.copy()), coords)
    assert (t.inverse().h, t.inverse().w, t.inverse().new_h, t.inverse().new_w) == (100, 75, 40, 50)
    np.testing.assert_allclose(t.apply_box(np.array([[10.0, 4.0, 50.0, 40.0]])),
                               [[15.0, 10.0, 75.0, 100.0]])


def test_resize_image_and_coords_agree():
    img = _blob(40, 50, cx=17.3, cy=22.6, dtype=np.float32)
    t = T.ResizeTransform(40, 50, 100, 125)  # x2.5
    expected = t.apply_coords(np.array([[17.3, 22.6]]))[0]
    np.testing.assert_allclose(_centroid(t.apply_image(img)), expected, atol=0.1)
    as_uint8 = np.clip(img, 0, 255).astype(np.uint8)
    np.testing.assert_allclose(_centroid(t.apply_image(as_uint8)), expected, atol=0.15)


def test_resize_rejects_wrong_image_size():
    with pytest.raises(ValueError, match=r"\(h, w\) = \(10, 20\)"):
        T.ResizeTransform(10, 20, 5, 5).apply_image(np.zeros((11, 20), np.uint8))


def test_resize_float_rejects_unsupported_filter():
    with pytest.raises(ValueError, match="NEAREST"):
        T.ResizeTransform(4, 4, 8, 8, Image.LANCZOS).apply_image(np.zeros((4, 4), np.float32))


# --- RotationTransform -----------------------------------------------------------------------
def test_rotation_by_90_matches_rot90_exactly():
    rng = np.random.RandomState(3)
    img = rng.randint(0, 256, (40, 60, 3)).astype(np.uint8)
    t = T.RotationTransform(40, 60, 90)
    assert (t.bound_h, t.bound_w) == (60, 40)
    np.testing.assert_array_equal(t.apply_image(img), np.rot90(img))
    np.testing.assert_array_equal(t.apply_segmentation(img[:, :, 0]), np.rot90(img[:, :, 0]))
    corners = np.array([[0.0, 0.0], [60.0, 0.0], [60.0, 40.0]])
    np.testing.assert_allclose(t.apply_coords(corners), [[0, 60], [0, 0], [40, 0]], atol=1e-9)


@pytest.mark.parametrize("angle,expand", [(30, True), (-75, True), (20, False), (133, True)])
def test_rotation_image_and_coords_agree(angle, expand):
    img = _blob(50, 70, cx=30.7, cy=21.2)
    t = T.RotationTransform(50, 70, angle, expand=expand)
    out = t.apply_image(img)
    assert out.shape == (t.bound_h, t.bound_w)
    expected = t.apply_coords(np.array([[30.7, 21.2]]))[0]
    np.testing.assert_allclose(_centroid(out), expected, atol=0.1)


def test_rotation_expand_bounds_and_zero_angle():
    t = T.RotationTransform(96, 128, 30)
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    assert (t.bound_w, t.bound_h) == (round(96 * s + 128 * c), round(96 * c + 128 * s))
    assert (T.RotationTransform(96, 128, 30, expand=False).bound_w,) == (128,)
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    t0 = T.RotationTransform(3, 4, 360)
    assert t0.apply_image(img) is img
    np.testing.assert_array_equal(t0.apply_coords(np.array([[1.0, 2.0]])), [[1.0, 2.0]])


def test_rotation_inverse_recovers_coords():
    rng = np.random.RandomState(4)
    coords = rng.uniform(0, [128, 96], size=(20, 2))
    for angle in (30, -45, 12.5, 90):
        t = T.RotationTransform(96, 128, angle)
        inv = t.inverse()
        assert isinstance(inv, T.TransformList)
        back = inv.apply_coords(t.apply_coords(coords.copy()))
        # The inverse crops at an integer offset (b2 - size) // 2 of the re-expanded canvas
        # b2, so coordinates come back shifted by the dropped half pixel, if any.
        b2 = np.array([inv[0].bound_w, inv[0].bound_h])
        residual = (b2 - [128, 96]) / 2 - (b2 - [128, 96]) // 2
        np.testing.assert_allclose(back, coords + residual, atol=1e-6)
        assert np.all(residual <= 0.5)
        img = np.zeros((96, 128, 3), np.uint8)
        assert inv.apply_image(t.apply_image(img)).shape == (96, 128, 3)


def test_rotation_inverse_needs_expand():
    with pytest.raises(NotImplementedError, match="expand=True"):
        T.RotationTransform(10, 10, 30, expand=False).inverse()


def test_rotation_handles_label_dtypes():
    seg = np.zeros((30, 40), np.int64)
    seg[5:20, 10:30] = 70000
    t = T.RotationTransform(30, 40, 25)
    out = t.apply_segmentation(seg)
    assert out.dtype == np.int64 and set(np.unique(out)) <= {0, 70000}
    np.testing.assert_array_equal(t.apply_segmentation(seg > 0), out > 0)
    assert t.apply_image(np.zeros((30, 40, 1), np.uint8)).shape == (t.bound_h, t.bound_w, 1)


def test_rotation_center_shifts_only_without_expand():
    img = _blob(40, 40, cx=10.0, cy=20.0)
    a = T.RotationTransform(40, 40, 90, expand=True, center=(0.0, 0.0))
    b = T.RotationTransform(40, 40, 90, expand=True)
    np.testing.assert_allclose(a.apply_image(img), b.apply_image(img), atol=1e-4)
    c = T.RotationTransform(40, 40, 90, expand=False, center=(10.0, 20.0))
    # rotating about the blob's own centre leaves it in place
    np.testing.assert_allclose(c.apply_coords(np.array([[10.0, 20.0]])), [[10.0, 20.0]])
    np.testing.assert_allclose(_centroid(c.apply_image(img)), [10.0, 20.0], atol=0.1)


# --- ExtentTransform -------------------------------------------------------------------------
def test_extent_identity_and_integer_crop():
    rng = np.random.RandomState(5)
    img = rng.randint(0, 256, (30, 40, 3)).astype(np.uint8)
    ident = T.ExtentTransform((0, 0, 40, 30), (30, 40))
    np.testing.assert_array_equal(ident.apply_image(img), img)
    crop = T.ExtentTransform((10, 5, 30, 25), (20, 20), interp=Image.NEAREST)
    np.testing.assert_array_equal(crop.apply_image(img), img[5:25, 10:30])
    np.testing.assert_allclose(crop.apply_coords(np.array([[10.0, 5.0], [30.0, 25.0]])),
                               [[0, 0], [20, 20]])


def test_extent_fills_outside_and_keeps_labels():
    seg = np.full((30, 40), 3, np.int32)
    seg[:, 20:] = 7
    t = T.ExtentTransform((-10.0, -10.0, 50.5, 40.5), (45, 61), fill=0)
    out = t.apply_segmentation(seg)
    assert out.dtype == np.int32 and out.shape == (45, 61)
    assert set(np.unique(out)) == {0, 3, 7}  # no blended labels
    assert out[0, 0] == 0 and out[-1, -1] == 0
    u8 = t.apply_segmentation(seg.astype(np.uint8))
    np.testing.assert_array_equal(u8, out.astype(np.uint8))
    flt = t.apply_image(np.ones((30, 40, 2), np.float32))
    assert flt.shape == (45, 61, 2) and flt.dtype == np.float32
    assert flt[0, 0, 0] == 0 and flt[22, 30, 1] == pytest.approx(1.0)


def test_extent_image_and_coords_agree():
    img = _blob(40, 50, cx=20.4, cy=17.9)
    t = T.ExtentTransform((5.5, 3.25, 45.5, 33.25), (60, 80))
    out = t.apply_image(img)
    expected = t.apply_coords(np.array([[20.4, 17.9]]))[0]
    assert out.shape == (60, 80)
    np.testing.assert_allclose(_centroid(out), expected, atol=0.15)


# --- colour transforms -----------------------------------------------------------------------
def test_color_transforms():
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    t = T.ColorTransform(lambda x: 255 - x)
    np.testing.assert_array_equal(t.apply_image(img), 255 - img)
    coords = np.array([[1.0, 2.0]])
    assert t.apply_coords(coords) is coords
    assert isinstance(t.inverse(), T.NoOpTransform)
    seg = np.ones((2, 4), np.uint8)
    assert t.apply_segmentation(seg) is seg
    p = T.PILColorTransform(lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    np.testing.assert_array_equal(p.apply_image(img), img[:, ::-1])
    for cls in (T.ColorTransform, T.PILColorTransform):
        with pytest.raises(ValueError, match="callable"):
            cls(3)


# --- flips, lists ----------------------------------------------------------------------------
def test_hflip_coords_and_inverse():
    t = T.HFlipTransform(100)
    coords = np.array([[0.0, 1.0], [30.5, 2.0], [100.0, 3.0]])
    out = t.apply_coords(coords.copy())
    np.testing.assert_array_equal(out[:, 0], 100 - coords[:, 0])
    np.testing.assert_array_equal(t.inverse().apply_coords(out), coords)
    tl = T.TransformList([T.ResizeTransform(50, 100, 25, 50), T.HFlipTransform(50)])
    back = tl.inverse().apply_coords(tl.apply_coords(coords.copy()))
    np.testing.assert_allclose(back, coords)


# --- rotated boxes ---------------------------------------------------------------------------
def test_rotated_box_registrations():
    boxes = np.array([[10.0, 20.0, 8.0, 4.0, 30.0], [50.0, 5.0, 6.0, 2.0, 0.0]])
    flipped = T.HFlipTransform(100).apply_rotated_box(boxes.copy())
    np.testing.assert_allclose(flipped, [[90, 20, 8, 4, -30], [50, 5, 6, 2, 0]])
    uniform = T.ResizeTransform(50, 100, 100, 200).apply_rotated_box(boxes.copy())
    np.testing.assert_allclose(uniform, boxes * [2, 2, 2, 2, 1])
    axis = np.array([[10.0, 10.0, 8.0, 4.0, 0.0], [10.0, 10.0, 8.0, 4.0, 90.0]])
    out = T.ResizeTransform(50, 100, 150, 200).apply_rotated_box(axis.copy())  # sx=2, sy=3
    np.testing.assert_allclose(out, [[20, 30, 16, 12, 0], [20, 30, 24, 8, 90]], atol=1e-9)
    np.testing.assert_array_equal(T.NoOpTransform().apply_rotated_box(boxes.copy()), boxes)


# --- polygon cropping ------------------------------------------------------------------------
def test_crop_polygons_clip_to_window():
    u_shape = np.array([[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30],
                        [0, 30]], dtype=np.float64)
    t = T.CropTransform(5, 15, 20, 10)  # window x in [5, 25], y in [15, 25]: cuts both arms
    out = t.apply_polygons([u_shape.copy()])
    assert sum(len(p) for p in out) >= 6
    for p in out:
        assert p.min() >= 0 and np.all(p.max(axis=0) <= [20, 10])
    # area inside the window: two 5x10 pieces of the arms
    mask = rasterize(out, 10, 20)
    expected = np.zeros((10, 20), bool)
    expected[:, :5] = True
    expected[:, 15:] = True
    assert iou(mask, expected) > 0.95
    # entirely outside: dropped; entirely inside: only shifted
    assert t.apply_polygons([np.array([[40.0, 40], [50, 40], [50, 50]])]) == []
    inside = np.array([[6.0, 16], [20, 16], [20, 24]])
    (moved,) = t.apply_polygons([inside.copy()])
    np.testing.assert_allclose(np.sort(moved, axis=0), np.sort(inside - [5, 15], axis=0))
