"""Pictures of semantic and panoptic segmentation: tools/visualize_json_results.py on
hand-made ``sem_seg_predictions.json`` and COCO panoptic ``predictions.json`` (+ pngs, written
by ``COCOPanopticEvaluator``), and tools/visualize_data.py on the ground truth of semantic,
panoptic and "separated" panoptic datasets. Everything runs in-process on a 3-image shapes
split generated in a temporary folder.

Colours are checked where they must show: a region labelled class ``k`` is drawn as the image
blended with ``stuff_colors[k]`` at the tools' opacity (0.5), away from outlines and labels.
"""

import importlib.util
import json
import uuid
from pathlib import Path

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.shapes_panoptic import (
    prepare_shapes_panoptic_split,
    register_shapes_panoptic_split,
    register_shapes_sem_seg,
)
from segtron.data.detection_utils import read_image
from segtron.evaluation import COCOPanopticEvaluator
from segtron.evaluation.panoptic_quality import read_panoptic_png
from segtron.structures import BitMasks, Boxes, Instances
from segtron.utils.visualizer import Visualizer
from segtron.utils.visualizer_grid import tile_images
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

NUM_IMAGES, IMAGE_SIZE, SEED = 3, 160, 4
ALPHA = 0.5  # opacity of label fills in both tools
MOSTLY = 0.6  # share of a region's pixels that must show its colour (labels cover the rest)
ID_OFFSET = 10  # dataset category id = label + 10 in the semantic test dataset
COLUMNS, GAP = 2, 4
# Semantic (all-classes) labels of the shapes split.
CIRCLE, STRIPES, CHECKS, DOTS, NOISE = 0, 5, 6, 7, 8
# The same stuff classes in the "separated" labelling (0 = all things).
SEP_STRIPES, SEP_DOTS = 1, 3


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def json_tool():
    return _load_tool("visualize_json_results")


@pytest.fixture(scope="module")
def data_tool():
    return _load_tool("visualize_data")


@pytest.fixture(autouse=True)
def _restore_logging(restore_logging):
    """Every test here runs a tool's main()."""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 3-image shapes-with-stuff split, registered under unique names: ``sem`` (semantic,
    with dataset ids = label + ID_OFFSET), ``pan`` (standard panoptic) and ``sep``
    (separated panoptic)."""
    root = str(tmp_path_factory.mktemp("shapes_panoptic"))
    prepare_shapes_panoptic_split(root, "val", NUM_IMAGES, SEED, image_size=IMAGE_SIZE,
                                  num_workers=0)
    tag = uuid.uuid4().hex[:8]
    names = {"sem": f"test_vis_sem_{tag}", "pan": f"test_vis_pan_{tag}"}
    names["sep"] = names["pan"] + "_separated"
    register_shapes_sem_seg(names["sem"], root, "val", NUM_IMAGES, SEED, image_size=IMAGE_SIZE)
    MetadataCatalog.get(names["sem"]).set(stuff_dataset_id_to_contiguous_id={
        label + ID_OFFSET: label for label in range(9)})
    register_shapes_panoptic_split(names["pan"], root, "val", NUM_IMAGES, SEED,
                                   image_size=IMAGE_SIZE)
    yield names
    for name in (names["sem"], names["pan"], names["sep"], names["pan"] + "_stuffonly"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------------------------------------
# Helpers.


def tinted_fraction(picture, image, mask, color, alpha=ALPHA, tolerance=12):
    """Share of the pixels of ``mask``, 3 pixels in from its border (outlines), where
    ``picture`` is ``image`` (as the Visualizer renders it, edges softened) blended with
    ``color`` at ``alpha``."""
    inner = erode(mask)
    assert inner.sum() > 100, "region too small to judge"
    base = Visualizer(image).get_output().get_image().astype(float)
    expected = (1 - alpha) * base + alpha * np.asarray(color, dtype=float)
    close = np.abs(picture.astype(float) - expected).max(axis=-1) <= tolerance
    return close[inner].mean()


def erode(mask, pixels=3):
    """``mask`` without the ``pixels`` next to its border or the image's (outlines)."""
    size = 2 * pixels + 1
    return cv2.erode(mask.astype(np.uint8), np.ones((size, size), np.uint8),
                     borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def read_png(path):
    with Image.open(path) as im:
        assert im.mode == "RGB"
        return np.asarray(im)


def top_band(height, width):
    """The top 40 % of the rows: a region whose label sits inside it, and that a transposed
    decoding would not reproduce."""
    mask = np.zeros((height, width), dtype=bool)
    mask[: int(0.4 * height)] = True
    return mask


def rle(mask):
    encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    encoded["counts"] = encoded["counts"].decode("ascii")
    return encoded


def grid_of(halves, captions):
    return tile_images(halves, COLUMNS, captions=captions, gap=GAP)


# ---------------------------------------------------------------------------------------------
# visualize_json_results.py: semantic predictions.


def semantic_label_maps(dicts):
    """Hand-made predicted label maps: image 1 dots over stripes, image 2 circle | noise,
    image 3 all checks."""
    maps = []
    for index, dic in enumerate(dicts):
        h, w = dic["height"], dic["width"]
        labels = np.full((h, w), [STRIPES, NOISE, CHECKS][index], dtype=np.int64)
        if index == 0:
            labels[top_band(h, w)] = DOTS
        elif index == 1:
            labels[:, : w // 2] = CIRCLE
        maps.append(labels)
    return maps


def test_semantic_predictions(json_tool, shapes, tmp_path):
    name = shapes["sem"]
    dicts = DatasetCatalog.get(name)
    colors = MetadataCatalog.get(name).stuff_colors
    maps = semantic_label_maps(dicts)
    results = [{"file_name": dic["file_name"], "category_id": int(label) + ID_OFFSET,
                "segmentation": rle(labels == label)}
               for dic, labels in zip(dicts, maps) for label in np.unique(labels)]
    results_file = tmp_path / "sem_seg_predictions.json"
    results_file.write_text(json.dumps(results))
    out, grid_path = tmp_path / "vis", tmp_path / "grid.png"
    assert json_tool.main(["--input", str(results_file), "--dataset", name, "--output", str(out),
                           "--grid", str(grid_path), "--columns", str(COLUMNS)]) == 0

    halves = []
    for dic, labels in zip(dicts, maps):
        picture = read_png(out / Path(dic["file_name"]).name)
        h, w = labels.shape
        assert picture.shape == (h, 2 * w, 3)  # predictions | ground truth
        image = read_image(dic["file_name"], "RGB")
        left = picture[:, :w]
        for label in np.unique(labels):
            region = labels == label
            assert tinted_fraction(left, image, region, colors[label]) > MOSTLY, (dic, label)
        halves.append(left)
    # Tinted by the predicted class, not by another one (the check can fail).
    band = maps[0] == DOTS
    image = read_image(dicts[0]["file_name"], "RGB")
    assert tinted_fraction(halves[0], image, band, colors[STRIPES]) < 0.1
    # The ground-truth half shows the dataset's own label png.
    gt = np.asarray(Image.open(dicts[0]["sem_seg_file_name"]))
    largest = np.bincount(gt.ravel()).argmax()
    right = read_png(out / Path(dicts[0]["file_name"]).name)[:, gt.shape[1]:]
    assert tinted_fraction(right, image, gt == largest, colors[largest]) > MOSTLY

    captions = ["image 1 \u00b7 2 classes", "image 2 \u00b7 2 classes", "image 3 \u00b7 1 class"]
    np.testing.assert_array_equal(read_png(grid_path), grid_of(halves, captions))


def test_semantic_predictions_of_another_dataset(json_tool, shapes, tmp_path):
    name = shapes["sem"]
    dic = DatasetCatalog.get(name)[0]
    mask = np.ones((dic["height"] + 1, dic["width"]), dtype=bool)  # one row too many
    results_file = tmp_path / "sem_seg_predictions.json"
    results_file.write_text(json.dumps([{"file_name": dic["file_name"],
                                         "category_id": STRIPES + ID_OFFSET,
                                         "segmentation": rle(mask)}]))
    with pytest.raises(ValueError, match=r"sem_seg_predictions\.json, .*000000\.png: the RLE of "
                                         r"category 15 is \[\d+, \d+\] .* --dataset"):
        json_tool.main(["--input", str(results_file), "--dataset", name,
                        "--grid", str(tmp_path / "g.png")])


# ---------------------------------------------------------------------------------------------
# visualize_json_results.py: panoptic predictions (written by COCOPanopticEvaluator).


def panoptic_outputs(dicts):
    """Model-style panoptic outputs (separated contiguous ids): dots over stripes, a circle
    (thing) in the lower left; image 3 has a void strip on the right."""
    outputs = []
    for index, dic in enumerate(dicts):
        h, w = dic["height"], dic["width"]
        ids = np.full((h, w), 1, dtype=np.int32)
        ids[top_band(h, w)] = 2
        ids[h - 24: h - 4, 4:24] = 3
        if index == 2:
            ids[:, w - 16:] = 0
        info = [{"id": 1, "category_id": SEP_STRIPES, "isthing": False},
                {"id": 2, "category_id": SEP_DOTS, "isthing": False},
                {"id": 3, "category_id": CIRCLE, "isthing": True, "score": 0.9}]
        outputs.append((ids, info))
    return outputs


def test_panoptic_predictions(json_tool, shapes, tmp_path):
    name = shapes["sep"]
    dicts = DatasetCatalog.get(name)
    meta = MetadataCatalog.get(name)
    outputs = panoptic_outputs(dicts)
    evaluator = COCOPanopticEvaluator(name, output_dir=str(tmp_path / "inference"))
    for dic, (ids, info) in zip(dicts, outputs):
        evaluator.process([{"image_id": dic["image_id"], "file_name": dic["file_name"]}],
                          [{"panoptic_seg": (torch.from_numpy(ids), info)}])
    evaluator.evaluate()
    predictions = tmp_path / "inference" / "predictions.json"
    assert (tmp_path / "inference" / "predictions").is_dir()

    out, grid_path = tmp_path / "vis", tmp_path / "grid.png"
    assert json_tool.main(["--input", str(predictions), "--dataset", name, "--output", str(out),
                           "--grid", str(grid_path), "--columns", str(COLUMNS)]) == 0
    halves = []
    for dic, (ids, _) in zip(dicts, outputs):
        picture = read_png(out / Path(dic["file_name"]).name)
        h, w = ids.shape
        assert picture.shape == (h, 2 * w, 3)
        image = read_image(dic["file_name"], "RGB")
        left = picture[:, :w]
        # Stuff segments in their class colours (dataset ids mapped back to the separated
        # contiguous ids), not in each other's.
        assert tinted_fraction(left, image, ids == 2, meta.stuff_colors[SEP_DOTS]) > MOSTLY
        assert tinted_fraction(left, image, ids == 2, meta.stuff_colors[SEP_STRIPES]) < 0.1
        assert tinted_fraction(left, image, ids == 1, meta.stuff_colors[SEP_STRIPES]) > MOSTLY
        if (ids == 0).any():  # void is not drawn
            assert tinted_fraction(left, image, ids == 0, (0, 0, 0), alpha=0) > 0.9
        halves.append(left)

    # The ground-truth half: the dataset's panoptic png, stuff in its class colours.
    dic = DatasetCatalog.get(shapes["pan"])[0]
    gt_ids = read_panoptic_png(dic["pan_seg_file_name"])
    stuff = [s for s in dic["segments_info"] if not s["isthing"]]
    largest = max(stuff, key=lambda s: (gt_ids == s["id"]).sum())
    color = MetadataCatalog.get(shapes["pan"]).stuff_colors[largest["category_id"]]
    image = read_image(dic["file_name"], "RGB")
    right = read_png(out / Path(dic["file_name"]).name)[:, gt_ids.shape[1]:]
    assert tinted_fraction(right, image, gt_ids == largest["id"], color) > MOSTLY

    captions = [f"image {d['image_id']} \u00b7 3 segments" for d in dicts]
    np.testing.assert_array_equal(read_png(grid_path), grid_of(halves, captions))

    # Without its png folder the json cannot be drawn: say where they were looked for.
    (tmp_path / "inference" / "predictions").rename(tmp_path / "inference" / "moved")
    with pytest.raises(SystemExit, match=r"inference[/\\]predictions of the panoptic .*--png-dir"):
        json_tool.main(["--input", str(predictions), "--dataset", name, "--grid", str(grid_path)])
    assert json_tool.main(["--input", str(predictions), "--dataset", name, "--grid",
                           str(tmp_path / "again.png"), "--columns", str(COLUMNS),
                           "--png-dir", str(tmp_path / "inference" / "moved")]) == 0
    assert read_png(tmp_path / "again.png").shape == read_png(grid_path).shape


# ---------------------------------------------------------------------------------------------
# visualize_json_results.py: format detection.


def test_detect_format(json_tool):
    assert json_tool.detect_format(
        [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}], "x") == "instances"
    assert json_tool.detect_format([], "x") == "instances"
    assert json_tool.detect_format(
        [{"file_name": "a.png", "category_id": 2, "segmentation": {}}], "x") == "sem_seg"
    assert json_tool.detect_format(
        {"annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": []}]},
        "x") == "panoptic"


@pytest.mark.parametrize("content", [
    {"images": [], "annotations": [{"id": 1, "bbox": [0, 0, 1, 1]}]},  # a COCO instances json
    [{"name": "x"}],
    "just a string",
])
def test_unknown_file_names_itself_and_the_formats(json_tool, tmp_path, content):
    path = tmp_path / "mystery.json"
    path.write_text(json.dumps(content))
    with pytest.raises(SystemExit) as e:
        json_tool.main(["--input", str(path), "--grid", str(tmp_path / "g.png")])
    message = str(e.value)
    assert str(path) in message
    for known in ("coco_instances_results.json", "sem_seg_predictions.json", "predictions.json"):
        assert known in message
    assert not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------------------------------------
# visualize_data.py: ground truth.


def _largest_label_region(labels):
    values, counts = np.unique(labels, return_counts=True)
    label = int(values[np.argmax(counts)])
    return label, labels == label


def test_annotation_semantic(data_tool, shapes, tmp_path):
    name = shapes["sem"]
    out = tmp_path / "vis"
    assert data_tool.main(["--source", "annotation", "--output-dir", str(out),
                           "DATASETS.TRAIN", f"('{name}',)"]) == 0
    colors = MetadataCatalog.get(name).stuff_colors
    dicts = DatasetCatalog.get(name)
    assert sorted(p.name for p in out.iterdir()) == [Path(d["file_name"]).name for d in dicts]
    for dic in dicts:
        picture = read_png(out / Path(dic["file_name"]).name)
        image = read_image(dic["file_name"], "RGB")
        assert picture.shape == image.shape
        labels = np.asarray(Image.open(dic["sem_seg_file_name"]))
        label, region = _largest_label_region(labels)
        assert tinted_fraction(picture, image, region, colors[label]) > MOSTLY, dic["file_name"]
        other = colors[(label + 1) % len(colors)]
        assert tinted_fraction(picture, image, region, other) < 0.1


def test_annotation_panoptic(data_tool, shapes, tmp_path):
    name = shapes["pan"]
    out = tmp_path / "vis"
    assert data_tool.main(["--source", "annotation", "--output-dir", str(out), "--num", "2",
                           "DATASETS.TRAIN", f"('{name}',)"]) == 0
    colors = MetadataCatalog.get(name).stuff_colors
    for dic in DatasetCatalog.get(name)[:2]:
        picture = read_png(out / Path(dic["file_name"]).name)
        image = read_image(dic["file_name"], "RGB")
        ids = read_panoptic_png(dic["pan_seg_file_name"])
        for segment in dic["segments_info"]:
            if not segment["isthing"] and (ids == segment["id"]).sum() > 600:
                color = colors[segment["category_id"]]
                assert tinted_fraction(picture, image, ids == segment["id"], color) > MOSTLY


def test_annotation_separated_draws_stuff_under_instances(data_tool, shapes):
    name = shapes["sep"]
    meta = MetadataCatalog.get(name)
    assert data_tool.merged_things_label(meta) == 0
    assert data_tool.merged_things_label(MetadataCatalog.get(shapes["sem"])) is None
    # The image with the most thing pixels.
    dic = max(DatasetCatalog.get(name), key=lambda d: erode(
        np.asarray(Image.open(d["sem_seg_file_name"])) == 0).sum())
    image = read_image(dic["file_name"], "RGB")
    labels = np.asarray(Image.open(dic["sem_seg_file_name"]))

    np.random.seed(0)  # instance colours are random: the same ones in both pictures
    both = data_tool.draw_ground_truth(Visualizer(image, meta), dic, meta).get_image()
    np.random.seed(0)
    instances_only = Visualizer(image, meta).draw_dataset_dict(
        {k: v for k, v in dic.items() if k != "sem_seg_file_name"}).get_image()

    # Thing pixels: the instances alone, no "things" fill over them ...
    things = erode(labels == 0)
    assert things.sum() > 50
    difference = np.abs(both.astype(int) - instances_only.astype(int)).max(axis=-1)
    assert (difference[things] <= 2).mean() > 0.85  # stuff labels may overlap a few
    # ... while the stuff map is drawn around them in the stuff colours.
    label = int(np.bincount(labels[labels != 0]).argmax())
    region = labels == label
    assert tinted_fraction(both, image, region, meta.stuff_colors[label]) > MOSTLY


def test_dataloader_draws_sem_seg(data_tool, shapes, tmp_path, monkeypatch):
    """The label map of a training batch is drawn, and under a separated dataset's instances
    the merged "things" label is not."""
    name = shapes["sep"]
    meta = MetadataCatalog.get(name)
    DatasetCatalog.get(name)  # fills the metadata
    dic = DatasetCatalog.get(name)[0]
    image = read_image(dic["file_name"], "RGB")
    h, w = image.shape[:2]
    sem_seg = torch.full((h, w), SEP_STRIPES, dtype=torch.int64)
    sem_seg[torch.from_numpy(top_band(h, w))] = SEP_DOTS
    square = np.zeros((h, w), dtype=bool)
    square[h - 40: h - 4, 4:40] = True
    sem_seg[torch.from_numpy(square)] = 0  # "things", covered by one instance
    instances = Instances((h, w))
    instances.gt_boxes = Boxes(torch.tensor([[4.0, h - 40.0, 40.0, h - 4.0]]))
    instances.gt_classes = torch.tensor([CIRCLE])
    instances.gt_masks = BitMasks(torch.from_numpy(square)[None])
    batch = [{"image": torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1),
              "image_id": 7, "file_name": dic["file_name"], "sem_seg": sem_seg,
              "instances": instances}]
    monkeypatch.setattr(data_tool, "build_detection_train_loader", lambda cfg: iter([batch]))
    out = tmp_path / "vis"
    assert data_tool.main(["--source", "dataloader", "--output-dir", str(out), "--num", "1",
                           "DATASETS.TRAIN", f"('{name}',)"]) == 0
    picture = read_png(out / "7.png")
    assert picture.shape == image.shape
    labels = sem_seg.numpy()
    dots, stripes = meta.stuff_colors[SEP_DOTS], meta.stuff_colors[SEP_STRIPES]
    assert tinted_fraction(picture, image, labels == SEP_DOTS, dots) > MOSTLY
    assert tinted_fraction(picture, image, labels == SEP_STRIPES, stripes) > MOSTLY
    # The instance's pixels carry one fill (its own colour), not the "things" fill as well:
    # with one layer, 2 * picture - image is that colour everywhere; with two it follows the
    # image's texture.
    inner = erode(square)
    assert image[inner].astype(float).std(axis=0).max() > 10  # texture to follow
    fill = 2 * picture[inner].astype(float) - image[inner].astype(float)
    assert fill.std(axis=0).max() < 4
