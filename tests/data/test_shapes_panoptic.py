"""The shapes dataset with stuff regions (semantic and panoptic splits): every labelling agrees
with the others and with the pixels, the registrations load and map, and the instance splits
``shapes_train`` / ``shapes_val`` are not changed by any of it."""

import hashlib
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
from PIL import Image
from pycocotools import mask as mask_util

from segtron.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from segtron.data.datasets.coco_panoptic import load_coco_panoptic_json
from segtron.data.datasets.root import get_datasets_root
from segtron.data.datasets.shapes import generate_shapes_dataset
from segtron.data.datasets.shapes_panoptic import (
    generate_shapes_panoptic_dataset,
    register_shapes_panoptic_split,
    register_shapes_sem_seg,
    shapes_panoptic_standard_metadata,
)
from tests.conftest import REPO_ROOT

# pycocotools 2.0.x under numpy 2 warns on every mask decode; not this module's concern.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# The labelling the dataset promises (written out here, not read from the code under test).
THINGS = ["circle", "square", "triangle", "star", "cross"]  # json ids 1..5, semantic 0..4
STUFF = ["stripes", "checks", "dots", "noise"]  # json ids 6..9, semantic 5..8, separated 1..4


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Six 256-px images (seed 3): large enough that each texture shows several periods."""
    root = tmp_path_factory.mktemp("shapes_panoptic")
    paths = generate_shapes_panoptic_dataset(str(root), "val", 6, seed=3, num_workers=1)
    with open(paths["instances_json"]) as f:
        instances = json.load(f)
    with open(paths["panoptic_json"]) as f:
        panoptic = json.load(f)
    return paths, instances, panoptic


def _images(split):
    """Per image: its json entry, panoptic annotation, pixels and the three label maps."""
    paths, _, panoptic = split
    anns = {a["image_id"]: a for a in panoptic["annotations"]}
    for img in panoptic["images"]:
        name = img["file_name"]
        rgb = np.asarray(Image.open(os.path.join(paths["panoptic_root"], name)).convert("RGB"))
        rgb = rgb.astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 ** 2 * rgb[..., 2]
        read = lambda key: cv2.imread(os.path.join(paths[key], name), cv2.IMREAD_UNCHANGED)
        yield (img, anns[img["id"]], read("image_root"), read("sem_seg_root"), ids,
               read("panoptic_stuff_root"))


def _decode(segm, height, width) -> np.ndarray:
    if isinstance(segm, list):
        rle = mask_util.merge(mask_util.frPyObjects(segm, height, width))
    else:
        rle = {"size": segm["size"], "counts": segm["counts"].encode("ascii")}
    return mask_util.decode(rle).astype(bool)


def _tight_box(mask):
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
            int(ys.max() - ys.min() + 1)]


# ---- the instance splits are unchanged ------------------------------------------------------

# sha256 of the decoded pixels and of the json annotations of the first images of shapes_train
# (seed 0) and shapes_val (seed 1), recorded with the generator as committed before the stuff
# variant was added. (Pixels rather than PNG bytes: the bytes also depend on the zlib build.)
_INSTANCE_HASHES = {
    ("train", "000000.png"): (
        (251, 231, 3), "d699247b5fc848aed6a226a6a24e06952cf454a7f36d52509c5bd4ffeb4d200f",
        "62052579858febf7dd4ac939e77ed4b9e391d464b781da7e607fe419e8e498a6"),
    ("train", "000001.png"): (
        (286, 285, 3), "60008e1264cb05ecc0b219404cc7a7fdd3ec2551af158ead34c85cb4a3154fa6",
        "6c47e0c5c6a60c3884cd869f7dd86f1a5c26660f53192965e7c547c2bda56e3a"),
    ("val", "000000.png"): (
        (231, 239, 3), "2ec37374d0052a73b5bce7e1ec3dd7dd7cabd733870f4b8c12452d710f386314",
        "7a6bfa774be4081d923932e5b91402495c02a7723a5b97d71773ca7967e12d7d"),
    ("val", "000001.png"): (
        (239, 271, 3), "29f78f220756948149e14166b56fe7093f34f0db695713295534bf2a209e483e",
        "4a67a420a7355ecac3b68f872c3fb695a71720892a7716d9736243b20c1434f4"),
    ("val", "000002.png"): (
        (280, 266, 3), "f70c4dc04a7f6d2b454ac34c091986f31a1f4868940387a5c16c8143bddf26bd",
        "0a369ae0d26d7468395bb47504c563f2b72011d1ac980c2404b0b4e366c9aea2"),
}


def test_instance_generator_output_is_unchanged(tmp_path):
    got = {}
    for split_name, seed, count in (("train", 0, 2), ("val", 1, 3)):
        out = tmp_path / split_name
        json_file = generate_shapes_dataset(str(out), split_name, count, seed, num_workers=1)
        with open(json_file) as f:
            coco = json.load(f)
        for img in coco["images"]:
            pixels = cv2.imread(str(out / split_name / img["file_name"]), cv2.IMREAD_UNCHANGED)
            anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
            got[(split_name, img["file_name"])] = (
                pixels.shape, hashlib.sha256(pixels.tobytes()).hexdigest(),
                hashlib.sha256(json.dumps(anns, sort_keys=True).encode()).hexdigest())
    assert got == _INSTANCE_HASHES


# ---- the labellings agree --------------------------------------------------------------------


def test_categories_and_file_shapes(split):
    paths, instances, panoptic = split
    assert [(c["id"], c["name"], c["isthing"]) for c in panoptic["categories"]] == (
        [(i + 1, n, 1) for i, n in enumerate(THINGS)]
        + [(i + 6, n, 0) for i, n in enumerate(STUFF)])
    assert [(c["id"], c["name"]) for c in instances["categories"]] == (
        [(i + 1, n) for i, n in enumerate(THINGS)])
    assert [i["id"] for i in instances["images"]] == [i["id"] for i in panoptic["images"]]
    for img, ann, image, semantic, ids, separated in _images(split):
        size = (img["height"], img["width"])
        assert ann["file_name"] == img["file_name"]
        assert image.shape == size + (3,) and image.dtype == np.uint8
        assert semantic.shape == size and semantic.dtype == np.uint8
        assert separated.shape == size and separated.dtype == np.uint8
        assert ids.shape == size


def test_semantic_png_agrees_with_panoptic_png_and_json(split):
    for img, ann, _, semantic, ids, _ in _images(split):
        segments = {s["id"]: s for s in ann["segments_info"]}
        assert len(segments) == len(ann["segments_info"])
        assert set(np.unique(ids).tolist()) == set(segments), img  # every pixel labelled
        stuff_categories = [s["category_id"] for s in segments.values() if s["category_id"] > 5]
        assert 1 <= len(stuff_categories) == len(set(stuff_categories)) <= 4
        for seg_id, seg in segments.items():
            mask = ids == seg_id
            assert seg["iscrowd"] == 0 and 1 <= seg["category_id"] <= 9
            assert seg["area"] == int(mask.sum()) and seg["bbox"] == _tight_box(mask)
            # Things: the instance's category; stuff: the region's class (6..9 -> 5..8).
            assert np.all(semantic[mask] == seg["category_id"] - 1), (img["id"], seg_id)


def test_instance_masks_are_the_thing_segments(split):
    _, instances, _ = split
    by_image = {}
    for a in instances["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    for img, ann, _, _, ids, _ in _images(split):
        things = {s["id"]: s for s in ann["segments_info"] if s["category_id"] <= 5}
        matched = set()
        for obj in by_image.get(img["id"], []):
            mask = _decode(obj["segmentation"], img["height"], img["width"])
            under = np.unique(ids[mask])
            assert len(under) == 1 and int(under[0]) in things, (img["id"], obj["id"])
            seg = things[int(under[0])]
            assert np.array_equal(mask, ids == seg["id"])
            assert obj["category_id"] == seg["category_id"]
            assert obj["area"] == seg["area"] and obj["bbox"] == [float(v) for v in seg["bbox"]]
            matched.add(seg["id"])
        assert matched == set(things)


def test_separated_png_is_things_zero_and_stuff_one_to_four(split):
    for img, ann, _, _, ids, separated in _images(split):
        category = {s["id"]: s["category_id"] for s in ann["segments_info"]}
        expected = np.full(ids.shape, 255, np.int64)
        for seg_id, cat in category.items():
            expected[ids == seg_id] = 0 if cat <= 5 else cat - 5
        np.testing.assert_array_equal(separated, expected)
        assert set(np.unique(separated).tolist()) <= {0, 1, 2, 3, 4}


def _texture_statistics(image: np.ndarray, mask: np.ndarray):
    """Of the pixels ``mask`` of ``image``: the coherence of the structure tensor (1: all edges
    one way, 0: no main direction); the fraction of pixels within 30 of one of two k-means
    colours; and the share of the smaller of the two k-means clusters."""
    ys, xs = np.nonzero(mask)
    pixels = image[ys, xs].astype(np.float32)
    f = image.astype(np.float32)
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3)[ys, xs].astype(np.float64)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3)[ys, xs].astype(np.float64)
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy ** 2) / max(jxx + jyy, 1e-9)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)
    _, labels, centres = cv2.kmeans(pixels, 2, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    labels = labels.ravel()
    two_colors = float((np.linalg.norm(pixels - centres[labels], axis=1) < 30).mean())
    minority = float(min(labels.mean(), 1.0 - labels.mean()))
    return coherence, two_colors, minority


def test_stuff_class_is_told_by_its_texture(split):
    """Each stuff segment's pixels (away from its edges and the shapes) look like its class:
    stripes are two colours in equal shares with edges one way; checks the same with edges both
    ways; dots are two colours, the dots' one much rarer; noise is not two colours."""
    seen = set()
    for img, _, image, semantic, _, _ in _images(split):
        for label, name in enumerate(STUFF, start=5):
            inner = cv2.erode((semantic == label).astype(np.uint8), np.ones((5, 5), np.uint8))
            if inner.sum() < 300:
                continue
            coherence, two_colors, minority = _texture_statistics(image, inner.astype(bool))
            where = (img["id"], name, round(coherence, 2), round(two_colors, 2), round(minority, 2))
            seen.add(name)
            if name == "noise":
                assert two_colors < 0.4, where
            elif name == "stripes":
                assert two_colors > 0.5 and coherence > 0.6 and minority > 0.3, where
            elif name == "checks":
                assert two_colors > 0.5 and coherence < 0.4 and minority > 0.3, where
            else:  # dots
                assert two_colors > 0.5 and coherence < 0.4 and minority < 0.3, where
    assert seen == set(STUFF)


# ---- registration ----------------------------------------------------------------------------


def _mapper() -> DatasetMapper:
    return DatasetMapper(is_train=True, augmentations=[], image_format="BGR",
                         use_instance_mask=True, instance_mask_format="bitmask")


def test_registrations_generate_on_first_use_and_map(tmp_path):
    tag = uuid.uuid4().hex[:8]
    sem_name, prefix = f"st_sem_{tag}", f"st_pan_{tag}"
    names = [sem_name, prefix, prefix + "_separated", prefix + "_stuffonly"]
    root = tmp_path / "shapes_panoptic"
    register_shapes_sem_seg(sem_name, str(root), "val", 3, 5, image_size=128)
    register_shapes_panoptic_split(prefix, str(root), "val", 3, 5, image_size=128)
    try:
        meta = MetadataCatalog.get(sem_name)
        assert meta.stuff_classes == THINGS + STUFF and len(meta.stuff_colors) == 9
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
        standard = MetadataCatalog.get(prefix)
        assert standard.evaluator_type == "coco_panoptic_seg"
        assert standard.thing_classes == THINGS + STUFF == standard.stuff_classes
        assert standard.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}
        assert standard.stuff_dataset_id_to_contiguous_id == {6: 5, 7: 6, 8: 7, 9: 8}
        assert standard.panoptic_root == str(root / "panoptic_val")
        assert standard.panoptic_json == str(root / "annotations" / "panoptic_val.json")
        separated = MetadataCatalog.get(prefix + "_separated")
        assert separated.evaluator_type == "coco_panoptic_seg"
        assert separated.thing_classes == THINGS
        assert separated.stuff_classes == ["things"] + STUFF
        assert separated.stuff_dataset_id_to_contiguous_id == {0: 0, 6: 1, 7: 2, 8: 3, 9: 4}
        assert MetadataCatalog.get(prefix + "_stuffonly").evaluator_type == "sem_seg"
        assert not root.exists()  # generated on first use only

        sem_dicts = DatasetCatalog.get(sem_name)
        marker = root / ".val_complete.json"
        stamp = marker.stat().st_mtime_ns
        assert len(sem_dicts) == 3
        for d in sem_dicts:
            assert {"file_name", "sem_seg_file_name", "height", "width", "image_id"} <= set(d)
            out = _mapper()(d)
            assert tuple(out["image"].shape) == (3, d["height"], d["width"])
            assert tuple(out["sem_seg"].shape) == (d["height"], d["width"])
            assert 0 <= int(out["sem_seg"].min()) and int(out["sem_seg"].max()) <= 8

        standard_dicts = DatasetCatalog.get(prefix)
        direct = load_coco_panoptic_json(standard.panoptic_json, str(root / "val"),
                                         standard.panoptic_root,
                                         shapes_panoptic_standard_metadata())
        assert standard_dicts == direct and len(direct) == 3
        for d in direct:
            assert os.path.isfile(d["file_name"]) and d["file_name"].endswith(".png")
            assert os.path.isfile(d["pan_seg_file_name"])
            for s in d["segments_info"]:
                assert s["isthing"] == (s["category_id"] <= 4) and 0 <= s["category_id"] <= 8

        separated_dicts = DatasetCatalog.get(prefix + "_separated")
        assert len(separated_dicts) == 3
        for d in separated_dicts:
            out = _mapper()(d)
            assert int(out["sem_seg"].max()) <= 4
            assert len(out["instances"]) == len(d["annotations"]) >= 1
            assert 0 <= int(out["instances"].gt_classes.min())
            assert int(out["instances"].gt_classes.max()) <= 4
        assert len(DatasetCatalog.get(prefix + "_stuffonly")) == 3
        assert marker.stat().st_mtime_ns == stamp  # one generation served every name
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_builtin_names_are_registered_lazily():
    base = os.path.join(get_datasets_root(), "shapes_panoptic")
    for split_name in ("train", "val"):
        names = [f"shapes_sem_seg_{split_name}", f"shapes_panoptic_{split_name}",
                 f"shapes_panoptic_{split_name}_separated",
                 f"shapes_panoptic_{split_name}_stuffonly"]
        assert set(names) <= set(DatasetCatalog.list())
        assert MetadataCatalog.get(names[0]).sem_seg_root == os.path.join(
            base, f"sem_seg_{split_name}")
        assert MetadataCatalog.get(names[1]).panoptic_root == os.path.join(
            base, f"panoptic_{split_name}")
        assert MetadataCatalog.get(names[2]).sem_seg_root == os.path.join(
            base, f"panoptic_stuff_{split_name}")


# ---- generation in worker processes, and the script ------------------------------------------

_UNGUARDED_SCRIPT = textwrap.dedent("""
    import logging, sys
    from segtron.data.datasets.shapes_panoptic import generate_shapes_panoptic_dataset
    logging.basicConfig(level=logging.INFO)
    generate_shapes_panoptic_dataset(sys.argv[1], "val", 16, seed=4, image_size=64,
                                     num_workers=2)
""")


def _all_files(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_workers_from_an_unguarded_script_give_the_same_files(tmp_path):
    """A script that generates at top level (no ``if __name__ == "__main__"``) must not be
    re-run by the spawned workers; two workers write what one process writes."""
    script = tmp_path / "make_data.py"
    script.write_text(_UNGUARDED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    try:
        result = subprocess.run([sys.executable, str(script), str(tmp_path / "pool")],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=240)
    except subprocess.TimeoutExpired as e:  # the workers re-ran the script, again and again
        pytest.fail(f"generation from an unguarded script hung; stderr: {str(e.stderr)[-2000:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 worker(s)" in result.stderr
    generate_shapes_panoptic_dataset(str(tmp_path / "one"), "val", 16, seed=4, image_size=64,
                                     num_workers=1)
    pool_files = _all_files(tmp_path / "pool")
    assert len(pool_files) == 4 * 16 + 2
    assert pool_files == _all_files(tmp_path / "one")


def test_prepare_script_panoptic_flag(tmp_path):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the script finds the checkout by itself
    result = subprocess.run(
        [sys.executable, "datasets/prepare_shapes.py", "--panoptic", "--root", str(tmp_path),
         "--num-train", "3", "--num-val", "2", "--workers", "1"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train: 3 images" in result.stdout and "val: 2 images" in result.stdout
    assert "stuff regions" in result.stdout and "dots" in result.stdout
    root = tmp_path / "shapes_panoptic"
    assert (root / ".train_complete.json").is_file() and (root / ".val_complete.json").is_file()
    assert (root / "annotations" / "panoptic_val.json").is_file()
    assert len(list((root / "panoptic_stuff_train").glob("*.png"))) == 3
    assert not (tmp_path / "shapes").exists()


def test_missing_files_of_a_generated_split_say_how_to_redraw(tmp_path):
    """Every registration of a generated split names the marker to delete when a file is
    missing; the semantic one now checks its images and label pngs when loaded (it used to
    fail only when the mapper reached the file)."""
    tag = uuid.uuid4().hex[:8]
    sem_name, prefix = f"st_sem_redraw_{tag}", f"st_pan_redraw_{tag}"
    names = [sem_name, prefix, prefix + "_separated", prefix + "_stuffonly"]
    root = tmp_path / "shapes_panoptic"
    register_shapes_sem_seg(sem_name, str(root), "val", 2, 5, image_size=64)
    register_shapes_panoptic_split(prefix, str(root), "val", 2, 5, image_size=64)
    marker = str(root / ".val_complete.json")
    try:
        dicts = DatasetCatalog.get(sem_name)
        os.remove(dicts[0]["sem_seg_file_name"])
        with pytest.raises(ValueError) as e:
            DatasetCatalog.get(sem_name)
        assert dicts[0]["sem_seg_file_name"] in str(e.value) and marker in str(e.value)
        assert "drawn again" in str(e.value)
        os.remove(dicts[0]["file_name"])
        for name, error in ((prefix, FileNotFoundError), (prefix + "_separated", ValueError)):
            with pytest.raises(error) as e:
                DatasetCatalog.get(name)
            assert dicts[0]["file_name"] in str(e.value) and marker in str(e.value), name
    finally:
        for name in names:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
