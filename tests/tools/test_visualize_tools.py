"""tools/visualize_data.py and tools/visualize_json_results.py, run as scripts on a tiny
generated shapes dataset: they write one readable PNG per image, of the expected size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from segtron.data.datasets.shapes import prepare_shapes_split
from tests.conftest import REPO_ROOT

pytestmark = [
    pytest.mark.slow,  # each test starts a Python process that imports torch (~5-15 s)
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory) -> Path:
    """``<root>/shapes`` with 3-image train and val splits (small images), which the builtin
    ``shapes_train`` / ``shapes_val`` use as they are when ``$SEGTRON_DATASETS`` is ``<root>``."""
    root = tmp_path_factory.mktemp("datasets")
    for split, seed in (("train", 0), ("val", 1)):
        prepare_shapes_split(str(root / "shapes"), split, 3, seed, image_size=64, num_workers=0)
    return root


def _images(root: Path, split: str):
    with open(root / "shapes" / "annotations" / f"instances_{split}.json") as f:
        coco = json.load(f)
    return coco, {Path(im["file_name"]).stem: (im["width"], im["height"]) for im in coco["images"]}


def _run(script: str, args, datasets_root: Path) -> None:
    env = dict(os.environ, SEGTRON_DATASETS=str(datasets_root), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join("tools", script), *args], cwd=REPO_ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"


def _pngs(folder: Path):
    files = sorted(folder.glob("*.png"))
    sizes = {}
    for p in files:
        with Image.open(p) as im:
            im.load()
            assert im.mode == "RGB"
            sizes[p.stem] = im.size
            assert np.asarray(im).std() > 5  # a picture, not a blank canvas
    return sizes


def test_visualize_data_annotation(datasets_root, tmp_path):
    out = tmp_path / "vis"
    _run("visualize_data.py", ["--source", "annotation", "--output-dir", str(out), "--num", "2",
                               "DATASETS.TRAIN", "('shapes_train',)"], datasets_root)
    _, expected = _images(datasets_root, "train")
    sizes = _pngs(out)
    assert len(sizes) == 2
    for stem, size in sizes.items():
        assert size == expected[stem]  # scale 1: the image's own size


def test_visualize_data_dataloader(datasets_root, tmp_path):
    out = tmp_path / "vis"
    _run("visualize_data.py", [
        "--source", "dataloader", "--output-dir", str(out), "--num", "3",
        "DATASETS.TRAIN", "('shapes_train',)", "MODEL.MASK_ON", "True",
        "INPUT.MASK_FORMAT", "bitmask", "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "1000",
    ], datasets_root)
    sizes = _pngs(out)
    assert len(sizes) == 3
    assert all(min(size) == 96 for size in sizes.values())  # resized as the model sees it


def test_visualize_json_results(datasets_root, tmp_path):
    coco, expected = _images(datasets_root, "val")
    heights = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    results = []
    for ann in coco["annotations"]:  # ground truth as predictions, plus a low-score extra
        segm = ann["segmentation"]
        rle = (mask_util.merge(mask_util.frPyObjects(segm, *heights[ann["image_id"]]))
               if isinstance(segm, list) else segm)
        if isinstance(rle["counts"], bytes):
            rle["counts"] = rle["counts"].decode("ascii")
        for score in (0.9, 0.1):
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": ann["bbox"], "score": score, "segmentation": rle})
    results_file = tmp_path / "coco_instances_results.json"
    results_file.write_text(json.dumps(results))
    out = tmp_path / "vis"
    _run("visualize_json_results.py", ["--input", str(results_file), "--output", str(out),
                                       "--dataset", "shapes_val", "--conf-threshold", "0.5"],
         datasets_root)
    sizes = _pngs(out)
    assert set(sizes) == set(expected)
    for stem, (width, height) in expected.items():
        assert sizes[stem] == (2 * width, height)  # predictions | ground truth
