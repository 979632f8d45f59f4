"""DefaultAnchorGenerator against torchvision's AnchorGenerator and a brute-force loop.

torchvision differs in two documented ways: it rounds cell anchors to integers and orders the
cell anchors of one location ratio-major (ours, like Detectron2, is size-major). The exact
comparison therefore uses aspect ratios 1/4, 1, 4 and sizes for which every half-width is an
integer (rounding is then a no-op), and permutes torchvision's cell anchors within each location
to size-major. The usual ratios (0.5, 1, 2) are checked exactly against a plain-Python loop
that follows FACTS.md, and against torchvision within its rounding (0.5 px).
"""

import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from segtron.config import get_cfg
from segtron.layers import ShapeSpec
from segtron.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    DefaultAnchorGenerator,
    build_anchor_generator,
)
from segtron.structures import Boxes


def _brute_force_anchors(sizes, ratios, stride, height, width, offset):
    """FACTS.md, literally: for each location (row-major), for each size, for each ratio."""
    rows = []
    for y in range(height):
        for x in range(width):
            sx = x * stride + offset * stride
            sy = y * stride + offset * stride
            for s in sizes:
                for a in ratios:
                    w = math.sqrt(s * s / a)
                    h = a * w
                    rows.append([sx - w / 2, sy - h / 2, sx + w / 2, sy + h / 2])
    return torch.tensor(rows, dtype=torch.float64)


def _tv_anchors(sizes_per_level, ratios_per_level, grid_sizes, image_hw):
    tv = TVAnchorGenerator(
        sizes=tuple(tuple(s) for s in sizes_per_level),
        aspect_ratios=tuple(tuple(r) for r in ratios_per_level),
    )
    image = torch.zeros(1, 3, *image_hw)
    feats = [torch.zeros(1, 1, h, w) for h, w in grid_sizes]
    all_anchors = tv(TVImageList(image, [image_hw]), feats)[0]
    counts = [
        h * w * len(s) * len(r)
        for (h, w), s, r in zip(grid_sizes, sizes_per_level, ratios_per_level)
    ]
    return list(all_anchors.split(counts))


def test_exact_match_with_torchvision_after_reordering():
    sizes = [[16, 32], [64, 128]]
    ratios = [[0.25, 1.0, 4.0]] * 2
    grid_sizes = [(6, 8), (3, 4)]  # non-square grids catch a row/column mix-up
    image_hw = (24, 32)  # torchvision derives strides 4 and 8 from this
    ours = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=[4, 8])
    out = ours([torch.zeros(1, 1, h, w) for h, w in grid_sizes])
    tv = _tv_anchors(sizes, ratios, grid_sizes, image_hw)
    for level, ((h, w), s) in enumerate(zip(grid_sizes, sizes)):
        num_s, num_r = len(s), len(ratios[level])
        # torchvision row within a location: ratio r, size i -> r * num_s + i; ours i * num_r + r.
        tv_size_major = tv[level].reshape(h * w, num_r, num_s, 4).transpose(1, 2).reshape(-1, 4)
        assert isinstance(out[level], Boxes)
        assert torch.equal(out[level].tensor, tv_size_major)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_standard_ratios_match_brute_force_and_torchvision(offset):
    sizes = [[32], [64], [128]]
    ratios = [[0.5, 1.0, 2.0]]
    strides = [4, 8, 16]
    grid_sizes = [(8, 12), (4, 6), (2, 3)]  # an image of 32 x 48
    gen = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=ratios, strides=strides, offset=offset)
    out = gen([torch.zeros(2, 8, h, w) for h, w in grid_sizes])
    tv = _tv_anchors(sizes, ratios * 3, grid_sizes, (32, 48))
    for level, ((h, w), stride) in enumerate(zip(grid_sizes, strides)):
        expected = _brute_force_anchors(sizes[level], ratios[0], stride, h, w, offset)
        assert out[level].tensor.dtype == torch.float32
        torch.testing.assert_close(out[level].tensor.double(), expected, rtol=0, atol=1e-5)
        if offset == 0.0:  # torchvision has no offset; it rounds cell anchors (<= 0.5 px)
            assert (out[level].tensor - tv[level]).abs().max() <= 0.5


def test_location_major_order_hand_computed():
    # size 8: ratio 1 -> 8 x 8, ratio 4 -> w = sqrt(64 / 4) = 4, h = 16. Stride 10, 2x2 grid.
    gen = DefaultAnchorGenerator(sizes=[8], aspect_ratios=[1.0, 4.0], strides=[10])
    (anchors,) = gen([torch.zeros(1, 1, 2, 2)])
    expected = torch.tensor(
        [
            [-4, -4, 4, 4], [-2, -8, 2, 8],  # (x=0, y=0)
            [6, -4, 14, 4], [8, -8, 12, 8],  # (x=10, y=0)
            [-4, 6, 4, 14], [-2, 2, 2, 18],  # (x=0, y=10)
            [6, 6, 14, 14], [8, 2, 12, 18],  # (x=10, y=10)
        ],
        dtype=torch.float32,
    )
    assert torch.equal(anchors.tensor, expected)


def test_offset_centres_anchors_in_cells():
    gen = DefaultAnchorGenerator(sizes=[16], aspect_ratios=[1.0], strides=[16], offset=0.5)
    (anchors,) = gen([torch.zeros(1, 1, 1, 2)])
    assert torch.equal(anchors.tensor, torch.tensor([[0.0, 0, 16, 16], [16, 0, 32, 16]]))


def test_from_config_and_broadcasting():
    cfg = get_cfg()  # SIZES [[32, 64, 128, 256, 512]], ASPECT_RATIOS [[0.5, 1, 2]]
    shapes = [ShapeSpec(channels=4, stride=s) for s in (4, 8)]
    gen = build_anchor_generator(cfg, shapes)
    assert isinstance(gen, DefaultAnchorGenerator)
    assert "DefaultAnchorGenerator" in ANCHOR_GENERATOR_REGISTRY
    assert gen.num_anchors == [15, 15] and gen.num_cell_anchors == [15, 15]
    assert gen.strides == [4, 8] and gen.box_dim == 4 and gen.offset == 0.0

    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64]]
    cfg.MODEL.ANCHOR_GENERATOR.OFFSET = 0.5
    gen = DefaultAnchorGenerator(cfg, shapes)
    assert gen.num_anchors == [3, 3] and gen.offset == 0.5
    # A flat list is used for every level, like a list holding one list.
    flat = DefaultAnchorGenerator(sizes=[32, 64], aspect_ratios=[1.0], strides=[4, 8, 16])
    assert flat.num_anchors == [2, 2, 2]


def test_length_mismatch_names_the_key():
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64]]
    shapes = [ShapeSpec(stride=s) for s in (4, 8, 16)]
    with pytest.raises(ValueError, match=r"MODEL\.ANCHOR_GENERATOR\.SIZES"):
        build_anchor_generator(cfg, shapes)
    with pytest.raises(ValueError, match=r"MODEL\.ANCHOR_GENERATOR\.ASPECT_RATIOS"):
        DefaultAnchorGenerator(sizes=[32], aspect_ratios=[[1.0], [2.0]], strides=[4, 8, 16])
    with pytest.raises(ValueError, match="OFFSET"):
        DefaultAnchorGenerator(sizes=[32], aspect_ratios=[1.0], strides=[4], offset=1.0)
    gen = DefaultAnchorGenerator(sizes=[32], aspect_ratios=[1.0], strides=[4, 8])
    with pytest.raises(ValueError, match="2 feature maps"):
        gen([torch.zeros(1, 1, 2, 2)])


def test_cell_anchors_are_non_persistent_buffers():
    gen = DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[0.5, 1, 2]], strides=[4, 8])
    assert len(gen.state_dict()) == 0
    assert len(list(gen.buffers())) == 2
    moved = gen.to("meta")
    assert all(b.device.type == "meta" for b in moved.cell_anchors)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_anchors_match_cpu():
    gen = DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[[0.5, 1, 2]], strides=[4, 8])
    feats = [torch.zeros(1, 1, 9, 13), torch.zeros(1, 1, 5, 7)]
    cpu = gen(feats)
    gen.cuda()
    gpu = gen([f.cuda() for f in feats])
    for a, b in zip(cpu, gpu):
        assert b.device.type == "cuda"
        torch.testing.assert_close(a.tensor, b.tensor.cpu(), rtol=0, atol=1e-5)


def _two_level_generator():
    return DefaultAnchorGenerator(sizes=[[32], [64]], aspect_ratios=[0.5, 1.0, 2.0],
                                  strides=[8, 16])


def test_repeated_sizes_reuse_anchors_and_changes_recompute_them():
    gen = _two_level_generator()
    maps = [torch.zeros(1, 1, 5, 7), torch.zeros(1, 1, 3, 4)]
    first = [b.tensor for b in gen(maps)]
    again = [b.tensor for b in gen(maps)]
    assert all(a is b for a, b in zip(first, again)), "same sizes: the anchors are reused"
    fresh = DefaultAnchorGenerator._grid_anchors(gen, [[5, 7], [3, 4]], [torch.device("cpu")] * 2)
    assert all(torch.equal(a, f) for a, f in zip(first, fresh))

    other = [b.tensor for b in gen([torch.zeros(1, 1, 6, 7), torch.zeros(1, 1, 3, 4)])]
    assert other[0].shape[0] == 6 * 7 * 3 and other[0] is not first[0]

    with torch.no_grad():
        next(iter(gen.cell_anchors)).mul_(2)  # an in-place edit of the cell anchors is seen
    edited = gen(maps)[0].tensor
    assert edited is not first[0]
    assert torch.equal(edited, DefaultAnchorGenerator._grid_anchors(
        gen, [[5, 7], [3, 4]], [torch.device("cpu")] * 2)[0])

    with torch.inference_mode():
        in_inference = gen(maps)[0].tensor
    assert in_inference.is_inference() and not gen(maps)[0].tensor.is_inference()


def test_anchor_cache_is_bounded_and_not_copied():
    import copy
    import pickle

    gen = _two_level_generator()
    for h in range(1, 12):
        gen([torch.zeros(1, 1, h, 4), torch.zeros(1, 1, 2, 2)])
    assert len(gen._anchor_cache._entries) == 8
    assert len(copy.deepcopy(gen)._anchor_cache._entries) == 0
    assert len(pickle.loads(pickle.dumps(gen))._anchor_cache._entries) == 0
