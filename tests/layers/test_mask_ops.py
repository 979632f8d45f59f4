import math

import numpy as np
import pytest
import torch

from segtron.layers import paste_masks_in_image
from segtron.layers.mask_ops import _paste

F32 = np.float32


def _grid_coord(pixel, lo, hi):
    """Normalised mask coordinate of a pixel centre, in float32 with the documented op order."""
    return (F32(pixel) + F32(0.5) - F32(lo)) / (F32(hi) - F32(lo)) * F32(2) - F32(1)


def _bilinear_zero_padded(mask, gx, gy):
    """grid_sample(align_corners=False, zeros padding) at one point, in float64."""
    size_h, size_w = mask.shape
    ix = ((float(gx) + 1) * size_w - 1) / 2
    iy = ((float(gy) + 1) * size_h - 1) / 2
    x0, y0 = math.floor(ix), math.floor(iy)
    total = 0.0
    for yy, wy in ((y0, 1 - (iy - y0)), (y0 + 1, iy - y0)):
        for xx, wx in ((x0, 1 - (ix - x0)), (x0 + 1, ix - x0)):
            if 0 <= yy < size_h and 0 <= xx < size_w:
                total += wy * wx * float(mask[yy, xx])
    return total


def _reference_values(masks, boxes, height, width, restrict_to_boxes):
    """Brute force: sampled mask value at every pixel of every image, (N, H, W) float64.

    With ``restrict_to_boxes`` (the CPU rule) pixels outside the integer region
    [floor(x0) - 1, ceil(x1) + 1) x [floor(y0) - 1, ceil(y1) + 1) of the box stay 0.
    """
    masks = masks.double().numpy()
    boxes32 = boxes.float().numpy()
    out = np.zeros((len(masks), height, width))
    for n in range(len(masks)):
        x0, y0, x1, y1 = boxes32[n]
        if restrict_to_boxes:
            xs = range(max(math.floor(x0) - 1, 0), min(math.ceil(x1) + 1, width))
            ys = range(max(math.floor(y0) - 1, 0), min(math.ceil(y1) + 1, height))
        else:
            xs, ys = range(width), range(height)
        for y in ys:
            gy = _grid_coord(y, y0, y1)
            for x in xs:
                out[n, y, x] = _bilinear_zero_padded(masks[n], _grid_coord(x, x0, x1), gy)
    return out


def _random_case(gen, num, size, height, width):
    masks = torch.rand(num, size, size, generator=gen)
    masks[0] = 0.5  # a constant mask sits exactly on the threshold in its interior
    x0 = torch.rand(num, generator=gen) * width * 1.2 - 0.2 * width
    y0 = torch.rand(num, generator=gen) * height * 1.2 - 0.2 * height
    w = torch.rand(num, generator=gen) * width * 0.7 + 0.5
    h = torch.rand(num, generator=gen) * height * 0.7 + 0.5
    w[1], h[1] = 0.4, 0.7  # sub-pixel box
    w[2], h[2] = 0.3, 0.2
    x0[3], y0[3], w[3], h[3] = -5.3, -4.1, width + 10.0, height + 9.0  # covers the whole image
    x0[4] = width + 3.0  # entirely right of the image
    # Box much wider than the mask: the pixel column/row just outside it gets non-zero samples.
    x0[5], y0[5], w[5], h[5] = 5.1, 4.2, 3.0 * size, 2.5 * size
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=1)
    return masks, boxes


def _assert_matches(result, values, threshold):
    if threshold >= 0:
        expected = values >= threshold
        decided = np.abs(values - threshold) > 1e-6
        assert result.dtype == torch.bool
    else:
        scaled = values * 255
        expected = np.floor(scaled).astype(np.uint8)
        decided = (np.abs(scaled - np.round(scaled)) > 1e-4) | (values == 0)
        assert result.dtype == torch.uint8
    got = result.numpy()
    mismatch = (got != expected) & decided
    first = np.argwhere(mismatch)[:5].tolist()
    assert not mismatch.any(), f"{mismatch.sum()} pixels differ, first at (n, y, x) {first}"
    assert decided.mean() > 0.9  # the comparison is not vacuous


@pytest.mark.parametrize("threshold", [0.5, 0.3, -1])
def test_paste_masks_matches_bruteforce_cpu(threshold):
    gen = torch.Generator().manual_seed(11)
    height, width = 23, 31
    masks, boxes = _random_case(gen, 9, 7, height, width)
    result = paste_masks_in_image(masks, boxes, (height, width), threshold=threshold)
    assert result.shape == (9, height, width)
    values = _reference_values(masks, boxes, height, width, restrict_to_boxes=True)
    _assert_matches(result, values, threshold)
    assert result[3].any()  # the covering box actually pastes something
    assert not result[4].any()


@pytest.mark.parametrize("threshold", [0.5, -1])
def test_paste_masks_whole_image_chunked_path_matches_bruteforce(threshold):
    # The path used on accelerators: all masks sampled over the whole image, in chunks.
    gen = torch.Generator().manual_seed(5)
    height, width = 17, 20
    masks, boxes = _random_case(gen, 7, 6, height, width)
    result = _paste(masks, boxes, height, width, threshold, num_chunks=3, restrict_to_boxes=False)
    values = _reference_values(masks, boxes, height, width, restrict_to_boxes=False)
    _assert_matches(result, values, threshold)


def test_paste_masks_typical_sizes_and_boxes_object():
    class BoxesLike:
        def __init__(self, tensor):
            self.tensor = tensor

    gen = torch.Generator().manual_seed(2)
    masks = torch.rand(5, 28, 28, generator=gen)
    xy = torch.rand(5, 2, generator=gen) * 300
    boxes = torch.cat([xy, xy + 20 + torch.rand(5, 2, generator=gen) * 200], dim=1)
    direct = paste_masks_in_image(masks, boxes, (480, 640))
    assert direct.shape == (5, 480, 640) and direct.dtype == torch.bool
    assert torch.equal(paste_masks_in_image(masks, BoxesLike(boxes), (480, 640)), direct)
    # Nothing is pasted outside the boxes (grown by one pixel).
    for m, (x0, y0, x1, y1) in zip(direct, boxes.tolist()):
        ys, xs = torch.nonzero(m, as_tuple=True)
        assert xs.min() >= math.floor(x0) - 1 and xs.max() < math.ceil(x1) + 1
        assert ys.min() >= math.floor(y0) - 1 and ys.max() < math.ceil(y1) + 1


def test_paste_full_mask_fills_integer_box():
    masks = torch.ones(1, 28, 28)
    boxes = torch.tensor([[2.0, 3.0, 10.0, 7.0]])
    result = paste_masks_in_image(masks, boxes, (12, 14))
    expected = torch.zeros(12, 14, dtype=torch.bool)
    expected[3:7, 2:10] = True
    assert torch.equal(result[0], expected)


def test_paste_masks_empty():
    out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6))
    assert out.shape == (0, 5, 6) and out.dtype == torch.bool
    out = paste_masks_in_image(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 6), threshold=-1)
    assert out.dtype == torch.uint8


def test_paste_masks_mismatched_boxes():
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        paste_masks_in_image(torch.zeros(2, 4, 4), torch.zeros(3, 4), (5, 5))
    with pytest.raises(TypeError, match="tensor"):
        paste_masks_in_image(torch.zeros(2, 4, 4), [[0, 0, 1, 1]] * 2, (5, 5))
