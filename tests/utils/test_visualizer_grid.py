"""tile_images: grid geometry, background gaps, images in their cells, caption strips."""

import numpy as np
import pytest

from segtron.utils.visualizer_grid import caption_height, tile_images

TH, TW, GAP = 20, 30, 4


def _solid(value, h=TH, w=TW):
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_shape_and_cells_without_captions():
    images = [_solid(10 * (i + 1)) for i in range(5)]
    grid = tile_images(images, columns=3, gap=GAP)
    assert grid.dtype == np.uint8
    assert grid.shape == (2 * TH + 3 * GAP, 3 * TW + 4 * GAP, 3)
    for index, image in enumerate(images):
        row, col = divmod(index, 3)
        top, left = GAP + row * (TH + GAP), GAP + col * (TW + GAP)
        assert np.array_equal(grid[top: top + TH, left: left + TW], image)
    # The unused sixth cell stays background.
    top, left = GAP + TH + GAP, GAP + 2 * (TW + GAP)
    assert np.all(grid[top: top + TH, left: left + TW] == 255)


def test_gaps_are_background():
    grid = tile_images([_solid(0) for _ in range(4)], columns=2, gap=GAP)
    for y in (range(0, GAP), range(GAP + TH, 2 * GAP + TH), range(grid.shape[0] - GAP,
                                                                  grid.shape[0])):
        assert np.all(grid[list(y)] == 255)
    for x in (range(0, GAP), range(GAP + TW, 2 * GAP + TW)):
        assert np.all(grid[:, list(x)] == 255)
    assert np.all(grid[GAP: GAP + TH, GAP: GAP + TW] == 0)
    assert tile_images([_solid(0)] * 2, columns=2, gap=0).shape == (TH, 2 * TW, 3)
    assert np.all(tile_images([_solid(0)], columns=1, gap=2, background=100)[0] == 100)


def test_captions_get_a_strip_under_each_image():
    font_size = 12
    cap_h = caption_height(font_size)
    images = [_solid(0, 40, 120) for _ in range(3)]
    grid = tile_images(images, columns=2, captions=["image 1", "image 2", "image 3"], gap=GAP,
                       font_size=font_size)
    assert grid.shape == (2 * (40 + cap_h) + 3 * GAP, 2 * 120 + 3 * GAP, 3)
    for index in range(3):
        row, col = divmod(index, 2)
        top = GAP + row * (40 + cap_h + GAP)
        left = GAP + col * (120 + GAP)
        assert np.all(grid[top: top + 40, left: left + 120] == 0)  # the image is untouched
        strip = grid[top + 40: top + 40 + cap_h, left: left + 120]
        dark = strip.min(axis=-1) < 128
        assert dark.sum() > 20  # text was drawn...
        ys, xs = np.nonzero(dark)
        assert abs((xs.min() + xs.max()) / 2 - 60) <= 3  # ... centred
    # The empty cell of the last row has no caption text.
    top, left = GAP + 40 + cap_h + GAP, GAP + 120 + GAP
    assert np.all(grid[top: top + 40 + cap_h, left: left + 120] == 255)


def test_long_caption_stays_inside_its_cell():
    grid = tile_images([_solid(0, 30, 40)] * 2, columns=2, gap=GAP, font_size=10,
                       captions=["a very long caption that cannot fit"] * 2)
    gap_columns = grid[:, GAP + 40: 2 * GAP + 40]
    assert np.all(gap_columns == 255)
    assert np.all(grid[:, :GAP] == 255) and np.all(grid[:, -GAP:] == 255)


def test_images_of_other_sizes_are_fitted_and_centred():
    big = _solid(0, 40, 40)
    small = _solid(50, 10, 10)  # scaled up to 40x40
    wide = _solid(100, 10, 40)  # stays 10x40, centred vertically
    grid = tile_images([big, small, wide], columns=3, gap=0)
    assert grid.shape == (40, 120, 3)
    assert np.all(grid[:, 40:80] == 50)
    assert np.all(grid[15:25, 80:120] == 100)
    assert np.all(grid[:15, 80:120] == 255) and np.all(grid[25:, 80:120] == 255)
    resized = tile_images([big], columns=1, gap=0, tile_size=(20, 10))
    assert resized.shape == (20, 10, 3) and np.all(resized[5:15] == 0)


def test_columns_reduced_to_image_count_and_grayscale_accepted():
    grid = tile_images([np.zeros((TH, TW), np.uint8)] * 2, columns=8, gap=GAP)
    assert grid.shape == (TH + 2 * GAP, 2 * TW + 3 * GAP, 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(images=[]), "no images"),
    (dict(images=[_solid(0)], columns=0), "columns"),
    (dict(images=[_solid(0)], gap=-1), "gap"),
    (dict(images=[_solid(0)] * 2, captions=["one"]), "1 captions for 2 images"),
    (dict(images=[np.zeros((4, 4, 3), np.float32)]), "uint8"),
    (dict(images=[np.zeros((4, 4, 2), np.uint8)]), "HxWx3"),
])
def test_errors(kwargs, message):
    kwargs.setdefault("columns", 2)
    with pytest.raises(ValueError, match=message):
        tile_images(**kwargs)
