"""Bad inputs end in a clear error or a logged, counted skip; never in silence.

Each case of ``corpus.CASES`` is registered with ``register_coco_instances``, loaded with
``DatasetCatalog.get`` and mapped with ``DatasetMapper``; a few also train the tiny Mask R-CNN
for 5 iterations. An error must name the file (and the ids where there are any); a skip must be
logged with its count and ids, and what is kept must then map without losing anything more.
"""

import logging
import math
import uuid

import cv2
import numpy as np
import pytest

from segtron.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from segtron.data.build import get_detection_dataset_dicts
from segtron.data.datasets.coco import register_coco_instances
from segtron.data.detection_utils import SizeMismatchError
from tests.reliability import corpus as C

# pycocotools' mask.decode trips a numpy-2 DeprecationWarning that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def register():
    """``register(corpus)`` -> a fresh dataset name for it; all removed after the test."""
    names = []

    def _register(corpus: C.Corpus) -> str:
        name = f"rel_{uuid.uuid4().hex[:8]}"
        register_coco_instances(name, {}, corpus.json_file, corpus.image_root)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _mapper(mask_format: str = "bitmask") -> DatasetMapper:
    return DatasetMapper(is_train=True, augmentations=[], image_format="BGR",
                         use_instance_mask=True, instance_mask_format=mask_format)


def _by_file(dicts, path):
    return next(d for d in dicts if d["file_name"] == path)


# ----------------------------------------------------------------------------- load errors


@pytest.mark.parametrize("case,mentions", [
    ("missing_image", ["1 of 2 image files", "{bad_file}", "image_root"]),
    ("malformed_json", ["is not valid JSON", "line 1"]),
    ("unknown_category", ["category_id=7", "annotation ids 22"]),
    ("duplicate_annotation_id", ["annotation ids occur more than once", "duplicated ids: 11"]),
    ("duplicate_image_id", ["images ids occur more than once", "duplicated ids: 1"]),
    ("no_images", ["contains no images"]),
])
def test_broken_annotation_file_fails_at_load(tmp_path, register, case, mentions):
    corpus = C.build(case, tmp_path)
    name = register(corpus)
    with pytest.raises(ValueError) as e:
        DatasetCatalog.get(name)
    msg = str(e.value)
    assert corpus.json_file in msg
    for text in mentions:
        assert text.format(bad_file=corpus.bad_file) in msg


# ----------------------------------------------------------------------------- map errors


@pytest.mark.parametrize("case,error,mention", [
    ("truncated_jpeg", ValueError, "cannot decode image"),
    ("empty_jpeg", ValueError, "cannot decode image"),
    ("wrong_size_in_json", SizeMismatchError, "expected (64, 56)"),
])
def test_unreadable_or_mismatched_image_fails_in_the_mapper(tmp_path, register, case, error,
                                                            mention):
    corpus = C.build(case, tmp_path)
    dicts = DatasetCatalog.get(register(corpus))
    assert len(dicts) == 2
    good = next(d for d in dicts if d["file_name"] != corpus.bad_file)
    assert len(_mapper()(good)["instances"]) == 2
    with pytest.raises(error) as e:
        _mapper()(_by_file(dicts, corpus.bad_file))
    assert corpus.bad_file in str(e.value) and mention in str(e.value)


# ----------------------------------------------------------------------------- logged skips


@pytest.mark.parametrize("case,reason", [
    ("zero_width_box", "with a box of width or height <= 0 dropped"),
    ("non_finite_boxes", "with a NaN or infinite box coordinate dropped"),
    ("short_polygon", "dropped because none of their polygons has >= 3 points"),
    ("polygon_outside_image", "dropped because their polygons lie entirely outside the image"),
])
def test_bad_annotation_is_skipped_counted_and_logged(tmp_path, register, caplog, case, reason):
    corpus = C.build(case, tmp_path)
    with caplog.at_level(logging.INFO):
        dicts = DatasetCatalog.get(register(corpus))
    lines = [r.getMessage() for r in caplog.records if reason in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assert corpus.json_file in lines[0]
    assert f"{len(corpus.bad_ids)} annotation(s)" in lines[0]
    assert f"annotation ids: {', '.join(str(i) for i in corpus.bad_ids)})" in lines[0]
    kept = 4 - len(corpus.bad_ids)
    assert sum(len(d["annotations"]) for d in dicts) == kept
    assert any(f"({kept} annotations kept)" in r.getMessage() for r in caplog.records)
    # What was kept reaches the model: the mapper drops nothing more.
    assert sum(len(_mapper()(d)["instances"]) for d in dicts) == kept


def test_image_without_annotations_is_logged_and_training_refuses(tmp_path, register, caplog):
    name = register(C.build("no_annotations", tmp_path))
    with caplog.at_level(logging.INFO):
        dicts = DatasetCatalog.get(name)
        with pytest.raises(ValueError, match=f"No valid data found in {name}"):
            get_detection_dataset_dicts(name)
    assert [d["annotations"] for d in dicts] == [[], []]  # usable for inference
    messages = [r.getMessage() for r in caplog.records]
    assert any("(0 annotations kept)" in m for m in messages)
    assert any(f"Removed 2 images with no usable annotations from {name}" in m for m in messages)


# ----------------------------------------------------------------------------- read correctly


def test_rle_and_polygon_mix_maps_with_bitmasks_and_says_so_with_polygons(tmp_path, register):
    corpus = C.build("rle_and_polygon", tmp_path)
    dicts = DatasetCatalog.get(register(corpus))
    triangle = np.zeros((C.H, C.W), dtype=np.uint8)
    cv2.fillPoly(triangle, [np.asarray(C.triangle_polygon(), np.int32).reshape(-1, 2)], 1)
    for d in dicts:
        masks = _mapper("bitmask")(d)["instances"].gt_masks.tensor.numpy()
        assert masks.shape == (2, C.H, C.W)
        np.testing.assert_array_equal(masks[1], triangle.astype(bool))  # the RLE, exactly
        assert abs(int(masks[0].sum()) - 20 * 16) <= 40  # the rasterised square polygon
        with pytest.raises(ValueError, match="INPUT.MASK_FORMAT='bitmask'") as e:
            _mapper("polygon")(d)
        assert d["file_name"] in str(e.value)


def test_16bit_png_is_read_as_its_top_byte(tmp_path, register):
    corpus = C.build("sixteen_bit_png", tmp_path)
    dicts = DatasetCatalog.get(register(corpus))
    gray = cv2.cvtColor(C.draw_image(), cv2.COLOR_BGR2GRAY)
    # The file holds gray * 256 + column (column < 256): its top byte is the gray picture.
    deep = cv2.imread(corpus.bad_file, cv2.IMREAD_UNCHANGED)
    assert deep.dtype == np.uint16 and int(deep.max()) > 255
    np.testing.assert_array_equal(deep & 0xFF, np.tile(np.arange(C.W), (C.H, 1)))
    out = _mapper()(_by_file(dicts, corpus.bad_file))
    image = out["image"].numpy()
    assert image.shape == (3, C.H, C.W)
    for channel in image:
        np.testing.assert_array_equal(channel, gray)
    assert len(out["instances"]) == 2


def test_rgba_png_is_read_without_its_alpha(tmp_path, register):
    corpus = C.build("rgba_png", tmp_path)
    dicts = DatasetCatalog.get(register(corpus))
    out = _mapper()(_by_file(dicts, corpus.bad_file))
    # BGR, colours untouched where the picture is fully transparent.
    np.testing.assert_array_equal(out["image"].numpy().transpose(1, 2, 0), C.draw_image())


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("case", ["non_finite_boxes", "sixteen_bit_png", "rgba_png",
                                  "rle_and_polygon"])
def test_tiny_model_trains_on_the_usable_part(tmp_path, register, case):
    name = register(C.build(case, tmp_path))
    losses = C.train_iterations(C.tiny_training_cfg(name), 5)
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)


def test_training_on_a_truncated_jpeg_names_the_file(tmp_path, register):
    corpus = C.build("truncated_jpeg", tmp_path)
    name = register(corpus)
    cfg = C.tiny_training_cfg(name, "SOLVER.IMS_PER_BATCH", 4)  # both images in step one
    with pytest.raises(ValueError, match="cannot decode image") as e:
        C.train_iterations(cfg, 5)
    assert corpus.bad_file in str(e.value)


def test_training_masks_on_a_box_only_dataset_fails_before_the_first_step(tmp_path, register):
    data = C.valid_data()
    for ann in data["annotations"]:
        del ann["segmentation"]
    name = register(C.write_corpus(tmp_path, data))
    with pytest.raises(ValueError) as e:
        C.train_iterations(C.tiny_training_cfg(name), 5)
    msg = str(e.value)
    assert "MODEL.MASK_ON is True but 4 instance annotations" in msg and f"'{name}'" in msg
    assert "Set MODEL.MASK_ON False" in msg
    losses = C.train_iterations(C.tiny_training_cfg(name, "MODEL.MASK_ON", False), 5)
    assert len(losses) == 5


def test_training_with_fewer_classes_than_the_dataset_fails(tmp_path, register):
    name = register(C.write_corpus(tmp_path, C.valid_data()))
    cfg = C.tiny_training_cfg(name, "MODEL.ROI_HEADS.NUM_CLASSES", 1)
    with pytest.raises(ValueError) as e:
        C.train_iterations(cfg, 5)
    msg = str(e.value)
    assert f"Dataset '{name}' has 2 thing_classes ('square', 'triangle')" in msg
    assert "MODEL.ROI_HEADS.NUM_CLASSES is 1" in msg and "NUM_CLASSES 2" in msg
