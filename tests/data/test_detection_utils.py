"""Tests for segtron.data.detection_utils: image reading, annotation transforms, Instances."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from segtron.config import get_cfg
from segtron.data import detection_utils as utils
from segtron.data import transforms as T
from segtron.data.catalog import MetadataCatalog
from segtron.structures import (
    BitMasks,
    Boxes,
    BoxMode,
    Instances,
    PolygonMasks,
    polygons_to_bitmask,
)


# ----------------------------------------------------------------------------- reading images


def _write_rgb(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path)
    return str(path)


def test_read_image_formats(tmp_path):
    rgb = np.zeros((6, 10, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red channel
    rgb[..., 2] = 10
    path = _write_rgb(tmp_path / "a.png", rgb)

    assert np.array_equal(utils.read_image(path, "RGB"), rgb)
    bgr = utils.read_image(path, "BGR")
    assert bgr.shape == (6, 10, 3) and bgr.dtype == np.uint8
    assert np.array_equal(bgr, rgb[:, :, ::-1])
    gray = utils.read_image(path, "L")
    assert gray.shape == (6, 10, 1)
    assert np.array_equal(utils.read_image(path), rgb)  # format=None keeps the file's mode
    yuv = utils.read_image(path, "YUV-BT.601")
    assert yuv.shape == (6, 10, 3) and 0.0 <= yuv[..., 0].min() <= yuv[..., 0].max() <= 1.0
    back = utils.convert_image_to_rgb(yuv, "YUV-BT.601")
    np.testing.assert_allclose(back, rgb, atol=1.0)
    from_tensor = utils.convert_image_to_rgb(torch.from_numpy(bgr.copy()), "BGR")
    np.testing.assert_array_equal(from_tensor, rgb)
    assert utils.convert_image_to_rgb(gray, "L").shape == (6, 10, 3)


def test_read_image_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "img.jpg"
    with pytest.raises(FileNotFoundError, match="img.jpg"):
        utils.read_image(str(missing), "BGR")


def test_read_image_corrupt_png_names_path(tmp_path):
    good = tmp_path / "good.png"
    _write_rgb(good, np.full((20, 20, 3), 128))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])  # truncated: header only
    with pytest.raises(ValueError, match="cannot decode image .*corrupt.png"):
        utils.read_image(str(corrupt), "BGR")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ValueError, match="garbage.png"):
        utils.read_image(str(garbage))


def test_read_image_applies_exif_orientation(tmp_path):
    # Stored pixels: 32 wide x 16 high, left half red, right half blue.
    stored = np.zeros((16, 32, 3), dtype=np.uint8)
    stored[:, :16] = (255, 0, 0)
    stored[:, 16:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)

    img = utils.read_image(str(path), "RGB")
    assert img.shape == (32, 16, 3)  # upright: now 16 wide x 32 high
    # A clockwise rotation moves the stored left edge to the top.
    assert img[4, 8, 0] > 200 and img[4, 8, 2] < 60
    assert img[28, 8, 2] > 200 and img[28, 8, 0] < 60

    plain = tmp_path / "plain.jpg"
    Image.fromarray(stored).save(plain, quality=95)
    assert utils.read_image(str(plain), "RGB").shape == (16, 32, 3)


def test_check_image_size():
    image = np.zeros((10, 20, 3), dtype=np.uint8)
    d = {"file_name": "x/y.jpg"}
    utils.check_image_size(d, image)
    assert (d["height"], d["width"]) == (10, 20)
    with pytest.raises(utils.SizeMismatchError, match=r"y\.jpg.*\(20, 10\).*\(21, 10\)"):
        utils.check_image_size({"file_name": "x/y.jpg", "height": 10, "width": 21}, image)
    assert issubclass(utils.SizeMismatchError, ValueError)


# ----------------------------------------------------------------------------- annotations


def _square_anno(x0, y0, x1, y1, category_id=0):
    return {
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": category_id,
        "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
    }


def test_transform_instance_annotations_hflip():
    width, height = 100, 50
    anno = _square_anno(10, 5, 30, 25)
    anno["keypoints"] = [12, 6, 2, 28, 20, 1, 0, 0, 0]
    tfm = T.TransformList([T.HFlipTransform(width)])
    out = utils.transform_instance_annotations(
        anno, tfm, (height, width), keypoint_hflip_indices=[1, 0, 2]
    )
    assert out["bbox_mode"] == BoxMode.XYXY_ABS
    np.testing.assert_allclose(out["bbox"], [70, 5, 90, 25])  # x -> W - x
    poly = out["segmentation"][0].reshape(-1, 2)
    np.testing.assert_allclose(sorted(set(poly[:, 0])), [70, 90])
    kps = out["keypoints"]
    assert kps.shape == (3, 3)
    # Flipped coordinates, then left/right swapped by the flip indices.
    np.testing.assert_allclose(kps[0], [72, 20, 1])
    np.testing.assert_allclose(kps[1], [88, 6, 2])
    np.testing.assert_allclose(kps[2], [0, 0, 0])

    with pytest.raises(ValueError, match="flip indices"):
        utils.transform_instance_annotations(
            {**_square_anno(1, 1, 5, 5), "keypoints": [1, 1, 2]}, tfm, (height, width)
        )


def test_transform_instance_annotations_resize_and_clip():
    anno = _square_anno(10, 10, 40, 30)
    anno["bbox"] = [10, 10, 50, 20]  # XYWH: x1 = 60, the image's right edge
    tfm = [T.ResizeTransform(50, 60, 100, 120)]  # (h, w) -> (2h, 2w), a list of transforms
    out = utils.transform_instance_annotations(anno, tfm, (100, 120))
    np.testing.assert_allclose(out["bbox"], [20, 20, 120, 60])
    np.testing.assert_allclose(out["segmentation"][0], [20, 20, 80, 20, 80, 60, 20, 60])

    anno = _square_anno(0, 0, 10, 10)
    anno["bbox"] = [-5, -5, 80, 80]
    out = utils.transform_instance_annotations(anno, tfm, (100, 120))
    np.testing.assert_allclose(out["bbox"], [0, 0, 120, 100])


def test_transform_instance_annotations_rle():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:8, 3:10] = 1
    rle = mask_util.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")  # as stored in JSON
    anno = {"bbox": [3, 2, 7, 6], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
            "segmentation": rle}
    out = utils.transform_instance_annotations(anno, [T.HFlipTransform(30)], (20, 30))
    assert isinstance(out["segmentation"], np.ndarray)
    np.testing.assert_array_equal(out["segmentation"], mask[:, ::-1])
    with pytest.raises(ValueError, match="segmentation"):
        utils.transform_instance_annotations(
            {**_square_anno(1, 1, 5, 5), "segmentation": 3.0}, [T.HFlipTransform(30)], (20, 30)
        )


def test_annotations_to_instances_polygon_and_bitmask_agree():
    h, w = 40, 50
    annos = [_square_anno(5, 5, 20, 30, 0), _square_anno(22, 3, 45, 18, 2)]
    annos[1]["segmentation"] = [[22, 3, 45, 3, 33, 18]]  # a triangle
    poly = utils.annotations_to_instances(annos, (h, w))
    bit = utils.annotations_to_instances(annos, (h, w), mask_format="bitmask")
    assert isinstance(poly.gt_masks, PolygonMasks) and isinstance(bit.gt_masks, BitMasks)
    assert poly.gt_classes.tolist() == [0, 2] and poly.gt_classes.dtype == torch.int64
    np.testing.assert_allclose(poly.gt_boxes.tensor.numpy(), [[5, 5, 20, 30], [22, 3, 45, 18]])
    raster = np.stack([polygons_to_bitmask(a["segmentation"], h, w) for a in annos])
    np.testing.assert_array_equal(bit.gt_masks.tensor.numpy(), raster)
    assert bit.gt_masks.tensor.shape == (2, h, w)

    # The same masks given as RLE dicts and as arrays.
    rle_annos = [dict(a) for a in annos]
    for a, m in zip(rle_annos, raster):
        a["segmentation"] = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    from_rle = utils.annotations_to_instances(rle_annos, (h, w), mask_format="bitmask")
    np.testing.assert_array_equal(from_rle.gt_masks.tensor.numpy(), raster)
    arr_annos = [{**a, "segmentation": m.astype(np.uint8)} for a, m in zip(annos, raster)]
    from_arr = utils.annotations_to_instances(arr_annos, (h, w), mask_format="bitmask")
    np.testing.assert_array_equal(from_arr.gt_masks.tensor.numpy(), raster)
    with pytest.raises(ValueError, match="bitmask"):
        utils.annotations_to_instances(rle_annos, (h, w), mask_format="polygon")

    empty = utils.annotations_to_instances([], (h, w))
    assert len(empty) == 0 and empty.gt_boxes.tensor.shape == (0, 4)


def test_annotations_to_instances_keypoints():
    annos = [{**_square_anno(1, 1, 9, 9), "keypoints": [2, 2, 2, 5, 5, 1]}]
    inst = utils.annotations_to_instances(annos, (10, 10))
    assert inst.gt_keypoints.tensor.shape == (1, 2, 3)


def test_filter_empty_instances():
    inst = Instances((20, 20))
    inst.gt_boxes = Boxes(torch.tensor([[0, 0, 5, 5], [3, 3, 3, 8], [1, 1, 9, 9.0]]))
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[0, :5, :5] = True
    masks[1, 3:8, 3:4] = True
    inst.gt_masks = BitMasks(masks)  # mask 2 is empty
    kept, keep = utils.filter_empty_instances(inst, return_mask=True)
    assert keep.tolist() == [True, False, False] and len(kept) == 1
    assert len(utils.filter_empty_instances(inst, by_mask=False)) == 2
    assert len(utils.filter_empty_instances(inst, by_box=False)) == 2
    with pytest.raises(ValueError):
        utils.filter_empty_instances(inst, by_box=False, by_mask=False)


def test_transform_proposals():
    d = {
        "proposal_boxes": np.array([[0, 0, 10, 10], [5, 5, 5, 9], [2, 2, 30, 30.0]]),
        "proposal_bbox_mode": BoxMode.XYXY_ABS,
        "proposal_objectness_logits": np.array([3.0, 2.0, 1.0]),
    }
    utils.transform_proposals(d, (40, 40), T.TransformList([T.ResizeTransform(20, 20, 40, 40)]),
                              proposal_topk=5)
    props = d["proposals"]
    assert "proposal_boxes" not in d and len(props) == 2  # the empty box is dropped
    np.testing.assert_allclose(
        props.proposal_boxes.tensor.numpy(), [[0, 0, 20, 20], [4, 4, 40, 40]]
    )
    assert props.objectness_logits.dtype == torch.float32


# ----------------------------------------------------------------------------- metadata, config


@pytest.fixture
def kp_datasets():
    names = ["_test_kp_a", "_test_kp_b"]
    for n in names:
        MetadataCatalog.get(n).set(
            keypoint_names=["nose", "left_eye", "right_eye"],
            keypoint_flip_map=[("left_eye", "right_eye")],
            thing_classes=["person"],
        )
    MetadataCatalog.get("_test_kp_c").set(thing_classes=["cat"])
    yield names
    for n in names + ["_test_kp_c"]:
        MetadataCatalog.remove(n)


def test_keypoint_hflip_indices_and_consistency(kp_datasets):
    assert utils.create_keypoint_hflip_indices(kp_datasets) == [0, 2, 1]
    assert utils.create_keypoint_hflip_indices(kp_datasets[0]) == [0, 2, 1]
    utils.check_metadata_consistency("thing_classes", kp_datasets)
    with pytest.raises(ValueError, match="thing_classes"):
        utils.check_metadata_consistency("thing_classes", kp_datasets + ["_test_kp_c"])


def test_gen_crop_transform_with_instance():
    np.random.seed(0)
    inst = {"bbox": [40, 30, 20, 10], "bbox_mode": BoxMode.XYWH_ABS}  # centre (x 50, y 35)
    for _ in range(20):
        crop = utils.gen_crop_transform_with_instance((16, 24), (60, 100), inst)
        assert (crop.h, crop.w) == (16, 24)
        assert crop.x0 <= 50 <= crop.x0 + crop.w and crop.y0 <= 35 <= crop.y0 + crop.h
        assert crop.x0 + crop.w <= 100 and crop.y0 + crop.h <= 60
    with pytest.raises(ValueError, match="larger"):
        utils.gen_crop_transform_with_instance((80, 24), (60, 100), inst)


def test_build_augmentation():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (100, 120)
    train = utils.build_augmentation(cfg, True)
    assert [type(a).__name__ for a in train] == ["ResizeShortestEdge", "RandomFlip"]
    cfg.INPUT.RANDOM_FLIP = "none"
    assert [type(a).__name__ for a in utils.build_augmentation(cfg, True)] == ["ResizeShortestEdge"]
    test = utils.build_transform_gen(cfg, False)
    assert [type(a).__name__ for a in test] == ["ResizeShortestEdge"]
    image = np.zeros((50, 80, 3), dtype=np.uint8)
    tfm = T.AugmentationList(test)(T.AugInput(image))
    assert tfm.apply_image(image).shape[:2] == (800, 1280)


# ----------------------------------------------------------------------------- unusual images


def test_read_16bit_gray_png_keeps_the_top_byte(tmp_path):
    """A 16-bit grayscale PNG is read as value >> 8 in every format (Pillow alone would clip
    every value above 255 to 255)."""
    import cv2

    path = str(tmp_path / "deep.png")
    raw = np.array([[0, 255, 256, 65535], [0x1234, 0x8000, 511, 1000]], dtype=np.uint16)
    assert cv2.imwrite(path, raw)
    expected = np.array([[0, 0, 1, 255], [0x12, 0x80, 1, 3]], dtype=np.uint8)
    gray = utils.read_image(path, "L")
    assert gray.dtype == np.uint8 and gray.shape == (2, 4, 1)
    np.testing.assert_array_equal(gray[:, :, 0], expected)
    for fmt in ("BGR", "RGB"):
        color = utils.read_image(path, fmt)
        assert color.dtype == np.uint8 and color.shape == (2, 4, 3)
        for c in range(3):
            np.testing.assert_array_equal(color[:, :, c], expected)
    assert utils.read_image(path).dtype == np.uint16  # format=None: the file's own data


def test_read_rgba_png_drops_alpha(tmp_path):
    rgba = np.zeros((3, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 50
    rgba[..., 3] = [[0], [128], [255]]  # alpha must not blend into the colours
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    bgr = utils.read_image(str(path), "BGR")
    assert bgr.shape == (3, 5, 3)
    assert (bgr[..., 0] == 50).all() and (bgr[..., 1] == 100).all() and (bgr[..., 2] == 200).all()
    assert (utils.read_image(str(path), "RGB")[..., 0] == 200).all()


def test_read_float_image_names_file_and_mode(tmp_path):
    path = tmp_path / "float.tiff"
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), mode="F").save(path)
    with pytest.raises(ValueError, match=r"float\.tiff.*mode 'F'"):
        utils.read_image(str(path), "BGR")


def test_read_label_map_keeps_16bit_class_ids(tmp_path):
    import cv2

    path = str(tmp_path / "labels16.png")
    assert cv2.imwrite(path, np.array([[0, 3], [7, 255]], dtype=np.uint16))
    labels = utils.read_label_map(path)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, [[0, 3], [7, 255]])  # ids, not intensities
    assert cv2.imwrite(path, np.array([[0, 300]], dtype=np.uint16))
    with pytest.raises(ValueError, match=r"labels16\.png.*0\.\.300"):
        utils.read_label_map(path)


# ----------------------------------------------------------------------------- bad annotations


@pytest.mark.parametrize("bbox", [[float("nan"), 0, 5, 5], [0, 0, float("inf"), 5],
                                  [0, float("-inf"), 5, 5]])
def test_transform_instance_annotations_rejects_non_finite_boxes(bbox):
    anno = {"bbox": bbox, "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    with pytest.raises(ValueError, match="NaN or infinite"):
        utils.transform_instance_annotations(anno, [T.NoOpTransform()], (20, 30))


def test_check_instance_annotations_names_file_and_annotation():
    good = {"bbox": [0, 0, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    nan_box = dict(good, bbox=[float("nan"), 0, 4, 4], id=77)
    crowd_nan = dict(nan_box, iscrowd=1)  # crowd annotations are not used: not checked
    utils.check_instance_annotations([good, crowd_nan], "a.png")
    with pytest.raises(ValueError, match=r"a\.png.*annotation #1 \(id 77.*NaN or infinite"):
        utils.check_instance_annotations([good, nan_box], "a.png")
    with pytest.raises(ValueError, match=r"b\.png.*#0.*'segmentation'.*MODEL\.MASK_ON False"):
        utils.check_instance_annotations([good], "b.png", need_masks=True)
    with pytest.raises(ValueError, match=r"c\.png.*'keypoints'.*MODEL\.KEYPOINT_ON False"):
        utils.check_instance_annotations([good], "c.png", need_keypoints=True)


def test_annotations_to_instances_field_on_some_annotations_only():
    box = {"bbox": [0, 0, 4, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    with_mask = dict(box, segmentation=[[0, 0, 4, 0, 4, 4]])
    with pytest.raises(ValueError, match=r"1 of 3 annotations have no 'segmentation'.*#2"):
        utils.annotations_to_instances([with_mask, with_mask, box], (10, 10))
    with_kps = dict(box, keypoints=[1, 1, 2, 2, 2, 2])
    with pytest.raises(ValueError, match=r"no 'keypoints'.*#1"):
        utils.annotations_to_instances([with_kps, box], (10, 10))


def test_annotations_to_instances_rotated_clips_only_nearly_horizontal_boxes():
    from segtron.data.detection_utils import annotations_to_instances_rotated
    from segtron.structures import RotatedBoxes

    annos = [
        {"bbox": [90.0, 20.0, 40.0, 10.0, 0.0], "category_id": 3},  # x 70..110 in a 100-wide image
        {"bbox": [50.0, 50.0, 20.0, 10.0, 45.0], "category_id": 1},  # rotated: left as it is
    ]
    instances = annotations_to_instances_rotated(annos, (60, 100))
    assert isinstance(instances.gt_boxes, RotatedBoxes)
    assert instances.gt_classes.tolist() == [3, 1]
    boxes = instances.gt_boxes.tensor
    # Clipped to x 70..100: centre 85, width 30; y and angle unchanged.
    assert torch.allclose(boxes[0], torch.tensor([85.0, 20.0, 30.0, 10.0, 0.0]))
    assert torch.allclose(boxes[1], torch.tensor([50.0, 50.0, 20.0, 10.0, 45.0]))
