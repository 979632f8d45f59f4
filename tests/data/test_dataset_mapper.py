"""Tests for segtron.data.DatasetMapper on a tiny dataset written to tmp_path."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from segtron.config import get_cfg
from segtron.data import transforms as T
from segtron.data.dataset_mapper import DatasetMapper
from segtron.structures import BitMasks, BoxMode, PolygonMasks


def _make_record(tmp_path, name, height, width, with_sem_seg=False):
    """An image with two rectangles (and a triangle), polygons + XYWH boxes."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    path = tmp_path / f"{name}.png"
    Image.fromarray(image).save(path)
    annos = [
        {
            "bbox": [4, 6, 16, 10],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 0,
            "segmentation": [[4, 6, 20, 6, 20, 16, 4, 16]],
            "iscrowd": 0,
        },
        {
            "bbox": [22, 20, 12, 12],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "segmentation": [[22, 20, 34, 20, 28, 32]],
            "iscrowd": 0,
        },
        {  # crowd annotations never become instances
            "bbox": [1, 1, 3, 3],
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": 1,
            "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]],
            "iscrowd": 1,
        },
    ]
    record = {
        "file_name": str(path),
        "height": height,
        "width": width,
        "image_id": name,
        "annotations": annos,
    }
    if with_sem_seg:
        seg = np.zeros((height, width), dtype=np.uint8)
        seg[6:16, 4:20] = 3
        seg_path = tmp_path / f"{name}_seg.png"
        Image.fromarray(seg).save(seg_path)
        record["sem_seg_file_name"] = str(seg_path)
    return record


def _mask_boxes(masks: torch.Tensor) -> np.ndarray:
    boxes = []
    for m in masks.numpy():
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return np.array(boxes, dtype=np.float32)


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_mapper_train_resize(tmp_path, mask_format):
    record = _make_record(tmp_path, "img0", 40, 60)
    original = copy.deepcopy(record)
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge(80, 1000)],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format=mask_format,
    )
    out = mapper(record)
    assert record == original  # the input dict is not modified

    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape == (3, 80, 120)  # 40x60 scaled by 2
    assert (out["height"], out["width"], out["image_id"]) == (40, 60, "img0")
    assert out["file_name"] == record["file_name"] and "annotations" not in out

    inst = out["instances"]
    assert inst.image_size == (80, 120)
    assert inst.gt_classes.tolist() == [0, 1]
    assert isinstance(inst.gt_masks, PolygonMasks if mask_format == "polygon" else BitMasks)
    boxes = inst.gt_boxes.tensor.numpy()
    np.testing.assert_allclose(boxes, [[8, 12, 40, 32], [44, 40, 68, 64]])
    # gt_boxes agree with the tight boxes of the masks (within rasterisation, 1 px).
    masks = BitMasks.from_polygon_masks(inst.gt_masks, 80, 120) if mask_format == "polygon" \
        else inst.gt_masks
    np.testing.assert_allclose(_mask_boxes(masks.tensor), boxes, atol=1.0)
    np.testing.assert_allclose(inst.gt_masks.get_bounding_boxes().tensor.numpy(), boxes, atol=1.0)


def test_mapper_flip_and_image_content(tmp_path):
    record = _make_record(tmp_path, "img1", 30, 40)
    mapper = DatasetMapper(
        is_train=True, augmentations=[T.RandomFlip(prob=1.0)], image_format="RGB"
    )
    out = mapper(record)
    raw = np.asarray(Image.open(record["file_name"]))
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), raw[:, ::-1])
    np.testing.assert_allclose(out["instances"].gt_boxes.tensor[0].numpy(), [20, 6, 36, 16])
    assert not out["instances"].has("gt_masks")  # use_instance_mask=False drops segmentations


def test_mapper_test_mode_and_sem_seg(tmp_path):
    record = _make_record(tmp_path, "img2", 40, 60, with_sem_seg=True)
    mapper = DatasetMapper(
        is_train=False, augmentations=[T.ResizeShortestEdge(20, 1000)], image_format="BGR"
    )
    out = mapper(record)
    assert out["image"].shape == (3, 20, 30)
    assert "instances" not in out and "annotations" not in out
    assert "sem_seg_file_name" not in out
    sem_seg = out["sem_seg"]
    assert sem_seg.dtype == torch.int64 and sem_seg.shape == (20, 30)
    assert set(torch.unique(sem_seg).tolist()) == {0, 3}


def test_mapper_size_mismatch(tmp_path):
    record = _make_record(tmp_path, "img3", 40, 60)
    record["height"] = 41
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    with pytest.raises(ValueError, match="img3.png"):
        mapper(record)


def test_mapper_label_png_of_another_size_names_both_files(tmp_path):
    record = _make_record(tmp_path, "img4", 40, 60, with_sem_seg=True)
    Image.fromarray(np.zeros((40, 50), dtype=np.uint8)).save(record["sem_seg_file_name"])
    mapper = DatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    with pytest.raises(ValueError, match=r"img4.*50x40.*img4.png is 60x40"):
        mapper(record)


def test_mapper_from_config(tmp_path):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (80,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.MODEL.MASK_ON = True
    mapper = DatasetMapper(cfg, True)
    names = [type(a).__name__ for a in mapper.augmentations.augs]
    assert names == ["ResizeShortestEdge", "RandomFlip"]
    assert mapper.use_instance_mask and not mapper.recompute_boxes
    out = mapper(_make_record(tmp_path, "img4", 40, 60))
    assert out["image"].shape == (3, 80, 120) and len(out["instances"]) == 2

    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = [30, 30]
    mapper = DatasetMapper(cfg, is_train=True)
    assert type(mapper.augmentations.augs[0]).__name__ == "RandomCrop"
    assert mapper.recompute_boxes
    out = mapper(_make_record(tmp_path, "img5", 40, 60))
    inst = out["instances"]
    if len(inst):
        np.testing.assert_allclose(
            inst.gt_boxes.tensor.numpy(), inst.gt_masks.get_bounding_boxes().tensor.numpy()
        )

    test_mapper = DatasetMapper(cfg, False)  # no crop at test time
    assert [type(a).__name__ for a in test_mapper.augmentations.augs] == ["ResizeShortestEdge"]
    with pytest.raises(ValueError, match="recompute_boxes"):
        DatasetMapper(True, augmentations=[], image_format="BGR", recompute_boxes=True)


class _RecordBoxes(T.Augmentation):
    """Records the boxes an augmentation is given (and changes nothing)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def get_transform(self, image, boxes):
        self.seen.append(None if boxes is None else boxes.copy())
        return T.NoOpTransform()


def test_mapper_gives_augmentations_the_non_crowd_boxes(tmp_path):
    """Box-aware augmentations (Detectron2's MinIoURandomCrop, SSD's crop) get the non-crowd
    annotations' boxes in XYXY_ABS; a dict without annotations gives None."""
    record = _make_record(tmp_path, "boxes", 40, 50)
    recorder = _RecordBoxes()
    mapper = DatasetMapper(is_train=True, augmentations=[recorder], image_format="RGB")
    mapper(copy.deepcopy(record))
    np.testing.assert_allclose(recorder.seen[-1], [[4, 6, 20, 16], [22, 20, 34, 32]])
    record.pop("annotations")
    DatasetMapper(is_train=False, augmentations=[recorder], image_format="RGB")(record)
    assert recorder.seen[-1] is None


def test_min_iou_random_crop_runs_in_the_stock_mapper(tmp_path):
    """Detectron2's MinIoURandomCrop, a no-op without boxes, now crops: over seeds some
    outputs are smaller than the 40x50 image, and the kept boxes lie inside them."""
    record = _make_record(tmp_path, "boxes", 40, 50)
    mapper = DatasetMapper(is_train=True, augmentations=[T.MinIoURandomCrop()], image_format="RGB")
    cropped = 0
    for seed in range(30):
        np.random.seed(seed)
        out = mapper(copy.deepcopy(record))
        height, width = out["image"].shape[-2:]
        cropped += (height, width) != (record["height"], record["width"])
        boxes = out["instances"].gt_boxes.tensor
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert cropped > 0


# ----------------------------------------------------------------------------- bad annotations


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_mapper_non_finite_box_fails_naming_the_file(tmp_path, value):
    """Not silently dropped (NaN) or turned into a full-width box (Infinity)."""
    record = _make_record(tmp_path, "nanbox", 40, 50)
    record["annotations"][1]["bbox"][2] = value
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    with pytest.raises(ValueError, match=r"nanbox\.png.*annotation #1.*NaN or infinite"):
        mapper(record)
    mapper = DatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    assert "instances" not in mapper(record)  # inference does not use the annotations


def test_mapper_mask_on_with_a_box_only_annotation(tmp_path):
    record = _make_record(tmp_path, "boxonly", 40, 50)
    del record["annotations"][0]["segmentation"]
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR",
                           use_instance_mask=True)
    with pytest.raises(ValueError, match=r"boxonly\.png.*annotation #0.*'segmentation'.*"
                                         r"MODEL\.MASK_ON False"):
        mapper(record)
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    assert len(mapper(record)["instances"]) == 2  # boxes alone are fine without masks


def test_mapper_keypoints_on_without_keypoints(tmp_path):
    record = _make_record(tmp_path, "nokps", 40, 50)
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR",
                           use_keypoint=True)
    with pytest.raises(ValueError, match=r"nokps\.png.*'keypoints'.*MODEL\.KEYPOINT_ON False"):
        mapper(record)


def test_mapper_reads_16bit_label_map_as_class_ids(tmp_path):
    import cv2

    record = _make_record(tmp_path, "deeplabels", 20, 30, with_sem_seg=True)
    labels = np.zeros((20, 30), dtype=np.uint16)
    labels[5:10, 5:10] = 4
    assert cv2.imwrite(record["sem_seg_file_name"], labels)
    out = DatasetMapper(is_train=False, augmentations=[], image_format="BGR")(record)
    assert out["sem_seg"][5:10, 5:10].eq(4).all() and int(out["sem_seg"].sum()) == 4 * 25
