"""Builtin dataset registrations, their metadata, and the VOC / Cityscapes / COCO panoptic /
LVIS / ADE20K loaders on tiny corpora written to tmp_path."""

import builtins
import importlib
import importlib.util
import json
import logging
import os
import re

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

import segtron.data.datasets.builtin as builtin
from segtron.data.catalog import DatasetCatalog, MetadataCatalog
from segtron.data.datasets import cityscapes
from segtron.data.datasets.builtin_meta import (
    ADE20K_SEM_SEG_CATEGORIES,
    COCO_CATEGORIES,
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
    _get_builtin_metadata,
)
from segtron.data.datasets.cityscapes import load_cityscapes_instances, load_cityscapes_semantic
from segtron.data.datasets.coco_panoptic import load_coco_panoptic_json
from segtron.data.datasets.lvis import load_lvis_json
from segtron.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances
from segtron.structures import BoxMode
from tests.conftest import REPO_ROOT

# pycocotools' mask.decode trips a numpy 2 DeprecationWarning; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

COCO_NAMES = [
    "coco_2014_train", "coco_2014_val", "coco_2014_minival", "coco_2014_valminusminival",
    "coco_2017_train", "coco_2017_val", "coco_2017_test", "coco_2017_test-dev",
    "coco_2017_val_100",
]
KEYPOINT_NAMES = [
    "keypoints_coco_2014_train", "keypoints_coco_2014_val", "keypoints_coco_2014_minival",
    "keypoints_coco_2014_valminusminival", "keypoints_coco_2017_train",
    "keypoints_coco_2017_val", "keypoints_coco_2017_val_100",
]
PANOPTIC_NAMES = [
    f"coco_2017_{split}_panoptic{suffix}"
    for split in ("train", "val", "val_100") for suffix in ("", "_separated", "_stuffonly")
]
LVIS_NAMES = [
    "lvis_v1_train", "lvis_v1_val", "lvis_v1_test_dev", "lvis_v1_test_challenge",
    "lvis_v0.5_train", "lvis_v0.5_val", "lvis_v0.5_val_rand_100", "lvis_v0.5_test",
    "lvis_v0.5_train_cocofied", "lvis_v0.5_val_cocofied",
]
CITYSCAPES_NAMES = [
    f"cityscapes_fine_{task}_{split}"
    for task in ("instance_seg", "sem_seg") for split in ("train", "val", "test")
]
VOC_NAMES = [
    "voc_2007_trainval", "voc_2007_train", "voc_2007_val", "voc_2007_test",
    "voc_2012_trainval", "voc_2012_train", "voc_2012_val",
]
ADE_NAMES = ["ade20k_sem_seg_train", "ade20k_sem_seg_val"]
ALL_NAMES = (COCO_NAMES + KEYPOINT_NAMES + PANOPTIC_NAMES + LVIS_NAMES + CITYSCAPES_NAMES
             + VOC_NAMES + ADE_NAMES)


@pytest.fixture
def builtin_root(tmp_path, monkeypatch):
    """Re-register the builtin datasets with $SEGTRON_DATASETS = tmp_path (as at import);
    the global catalogs are restored afterwards."""
    monkeypatch.setenv("SEGTRON_DATASETS", str(tmp_path))
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    saved = dict(DatasetCatalog.data), dict(MetadataCatalog.data)
    DatasetCatalog.data.clear()
    MetadataCatalog.data.clear()
    try:
        importlib.reload(builtin)
        yield tmp_path
    finally:
        for catalog, old in zip((DatasetCatalog, MetadataCatalog), saved):
            catalog.data.clear()
            catalog.data.update(old)


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def _touch_image(path, size=(8, 6)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size).save(path)


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _decode_polygons(polygons, height, width):
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(polygons, height, width)))


# ---- registrations and metadata --------------------------------------------------------------


def test_every_builtin_name_is_registered():
    registered = set(DatasetCatalog.list())
    missing = [n for n in ALL_NAMES if n not in registered]
    assert not missing, missing
    assert len(ALL_NAMES) == 50


def test_coco_metadata_matches_detectron2():
    meta = MetadataCatalog.get("coco_2017_train")
    assert meta.evaluator_type == "coco"
    assert meta.json_file.endswith(os.path.join("coco", "annotations", "instances_train2017.json"))
    assert meta.image_root.endswith(os.path.join("coco", "train2017"))
    classes = meta.thing_classes
    assert len(classes) == 80
    assert classes[:5] == ["person", "bicycle", "car", "motorcycle", "airplane"]
    assert classes[-3:] == ["teddy bear", "hair drier", "toothbrush"]
    id_map = meta.thing_dataset_id_to_contiguous_id
    assert sorted(id_map.values()) == list(range(80))
    assert id_map[1] == 0 and classes[id_map[1]] == "person"
    assert id_map[90] == 79 and classes[id_map[90]] == "toothbrush"
    assert classes[id_map[13]] == "stop sign" and id_map[13] == 11  # id 12 is unused
    assert classes[id_map[67]] == "dining table" and classes[id_map[72]] == "tv"
    assert meta.thing_colors[0] == [220, 20, 60]
    for name in COCO_NAMES:
        assert MetadataCatalog.get(name).thing_classes == classes


def test_coco_categories_table():
    assert len(COCO_CATEGORIES) == 133
    ids = [c["id"] for c in COCO_CATEGORIES]
    assert ids == sorted(ids) and len(set(ids)) == 133
    assert sum(c["isthing"] for c in COCO_CATEGORIES) == 80
    assert all(c["isthing"] == (c["id"] <= 90) for c in COCO_CATEGORIES)
    assert all(len(c["color"]) == 3 and all(0 <= v <= 255 for v in c["color"])
               for c in COCO_CATEGORIES)
    by_id = {c["id"]: c["name"] for c in COCO_CATEGORIES}
    assert by_id[92] == "banner" and by_id[149] == "road" and by_id[200] == "rug-merged"


def test_keypoint_metadata():
    meta = MetadataCatalog.get("keypoints_coco_2017_train")
    assert meta.thing_classes == ["person"]
    assert meta.evaluator_type == "coco"
    names = meta.keypoint_names
    assert len(names) == 17 and names[0] == "nose" and names[-1] == "right_ankle"
    assert tuple(names) == COCO_PERSON_KEYPOINT_NAMES
    assert len(meta.keypoint_flip_map) == 8
    for a, b in COCO_PERSON_KEYPOINT_FLIP_MAP:
        assert a.startswith("left_") and b == "right_" + a[len("left_"):]
    assert len(KEYPOINT_CONNECTION_RULES) == 14
    assert all(a in names and b in names and len(c) == 3 for a, b, c in KEYPOINT_CONNECTION_RULES)


def test_panoptic_metadata():
    standard = MetadataCatalog.get("coco_2017_val_panoptic")
    assert standard.evaluator_type == "coco_panoptic_seg"
    assert standard.label_divisor == 1000 and standard.ignore_label == 255
    assert standard.panoptic_json.endswith(os.path.join("annotations", "panoptic_val2017.json"))
    assert standard.json_file == MetadataCatalog.get("coco_2017_val").json_file
    assert len(standard.thing_classes) == len(standard.stuff_classes) == 133
    assert standard.thing_dataset_id_to_contiguous_id[1] == 0
    assert standard.stuff_dataset_id_to_contiguous_id[92] == 80
    assert standard.stuff_dataset_id_to_contiguous_id[200] == 132

    separated = MetadataCatalog.get("coco_2017_val_panoptic_separated")
    assert separated.evaluator_type == "coco_panoptic_seg"
    assert separated.sem_seg_root.endswith(os.path.join("coco", "panoptic_stuff_val2017"))
    assert len(separated.thing_classes) == 80 and len(separated.stuff_classes) == 54
    assert separated.stuff_classes[0] == "things"
    assert separated.stuff_classes[1] == "banner" and separated.stuff_classes[-1] == "rug"
    assert "wall" in separated.stuff_classes and "water" in separated.stuff_classes
    assert separated.stuff_dataset_id_to_contiguous_id[0] == 0
    assert separated.stuff_dataset_id_to_contiguous_id[149] == 21
    assert separated.stuff_colors[0] == [82, 18, 128]
    assert MetadataCatalog.get("coco_2017_val_panoptic_stuffonly").evaluator_type == "sem_seg"


def test_other_builtin_metadata():
    inst = MetadataCatalog.get("cityscapes_fine_instance_seg_train")
    assert inst.evaluator_type == "cityscapes_instance"
    assert inst.thing_classes == ["person", "rider", "car", "truck", "bus", "train",
                                  "motorcycle", "bicycle"]
    sem = MetadataCatalog.get("cityscapes_fine_sem_seg_val")
    assert sem.evaluator_type == "cityscapes_sem_seg" and sem.ignore_label == 255
    assert len(sem.stuff_classes) == 19 and sem.stuff_classes[:2] == ["road", "sidewalk"]
    assert sem.gt_dir.rstrip("/").endswith(os.path.join("cityscapes", "gtFine", "val"))

    voc = MetadataCatalog.get("voc_2007_test")
    assert voc.evaluator_type == "pascal_voc" and voc.year == 2007 and voc.split == "test"
    assert voc.thing_classes == list(CLASS_NAMES) and len(CLASS_NAMES) == 20
    assert MetadataCatalog.get("voc_2012_train").year == 2012

    ade = MetadataCatalog.get("ade20k_sem_seg_val")
    assert ade.evaluator_type == "sem_seg" and ade.ignore_label == 255
    assert len(ade.stuff_classes) == len(ADE20K_SEM_SEG_CATEGORIES) == 150
    assert ade.stuff_classes[0] == "wall" and ade.stuff_classes[8] == "window "
    assert ade.stuff_classes[-1] == "flag"
    assert ade.sem_seg_root.endswith(
        os.path.join("ADEChallengeData2016", "annotations_detectron2", "validation"))

    lvis = MetadataCatalog.get("lvis_v1_val")
    assert lvis.evaluator_type == "lvis"
    assert lvis.json_file.endswith(os.path.join("lvis", "lvis_v1_val.json"))
    assert len(MetadataCatalog.get("lvis_v0.5_val_cocofied").thing_classes) == 80


def test_builtin_metadata_is_fresh_and_unknown_names_fail():
    a = _get_builtin_metadata("coco")
    a["thing_classes"].append("extra")
    assert len(_get_builtin_metadata("coco")["thing_classes"]) == 80
    with pytest.raises(KeyError, match="coco_person"):
        _get_builtin_metadata("kitti")


def test_registration_reads_nothing_from_disk(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError(f"disk access at import: {args}")

    saved = dict(DatasetCatalog.data), dict(MetadataCatalog.data)
    monkeypatch.setenv("SEGTRON_DATASETS", str(tmp_path / "absent"))
    DatasetCatalog.data.clear()
    MetadataCatalog.data.clear()
    try:
        with monkeypatch.context() as m:
            for module, attr in ((os, "stat"), (os, "listdir"), (os, "scandir"),
                                 (builtins, "open")):
                m.setattr(module, attr, forbidden)
            importlib.reload(builtin)
        assert set(ALL_NAMES) <= set(DatasetCatalog.list())
    finally:
        for catalog, old in zip((DatasetCatalog, MetadataCatalog), saved):
            catalog.data.clear()
            catalog.data.update(old)


@pytest.mark.parametrize("name, section, fragment", [
    ("coco_2017_train", "coco", "coco/annotations/instances_train2017.json"),
    ("keypoints_coco_2017_val", "coco", "coco/annotations/person_keypoints_val2017.json"),
    ("coco_2017_val_panoptic", "coco-panoptic", "coco/annotations/panoptic_val2017.json"),
    ("coco_2017_val_panoptic_separated", "coco-panoptic", "coco/panoptic_stuff_val2017"),
    ("coco_2017_train_panoptic_stuffonly", "coco-panoptic", "coco/panoptic_stuff_train2017"),
    ("lvis_v1_train", "lvis", "lvis/lvis_v1_train.json"),
    ("cityscapes_fine_sem_seg_val", "cityscapes", "cityscapes/leftImg8bit/val"),
    ("cityscapes_fine_instance_seg_train", "cityscapes", "cityscapes/gtFine/train"),
    ("voc_2012_trainval", "pascal-voc", "VOC2012/ImageSets/Main/trainval.txt"),
    ("ade20k_sem_seg_train", "ade20k", "ADEChallengeData2016/images/training"),
])
def test_absent_dataset_names_path_and_readme_section(builtin_root, name, section, fragment):
    with pytest.raises(FileNotFoundError) as info:
        DatasetCatalog.get(name)
    message = str(info.value)
    assert os.path.join(str(builtin_root), *fragment.split("/")) in message
    assert f"datasets/README.md#{section}" in message
    assert name in message


@pytest.mark.parametrize("name, script", [
    ("coco_2017_val_panoptic_separated", "prepare_panoptic_fpn.py"),
    ("ade20k_sem_seg_val", "prepare_ade20k_sem_seg.py"),
])
def test_absent_prepared_files_name_the_prepare_script(builtin_root, name, script):
    with pytest.raises(FileNotFoundError, match=re.escape(f"python datasets/{script}")):
        DatasetCatalog.get(name)
    assert (REPO_ROOT / "datasets" / script).is_file()


def test_detectron2_datasets_variable_is_honoured(builtin_root, tmp_path, monkeypatch):
    d2_root = tmp_path / "d2"
    monkeypatch.delenv("SEGTRON_DATASETS")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(d2_root))
    DatasetCatalog.data.clear()
    MetadataCatalog.data.clear()
    importlib.reload(builtin)
    assert MetadataCatalog.get("coco_2017_val").image_root == os.path.join(
        str(d2_root), "coco", "val2017")


def _github_anchor(heading):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_readme_has_a_section_for_every_error_anchor():
    text = (REPO_ROOT / "datasets" / "README.md").read_text()
    anchors = {_github_anchor(h) for h in re.findall(r"^## (.+)$", text, flags=re.M)}
    assert {"coco", "coco-panoptic", "lvis", "cityscapes", "pascal-voc", "ade20k",
            "shapes-synthetic"} <= anchors


# ---- PASCAL VOC -------------------------------------------------------------------------------

_VOC_XML = """<annotation>
  <folder>VOC2007</folder><filename>000005.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object><name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
    <bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox></object>
  <object><name>dog</name><difficult>1</difficult>
    <bndbox><xmin>1</xmin><ymin>1</ymin><xmax>500</xmax><ymax>375</ymax></bndbox></object>
</annotation>"""
_VOC_EMPTY_XML = """<annotation><size><width>353</width><height>500</height></size></annotation>"""


def _write_voc(dirname, split="trainval"):
    for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
        os.makedirs(os.path.join(dirname, sub), exist_ok=True)
    with open(os.path.join(dirname, "ImageSets", "Main", split + ".txt"), "w") as f:
        f.write("000005\n000007\n")
    with open(os.path.join(dirname, "Annotations", "000005.xml"), "w") as f:
        f.write(_VOC_XML)
    with open(os.path.join(dirname, "Annotations", "000007.xml"), "w") as f:
        f.write(_VOC_EMPTY_XML)


def test_load_voc_instances(tmp_path):
    _write_voc(str(tmp_path))
    dicts = load_voc_instances(str(tmp_path), "trainval", CLASS_NAMES)
    assert [d["image_id"] for d in dicts] == ["000005", "000007"]
    first = dicts[0]
    assert first["file_name"] == os.path.join(str(tmp_path), "JPEGImages", "000005.jpg")
    assert (first["height"], first["width"]) == (375, 500)
    chair, dog = first["annotations"]
    # 1-based inclusive pixel indices -> 0-based continuous coordinates.
    assert chair["category_id"] == 8 and chair["bbox"] == [262.0, 210.0, 324.0, 339.0]
    assert dog["category_id"] == 11 and dog["bbox"] == [0.0, 0.0, 500.0, 375.0]  # difficult kept
    assert chair["bbox_mode"] == BoxMode.XYXY_ABS
    assert dicts[1]["annotations"] == [] and dicts[1]["height"] == 500


def test_load_voc_instances_errors_name_the_file(tmp_path):
    _write_voc(str(tmp_path))
    with pytest.raises(ValueError, match=r"000005\.xml.*'chair'"):
        load_voc_instances(str(tmp_path), "trainval", ["dog"])
    with pytest.raises(FileNotFoundError, match=r"Main.test\.txt"):
        load_voc_instances(str(tmp_path), "test", CLASS_NAMES)


def test_builtin_voc_loads_from_root(builtin_root):
    _write_voc(os.path.join(str(builtin_root), "VOC2007"), split="test")
    dicts = DatasetCatalog.get("voc_2007_test")
    assert len(dicts) == 2 and dicts[0]["annotations"][0]["bbox"] == [262.0, 210.0, 324.0, 339.0]


# ---- Cityscapes -------------------------------------------------------------------------------

_CITY_W, _CITY_H = 12, 10
_CITY_OBJECTS = [
    {"label": "road", "polygon": [[0, 0], [11, 0], [11, 9], [0, 9]]},
    {"label": "car", "polygon": [[1, 1], [4, 1], [4, 3], [1, 3]]},            # pixels x1-4, y1-3
    {"label": "car", "polygon": [[0, 0], [11, 0], [11, 9], [0, 9]], "deleted": 1},
    {"label": "person", "polygon": [[3, 2], [6, 2], [6, 5], [3, 5]]},         # covers part of car
    {"label": "license plate", "polygon": [[3, 2], [6, 2], [6, 5], [3, 5]]},  # never drawn
    {"label": "cargroup", "polygon": [[8, 6], [10, 6], [10, 8], [8, 8]]},     # crowd, x8-10
    {"label": "pole", "polygon": [[10, 5], [11, 5], [11, 9], [10, 9]]},       # covers x=10
    {"label": "truck", "polygon": [[0, 8], [1, 8], [1, 9], [0, 9]]},
    {"label": "sidewalk", "polygon": [[0, 7], [2, 7], [2, 9], [0, 9]]},       # hides the truck
    {"label": "caravan", "polygon": [[9, 0], [11, 0], [11, 2], [9, 2]]},      # ignored in eval
]


def _expected_city_masks():
    car = np.zeros((_CITY_H, _CITY_W), np.uint8)
    car[1, 1:5] = 1
    car[2:4, 1:3] = 1
    person = np.zeros_like(car)
    person[2:6, 3:7] = 1
    crowd = np.zeros_like(car)
    crowd[6:9, 8:10] = 1
    # (category_id, iscrowd, bbox XYXY in pixel edges, mask)
    return [(2, False, (1.0, 1.0, 5.0, 4.0), car), (0, False, (3.0, 2.0, 7.0, 6.0), person),
            (2, True, (8.0, 6.0, 10.0, 9.0), crowd)]


def _write_cityscapes(root, split="train", stems=("aachen_000000_000019",)):
    image_dir = os.path.join(root, "leftImg8bit", split)
    gt_dir = os.path.join(root, "gtFine", split)
    expected = _expected_city_masks()
    for stem in stems:
        city = stem.split("_")[0]
        _touch_image(os.path.join(image_dir, city, stem + "_leftImg8bit.png"),
                     (_CITY_W, _CITY_H))
        gt = os.path.join(gt_dir, city, stem + "_gtFine_")
        _write_json(gt + "polygons.json", {"imgHeight": _CITY_H, "imgWidth": _CITY_W,
                                           "objects": _CITY_OBJECTS})
        inst = np.full((_CITY_H, _CITY_W), 7, np.uint16)  # road
        inst[0:3, 9:12] = 29000  # caravan: ignored in evaluation
        for value, (_, _, _, mask) in zip((26000, 24000, 26), expected):
            inst[mask.astype(bool)] = value
        Image.fromarray(inst).save(gt + "instanceIds.png")
        labels = np.full((_CITY_H, _CITY_W), 7, np.uint8)
        labels[0, 0] = 0
        labels[1, 1] = 26
        labels[0, 11] = 29
        Image.fromarray(labels).save(gt + "labelIds.png")
    return image_dir, gt_dir


def _assert_city_annotations(annos, to_polygons=True):
    expected = _expected_city_masks()
    assert len(annos) == len(expected)
    for anno, (category, crowd, bbox, mask) in zip(annos, expected):
        assert anno["category_id"] == category and anno["iscrowd"] == crowd
        assert anno["bbox"] == bbox and anno["bbox_mode"] == BoxMode.XYXY_ABS
        if to_polygons:
            decoded = _decode_polygons(anno["segmentation"], _CITY_H, _CITY_W)
        else:
            decoded = mask_util.decode(anno["segmentation"])
        np.testing.assert_array_equal(decoded, mask)


def test_load_cityscapes_instances_from_polygon_json(tmp_path):
    image_dir, gt_dir = _write_cityscapes(str(tmp_path))
    dicts = load_cityscapes_instances(image_dir, gt_dir)
    assert len(dicts) == 1
    d = dicts[0]
    assert d["file_name"] == os.path.join(image_dir, "aachen",
                                          "aachen_000000_000019_leftImg8bit.png")
    assert d["image_id"] == "aachen_000000_000019_leftImg8bit.png"
    assert (d["height"], d["width"]) == (_CITY_H, _CITY_W)
    _assert_city_annotations(d["annotations"])
    # The car's visible part is an L: its outline runs along pixel edges.
    car_outline = np.asarray(d["annotations"][0]["segmentation"][0]).reshape(-1, 2)
    assert {tuple(p) for p in car_outline} == {(1, 1), (5, 1), (5, 2), (3, 2), (3, 4), (1, 4)}
    person_outline = np.asarray(d["annotations"][1]["segmentation"][0]).reshape(-1, 2)
    assert {tuple(p) for p in person_outline} == {(3, 2), (7, 2), (7, 6), (3, 6)}


def test_load_cityscapes_instances_as_masks_and_from_pngs(tmp_path):
    image_dir, gt_dir = _write_cityscapes(str(tmp_path))
    rle = load_cityscapes_instances(image_dir, gt_dir, from_json=True, to_polygons=False)
    _assert_city_annotations(rle[0]["annotations"], to_polygons=False)
    from_png = load_cityscapes_instances(image_dir, gt_dir, from_json=False, to_polygons=True)
    annos = sorted(from_png[0]["annotations"], key=lambda a: (a["bbox"][0], a["bbox"][1]))
    _assert_city_annotations(annos)  # same order: car, person, crowd (sorted by box)


def test_load_cityscapes_instances_process_pool(tmp_path, monkeypatch, caplog):
    stems = ("aachen_000000_000019", "bremen_000001_000019", "bremen_000002_000019")
    image_dir, gt_dir = _write_cityscapes(str(tmp_path), stems=stems)
    serial = load_cityscapes_instances(image_dir, gt_dir)
    monkeypatch.setattr(cityscapes, "_POOL_MIN_FILES", 2)
    monkeypatch.setattr(cityscapes, "_num_workers", lambda: 2)
    caplog.set_level(logging.INFO, logger=cityscapes.__name__)
    pooled = load_cityscapes_instances(image_dir, gt_dir)
    assert "with 2 processes" in caplog.text
    assert [d["image_id"] for d in pooled] == [s + "_leftImg8bit.png" for s in stems]
    assert pooled == serial


def test_load_cityscapes_semantic_and_prepare_script(tmp_path):
    image_dir, gt_dir = _write_cityscapes(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="prepare_cityscapes_sem_seg.py"):
        load_cityscapes_semantic(image_dir, gt_dir)
    assert _load_script("prepare_cityscapes_sem_seg").prepare(
        os.path.join(str(tmp_path), "gtFine")) == 1
    dicts = load_cityscapes_semantic(image_dir, gt_dir)
    assert len(dicts) == 1 and (dicts[0]["height"], dicts[0]["width"]) == (_CITY_H, _CITY_W)
    train_ids = np.asarray(Image.open(dicts[0]["sem_seg_file_name"]))
    assert dicts[0]["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png")
    # road 7 -> 0, unlabeled 0 -> 255, car 26 -> 13, caravan 29 -> 255
    assert train_ids[5, 5] == 0 and train_ids[0, 0] == 255
    assert train_ids[1, 1] == 13 and train_ids[0, 11] == 255


def test_builtin_cityscapes_loads_from_root(builtin_root):
    _write_cityscapes(os.path.join(str(builtin_root), "cityscapes"), split="val")
    dicts = DatasetCatalog.get("cityscapes_fine_instance_seg_val")
    _assert_city_annotations(dicts[0]["annotations"])


# ---- COCO panoptic ----------------------------------------------------------------------------

# Panoptic png: segment ids 1 (person), 300 (road) and 70000 (rug-merged); 0 is unlabeled.
_PAN_SEGMENTS = [
    {"id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 2, 2], "area": 4},
    {"id": 300, "category_id": 149, "iscrowd": 0, "bbox": [2, 0, 4, 3], "area": 12},
    {"id": 70000, "category_id": 200, "iscrowd": 0, "bbox": [0, 3, 6, 1], "area": 6},
]


def _write_coco_panoptic(coco_dir):
    segment_ids = np.zeros((4, 6), np.int64)
    segment_ids[0:2, 0:2] = 1
    segment_ids[0:3, 2:6] = 300
    segment_ids[3, :] = 70000
    rgb = np.stack([segment_ids % 256, segment_ids // 256 % 256, segment_ids // 65536], -1)
    os.makedirs(os.path.join(coco_dir, "panoptic_val2017"))
    Image.fromarray(rgb.astype(np.uint8)).save(
        os.path.join(coco_dir, "panoptic_val2017", "000000000139.png"))
    _touch_image(os.path.join(coco_dir, "val2017", "000000000139.jpg"), (6, 4))
    _write_json(os.path.join(coco_dir, "annotations", "panoptic_val2017.json"), {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": 4, "width": 6}],
        "annotations": [{"image_id": 139, "file_name": "000000000139.png",
                         "segments_info": _PAN_SEGMENTS}],
        "categories": [{"id": c["id"], "name": c["name"], "isthing": c["isthing"]}
                       for c in COCO_CATEGORIES],
    })
    return segment_ids


def test_load_coco_panoptic_json(tmp_path):
    coco = str(tmp_path)
    _write_coco_panoptic(coco)
    json_file = os.path.join(coco, "annotations", "panoptic_val2017.json")
    image_dir, gt_dir = os.path.join(coco, "val2017"), os.path.join(coco, "panoptic_val2017")
    standard = load_coco_panoptic_json(json_file, image_dir, gt_dir,
                                       _get_builtin_metadata("coco_panoptic_standard"))
    assert len(standard) == 1
    d = standard[0]
    assert d["image_id"] == 139
    assert d["file_name"] == os.path.join(image_dir, "000000000139.jpg")
    assert d["pan_seg_file_name"] == os.path.join(gt_dir, "000000000139.png")
    got = [(s["id"], s["category_id"], s["isthing"]) for s in d["segments_info"]]
    assert got == [(1, 0, True), (300, 100, False), (70000, 132, False)]

    separated = load_coco_panoptic_json(json_file, image_dir, gt_dir,
                                        _get_builtin_metadata("coco_panoptic_separated"))
    got = [(s["category_id"], s["isthing"]) for s in separated[0]["segments_info"]]
    assert got == [(0, True), (21, False), (53, False)]

    with pytest.raises(KeyError, match="category_id 149"):
        load_coco_panoptic_json(json_file, image_dir, gt_dir, _get_builtin_metadata("coco"))


def test_builtin_coco_panoptic_standard_and_separated(builtin_root):
    coco = os.path.join(str(builtin_root), "coco")
    segment_ids = _write_coco_panoptic(coco)

    dicts = DatasetCatalog.get("coco_2017_val_panoptic")
    assert [s["category_id"] for s in dicts[0]["segments_info"]] == [0, 100, 132]

    # Separated: instances json + semantic pngs made by datasets/prepare_panoptic_fpn.py.
    things = [c for c in COCO_CATEGORIES if c["isthing"]]
    _write_json(os.path.join(coco, "annotations", "instances_val2017.json"), {
        "images": [{"id": 139, "file_name": "000000000139.jpg", "height": 4, "width": 6}],
        "annotations": [{"id": 5, "image_id": 139, "category_id": 1, "iscrowd": 0,
                         "bbox": [0, 0, 2, 2], "area": 4,
                         "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}],
        "categories": [{"id": c["id"], "name": c["name"]} for c in things],
    })
    prepare = _load_script("prepare_panoptic_fpn")
    assert prepare.prepare(os.path.join(coco, "annotations", "panoptic_val2017.json"),
                           os.path.join(coco, "panoptic_val2017"),
                           os.path.join(coco, "panoptic_stuff_val2017")) == 1
    semantic = np.asarray(Image.open(os.path.join(coco, "panoptic_stuff_val2017",
                                                  "000000000139.png")))
    expected = np.select([segment_ids == 1, segment_ids == 300, segment_ids == 70000],
                         [0, 21, 53], 255)
    np.testing.assert_array_equal(semantic, expected)

    merged = DatasetCatalog.get("coco_2017_val_panoptic_separated")
    assert len(merged) == 1
    assert merged[0]["sem_seg_file_name"].endswith(
        os.path.join("panoptic_stuff_val2017", "000000000139.png"))
    assert merged[0]["annotations"][0]["category_id"] == 0
    stuffonly = DatasetCatalog.get("coco_2017_val_panoptic_stuffonly")
    assert [d["file_name"] for d in stuffonly] == [merged[0]["file_name"]]


# ---- LVIS -------------------------------------------------------------------------------------

_LVIS_JSON = {
    "categories": [
        {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"],
         "frequency": "c", "image_count": 64},
        {"id": 2, "name": "air_conditioner", "synonyms": ["air_conditioner"],
         "frequency": "f", "image_count": 364},
        {"id": 3, "name": "airplane", "synonyms": ["airplane", "aeroplane"],
         "frequency": "f", "image_count": 1911},
    ],
    "images": [
        {"id": 397133, "coco_url": "http://images.cocodataset.org/val2017/000000397133.jpg",
         "height": 427, "width": 640, "neg_category_ids": [2],
         "not_exhaustive_category_ids": [3]},
        {"id": 37777, "coco_url": "http://images.cocodataset.org/train2017/000000037777.jpg",
         "height": 230, "width": 352},
    ],
    "annotations": [
        {"id": 5, "image_id": 397133, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 1200,
         "segmentation": [[10, 20, 40, 20, 40, 60, 10, 60]]},
        {"id": 6, "image_id": 397133, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25,
         "segmentation": [[0, 0, 5, 0, 5, 5]]},
    ],
}


def test_builtin_lvis_loads_and_sets_classes_from_json(builtin_root):
    _write_json(os.path.join(str(builtin_root), "lvis", "lvis_v1_val.json"), _LVIS_JSON)
    os.makedirs(os.path.join(str(builtin_root), "coco"))
    dicts = DatasetCatalog.get("lvis_v1_val")
    assert [d["image_id"] for d in dicts] == [37777, 397133]
    coco = os.path.join(str(builtin_root), "coco")
    assert dicts[0]["file_name"] == os.path.join(coco, "train2017", "000000037777.jpg")
    assert dicts[1]["file_name"] == os.path.join(coco, "val2017", "000000397133.jpg")
    assert dicts[0]["annotations"] == [] and dicts[0]["neg_category_ids"] == []
    assert dicts[1]["neg_category_ids"] == [2] and dicts[1]["not_exhaustive_category_ids"] == [3]
    first = dicts[1]["annotations"][0]
    assert first["category_id"] == 2 and first["bbox"] == [10, 20, 30, 40]
    assert first["bbox_mode"] == BoxMode.XYWH_ABS
    meta = MetadataCatalog.get("lvis_v1_val")
    assert meta.thing_classes == ["aerosol_can", "air_conditioner", "airplane"]
    assert meta.class_image_count[2] == {"id": 3, "image_count": 1911}


def test_load_lvis_json_rejects_short_polygons(tmp_path):
    data = json.loads(json.dumps(_LVIS_JSON))
    data["annotations"][1]["segmentation"] = [[0, 0, 5, 0]]
    path = str(tmp_path / "lvis.json")
    _write_json(path, data)
    with pytest.raises(ValueError, match="annotation 6"):
        load_lvis_json(path, str(tmp_path))


# ---- ADE20K -----------------------------------------------------------------------------------


def test_builtin_ade20k_with_prepare_script(builtin_root):
    ade = os.path.join(str(builtin_root), "ADEChallengeData2016")
    _touch_image(os.path.join(ade, "images", "validation", "ADE_val_00000001.jpg"), (3, 1))
    os.makedirs(os.path.join(ade, "annotations", "training"))
    os.makedirs(os.path.join(ade, "annotations", "validation"))
    Image.fromarray(np.array([[0, 1, 150]], np.uint8)).save(
        os.path.join(ade, "annotations", "validation", "ADE_val_00000001.png"))
    assert _load_script("prepare_ade20k_sem_seg").prepare(ade) == 1
    dicts = DatasetCatalog.get("ade20k_sem_seg_val")
    assert len(dicts) == 1
    assert dicts[0]["file_name"].endswith("ADE_val_00000001.jpg")
    labels = np.asarray(Image.open(dicts[0]["sem_seg_file_name"]))
    np.testing.assert_array_equal(labels, [[255, 0, 149]])
