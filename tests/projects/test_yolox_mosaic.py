"""YOLOX's mosaic and mix-up (projects/YOLO/mosaic.py): the four-image canvas, box shifting,
clipping and dropping by hand; the scale/shift crop; the blend; MosaicDataset end to end with a
fixed centre and scale; switching it off (also from a forked worker); seeding; and
MosaicDatasetMapper on both kinds of dict."""

import multiprocessing as mp

import numpy as np
import pytest
import torch
from PIL import Image

from projects.YOLO.mosaic import (
    MosaicDataset,
    MosaicDatasetMapper,
    blend,
    box_keep_mask,
    combine_mosaic,
    scale_shift_crop,
)
from segtron.data.common import DatasetFromList
from segtron.structures import BoxMode

FILL = 114


def _rand_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


class _ArrayLoader:
    """image_loader over in-memory images keyed by file_name (picklable)."""

    def __init__(self, images):
        self.images = images

    def __call__(self, dataset_dict):
        return self.images[dataset_dict["file_name"]].copy()


def _one_image_dataset(image, boxes_xywh, **kwargs):
    """A MosaicDataset over one image (so every tile and the mix-up partner are that image)."""
    h, w = image.shape[:2]
    annos = [
        {"bbox": list(b), "bbox_mode": BoxMode.XYWH_ABS, "category_id": i, "iscrowd": 0,
         "segmentation": [[0, 0, 1, 0, 1, 1]]}
        for i, b in enumerate(boxes_xywh)
    ]
    base = DatasetFromList(
        [{"file_name": "a", "height": h, "width": w, "image_id": 7, "annotations": annos}],
        serialize=False,
    )
    args = dict(
        image_loader=_ArrayLoader({"a": image}), center_range=(1.0, 1.0), scale_range=(1.0, 1.0),
        translate=0.0, mixup_prob=0.0, min_box_size=0.0,
    )
    args.update(kwargs)
    return base, MosaicDataset(base, (32, 48), **args)


# --- pure functions -------------------------------------------------------------------------


def test_combine_mosaic_places_clips_and_drops_by_hand():
    # output (H, W) = (40, 60): canvas 80 x 120, centre (xc, yc) = (50, 30).
    images = [_rand_image(40, 60, 0), _rand_image(20, 30, 1), _rand_image(30, 20, 2),
              _rand_image(40, 40, 3)]
    boxes = [
        np.array([[0, 0, 5, 5], [5, 5, 30, 20], [20, 15, 60, 40]], dtype=float),
        np.array([[0, 0, 30, 20]], dtype=float),
        np.array([[2, 3, 12, 28]], dtype=float),
        np.array([[10, 10, 40, 40]], dtype=float),
    ]
    canvas, placed = combine_mosaic(images, boxes, (50, 30), (40, 60), FILL)
    assert canvas.shape == (80, 120, 3) and canvas.dtype == np.uint8
    # Top-left corners: (50-60, 30-40) = (-10, -10), (50, 10), (30, 30), (50, 30).
    np.testing.assert_array_equal(canvas[0:30, 0:50], images[0][10:40, 10:60])
    np.testing.assert_array_equal(canvas[10:30, 50:80], images[1])
    np.testing.assert_array_equal(canvas[30:60, 30:50], images[2])
    np.testing.assert_array_equal(canvas[30:70, 50:90], images[3])
    assert (canvas[0:10, 50:] == FILL).all()  # above the second image
    assert (canvas[30:, 0:30] == FILL).all()  # left of the third image
    assert (canvas[70:, :] == FILL).all() and (canvas[:, 90:] == FILL).all()

    np.testing.assert_array_equal(
        placed[0],
        [[0, 0, 0, 0],  # (-10, -10, -5, -5): entirely off the canvas, clipped to empty
         [0, 0, 20, 10],  # (-5, -5, 20, 10) clipped
         [10, 5, 50, 30]],
    )
    np.testing.assert_array_equal(placed[1], [[50, 10, 80, 30]])
    np.testing.assert_array_equal(placed[2], [[32, 33, 42, 58]])
    np.testing.assert_array_equal(placed[3], [[60, 40, 90, 70]])

    all_boxes = np.concatenate(placed)
    assert box_keep_mask(all_boxes, 0.0).tolist() == [False, True, True, True, True, True]
    # min size 11: the 20 x 10 and 10 x 25 boxes go too.
    assert box_keep_mask(all_boxes, 11.0).tolist() == [False, False, True, True, False, True]


def test_combine_mosaic_centre_near_the_corner_cuts_the_last_image():
    images = [_rand_image(40, 60, i) for i in range(3)] + [_rand_image(40, 40, 3)]
    boxes = [np.zeros((0, 4))] * 3 + [np.array([[10, 10, 40, 40], [0, 0, 20, 5]], dtype=float)]
    canvas, placed = combine_mosaic(images, boxes, (100, 70), (40, 60), FILL)
    # The last image starts at (100, 70): only its 20 x 10 top-left corner is on the canvas.
    np.testing.assert_array_equal(canvas[70:80, 100:120], images[3][0:10, 0:20])
    np.testing.assert_array_equal(placed[3], [[110, 80, 120, 80], [100, 70, 120, 75]])
    assert box_keep_mask(placed[3], 0.0).tolist() == [False, True]


def test_scale_shift_crop_by_hand():
    canvas = np.full((64, 64, 3), 200, dtype=np.uint8)
    boxes = np.array([[0, 0, 64, 64], [32, 32, 48, 48]], dtype=float)
    # Output 32 x 32; scale 0.25 about the canvas centre: the canvas covers [8, 24] x [8, 24].
    image, out = scale_shift_crop(canvas, boxes, 0.25, (0, 0), (32, 32), FILL)
    assert image.shape == (32, 32, 3)
    assert (image[8:24, 8:24] == 200).all()
    mask = np.ones((32, 32), bool)
    mask[8:24, 8:24] = False
    assert (image[mask] == FILL).all()
    np.testing.assert_allclose(out, [[8, 8, 24, 24], [16, 16, 20, 20]])
    # Scale 0.5 and a shift (4, -2): x -> 0.5 x + 4, y -> 0.5 y - 2; clipped to the window.
    _, out = scale_shift_crop(canvas, boxes, 0.5, (4, -2), (32, 32), FILL)
    np.testing.assert_allclose(out, [[4, 0, 32, 30], [20, 14, 28, 22]])
    # Scale 1, no shift: exactly the central window.
    rand = _rand_image(64, 64)
    image, _ = scale_shift_crop(rand, boxes, 1.0, (0, 0), (32, 32), FILL)
    np.testing.assert_array_equal(image, rand[16:48, 16:48])


def test_blend_factor():
    a = np.full((2, 2, 3), 100, np.uint8)
    b = np.full((2, 2, 3), 200, np.uint8)
    assert (blend(a, b, 0.25) == 125).all()
    assert (blend(a, b, 0.5) == 150).all()
    assert (blend(a, b, 0.0) == 100).all()


# --- MosaicDataset --------------------------------------------------------------------------


def _tiled(image, y0, x0, h, w):
    """The h x w window at (x0, y0) of ``image`` repeated 2 x 2."""
    big = np.tile(image, (2, 2, 1))
    return big[y0 : y0 + h, x0 : x0 + w]


# Output (32, 48), one 32 x 48 image (after fitting), centre (48, 32), scale 1, no shift: tile
# corners (0, 0), (48, 0), (0, 32), (48, 32) fill the 64 x 96 canvas; the window is
# canvas[16:48, 24:72], i.e. a shift of (-24, -16). The box (4, 6, 20, 30) of each tile:
#   tile 0 (4, 6, 20, 30)   -> (-20, -10, -4, 14): left of the window, dropped
#   tile 1 (52, 6, 68, 30)  -> (28, -10, 44, 14)  -> clipped (28, 0, 44, 14)
#   tile 2 (4, 38, 20, 62)  -> (-20, 22, -4, 46): dropped
#   tile 3 (52, 38, 68, 62) -> (28, 22, 44, 46)   -> clipped (28, 22, 44, 32)
# The second box (30, 2, 46, 10) of each tile:
#   tile 0 -> (6, -14, 22, -6): above the window, dropped; tile 1 -> (54, -14, ...): dropped
#   tile 2 (30, 34, 46, 42) -> (6, 18, 22, 26); tile 3 (78, 34, 94, 42) -> (54, 18, 70, 26)
#   -> clipped (54, 18, 48, 26): empty, dropped
EXPECTED_BOXES = [[28, 0, 44, 14], [6, 18, 22, 26], [28, 22, 44, 32]]
EXPECTED_CLASSES = [0, 1, 0]


@pytest.mark.parametrize("scale", [1, 2])
def test_mosaic_dataset_boxes_by_hand(scale):
    # scale 2: a 64 x 96 image, fitted (halved) to 32 x 48, gives the same boxes.
    image = _rand_image(32 * scale, 48 * scale)
    boxes = [[4 * scale, 6 * scale, 16 * scale, 24 * scale], [30 * scale, 2 * scale, 16 * scale,
                                                              8 * scale]]
    _, ds = _one_image_dataset(image, boxes)
    out = ds[0]
    assert set(out) == {"image", "height", "width", "annotations", "mosaic_file_names"}
    assert (out["height"], out["width"]) == (32, 48)
    assert out["image"].shape == (32, 48, 3) and out["image"].dtype == np.uint8
    assert out["mosaic_file_names"] == ["a"] * 4
    annos = out["annotations"]
    np.testing.assert_allclose([a["bbox"] for a in annos], EXPECTED_BOXES, atol=1e-9)
    assert [a["category_id"] for a in annos] == EXPECTED_CLASSES
    for a in annos:
        assert a["bbox_mode"] == BoxMode.XYXY_ABS and a["iscrowd"] == 0
        assert "segmentation" not in a  # not transformed, so not kept
    if scale == 1:
        np.testing.assert_array_equal(out["image"], _tiled(image, 16, 24, 32, 48))


def test_mosaic_dataset_min_box_size():
    image = _rand_image(32, 48)
    _, ds = _one_image_dataset(image, [[4, 6, 16, 24], [30, 2, 16, 8]], min_box_size=10.0)
    # (28, 22, 44, 32) is 10 px high: kept; (6, 18, 22, 26) is 8 px high: dropped.
    np.testing.assert_allclose(
        [a["bbox"] for a in ds[0]["annotations"]], [[28, 0, 44, 14], [28, 22, 44, 32]]
    )


def test_mixup_concatenates_boxes_and_blends_pixels():
    image = _rand_image(32, 48)
    boxes = [[4, 6, 16, 24], [30, 2, 16, 8]]
    _, ds = _one_image_dataset(
        image, boxes, mixup_prob=1.0, mixup_scale=(1.0, 1.0), mixup_weight=0.25
    )
    out = ds[0]
    # The partner is the same 32 x 48 image at offset (0, 0): its boxes, in XYXY, follow the
    # mosaic's.
    np.testing.assert_allclose(
        [a["bbox"] for a in out["annotations"]],
        EXPECTED_BOXES + [[4, 6, 20, 30], [30, 2, 46, 10]],
    )
    assert [a["category_id"] for a in out["annotations"]] == EXPECTED_CLASSES + [0, 1]
    mosaic = _tiled(image, 16, 24, 32, 48).astype(float)
    expected = np.rint(0.75 * mosaic + 0.25 * image.astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(out["image"], expected)
    assert out["mosaic_file_names"] == ["a"] * 5


def test_mixup_partner_scaled_and_placed_inside():
    image = _rand_image(32, 48)
    _, ds = _one_image_dataset(image, [[4, 6, 16, 24]], mixup_prob=1.0, mixup_scale=(0.5, 0.5))
    for seed in range(5):
        np.random.seed(seed)
        bbox = np.array(ds[0]["annotations"][-1]["bbox"])
        # The 16 x 24 half-size partner lies inside the 32 x 48 output: its box is the halved
        # box (2, 3, 10, 15) moved by an offset in [0, 24] x [0, 16].
        dx, dy = bbox[0] - 2, bbox[1] - 3
        np.testing.assert_allclose(bbox, [2 + dx, 3 + dy, 10 + dx, 15 + dy])
        assert 0 <= dx <= 24 and 0 <= dy <= 16 and dx == int(dx) and dy == int(dy)


def test_disabled_returns_the_plain_sample():
    base, ds = _one_image_dataset(_rand_image(32, 48), [[4, 6, 16, 24]])
    assert ds.enabled
    ds.enable(False)
    assert not ds.enabled
    assert ds[0] == base[0]
    ds.enable(True)
    assert "image" in ds[0]
    _, never = _one_image_dataset(_rand_image(32, 48), [[4, 6, 16, 24]], mosaic_prob=0.0)
    assert never[0] == base[0]


def _report_enabled(ds, go, queue):
    # Generous: on a busy machine the parent may be descheduled between start() and set().
    queue.put(ds.enabled if go.wait(60) else "no go from the parent within 60 s")


def test_enable_reaches_a_forked_worker():
    # DataLoader workers are forked once; the switch must reach them after the fork.
    _, ds = _one_image_dataset(_rand_image(32, 48), [[4, 6, 16, 24]])
    ctx = mp.get_context("fork")
    go, queue = ctx.Event(), ctx.Queue()
    worker = ctx.Process(target=_report_enabled, args=(ds, go, queue))
    worker.start()
    try:
        ds.enable(False)
        go.set()
        assert queue.get(timeout=90) is False
    finally:
        worker.join(20)


def _random_dataset(n=4, **kwargs):
    images, dicts = {}, []
    rng = np.random.default_rng(1)
    for i in range(n):
        h, w = int(rng.integers(20, 90)), int(rng.integers(20, 90))
        images[f"im{i}"] = _rand_image(h, w, i)
        annos = []
        for _ in range(3):
            x0, y0 = rng.uniform(0, w - 8), rng.uniform(0, h - 8)
            annos.append({"bbox": [x0, y0, rng.uniform(4, w - x0), rng.uniform(4, h - y0)],
                          "bbox_mode": BoxMode.XYWH_ABS, "category_id": int(rng.integers(3))})
        dicts.append({"file_name": f"im{i}", "height": h, "width": w, "annotations": annos})
    base = DatasetFromList(dicts, serialize=False)
    return MosaicDataset(base, (48, 64), image_loader=_ArrayLoader(images), **kwargs)


def test_seeded_runs_repeat_and_outputs_stay_valid():
    ds = _random_dataset()
    np.random.seed(3)
    first = [ds[i % 4] for i in range(8)]
    np.random.seed(3)
    second = [ds[i % 4] for i in range(8)]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a["image"], b["image"])
        assert a["annotations"] == b["annotations"]
    for out in first:
        assert out["image"].shape == (48, 64, 3)
        boxes = np.array([a["bbox"] for a in out["annotations"]]).reshape(-1, 4)
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= 64).all()
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= 48).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 2.0).all()  # default min_box_size


class _Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([])


def test_mosaic_dataset_errors():
    with pytest.raises(ValueError, match="map-style"):
        MosaicDataset(_Stream(), (32, 32))
    with pytest.raises(ValueError, match="output_size"):
        MosaicDataset(DatasetFromList([{}], serialize=False), (0, 32))
    with pytest.raises(ValueError, match="scale_range"):
        _random_dataset(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="mixup_prob"):
        _random_dataset(mixup_prob=1.5)
    base = DatasetFromList(
        [{"file_name": "a", "height": 8, "width": 8,
          "annotations": [{"bbox": [0, 0, 4, 4], "category_id": 0}]}],
        serialize=False,
    )
    with pytest.raises(ValueError, match="bbox_mode"):
        MosaicDataset(base, (8, 8), image_loader=_ArrayLoader({"a": _rand_image(8, 8)}))[0]
    bad = MosaicDataset(base, (8, 8), image_loader=lambda d: np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        bad[0]


# --- the mapper -----------------------------------------------------------------------------


def test_mapper_maps_mosaic_and_plain_dicts(tmp_path):
    rgb = _rand_image(32, 48)
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    annos = [
        {"bbox": [4, 6, 16, 24], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
        {"bbox": [30, 2, 16, 8], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1},
    ]
    base = DatasetFromList(
        [{"file_name": str(path), "height": 32, "width": 48, "annotations": annos}],
        serialize=False,
    )
    # Default loader: read_image(file_name, "BGR").
    ds = MosaicDataset(base, (32, 48), image_format="BGR", center_range=(1.0, 1.0),
                       scale_range=(1.0, 1.0), translate=0.0, mixup_prob=0.0, min_box_size=0.0)
    mapper = MosaicDatasetMapper(is_train=True, augmentations=[], image_format="BGR")

    sample = ds[0]
    mapped = mapper(sample)
    assert "image" in sample and isinstance(sample["image"], np.ndarray)  # input untouched
    assert mapped["image"].shape == (3, 32, 48) and mapped["image"].dtype == torch.uint8
    bgr = rgb[:, :, ::-1]
    np.testing.assert_array_equal(mapped["image"].permute(1, 2, 0).numpy(),
                                  _tiled(bgr, 16, 24, 32, 48))
    # The crowd box (the second) is dropped by the mapper, as DatasetMapper does.
    torch.testing.assert_close(
        mapped["instances"].gt_boxes.tensor,
        torch.tensor([[28.0, 0, 44, 14], [28, 22, 44, 32]]),
    )
    assert mapped["instances"].gt_classes.tolist() == [0, 0]

    ds.enable(False)
    plain = mapper(ds[0])  # the plain dict: DatasetMapper's own path, reading the file
    np.testing.assert_array_equal(plain["image"].permute(1, 2, 0).numpy(), bgr)
    torch.testing.assert_close(plain["instances"].gt_boxes.tensor,
                               torch.tensor([[4.0, 6, 20, 30]]))

    test_mapper = MosaicDatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    assert "annotations" not in test_mapper(sample)
