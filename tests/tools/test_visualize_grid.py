"""tools/visualize_json_results.py --grid, run in-process on a tiny generated shapes split
registered under a test name: one PNG tiling the first --num images' predictions with captions."""

import importlib.util
import json
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.coco import register_coco_instances
from segtron.data.datasets.shapes import generate_shapes_dataset
from segtron.data.detection_utils import read_image
from segtron.utils.visualizer import Visualizer
from segtron.utils.visualizer_grid import tile_images
from tests.conftest import REPO_ROOT

# pycocotools 2.0.x under numpy 2 warns on every mask call; not this module's concern.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NUM, COLUMNS, GAP = 4, 3, 4
EMPTY_IMAGE_ID = 2  # all its predictions score below the threshold


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location(
        "visualize_json_results", REPO_ROOT / "tools" / "visualize_json_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shapes(tmp_path):
    """A 5-image shapes split (64-pixel images) registered as a uniquely named dataset."""
    json_file = generate_shapes_dataset(str(tmp_path / "shapes"), "val", 5, seed=3,
                                        image_size=64, num_workers=0)
    name = f"test_grid_shapes_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, json_file, str(tmp_path / "shapes" / "val"))
    with open(json_file) as f:
        coco = json.load(f)
    yield name, coco
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _results(coco):
    """Ground truth as predictions (score 0.9) plus a low-scoring copy (0.3) of each; image
    EMPTY_IMAGE_ID only gets the low-scoring ones."""
    sizes = {im["id"]: (im["height"], im["width"]) for im in coco["images"]}
    results = []
    for ann in coco["annotations"]:
        segm = ann["segmentation"]
        rle = (mask_util.merge(mask_util.frPyObjects(segm, *sizes[ann["image_id"]]))
               if isinstance(segm, list) else dict(segm))
        if isinstance(rle["counts"], bytes):
            rle["counts"] = rle["counts"].decode("ascii")
        scores = (0.3,) if ann["image_id"] == EMPTY_IMAGE_ID else (0.9, 0.3)
        for score in scores:
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                            "bbox": ann["bbox"], "score": score, "segmentation": rle})
    return results


def test_grid_tiles_predictions_with_captions(tool, shapes, tmp_path, restore_logging):
    name, coco = shapes
    results_file = tmp_path / "coco_instances_results.json"
    results_file.write_text(json.dumps(_results(coco)))
    grid_path = tmp_path / "vis" / "grid.png"
    rc = tool.main(["--input", str(results_file), "--grid", str(grid_path), "--dataset", name,
                    "--num", str(NUM), "--columns", str(COLUMNS), "--conf-threshold", "0.5"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["grid.png"]  # no per-image
    with Image.open(grid_path) as im:
        assert im.mode == "RGB"
        grid = np.asarray(im)

    # The same grid with nothing drawn on the images: identical gaps and captions.
    images = coco["images"][:NUM]
    plain = [Visualizer(read_image(str(tmp_path / "shapes" / "val" / im["file_name"]), "RGB"),
                        MetadataCatalog.get(name)).get_output().get_image() for im in images]
    counts = {im["id"]: sum(a["image_id"] == im["id"] for a in coco["annotations"])
              for im in images}
    counts[EMPTY_IMAGE_ID] = 0
    captions = [f"image {im['id']} \u00b7 {counts[im['id']]} prediction"
                + ("" if counts[im["id"]] == 1 else "s") for im in images]
    expected = tile_images(plain, COLUMNS, captions=captions, gap=GAP)
    assert grid.shape == expected.shape

    tile_h = max(p.shape[0] for p in plain)
    tile_w = max(p.shape[1] for p in plain)
    cap_h = (expected.shape[0] - 3 * GAP) // 2 - tile_h
    assert cap_h > 8  # a caption strip under each row
    drawn = np.zeros(grid.shape[:2], dtype=bool)
    for index, im in enumerate(images):
        row, col = divmod(index, COLUMNS)
        top, left = GAP + row * (tile_h + cap_h + GAP), GAP + col * (tile_w + GAP)
        cell = (slice(top, top + tile_h), slice(left, left + tile_w))
        difference = np.abs(grid[cell].astype(int) - expected[cell]).mean()
        if im["id"] == EMPTY_IMAGE_ID:
            assert difference == 0  # nothing above the threshold: the plain image
        else:
            assert difference > 5, im["id"]  # masks, boxes and labels drawn
            drawn[cell] = True
        strip = grid[top + tile_h: top + tile_h + cap_h, left: left + tile_w]
        assert (strip.min(axis=-1) < 128).sum() > 20  # caption text
    assert np.array_equal(grid[~drawn], expected[~drawn])  # gaps, captions, the empty tile


def test_grid_or_output_is_required(tool, capsys):
    with pytest.raises(SystemExit) as e:
        tool.parse_args(["--input", "x.json"])
    assert e.value.code == 2
    assert "--grid" in capsys.readouterr().err
    args = tool.parse_args(["--input", "x.json", "--grid", "g.png"])
    assert args.output is None and args.columns == 4 and args.num is None
