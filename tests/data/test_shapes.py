"""The synthetic shapes dataset: determinism, statistics, annotation geometry, registration and
safe generation on first use."""

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets import shapes, shapes_drawing
from segtron.data.datasets.shapes import (
    SHAPES_CLASSES,
    generate_shapes_dataset,
    prepare_shapes_split,
    register_shapes,
    register_shapes_instances,
    shapes_dataset_summary,
)
from tests.conftest import REPO_ROOT

# pycocotools 2.0.x under numpy 2 warns on every mask decode; not this module's concern.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _files(root: Path, split: str):
    """Bytes of the json and of every PNG of ``split`` under ``root``."""
    json_bytes = (root / "annotations" / f"instances_{split}.json").read_bytes()
    pngs = {p.name: p.read_bytes() for p in sorted((root / split).glob("*.png"))}
    return json_bytes, pngs


def _decode(segm, height, width) -> np.ndarray:
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    else:
        rle = {"size": segm["size"], "counts": segm["counts"].encode("ascii")}
    return mask_util.decode(rle).astype(bool)


@pytest.fixture(scope="module")
def split60(tmp_path_factory):
    """A 60-image split (seed 5), generated once for the statistics tests."""
    root = tmp_path_factory.mktemp("shapes60")
    json_file = generate_shapes_dataset(str(root), "train", 60, seed=5, num_workers=1)
    with open(json_file) as f:
        return root, json.load(f)


def test_same_seed_is_byte_identical_whatever_the_workers(tmp_path):
    generate_shapes_dataset(str(tmp_path / "a"), "val", 20, seed=3, num_workers=1)
    generate_shapes_dataset(str(tmp_path / "b"), "val", 20, seed=3, num_workers=2)
    json_a, pngs_a = _files(tmp_path / "a", "val")
    json_b, pngs_b = _files(tmp_path / "b", "val")
    assert json_a == json_b
    assert len(pngs_a) == 20 and pngs_a == pngs_b


def test_different_seeds_or_splits_differ(tmp_path):
    generate_shapes_dataset(str(tmp_path / "a"), "val", 4, seed=3, num_workers=1)
    generate_shapes_dataset(str(tmp_path / "b"), "val", 4, seed=4, num_workers=1)
    generate_shapes_dataset(str(tmp_path / "c"), "train", 4, seed=3, num_workers=1)
    json_a, pngs_a = _files(tmp_path / "a", "val")
    json_b, pngs_b = _files(tmp_path / "b", "val")
    json_c, pngs_c = _files(tmp_path / "c", "train")
    assert json_a != json_b and json_a != json_c
    assert all(pngs_a[k] != pngs_b[k] and pngs_a[k] != pngs_c[k] for k in pngs_a)


def test_prefix_of_a_split_is_the_smaller_split(tmp_path):
    generate_shapes_dataset(str(tmp_path / "a"), "train", 3, seed=0, num_workers=1)
    generate_shapes_dataset(str(tmp_path / "b"), "train", 6, seed=0, num_workers=1)
    _, pngs_a = _files(tmp_path / "a", "train")
    _, pngs_b = _files(tmp_path / "b", "train")
    assert all(pngs_b[k] == v for k, v in pngs_a.items())


def test_coco_structure_and_files(split60):
    root, coco = split60
    assert [c["name"] for c in coco["categories"]] == list(SHAPES_CLASSES)
    assert len(coco["images"]) == 60
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    sizes = set()
    for img in coco["images"]:
        path = root / "train" / img["file_name"]
        assert path.is_file(), path
        image = cv2.imread(str(path))
        assert image.shape == (img["height"], img["width"], 3)
        assert 224 <= img["height"] <= 288 and 224 <= img["width"] <= 288
        sizes.add((img["height"], img["width"]))
    assert len(sizes) > 30  # sizes vary, so aspect-ratio grouping and resizing get exercised


def test_statistics(split60):
    root, coco = split60
    summary = shapes_dataset_summary(str(root / "annotations" / "instances_train.json"))
    lo, mean, hi = summary["objects_per_image"]
    assert 1 <= lo and hi <= 8 and hi >= 6 and 2.5 < mean < 6
    assert sum(v > 0 for v in summary["per_class"].values()) >= 4
    assert all(summary["per_size"][k] > 0 for k in ("small", "medium", "large"))
    assert summary["num_rle"] >= 10  # occluded objects, stored as RLE
    assert summary["num_objects"] - summary["num_rle"] >= 10  # unoccluded ones, as polygons
    assert all(a["iscrowd"] == 0 for a in coco["annotations"])


def test_geometry_bbox_area_and_polygons(split60):
    _, coco = split60
    images = {img["id"]: img for img in coco["images"]}
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        mask = _decode(ann["segmentation"], img["height"], img["width"])
        ys, xs = np.nonzero(mask)
        box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        assert ann["bbox"] == [float(v) for v in box], ann["id"]
        assert ann["area"] == float(mask.sum()), ann["id"]
        assert ann["area"] >= shapes_drawing.MIN_VISIBLE_PIXELS
        if isinstance(ann["segmentation"], list):  # a polygon is a whole, unoccluded shape
            assert len(ann["segmentation"]) == 1 and len(ann["segmentation"][0]) >= 6


def test_visible_masks_do_not_overlap_and_match_coco_eval(split60):
    """Visible masks of one image are disjoint, and COCOeval scores the ground truth as 1.0."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    _, coco = split60
    images = {img["id"]: img for img in coco["images"]}
    union = {}
    for ann in coco["annotations"]:
        img = images[ann["image_id"]]
        mask = _decode(ann["segmentation"], img["height"], img["width"])
        seen = union.setdefault(ann["image_id"], np.zeros_like(mask))
        assert not (seen & mask).any(), ann["id"]
        seen |= mask

    gt = COCO()
    gt.dataset = coco
    gt.createIndex()
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 1.0,
                "segmentation": a["segmentation"] if isinstance(a["segmentation"], dict)
                else mask_util.merge(mask_util.frPyObjects(
                    a["segmentation"], images[a["image_id"]]["height"],
                    images[a["image_id"]]["width"]))}
               for a in coco["annotations"]]
    for r in results:
        if isinstance(r["segmentation"]["counts"], bytes):
            r["segmentation"]["counts"] = r["segmentation"]["counts"].decode("ascii")
    evaluator = COCOeval(gt, gt.loadRes(results), "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, -1]  # IoU .5, area all, 100 dets
    assert np.all(precision[precision > -1] == 1.0)


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="num_images"):
        generate_shapes_dataset(str(tmp_path), "val", 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        generate_shapes_dataset(str(tmp_path), "val", 2, seed=-1)
    with pytest.raises(ValueError, match="split name"):
        generate_shapes_dataset(str(tmp_path), "../x", 2, seed=0)


def test_registration_returns_detectron2_dicts(tmp_path):
    name = f"shapes_test_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "shapes"
    register_shapes_instances(name, str(root), "val", 5, seed=7)
    try:
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(SHAPES_CLASSES)
        assert len(meta.thing_colors) == len(SHAPES_CLASSES)
        assert meta.evaluator_type == "coco"
        assert not os.path.exists(meta.json_file)  # generated on first use only
        dicts = DatasetCatalog.get(name)
        assert os.path.isfile(meta.json_file) and os.path.isdir(meta.image_root)
        assert len(dicts) == 5
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(5)}
        for d in dicts:
            assert os.path.isfile(d["file_name"])
            assert {"height", "width", "image_id", "annotations"} <= set(d)
            for obj in d["annotations"]:
                assert 0 <= obj["category_id"] < len(SHAPES_CLASSES)
                assert obj["bbox_mode"].name == "XYWH_ABS" and obj["iscrowd"] == 0
                assert isinstance(obj["segmentation"], (list, dict))
        marker = root / ".val_complete.json"
        stamp = marker.stat().st_mtime_ns
        assert len(DatasetCatalog.get(name)) == 5  # second use: no regeneration
        assert marker.stat().st_mtime_ns == stamp
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_register_shapes_names_and_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "DatasetCatalog", type(DatasetCatalog)())
    monkeypatch.setattr(shapes, "MetadataCatalog", type(MetadataCatalog)())
    register_shapes(str(tmp_path))
    assert sorted(shapes.DatasetCatalog.list()) == ["shapes_train", "shapes_val"]
    meta = shapes.MetadataCatalog.get("shapes_val")
    assert meta.json_file == os.path.join(str(tmp_path), "shapes", "annotations",
                                          "instances_val.json")
    assert meta.image_root == os.path.join(str(tmp_path), "shapes", "val")
    assert not os.path.exists(meta.json_file)


def test_incomplete_split_is_regenerated(tmp_path):
    root = tmp_path / "shapes"
    reference = tmp_path / "reference"
    generate_shapes_dataset(str(reference), "val", 4, seed=2, num_workers=1)
    # A half-written split: images and a truncated json, no completion marker, a stale tmp dir.
    (root / "val").mkdir(parents=True)
    (root / "val" / "000000.png").write_bytes(b"garbage")
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val.json").write_text('{"images": [')
    (root / ".tmp_val_crashed").mkdir()
    json_file, image_root = prepare_shapes_split(str(root), "val", 4, seed=2, num_workers=1)
    assert _files(root, "val") == _files(reference, "val")
    assert not (root / ".tmp_val_crashed").exists()
    assert not [p for p in os.listdir(root) if p.startswith(".tmp_")]
    # Complete: kept even when asked with other parameters, unless they are required.
    assert prepare_shapes_split(str(root), "val", 9, seed=2) == (json_file, image_root)
    assert len(list((root / "val").glob("*.png"))) == 4
    prepare_shapes_split(str(root), "val", 6, seed=2, num_workers=1, require_same_params=True)
    assert len(list((root / "val").glob("*.png"))) == 6


_CHILD = textwrap.dedent("""
    import json, os, sys, time
    from segtron.data.datasets.shapes import prepare_shapes_split
    root, me, other = sys.argv[1], sys.argv[2], sys.argv[3]
    open(os.path.join(root, me), "w").close()
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(root, other)):  # start together
        assert time.time() < deadline, "the other process never started"
        time.sleep(0.005)
    json_file, _ = prepare_shapes_split(os.path.join(root, "shapes"), "val", 24, 11,
                                        num_workers=1)
    with open(os.path.join(root, "shapes", ".val_complete.json")) as f:
        print(json.load(f)["generated_by_pid"])
""")


def test_concurrent_first_use_generates_once(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), me, other],
                              cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for me, other in (("ready0", "ready1"), ("ready1", "ready0"))]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    generators = {out.strip() for out, _ in outputs}
    assert len(generators) == 1  # both saw the data written by the same single process
    assert generators <= {str(p.pid) for p in procs}
    reference = tmp_path / "reference"
    generate_shapes_dataset(str(reference), "val", 24, seed=11, num_workers=1)
    root = tmp_path / "shapes"
    assert _files(root, "val") == _files(reference, "val")
    assert not [p for p in os.listdir(root) if p.startswith(".tmp_")]


def test_prepare_script_runs_and_prints_a_summary(tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the script finds the checkout by itself
    result = subprocess.run(
        [sys.executable, "datasets/prepare_shapes.py", "--root", str(tmp_path), "--num-train",
         "6", "--num-val", "3", "--workers", "1"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train: 6 images" in result.stdout and "val: 3 images" in result.stdout
    assert "per size:" in result.stdout and "occlusion:" in result.stdout
    assert (tmp_path / "shapes" / ".train_complete.json").is_file()


def test_unwritable_root_fails_clearly(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the dataset directory should be")
    with pytest.raises(OSError, match="SEGTRON_DATASETS"):
        prepare_shapes_split(str(blocker / "shapes"), "val", 2, seed=0)


def test_missing_image_of_a_generated_split_says_how_to_redraw(tmp_path):
    """A generated split that lost a file: the error gives the marker to delete (not "check
    image_root", which is right by construction), and following it redraws the split."""
    name = f"st_redraw_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "shapes"
    register_shapes_instances(name, str(root), "val", 2, 4, image_size=64)
    try:
        first = DatasetCatalog.get(name)
        os.remove(first[1]["file_name"])
        with pytest.raises(ValueError) as e:
            DatasetCatalog.get(name)
        msg = str(e.value)
        marker = str(root / ".val_complete.json")
        assert first[1]["file_name"] in msg and marker in msg and "drawn again" in msg
        assert "Check image_root" not in msg
        os.remove(marker)  # what the message says to do
        assert DatasetCatalog.get(name) == first
        assert os.path.isfile(first[1]["file_name"])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
