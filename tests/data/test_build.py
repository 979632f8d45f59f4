"""Tests for segtron.data.build and segtron.data.common on tiny datasets in tmp_path."""

import itertools
import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from segtron.config import get_cfg
from segtron.data import common
from segtron.data.build import (
    build_batch_data_loader,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
    load_proposals_into_dataset,
    print_instances_class_histogram,
    trivial_batch_collator,
)
from segtron.data.catalog import DatasetCatalog, MetadataCatalog
from segtron.data.samplers import InferenceSampler, TrainingSampler
from segtron.structures import BoxMode
from segtron.utils import comm


def _dicts(tmp_path, n, with_empty=0):
    """n images (alternating landscape / portrait) with one box each, plus empty ones."""
    out = []
    for i in range(n + with_empty):
        h, w = (24, 32) if i % 2 == 0 else (32, 24)
        path = tmp_path / f"im{i}.png"
        Image.fromarray(np.full((h, w, 3), i * 10 % 255, dtype=np.uint8)).save(path)
        annos = []
        if i < n:
            annos = [{"bbox": [2, 2, 10, 8], "bbox_mode": BoxMode.XYWH_ABS,
                      "category_id": i % 2, "segmentation": [[2, 2, 12, 2, 12, 10, 2, 10]],
                      "iscrowd": 0}]
        elif i % 2:  # an image with only a crowd annotation: also filtered
            annos = [{"bbox": [2, 2, 10, 8], "bbox_mode": BoxMode.XYWH_ABS,
                      "category_id": 0, "iscrowd": 1}]
        out.append({"file_name": str(path), "height": h, "width": w, "image_id": i,
                    "annotations": annos})
    return out


@pytest.fixture
def tiny_dataset(tmp_path):
    """Register '_tiny_train' (6 annotated + 2 empty images, classes 'a', 'b')."""
    names = ["_tiny_train", "_tiny_empty", "_tiny_other_classes"]
    dicts = _dicts(tmp_path, 6, with_empty=2)
    DatasetCatalog.register("_tiny_train", lambda: dicts)
    MetadataCatalog.get("_tiny_train").set(thing_classes=["a", "b"])
    DatasetCatalog.register("_tiny_empty", lambda: [])
    DatasetCatalog.register("_tiny_other_classes", lambda: _dicts(tmp_path, 2))
    MetadataCatalog.get("_tiny_other_classes").set(thing_classes=["x", "y"])
    yield "_tiny_train"
    for n in names:
        DatasetCatalog.remove(n)
        if n in MetadataCatalog:
            MetadataCatalog.remove(n)


def _small_cfg(name):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.MIN_SIZE_TEST = 32
    cfg.INPUT.MAX_SIZE_TEST = 64
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    return cfg


# ----------------------------------------------------------------------------- common


@pytest.mark.parametrize("serialize", [True, False])
def test_dataset_from_list(serialize):
    items = [{"i": i, "arr": np.arange(i)} for i in range(5)]
    ds = common.DatasetFromList(items, copy=True, serialize=serialize)
    assert len(ds) == 5
    assert ds[3]["i"] == 3 and ds[-1]["i"] == 4 and ds[0]["arr"].size == 0
    ds[2]["i"] = 100  # reads return copies
    assert ds[2]["i"] == 2
    assert pickle.loads(pickle.dumps(ds))[4]["i"] == 4
    if serialize:
        assert isinstance(ds._lst, np.ndarray) and ds._lst.dtype == np.uint8
    shared = common.DatasetFromList(items, copy=False, serialize=False)
    assert shared[1] is items[1]


def test_dataset_from_list_logs_size(caplog):
    caplog.set_level(logging.INFO, logger="segtron.data.common")
    common.DatasetFromList([{"x": 1}] * 3)
    assert "MiB" in caplog.text


def test_map_dataset_retries_on_none(caplog):
    ds = common.MapDataset(common.DatasetFromList(list(range(6))), lambda x: None if x < 4 else x)
    caplog.set_level(logging.WARNING, logger="segtron.data.common")
    assert all(ds[i] in (4, 5) for i in range(6))
    assert ds[5] == 5 and len(ds) == 6
    everything_fails = common.MapDataset(common.DatasetFromList([1, 2]), lambda x: None)
    with pytest.raises(RuntimeError, match="returned None"):
        everything_fails[0]
    stream = common.ToIterableDataset(
        common.DatasetFromList(list(range(4))), torch.utils.data.SequentialSampler(range(4))
    )
    iterable = common.MapDataset(stream, lambda x: None if x == 1 else x * 2)
    assert isinstance(iterable, torch.utils.data.IterableDataset)
    assert list(iterable) == [0, 4, 6]  # None results are skipped


def test_aspect_ratio_grouping():
    dicts = [{"width": w, "height": h, "i": i}
             for i, (w, h) in enumerate([(4, 2), (2, 4), (2, 4), (4, 2), (3, 3), (5, 1)])]
    batches = list(common.AspectRatioGroupedDataset(dicts, 2))
    assert [[d["i"] for d in b] for b in batches] == [[1, 2], [0, 3]]  # (3,3) is "portrait"


# ----------------------------------------------------------------------------- dataset dicts


def test_get_detection_dataset_dicts_filters_and_logs(tiny_dataset, caplog):
    caplog.set_level(logging.INFO, logger="segtron.data.build")
    dicts = get_detection_dataset_dicts(tiny_dataset)
    assert len(dicts) == 6
    assert "Removed 2 images with no usable annotations" in caplog.text
    # The class histogram table.
    assert "Distribution of instances among all 2 categories" in caplog.text
    assert "category" in caplog.text and "#instances" in caplog.text and "total" in caplog.text
    assert len(get_detection_dataset_dicts([tiny_dataset], filter_empty=False)) == 8

    with pytest.raises(ValueError, match="_tiny_empty"):
        get_detection_dataset_dicts([tiny_dataset, "_tiny_empty"])
    with pytest.raises(ValueError, match="thing_classes"):
        get_detection_dataset_dicts([tiny_dataset, "_tiny_other_classes"])


def test_class_histogram_rejects_bad_ids(caplog):
    caplog.set_level(logging.INFO, logger="segtron.data.build")
    dicts = [{"annotations": [{"category_id": 0}, {"category_id": 1}, {"category_id": 1},
                              {"category_id": 1, "iscrowd": 1}]}]
    print_instances_class_histogram(dicts, ["cat", "a_very_long_class_name"])
    assert "a_very_lon" in caplog.text and "| 2" in caplog.text
    with pytest.raises(ValueError, match="category_id=5"):
        print_instances_class_histogram([{"annotations": [{"category_id": 5}]}], ["cat"])


def test_load_proposals_into_dataset(tmp_path):
    dicts = [{"image_id": 7}, {"image_id": "8"}]
    path = tmp_path / "props.pkl"
    with open(path, "wb") as f:
        pickle.dump({"indexes": [8, 7, 9], "boxes": [np.ones((2, 4)), np.zeros((1, 4)), None],
                     "scores": [np.ones(2), np.zeros(1), None]}, f)
    out = load_proposals_into_dataset(dicts, str(path))
    assert out[0]["proposal_boxes"].shape == (1, 4) and out[1]["proposal_boxes"].shape == (2, 4)
    assert out[0]["proposal_bbox_mode"] == BoxMode.XYXY_ABS
    with pytest.raises(KeyError, match="props.pkl"):
        load_proposals_into_dataset([{"image_id": 1}], str(path))


# ----------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("grouping", [True, False])
def test_train_loader_from_config(tiny_dataset, grouping):
    cfg = _small_cfg(tiny_dataset)
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    loader = build_detection_train_loader(cfg)
    batches = list(itertools.islice(iter(loader), 5))  # infinite: take a few
    for batch in batches:
        assert isinstance(batch, list) and len(batch) == 2
        for d in batch:
            assert d["image"].dtype == torch.uint8 and min(d["image"].shape[1:]) == 32
            assert len(d["instances"]) == 1
        if grouping:
            assert len({d["width"] > d["height"] for d in batch}) == 1
    seen = {d["image_id"] for b in batches for d in b}
    assert seen <= set(range(6)) and len(seen) >= 4  # empty images were filtered out


def test_train_loader_from_arguments():
    data = [{"width": 2, "height": 1, "v": i} for i in range(5)]
    loader = build_detection_train_loader(
        data, mapper=None, sampler=TrainingSampler(5, shuffle=False, seed=0), total_batch_size=3,
        aspect_ratio_grouping=False,
    )
    batches = list(itertools.islice(iter(loader), 2))
    assert [[d["v"] for d in b] for b in batches] == [[0, 1, 2], [3, 4, 0]]
    collated = build_detection_train_loader(
        data, mapper=lambda d: d["v"], total_batch_size=2, aspect_ratio_grouping=False,
        collate_fn=lambda batch: torch.tensor(batch),
    )
    assert next(iter(collated)).shape == (2,)


def test_train_loader_batch_divisibility(monkeypatch, tiny_dataset):
    monkeypatch.setattr(comm, "get_world_size", lambda: 3)
    monkeypatch.setattr(comm, "shared_random_seed", lambda: 0)  # no process group to ask
    cfg = _small_cfg(tiny_dataset)
    cfg.SOLVER.IMS_PER_BATCH = 4
    with pytest.raises(ValueError, match=r"SOLVER.IMS_PER_BATCH \(4\) must be divisible by the "
                                         r"number of processes \(3\)"):
        build_detection_train_loader(cfg)
    cfg.SOLVER.IMS_PER_BATCH = 6  # 2 per process
    batch = next(iter(build_detection_train_loader(cfg)))
    assert len(batch) == 2


def test_train_loader_with_two_workers():
    data = [{"width": 2, "height": 1, "v": i} for i in range(8)]
    loader = build_batch_data_loader(
        common.DatasetFromList(data), TrainingSampler(8, shuffle=False, seed=0), 2, num_workers=2
    )
    batches = list(itertools.islice(iter(loader), 4))
    # Each worker loads whole batches; the loader interleaves them back in sampler order.
    assert [[d["v"] for d in b] for b in batches] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_test_loader(tiny_dataset, monkeypatch):
    cfg = _small_cfg(tiny_dataset)
    loader = build_detection_test_loader(cfg, tiny_dataset)
    outputs = [d for batch in loader for d in batch]
    assert [d["image_id"] for d in outputs] == list(range(8))  # not filtered, each once
    assert all("instances" not in d and min(d["image"].shape[1:]) == 32 for d in outputs)

    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    loader = build_detection_test_loader(list(range(5)), mapper=None, batch_size=2)
    assert isinstance(loader.sampler, InferenceSampler)
    assert [b for b in loader] == [[3, 4]]
    assert trivial_batch_collator([1, 2]) == [1, 2]


# ----------------------------------------------------------------------------- data vs model


def test_fewer_model_classes_than_dataset_classes_is_an_error(tiny_dataset):
    cfg = _small_cfg(tiny_dataset)  # thing_classes ['a', 'b']
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    with pytest.raises(ValueError) as e:
        build_detection_train_loader(cfg)
    msg = str(e.value)
    assert "'_tiny_train'" in msg and "2 thing_classes" in msg
    assert "MODEL.ROI_HEADS.NUM_CLASSES is 1" in msg and "NUM_CLASSES 2" in msg


def test_more_model_classes_than_dataset_classes_is_a_warning(tiny_dataset, caplog):
    cfg = _small_cfg(tiny_dataset)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 7
    with caplog.at_level(logging.WARNING):
        build_detection_train_loader(cfg)
    lines = [r.getMessage() for r in caplog.records if "never trained" in r.getMessage()]
    assert len(lines) == 1
    assert "'_tiny_train' has 2 thing_classes" in lines[0] and "NUM_CLASSES is 7" in lines[0]


@pytest.mark.parametrize("arch,key", [("RetinaNet", "RETINANET"), ("FCOS", "FCOS")])
def test_one_stage_detectors_check_their_own_num_classes(tiny_dataset, arch, key):
    cfg = _small_cfg(tiny_dataset)
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1  # not read by this model
    cfg.MODEL[key].NUM_CLASSES = 2
    build_detection_train_loader(cfg)
    cfg.MODEL[key].NUM_CLASSES = 1
    with pytest.raises(ValueError, match=f"MODEL.{key}.NUM_CLASSES is 1"):
        build_detection_train_loader(cfg)


def test_semantic_segmentation_checks_stuff_classes(tmp_path):
    image = tmp_path / "im.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "lab.png")
    name = "_tiny_stuff"
    DatasetCatalog.register(name, lambda: [{"file_name": str(image), "height": 8, "width": 8,
                                            "sem_seg_file_name": str(tmp_path / "lab.png")}])
    MetadataCatalog.get(name).set(stuff_classes=["sky", "road", "grass"])
    try:
        cfg = _small_cfg(name)
        cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 2
        with pytest.raises(ValueError, match=r"'_tiny_stuff' has 3 stuff_classes.*"
                                             r"MODEL.SEM_SEG_HEAD.NUM_CLASSES is 2"):
            build_detection_train_loader(cfg)
        cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
        build_detection_train_loader(cfg)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_mask_on_with_a_box_only_dataset_fails_when_the_loader_is_built(tmp_path):
    dicts = _dicts(tmp_path, 4)
    for d in dicts[1:3]:
        del d["annotations"][0]["segmentation"]
    name = "_tiny_boxes"
    DatasetCatalog.register(name, lambda: dicts)
    try:
        cfg = _small_cfg(name)
        cfg.MODEL.MASK_ON = True
        with pytest.raises(ValueError) as e:
            build_detection_train_loader(cfg)
        msg = str(e.value)
        assert "MODEL.MASK_ON is True but 2 instance annotations" in msg and "'_tiny_boxes'" in msg
        assert "im1.png" in msg and "Set MODEL.MASK_ON False" in msg
        cfg.MODEL.MASK_ON = False
        build_detection_train_loader(cfg)
    finally:
        DatasetCatalog.remove(name)
