"""CityscapesInstanceEvaluator / CityscapesSemSegEvaluator on the tiny gtFine set of
``tiny_cityscapes`` (see its docstring for the pixel layout the expected values count)."""

import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from segtron.evaluation import CityscapesInstanceEvaluator, CityscapesSemSegEvaluator
from segtron.evaluation.cityscapes_evaluation import CityscapesEvaluator
from segtron.utils import comm

from .tiny_cityscapes import (
    IMAGES,
    INSTANCE_MAPS,
    TinyCityscapes,
    instances,
    label_map,
    perfect_detections,
    perfect_train_ids,
    sem_seg_scores,
)

A, B = IMAGES


@pytest.fixture
def city(tmp_path):
    data = TinyCityscapes(tmp_path / "cityscapes")
    yield data
    data.cleanup()


def feed_instances(evaluator, city, detections, images=IMAGES):
    for core in images:
        evaluator.process([city.input_dict(core)], [{"instances": instances(detections[core])}])


def feed_sem_seg(evaluator, city, train_ids):
    for core in IMAGES:
        evaluator.process([city.input_dict(core)], [{"sem_seg": sem_seg_scores(train_ids[core])}])


def run_instances(city, detections, **kwargs):
    evaluator = CityscapesInstanceEvaluator(city.name, **kwargs)
    evaluator.reset()
    feed_instances(evaluator, city, detections)
    return evaluator.evaluate()


def run_sem_seg(city, train_ids):
    evaluator = CityscapesSemSegEvaluator(city.name)
    evaluator.reset()
    feed_sem_seg(evaluator, city, train_ids)
    return evaluator.evaluate()


def imprecise_car() -> dict:
    # Car 26000 (100 px) predicted on rows 8-15 x cols 2-10: 72 px, all inside it -> IoU 0.72,
    # a match at IoU thresholds 0.50..0.70 (5 of 10), a false positive (and the car a miss) at
    # 0.75..0.95. Scores: that car 0.6, the other (exact) car 0.9.
    dets = perfect_detections()
    mask = np.zeros_like(INSTANCE_MAPS[A], dtype=bool)
    mask[8:16, 2:11] = True
    dets[A] = [(2, 0.6, mask), (2, 0.9, INSTANCE_MAPS[A] == 26001)]
    return dets


def test_instances_exact_predictions_score_100(city, tmp_path, monkeypatch, catch_logs):
    # Nothing is written into the current directory (cityscapesScripts' own evaluateImgLists
    # would write matches.json there).
    monkeypatch.chdir(tmp_path)
    logs = catch_logs("segtron.evaluation.cityscapes_evaluation")
    results = run_instances(city, perfect_detections())
    assert results == {"segm": {"AP": pytest.approx(100.0), "AP50": pytest.approx(100.0)}}
    assert sorted(os.listdir(tmp_path)) == ["cityscapes"]
    assert any("Per-class AP" in m and "car" in m for m in logs.messages())


def test_instances_imprecise_mask_hand_computed_ap(city):
    # Car, thresholds 0.50..0.70: both cars matched -> precision 1 up to recall 1: AP 1.
    # Car, thresholds 0.75..0.95: sorted by score, the 0.9 true positive gives precision 1 at
    # recall 1/2 (the imprecise car is a miss); adding the 0.6 false positive, precision 1/2 at
    # recall 1/2. Cityscapes' step integration: recalls (1/2, 1/2, 0) with precisions
    # (1/2, 1, 1) -> widths (0, 1/4, 1/4) -> AP 1/2.
    # Car AP = (5 * 1 + 5 * 1/2) / 10 = 0.75, AP50 = 1; person AP = AP50 = 1; the 6 classes
    # without ground truth or predictions are NaN and left out of the means.
    results = run_instances(city, imprecise_car())
    assert results["segm"]["AP"] == pytest.approx(100 * (0.75 + 1) / 2)
    assert results["segm"]["AP50"] == pytest.approx(100.0)


def test_instances_missed_and_empty_image(city):
    # No output for image B: its person is missed -> person AP 0 (ground truth, no
    # prediction); cars exact -> AP 1. Mean (1 + 0) / 2.
    dets = perfect_detections()
    dets[B] = []
    results = run_instances(city, dets)
    assert results["segm"] == pytest.approx({"AP": 50.0, "AP50": 50.0})


def test_instances_result_files_in_output_dir(city, tmp_path):
    evaluator = CityscapesInstanceEvaluator(city.name, output_dir=str(tmp_path / "out"))
    folder = tmp_path / "out" / "cityscapes_instance_results"
    folder.mkdir(parents=True)
    (folder / f"{A}_leftImg8bit_7_car.png").write_bytes(b"from an earlier pass")
    evaluator.reset()
    assert os.listdir(folder) == []
    evaluator.process([city.input_dict(A)], [{"instances": instances(perfect_detections()[A])}])
    evaluator.process([city.input_dict(B)], [{}])  # no "instances": an empty list
    lines = (folder / f"{A}_leftImg8bit_pred.txt").read_text().splitlines()
    assert [line.split()[1:] for line in lines] == [["26", "0.8999999761581421"],
                                                     ["26", "0.800000011920929"]]
    mask = np.asarray(Image.open(folder / lines[1].split()[0]))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask == 255, INSTANCE_MAPS[A] == 26001)
    assert (folder / f"{B}_leftImg8bit_pred.txt").read_text() == ""
    # Person missed: AP (1 + 0) / 2; the files are kept.
    assert evaluator.evaluate()["segm"]["AP"] == pytest.approx(50.0)
    assert (folder / f"{A}_leftImg8bit_pred.txt").exists()


def test_temporary_results_are_deleted(city):
    evaluator = CityscapesInstanceEvaluator(city.name)
    evaluator.reset()
    folder = evaluator._results_dir
    feed_instances(evaluator, city, perfect_detections())
    assert len(os.listdir(folder)) == 5  # two txt files, three masks
    evaluator.evaluate()
    assert not os.path.exists(folder)


def test_distributed_ranks_share_rank0_folder(city, monkeypatch):
    # Two processes on one machine, simulated in turn: rank 1 writes into rank 0's folder and
    # gets None from evaluate; rank 0 scores both ranks' images (same AP as in one process).
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "get_local_size", lambda: 2)
    rank0 = CityscapesInstanceEvaluator(city.name)
    monkeypatch.setattr(comm, "all_gather", lambda data, group=None: [data, "rank 1's"])
    rank0.reset()
    monkeypatch.setattr(comm, "all_gather", lambda data, group=None: [rank0._results_dir, data])
    rank1 = CityscapesInstanceEvaluator(city.name)
    rank1.reset()
    assert rank1._results_dir == rank0._results_dir and rank1._working_dir is None
    dets = imprecise_car()
    feed_instances(rank0, city, dets, images=[A])
    feed_instances(rank1, city, dets, images=[B])

    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0, group=None: [])
    assert rank1.evaluate() is None
    monkeypatch.setattr(comm, "get_rank", lambda: 0)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0, group=None: [data, rank1._pairs])
    assert rank0.evaluate()["segm"]["AP"] == pytest.approx(87.5)


def test_sem_seg_exact_predictions_score_100(city, monkeypatch):
    # The scripts' environment variables only set defaults the evaluator overrides.
    monkeypatch.setenv("CITYSCAPES_RESULTS", "/nonexistent")
    monkeypatch.setenv("CITYSCAPES_DATASET", "/nonexistent")
    results = run_sem_seg(city, {core: perfect_train_ids(core) for core in IMAGES})
    assert results == {"sem_seg": pytest.approx(
        {"IoU": 100.0, "iIoU": 100.0, "IoU_sup": 100.0, "iIoU_sup": 100.0})}


def test_sem_seg_road_predicted_as_sidewalk(city):
    # Image A: road pixels in cols 0-19 predicted as sidewalk: rows 5-19 x cols 0-19 = 300
    # minus car 26000 (100) = 200 of the 800 road pixels (unlabeled pixels never count).
    # road IoU 600 / (600 + 200) = 0.75; sidewalk IoU 0 / (0 + 200 false positives) = 0;
    # sky, car, person 1 -> IoU (0.75 + 0 + 3) / 5. Cars and person untouched -> iIoU 1.
    # Categories: road and sidewalk are both "flat" -> flat, sky, vehicle, human all 1.
    train_ids = {core: perfect_train_ids(core) for core in IMAGES}
    wrong = (label_map(A) == 7) & (np.arange(40)[None, :] < 20)
    assert wrong.sum() == 200
    train_ids[A][wrong] = 1
    results = run_sem_seg(city, train_ids)["sem_seg"]
    assert results == pytest.approx(
        {"IoU": 100 * 3.75 / 5, "iIoU": 100.0, "IoU_sup": 100.0, "iIoU_sup": 100.0})


def test_sem_seg_half_person_predicted_as_road(city):
    # Image B: person rows 5-10 (6 x 10 = 60 of its 120 px) predicted as road.
    # person IoU 60 / 120; road 800 / (800 + 60 false positives); sky, car 1.
    # iIoU: person's size-weighted TP / (TP + FN) = 60 / 120 (its weight cancels); car 1.
    # Categories: flat 800 / 860, human 60 / 120, sky 1, vehicle 1; iIoU_sup human 1/2,
    # vehicle 1.
    train_ids = {core: perfect_train_ids(core) for core in IMAGES}
    train_ids[B][5:11, 5:15] = 0
    results = run_sem_seg(city, train_ids)["sem_seg"]
    mean_iou = 100 * (0.5 + 800 / 860 + 1 + 1) / 4
    assert results == pytest.approx(
        {"IoU": mean_iou, "iIoU": 75.0, "IoU_sup": mean_iou, "iIoU_sup": 75.0})


def test_sem_seg_writes_label_ids(city, tmp_path):
    evaluator = CityscapesSemSegEvaluator(city.name, output_dir=str(tmp_path))
    evaluator.reset()
    feed_sem_seg(evaluator, city, {core: perfect_train_ids(core) for core in IMAGES})
    png = tmp_path / "cityscapes_sem_seg_results" / f"{B}_leftImg8bit_pred.png"
    written = np.asarray(Image.open(png))
    expected = label_map(B).copy()
    expected[expected == 0] = 7  # unlabeled pixels were predicted as road
    assert written.dtype == np.uint8 and np.array_equal(written, expected)


def test_metadata_and_input_errors(city, tmp_path):
    no_gt = TinyCityscapes(tmp_path / "other", gt_dir=None)
    with pytest.raises(ValueError, match=f"'{no_gt.name}' has no metadata 'gt_dir'"):
        CityscapesSemSegEvaluator(no_gt.name)
    no_gt.cleanup()
    coco = TinyCityscapes(tmp_path / "coco", thing_classes=["person", "cat"])
    with pytest.raises(ValueError, match=r"unknown: \['cat'\]"):
        CityscapesInstanceEvaluator(coco.name)
    coco.cleanup()

    evaluator = CityscapesSemSegEvaluator(city.name)
    evaluator.reset()
    scores = sem_seg_scores(perfect_train_ids(A))
    with pytest.raises(ValueError, match="not a Cityscapes file name"):
        evaluator.process([{"file_name": "/data/image.png"}], [{"sem_seg": scores}])
    missing = city.input_dict(A)
    missing["file_name"] = missing["file_name"].replace("000019", "000020")
    with pytest.raises(FileNotFoundError, match="frankfurt_000000_000020_gtFine_labelIds.png"):
        evaluator.process([missing], [{"sem_seg": scores}])
    with pytest.raises(ValueError, match=r"shape \(20, 20, 40\)"):
        evaluator.process([city.input_dict(A)], [{"sem_seg": torch.zeros(20, 20, 40)}])


def test_cityscapes_script_error_becomes_runtime_error(city):
    evaluator = CityscapesSemSegEvaluator(city.name)
    evaluator.reset()
    evaluator.process([city.input_dict(A)], [{"sem_seg": torch.zeros(19, 20, 30)}])
    with pytest.raises(RuntimeError, match="Image widths of .* are not equal"):
        evaluator.evaluate()


def test_no_images_and_several_machines(city, monkeypatch, catch_logs):
    logs = catch_logs("segtron.evaluation.cityscapes_evaluation")
    evaluator = CityscapesInstanceEvaluator(city.name)
    evaluator.reset()
    assert evaluator.evaluate() == {}
    assert any("received no images" in m for m in logs.messages(logging.WARNING))
    monkeypatch.setattr(comm, "get_world_size", lambda: 4)
    monkeypatch.setattr(comm, "get_local_size", lambda: 2)
    with pytest.raises(RuntimeError, match="one machine only"):
        evaluator.reset()
    assert issubclass(CityscapesInstanceEvaluator, CityscapesEvaluator)
