"""Tests for segtron.data.datasets.coco: COCO json <-> dataset dicts, validation, sem-seg pairing.

Every corpus is a few tiny PNGs plus a hand-written COCO json in tmp_path; expected values are
written out by hand (or computed independently with pycocotools), never taken from the code
under test.
"""

import json
import logging
import os
import uuid

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

from segtron.data.catalog import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.coco import (
    convert_to_coco_dict,
    convert_to_coco_json,
    load_coco_json,
    load_sem_seg,
    register_coco_instances,
)
from segtron.structures.boxes import BoxMode

# pycocotools' mask.decode trips a numpy-2 DeprecationWarning that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 24, 32


# ----------------------------------------------------------------------------- helpers


def _write_png(path, h=H, w=W):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.full((h, w, 3), 127, dtype=np.uint8))


def _image(image_id, name=None, h=H, w=W):
    return {"id": image_id, "file_name": name or f"img{image_id}.png", "height": h, "width": w}


def _ann(ann_id, image_id, category_id, bbox=(2, 3, 10, 8), **extra):
    d = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(bbox)}
    d.setdefault("iscrowd", 0)
    d.update(extra)
    return d


CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def _corpus(tmp_path, images, annotations, categories=CATS, write_images=True, **top):
    """Write ``images`` (as PNGs under tmp_path/imgs) and the COCO json; return (json, root)."""
    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    if write_images:
        for im in images:
            _write_png(root / im["file_name"], im["height"], im["width"])
    data = {"images": images, "annotations": annotations, "categories": categories, **top}
    json_file = tmp_path / "ann.json"
    json_file.write_text(json.dumps(data))
    return str(json_file), str(root)


@pytest.fixture
def dataset_name():
    """A fresh dataset name, removed from both catalogs after the test."""
    name = f"test_coco_{uuid.uuid4().hex[:8]}"
    yield name
    DatasetCatalog.pop(name, None)
    MetadataCatalog.pop(name, None)


def _poly_mask(polygons, h, w):
    rles = mask_util.frPyObjects(polygons, h, w)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


# ----------------------------------------------------------------------------- loading


def test_load_fields_and_contiguous_ids(tmp_path, dataset_name):
    cats = [{"id": 10, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    images = [_image(5, "b.png", h=20, w=30), _image(2, "sub/a.png")]
    anns = [
        _ann(1, 5, 10, bbox=(1.5, 2.0, 4.0, 6.0)),
        _ann(2, 2, 3),
        _ann(3, 5, 7, bbox=(0, 0, 3, 3), iscrowd=1, area=9.0, extra_field="x"),
    ]
    json_file, root = _corpus(tmp_path, images, anns, categories=cats)

    dicts = load_coco_json(json_file, root, dataset_name, extra_annotation_keys=["extra_field"])

    assert [d["image_id"] for d in dicts] == [2, 5]  # sorted by image id
    assert dicts[0]["file_name"] == os.path.join(root, "sub/a.png")
    assert (dicts[1]["height"], dicts[1]["width"]) == (20, 30)
    a1, a3 = dicts[1]["annotations"]
    assert a1["bbox"] == [1.5, 2.0, 4.0, 6.0]
    assert a1["bbox_mode"] == BoxMode.XYWH_ABS
    # ids 3, 7, 10 -> 0, 1, 2 in id order
    assert a1["category_id"] == 2
    assert dicts[0]["annotations"][0]["category_id"] == 0
    assert a3["category_id"] == 1 and a3["iscrowd"] == 1 and a3["extra_field"] == "x"
    assert "area" not in a3  # only base keys + requested extras are copied
    assert "segmentation" not in a1

    meta = MetadataCatalog.get(dataset_name)
    assert meta.thing_classes == ["cat", "dog", "bird"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 10: 2}
    assert meta.json_file == json_file
    assert meta.image_root == root
    assert meta.evaluator_type == "coco"


def test_without_dataset_name_ids_are_kept(tmp_path):
    cats = [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 9)], categories=cats)
    dicts = load_coco_json(json_file, root)
    assert dicts[0]["annotations"][0]["category_id"] == 9


def test_existing_metadata_is_not_overwritten(tmp_path, dataset_name):
    MetadataCatalog.get(dataset_name).set(evaluator_type="lvis", image_root="/elsewhere")
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1)])
    load_coco_json(json_file, root, dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    assert meta.evaluator_type == "lvis"
    assert meta.image_root == "/elsewhere"
    assert meta.json_file == json_file


def test_keypoints_shifted_by_half_pixel(tmp_path):
    kps = [10, 20, 2, 0, 0, 0, 5, 6, 1]
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1, keypoints=kps)])
    ann = load_coco_json(json_file, root)[0]["annotations"][0]
    assert ann["keypoints"] == [10.5, 20.5, 2, 0.5, 0.5, 0, 5.5, 6.5, 1]
    assert ann["keypoints"][2] == 2 and ann["keypoints"][8] == 1  # visibilities untouched


def test_uncompressed_rle_becomes_compressed(tmp_path):
    # column-major runs on a 4x5 mask: 2 zeros, 3 ones, 15 zeros
    rle = {"counts": [2, 3, 15], "size": [4, 5]}
    json_file, root = _corpus(
        tmp_path, [_image(1, h=4, w=5)], [_ann(1, 1, 1, bbox=(0, 0, 2, 4), segmentation=rle, iscrowd=1)]
    )
    seg = load_coco_json(json_file, root)[0]["annotations"][0]["segmentation"]
    assert isinstance(seg, dict) and not isinstance(seg["counts"], list)
    expected = np.zeros((4, 5), dtype=np.uint8)
    expected[2, 0] = expected[3, 0] = expected[0, 1] = 1
    np.testing.assert_array_equal(mask_util.decode(seg), expected)


def test_polygons_kept(tmp_path):
    poly = [[1.0, 1.0, 9.0, 1.0, 9.0, 7.0, 1.0, 7.0]]
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1, segmentation=poly)])
    assert load_coco_json(json_file, root)[0]["annotations"][0]["segmentation"] == poly


# ----------------------------------------------------------------------------- dropped + logged


def test_empty_and_negative_boxes_dropped_and_counted(tmp_path, caplog):
    anns = [
        _ann(11, 1, 1, bbox=(0, 0, 0, 5)),
        _ann(12, 1, 1, bbox=(0, 0, 5, -2)),
        _ann(13, 1, 1, bbox=(0, 0, -1, -1)),
        _ann(14, 1, 1, bbox=(0, 0, 5, 5)),
    ]
    json_file, root = _corpus(tmp_path, [_image(1)], anns)
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(json_file, root)
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[0, 0, 5, 5]]
    lines = [r.getMessage() for r in caplog.records if "width or height <= 0" in r.getMessage()]
    assert len(lines) == 1
    assert "3 annotation(s)" in lines[0]
    assert "11" in lines[0] and "12" in lines[0] and "13" in lines[0]
    assert json_file in lines[0]


def test_non_finite_boxes_dropped_and_counted(tmp_path, caplog):
    """json NaN / Infinity (which Python's json module reads) must not reach the mapper."""
    anns = [
        _ann(41, 1, 1, bbox=(float("nan"), 0, 5, 5)),
        _ann(42, 1, 1, bbox=(0, 0, float("inf"), 5)),
        _ann(43, 1, 1, bbox=(0, 0, 5, float("-inf"))),
        _ann(44, 1, 1, bbox=(1, 1, 5, 5)),
    ]
    json_file, root = _corpus(tmp_path, [_image(1)], anns)
    assert "NaN" in open(json_file).read() and "Infinity" in open(json_file).read()
    with caplog.at_level(logging.INFO):
        dicts = load_coco_json(json_file, root)
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[1, 1, 5, 5]]
    lines = [r.getMessage() for r in caplog.records if "NaN or infinite" in r.getMessage()]
    assert len(lines) == 1 and json_file in lines[0]
    assert "3 annotation(s)" in lines[0] and all(str(i) in lines[0] for i in (41, 42, 43))
    assert not any("width or height <= 0" in r.getMessage() for r in caplog.records)
    assert any("1 annotations kept" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bbox", [[1, 2, 3], ["1", 2, 3, 4], "1 2 3 4", [1, 2, None, 4]])
def test_malformed_bbox_is_an_error(tmp_path, bbox):
    bad = _ann(58, 1, 1)
    bad["bbox"] = bbox
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1), bad])
    with pytest.raises(ValueError, match="malformed 'bbox'") as e:
        load_coco_json(json_file, root)
    assert "58" in str(e.value) and json_file in str(e.value)


def test_short_polygons_removed_and_counted(tmp_path, caplog):
    good = [0.0, 0.0, 6.0, 0.0, 6.0, 6.0]
    two_points = [0.0, 0.0, 5.0, 5.0]
    anns = [
        _ann(21, 1, 1, segmentation=[two_points]),  # nothing left -> annotation dropped
        _ann(22, 1, 1, segmentation=[good, two_points]),  # bad polygon removed, annotation kept
        _ann(23, 1, 1, segmentation=[good + [1.0]]),  # odd number of coordinates -> dropped
    ]
    json_file, root = _corpus(tmp_path, [_image(1)], anns)
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(json_file, root)
    kept = dicts[0]["annotations"]
    assert len(kept) == 1 and kept[0]["segmentation"] == [good]
    msgs = [r.getMessage() for r in caplog.records]
    dropped = [m for m in msgs if "none of their polygons" in m]
    assert len(dropped) == 1 and "2 annotation(s)" in dropped[0]
    assert "21" in dropped[0] and "23" in dropped[0]
    removed = [m for m in msgs if "polygons with < 3 points" in m]
    assert len(removed) == 1 and "3 annotation(s)" in removed[0]


def test_boxes_and_polygons_outside_the_image_dropped_and_counted(tmp_path, caplog):
    """The image is W x H = 32 x 24; such instances would vanish in the mapper otherwise."""
    inside = [2.0, 2.0, 10.0, 2.0, 10.0, 9.0]
    right_of_image = [40.0, 2.0, 50.0, 2.0, 50.0, 9.0]
    anns = [
        _ann(61, 1, 1, bbox=(32, 0, 5, 5)),  # starts at the right edge
        _ann(62, 1, 1, bbox=(-9, 0, 9, 5)),  # ends at the left edge
        _ann(63, 1, 1, bbox=(0, 30, 5, 5)),  # below the image
        _ann(64, 1, 1, segmentation=[right_of_image]),
        _ann(65, 1, 1, bbox=(28, 20, 10, 10), segmentation=[inside, right_of_image]),
        _ann(66, 1, 1, segmentation=[[2.0, float("nan"), 10.0, 2.0, 10.0, 9.0], inside]),
    ]
    json_file, root = _corpus(tmp_path, [_image(1)], anns)
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(json_file, root)
    kept = dicts[0]["annotations"]
    assert [a["segmentation"] for a in kept] == [[inside, right_of_image], [inside]]
    msgs = [r.getMessage() for r in caplog.records]
    boxes = [m for m in msgs if "box entirely outside" in m]
    assert len(boxes) == 1 and "3 annotation(s)" in boxes[0]
    assert all(str(i) in boxes[0] for i in (61, 62, 63))
    polys = [m for m in msgs if "polygons lie entirely outside" in m]
    assert len(polys) == 1 and "1 annotation(s)" in polys[0] and "64" in polys[0]
    removed = [m for m in msgs if "NaN/infinite coordinate removed" in m]
    assert len(removed) == 1 and "1 annotation(s)" in removed[0] and "66" in removed[0]


def test_ignore_annotations_skipped_and_counted(tmp_path, caplog):
    anns = [_ann(31, 1, 1, ignore=1), _ann(32, 1, 1, ignore=0), _ann(33, 1, 2)]
    json_file, root = _corpus(tmp_path, [_image(1)], anns)
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(json_file, root)
    assert len(dicts[0]["annotations"]) == 2
    lines = [r.getMessage() for r in caplog.records if "'ignore': 1" in r.getMessage()]
    assert len(lines) == 1 and "1 annotation(s)" in lines[0] and "31" in lines[0]


def test_missing_annotations_key_loads_images_without_annotations(tmp_path, caplog):
    json_file, root = _corpus(tmp_path, [_image(1), _image(2)], [])
    data = json.loads(open(json_file).read())
    del data["annotations"]
    open(json_file, "w").write(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        dicts = load_coco_json(json_file, root)
    assert [d["annotations"] for d in dicts] == [[], []]
    assert any("no 'annotations' key" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- hard errors


def test_truncated_json(tmp_path):
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1)])
    text = open(json_file).read()
    open(json_file, "w").write(text[: len(text) // 2])
    with pytest.raises(ValueError, match="not valid JSON") as e:
        load_coco_json(json_file, root)
    assert json_file in str(e.value) and "line 1" in str(e.value)


def test_corrupt_json_reports_line(tmp_path):
    json_file = tmp_path / "bad.json"
    json_file.write_text('{\n"images": [],\n"annotations": [,]\n}')
    with pytest.raises(ValueError) as e:
        load_coco_json(str(json_file), str(tmp_path))
    assert str(json_file) in str(e.value) and "line 3" in str(e.value)


def test_missing_json_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json(str(tmp_path / "nope.json"), str(tmp_path))


@pytest.mark.parametrize("key", ["images", "categories"])
def test_missing_top_level_key(tmp_path, key):
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1)])
    data = json.loads(open(json_file).read())
    del data[key]
    open(json_file, "w").write(json.dumps(data))
    with pytest.raises(ValueError) as e:
        load_coco_json(json_file, root)
    assert json_file in str(e.value) and f"'{key}'" in str(e.value)


def test_top_level_not_an_object(tmp_path):
    json_file = tmp_path / "list.json"
    json_file.write_text("[1, 2]")
    with pytest.raises(ValueError, match="top level is a list"):
        load_coco_json(str(json_file), str(tmp_path))


def test_missing_image_file(tmp_path):
    images = [_image(1), _image(2, "gone.png"), _image(3, "also_gone.png")]
    json_file, root = _corpus(tmp_path, images, [_ann(1, 1, 1)])
    os.remove(os.path.join(root, "gone.png"))
    os.remove(os.path.join(root, "also_gone.png"))
    with pytest.raises(ValueError) as e:
        load_coco_json(json_file, root)
    msg = str(e.value)
    assert "2 of 3 image files" in msg
    assert os.path.join(root, "gone.png") in msg and "image_root" in msg and json_file in msg


def test_wrong_image_root(tmp_path):
    json_file, _ = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1)])
    with pytest.raises(ValueError, match="image_root"):
        load_coco_json(json_file, str(tmp_path / "not_here"))


def test_unknown_category(tmp_path):
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1), _ann(77, 1, 42)])
    with pytest.raises(ValueError) as e:
        load_coco_json(json_file, root, "unknown_cat_never_registered")
    msg = str(e.value)
    assert json_file in msg and "category_id=42" in msg and "77" in msg
    MetadataCatalog.pop("unknown_cat_never_registered", None)


def test_unknown_category_without_dataset_name(tmp_path):
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(5, 1, 99)])
    with pytest.raises(ValueError, match="category_id=99"):
        load_coco_json(json_file, root)


def test_duplicate_annotation_ids(tmp_path):
    json_file, root = _corpus(tmp_path, [_image(1), _image(2)], [_ann(8, 1, 1), _ann(8, 2, 1)])
    with pytest.raises(ValueError) as e:
        load_coco_json(json_file, root)
    msg = str(e.value)
    assert json_file in msg and "annotation ids" in msg and "8" in msg


def test_duplicate_image_ids(tmp_path):
    json_file, root = _corpus(tmp_path, [_image(1), _image(1, "other.png")], [])
    with pytest.raises(ValueError, match="images ids occur more than once") as e:
        load_coco_json(json_file, root)
    assert json_file in str(e.value)


def test_annotation_of_missing_image(tmp_path):
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1), _ann(2, 404, 1)])
    with pytest.raises(ValueError) as e:
        load_coco_json(json_file, root)
    msg = str(e.value)
    assert json_file in msg and "2 -> 404" in msg


def test_empty_dataset(tmp_path):
    json_file, root = _corpus(tmp_path, [], [])
    with pytest.raises(ValueError, match="contains no images") as e:
        load_coco_json(json_file, root)
    assert json_file in str(e.value)


def test_annotation_without_bbox(tmp_path):
    ann = _ann(6, 1, 1)
    del ann["bbox"]
    json_file, root = _corpus(tmp_path, [_image(1)], [ann])
    with pytest.raises(ValueError, match="'bbox'") as e:
        load_coco_json(json_file, root)
    assert "6" in str(e.value) and json_file in str(e.value)


def test_image_without_required_field(tmp_path):
    image = _image(3)
    del image["height"]
    json_file, root = _corpus(tmp_path, [image], [], write_images=False)
    with pytest.raises(ValueError, match="'height'") as e:
        load_coco_json(json_file, root)
    assert json_file in str(e.value) and "3" in str(e.value)


# ----------------------------------------------------------------------------- registration


def test_register_is_lazy_and_sets_metadata(tmp_path, dataset_name):
    json_file = str(tmp_path / "later.json")
    register_coco_instances(dataset_name, {"foo": 1}, json_file, str(tmp_path / "imgs"))
    meta = MetadataCatalog.get(dataset_name)
    assert (meta.json_file, meta.evaluator_type, meta.foo) == (json_file, "coco", 1)
    assert meta.get("thing_classes") is None  # json not read yet
    _corpus(tmp_path, [_image(1)], [_ann(1, 1, 2)])
    os.replace(tmp_path / "ann.json", json_file)
    dicts = DatasetCatalog.get(dataset_name)
    assert dicts[0]["annotations"][0]["category_id"] == 1
    assert meta.thing_classes == ["cat", "dog"]


def test_register_accepts_pathlike(tmp_path, dataset_name):
    json_file, root = _corpus(tmp_path, [_image(1)], [_ann(1, 1, 1)])
    from pathlib import Path

    register_coco_instances(dataset_name, {}, Path(json_file), Path(root))
    assert MetadataCatalog.get(dataset_name).json_file == json_file
    assert len(DatasetCatalog.get(dataset_name)) == 1


def test_register_rejects_non_path(tmp_path, dataset_name):
    with pytest.raises(TypeError, match="json_file"):
        register_coco_instances(dataset_name, {}, 123, str(tmp_path))
    with pytest.raises(TypeError, match="image_root"):
        register_coco_instances(dataset_name, {}, "a.json", None)
    with pytest.raises(TypeError, match="metadata"):
        register_coco_instances(dataset_name, "a.json", "a.json", str(tmp_path))
    assert dataset_name not in DatasetCatalog


# ----------------------------------------------------------------------------- conversion


def _register_dicts(name, dicts, **meta):
    DatasetCatalog.register(name, lambda: [dict(d, annotations=[dict(a) for a in d["annotations"]]) for d in dicts])
    MetadataCatalog.get(name).set(**meta)


def test_convert_to_coco_dict_fields(tmp_path, dataset_name):
    square = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]  # 10 x 10 -> area 100
    rle_mask = np.zeros((H, W), dtype=np.uint8)
    rle_mask[5:9, 20:27] = 1  # 28 pixels
    rle = mask_util.encode(np.asfortranarray(rle_mask))
    dicts = [
        {
            "file_name": str(tmp_path / "x.png"),
            "height": H,
            "width": W,
            "image_id": 42,
            "annotations": [
                {"bbox": [2, 2, 12, 12], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
                 "segmentation": square},
                {"bbox": [20, 5, 7, 4], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                 "segmentation": rle, "iscrowd": 1},
                {"bbox": [1, 1, 4, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                 "keypoints": [2.5, 3.5, 2, 0.5, 0.5, 0]},
            ],
        }
    ]
    _register_dicts(dataset_name, dicts, thing_classes=["a", "b"],
                    thing_dataset_id_to_contiguous_id={5: 0, 9: 1})
    coco = convert_to_coco_dict(dataset_name)
    json.dumps(coco)  # serialisable (RLE counts decoded to str)
    assert coco["categories"] == [{"id": 5, "name": "a"}, {"id": 9, "name": "b"}]
    assert coco["images"] == [{"id": 42, "width": W, "height": H, "file_name": str(tmp_path / "x.png")}]
    assert "date_created" in coco["info"]
    a, b, c = coco["annotations"]
    assert [x["id"] for x in (a, b, c)] == [1, 2, 3]
    assert all(x["image_id"] == 42 for x in (a, b, c))
    assert a["bbox"] == [2, 2, 10, 10] and a["category_id"] == 9 and a["area"] == 100.0
    assert a["iscrowd"] == 0
    assert b["bbox"] == [20, 5, 7, 4] and b["category_id"] == 5 and b["area"] == 28.0
    assert b["iscrowd"] == 1 and isinstance(b["segmentation"]["counts"], str)
    assert c["bbox"] == [1, 1, 3, 5] and c["area"] == 15.0 and "segmentation" not in c
    assert c["keypoints"] == [2.0, 3.0, 2, 0.0, 0.0, 0] and c["num_keypoints"] == 1


def test_convert_without_id_map_keeps_ids(dataset_name):
    dicts = [{"file_name": "f.png", "height": 4, "width": 4, "annotations": [
        {"bbox": [0, 0, 2, 2], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1}]}]
    _register_dicts(dataset_name, dicts, thing_classes=["a", "b"])
    coco = convert_to_coco_dict(dataset_name)
    assert coco["categories"] == [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]
    assert coco["annotations"][0]["category_id"] == 1
    assert coco["images"][0]["id"] == 0  # position when image_id is absent


def test_round_trip_preserves_boxes_classes_masks(tmp_path, dataset_name):
    src = f"{dataset_name}_src"
    img_dir = tmp_path / "rt"
    for n in ("p.png", "q.png"):
        _write_png(img_dir / n)
    tri = [[3.0, 3.0, 20.0, 4.0, 10.0, 18.0]]
    two = [[1.0, 1.0, 6.0, 1.0, 6.0, 5.0, 1.0, 5.0], [25.0, 10.0, 30.0, 10.0, 30.0, 20.0]]
    m = np.zeros((H, W), dtype=np.uint8)
    m[10:20, 2:9] = 1
    m[12, 2] = 0
    rle = mask_util.encode(np.asfortranarray(m))
    anns_p = [
        {"bbox": [3.0, 3.0, 20.0, 18.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1,
         "segmentation": tri, "iscrowd": 0},
        {"bbox": [1.0, 1.0, 29.0, 19.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2,
         "segmentation": two, "iscrowd": 0},
    ]
    anns_q = [
        {"bbox": [2.0, 10.0, 7.0, 10.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
         "segmentation": rle, "iscrowd": 1},
        {"bbox": [4.25, 5.5, 3.125, 9.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2,
         "keypoints": [5.5, 6.5, 2, 7.5, 8.5, 1]},
    ]
    dicts = [
        {"file_name": str(img_dir / "p.png"), "height": H, "width": W, "image_id": 7, "annotations": anns_p},
        {"file_name": str(img_dir / "q.png"), "height": H, "width": W, "image_id": 3, "annotations": anns_q},
    ]
    id_map = {2: 0, 4: 1, 11: 2}
    try:
        _register_dicts(src, dicts, thing_classes=["x", "y", "z"], thing_dataset_id_to_contiguous_id=id_map)
        out = tmp_path / "cache" / "rt.json"
        convert_to_coco_json(src, str(out), allow_cached=False)
        assert sorted(os.listdir(out.parent)) in (["rt.json"], ["rt.json", "rt.json.lock"])

        written = json.loads(out.read_text())
        assert sorted(c["id"] for c in written["categories"]) == [2, 4, 11]

        loaded = load_coco_json(str(out), "", dataset_name)
    finally:
        DatasetCatalog.pop(src, None)
        MetadataCatalog.pop(src, None)

    meta = MetadataCatalog.get(dataset_name)
    assert meta.thing_classes == ["x", "y", "z"]
    assert meta.thing_dataset_id_to_contiguous_id == id_map
    by_id = {d["image_id"]: d for d in loaded}
    assert sorted(by_id) == [3, 7]
    expected = {7: anns_p, 3: anns_q}
    xywh = {  # hand-converted boxes
        7: [[3.0, 3.0, 17.0, 15.0], [1.0, 1.0, 29.0, 19.0]],
        3: [[2.0, 10.0, 7.0, 10.0], [4.25, 5.5, 3.125, 9.0]],
    }
    for image_id, orig_anns in expected.items():
        got = by_id[image_id]["annotations"]
        assert by_id[image_id]["file_name"] == dicts[0 if image_id == 7 else 1]["file_name"]
        assert len(got) == len(orig_anns)
        for g, o, box in zip(got, orig_anns, xywh[image_id]):
            assert g["bbox_mode"] == BoxMode.XYWH_ABS
            np.testing.assert_allclose(g["bbox"], box, atol=1e-3)
            assert g["category_id"] == o["category_id"]
            assert g["iscrowd"] == o["iscrowd"] if "iscrowd" in o else g["iscrowd"] == 0
            if "segmentation" not in o:
                assert "segmentation" not in g
                continue
            if isinstance(o["segmentation"], list):
                want = _poly_mask(o["segmentation"], H, W)
                have = _poly_mask(g["segmentation"], H, W)
            else:
                want = mask_util.decode(o["segmentation"]).astype(bool)
                have = mask_util.decode(g["segmentation"]).astype(bool)
            assert want.any()
            np.testing.assert_array_equal(have, want)
    kp = by_id[3]["annotations"][1]["keypoints"]
    assert kp == [5.5, 6.5, 2, 7.5, 8.5, 1]


def test_convert_to_coco_json_cache(tmp_path, dataset_name):
    dicts = [{"file_name": "f.png", "height": 4, "width": 4, "image_id": 1, "annotations": []}]
    _register_dicts(dataset_name, dicts, thing_classes=["a"])
    out = tmp_path / "c.json"
    convert_to_coco_json(dataset_name, str(out))
    first = json.loads(out.read_text())
    assert first["images"][0]["id"] == 1 and first["annotations"] == []
    out.write_text('{"marker": true}')
    convert_to_coco_json(dataset_name, str(out))  # cached: left alone
    assert json.loads(out.read_text()) == {"marker": True}
    convert_to_coco_json(dataset_name, str(out), allow_cached=False)
    assert json.loads(out.read_text())["images"] == first["images"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_convert_needs_thing_classes(dataset_name):
    _register_dicts(dataset_name, [])
    with pytest.raises(AttributeError, match="thing_classes"):
        convert_to_coco_dict(dataset_name)


# ----------------------------------------------------------------------------- semantic seg


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_load_sem_seg_pairs_by_stem(tmp_path):
    for s in ("b", "a", "c.d"):
        _touch(tmp_path / "img" / f"{s}.jpg")
        _touch(tmp_path / "gt" / f"{s}.png")
    _touch(tmp_path / "gt" / "readme.txt")
    dicts = load_sem_seg(str(tmp_path / "gt"), str(tmp_path / "img"))
    assert dicts == [
        {"file_name": str(tmp_path / "img" / f"{s}.jpg"), "sem_seg_file_name": str(tmp_path / "gt" / f"{s}.png")}
        for s in ("a", "b", "c.d")
    ]


def test_load_sem_seg_label_without_image(tmp_path):
    _touch(tmp_path / "img" / "a.jpg")
    _touch(tmp_path / "gt" / "a.png")
    _touch(tmp_path / "gt" / "orphan.png")
    with pytest.raises(ValueError) as e:
        load_sem_seg(str(tmp_path / "gt"), str(tmp_path / "img"))
    assert "orphan" in str(e.value) and "image_root" in str(e.value)


def test_load_sem_seg_image_without_label_left_out(tmp_path, caplog):
    for s in ("a", "b"):
        _touch(tmp_path / "img" / f"{s}.jpg")
    _touch(tmp_path / "gt" / "a.png")
    with caplog.at_level(logging.WARNING):
        dicts = load_sem_seg(str(tmp_path / "gt"), str(tmp_path / "img"))
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["a.jpg"]
    assert any("1 of 2 images" in r.getMessage() and "'b'" in r.getMessage() for r in caplog.records)


def test_load_sem_seg_no_labels(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "img").mkdir()
    with pytest.raises(ValueError, match="no label files"):
        load_sem_seg(str(tmp_path / "gt"), str(tmp_path / "img"))
