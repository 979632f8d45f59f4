"""Tests for segtron.evaluation.coco_evaluation: COCOEvaluator and instances_to_coco_json.

The key check runs COCOEvaluator (fast and official back-ends) on detections of a small
synthetic COCO dataset and compares every summary number with pycocotools' COCOeval run
directly on the same ground-truth file and on result files built independently of the code
under test.
"""

import contextlib
import io
import json
import logging
import math

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segtron.data.build import load_proposals_into_dataset
from segtron.data.catalog import DatasetCatalog, MetadataCatalog
from segtron.evaluation import COCOEvaluator
from segtron.evaluation import coco_evaluation, fast_eval_api
from segtron.evaluation.coco_evaluation import instances_to_coco_json
from segtron.structures import BitMasks, Boxes, BoxMode, Instances
from segtron.utils import comm

from .synthetic_coco import CATEGORIES, detections_to_coco_results

# pycocotools' mask.decode trips a numpy-2 DeprecationWarning that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

DET_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def _reference_cocoeval(gt_file, results, iou_type, tmp_path, max_dets=None):
    """pycocotools' COCOeval on ``gt_file`` and ``results`` (written to a json file first)."""
    res_file = tmp_path / f"reference_{iou_type}.json"
    with open(res_file, "w") as f:
        json.dump(results, f)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt_file)
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(str(res_file)), iou_type)
        if max_dets is not None:
            coco_eval.params.maxDets = max_dets
        coco_eval.evaluate()
        coco_eval.accumulate()
        if max_dets is None:
            coco_eval.summarize()
    return coco_eval


def _spy_on_cocoeval(monkeypatch):
    """Record the COCOeval objects the evaluator runs, by task."""
    captured = {}
    original = coco_evaluation._evaluate_predictions_on_coco

    def spy(coco_gt, coco_results, iou_type, **kwargs):
        captured[iou_type] = original(coco_gt, coco_results, iou_type, **kwargs)
        return captured[iou_type]

    monkeypatch.setattr(coco_evaluation, "_evaluate_predictions_on_coco", spy)
    return captured


def _percent(value):
    return value * 100 if value >= 0 else float("nan")


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_stats_equal_pycocotools(synthetic_coco, tmp_path, monkeypatch, use_fast_impl):
    captured = _spy_on_cocoeval(monkeypatch)
    evaluator = COCOEvaluator(
        synthetic_coco.name, output_dir=str(tmp_path / "out"), use_fast_impl=use_fast_impl
    )
    evaluator.reset()
    synthetic_coco.feed(evaluator)
    results = evaluator.evaluate()
    assert sorted(results) == ["bbox", "segm"]

    backend = "faster_coco_eval" if use_fast_impl else "pycocotools"
    for task, with_bbox in (("bbox", True), ("segm", False)):
        assert type(captured[task]).__module__.startswith(backend)
        reference_results = [
            r
            for image_id, dets in synthetic_coco.detections
            for r in detections_to_coco_results(image_id, dets, with_bbox=with_bbox)
        ]
        ref = _reference_cocoeval(synthetic_coco.gt_file, reference_results, task, tmp_path)
        assert len(ref.stats) == 12 and 0.1 < ref.stats[0] < 0.9  # a non-trivial score
        np.testing.assert_allclose(np.asarray(captured[task].stats), ref.stats, rtol=0, atol=1e-6)

        for i, metric in enumerate(DET_METRICS):
            assert results[task][metric] == pytest.approx(
                _percent(ref.stats[i]), abs=1e-4, nan_ok=True
            )
        for k, category in enumerate(CATEGORIES):
            precision = ref.eval["precision"][:, :, k, 0, -1]
            precision = precision[precision > -1]
            expected = float(np.mean(precision)) * 100 if precision.size else float("nan")
            assert results[task]["AP-" + category["name"]] == pytest.approx(
                expected, abs=1e-4, nan_ok=True
            )


def test_results_file_matches_reference_conversion(synthetic_coco, tmp_path):
    out = tmp_path / "out"
    evaluator = COCOEvaluator(synthetic_coco.name, output_dir=str(out))
    synthetic_coco.feed(evaluator)
    evaluator.evaluate()

    with open(out / "coco_instances_results.json") as f:
        written = json.load(f)
    expected = [
        r
        for image_id, dets in synthetic_coco.detections
        for r in detections_to_coco_results(image_id, dets)
    ]
    assert len(written) == len(expected) > 0
    for got, want in zip(written, expected):
        assert got["image_id"] == want["image_id"]
        assert got["category_id"] == want["category_id"]  # dataset ids (1, 3, 7, 10)
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
        np.testing.assert_allclose(got["bbox"], want["bbox"], atol=1e-4)
        assert got["segmentation"] == want["segmentation"]
    assert {r["category_id"] for r in written} <= {c["id"] for c in CATEGORIES}

    predictions = torch.load(out / "instances_predictions.pth", weights_only=False)
    assert [p["image_id"] for p in predictions] == [i for i, _ in synthetic_coco.detections]
    assert predictions[1]["instances"][0]["category_id"] in range(len(CATEGORIES))


def test_evaluate_twice_gives_the_same_results(synthetic_coco):
    evaluator = COCOEvaluator(synthetic_coco.name, distributed=False)
    synthetic_coco.feed(evaluator)
    first = evaluator.evaluate()
    second = evaluator.evaluate()
    assert sorted(second) == sorted(first) == ["bbox", "segm"]
    for task in first:
        assert second[task] == pytest.approx(first[task], nan_ok=True)


def _one_instance_set(height=20, width=30):
    inst = Instances((height, width))
    inst.pred_boxes = Boxes(torch.tensor([[2.0, 3.0, 12.5, 9.0], [0.0, 0.0, 30.0, 20.0]]))
    inst.scores = torch.tensor([0.9, 0.25])
    inst.pred_classes = torch.tensor([2, 0])
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 3:9, 2:12] = True
    masks[1, 5:, 7] = True
    masks[1, 0, 0] = True
    inst.pred_masks = masks
    return inst


def test_instances_to_coco_json_boxes_and_masks():
    inst = _one_instance_set()
    results = instances_to_coco_json(inst, img_id=42)
    assert len(results) == 2
    assert results[0]["image_id"] == 42
    assert results[0]["category_id"] == 2  # contiguous: mapped back by the evaluator
    assert results[0]["bbox"] == pytest.approx([2.0, 3.0, 10.5, 6.0])
    assert results[1]["bbox"] == pytest.approx([0.0, 0.0, 30.0, 20.0])
    assert results[0]["score"] == pytest.approx(0.9)
    for k, result in enumerate(results):
        rle = result["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == [20, 30]
        json.dumps(result)  # serialisable
        decoded = mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), inst.pred_masks[k].numpy())
    # BitMasks and uint8 masks give the same RLE.
    inst.pred_masks = BitMasks(inst.pred_masks.to(torch.uint8))
    assert [r["segmentation"] for r in instances_to_coco_json(inst, 42)] == [
        r["segmentation"] for r in results
    ]


def test_instances_to_coco_json_keypoints_and_empty():
    inst = Instances((10, 10))
    inst.pred_boxes = Boxes(torch.tensor([[1.0, 1.0, 5.0, 5.0]]))
    inst.scores = torch.tensor([0.5])
    inst.pred_classes = torch.tensor([0])
    kpts = torch.tensor([[[1.5, 2.5, 0.9], [3.0, 4.0, 0.1]]])
    inst.pred_keypoints = kpts.clone()
    (result,) = instances_to_coco_json(inst, 7)
    assert "segmentation" not in result
    assert result["keypoints"] == pytest.approx([1.0, 2.0, 0.9, 2.5, 3.5, 0.1])
    assert torch.equal(inst.pred_keypoints, kpts)  # the input is left alone
    assert instances_to_coco_json(inst[torch.zeros(1, dtype=torch.bool)], 7) == []


def test_tasks_inferred_from_predictions(synthetic_coco):
    evaluator = COCOEvaluator(synthetic_coco.name, distributed=False)
    synthetic_coco.feed(evaluator, with_masks=False)
    assert list(evaluator.evaluate()) == ["bbox"]

    evaluator.reset()
    synthetic_coco.feed(evaluator)
    assert sorted(evaluator.evaluate()) == ["bbox", "segm"]

    only_bbox = COCOEvaluator(synthetic_coco.name, tasks=("bbox",), distributed=False)
    synthetic_coco.feed(only_bbox)
    assert list(only_bbox.evaluate()) == ["bbox"]

    with pytest.raises(ValueError, match="unknown tasks"):
        COCOEvaluator(synthetic_coco.name, tasks=("boxes",))


def test_fast_and_official_agree_with_custom_max_dets(synthetic_coco, tmp_path, monkeypatch):
    captured = _spy_on_cocoeval(monkeypatch)
    stats = {}
    for fast in (True, False):
        evaluator = COCOEvaluator(synthetic_coco.name, use_fast_impl=fast, max_dets_per_image=4)
        synthetic_coco.feed(evaluator)
        evaluator.evaluate()
        stats[fast] = {task: np.asarray(ev.stats) for task, ev in captured.items()}
    for task in ("bbox", "segm"):
        np.testing.assert_allclose(stats[True][task], stats[False][task], rtol=0, atol=1e-6)
        # AP with at most 4 detections per image (COCO sorts maxDets to [1, 4, 10]).
        ref_results = [
            r
            for image_id, dets in synthetic_coco.detections
            for r in detections_to_coco_results(image_id, dets, with_bbox=task == "bbox")
        ]
        ref = _reference_cocoeval(synthetic_coco.gt_file, ref_results, task, tmp_path, [1, 10, 4])
        assert ref.params.maxDets == [1, 4, 10]
        precision = ref.eval["precision"][:, :, :, 0, 2]
        assert stats[True][task][0] == pytest.approx(np.mean(precision[precision > -1]), abs=1e-6)


def test_category_out_of_range_is_an_error(synthetic_coco):
    evaluator = COCOEvaluator(synthetic_coco.name, distributed=False)
    image_id, dets = synthetic_coco.detections[1]
    inst = Instances(dets["masks"].shape[1:])
    inst.pred_boxes = Boxes(torch.tensor([[1.0, 1.0, 9.0, 9.0]]))
    inst.scores = torch.tensor([0.5])
    inst.pred_classes = torch.tensor([len(CATEGORIES)])
    evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        evaluator.evaluate()


def test_simulated_two_rank_gather(synthetic_coco, monkeypatch):
    half = len(synthetic_coco.detections) // 2
    rank0, rank1 = synthetic_coco.detections[:half], synthetic_coco.detections[half:]

    full = COCOEvaluator(synthetic_coco.name, distributed=False)
    synthetic_coco.feed(full)
    expected = full.evaluate()

    other = COCOEvaluator(synthetic_coco.name, distributed=False)
    synthetic_coco.feed(other, detections=rank1)
    rank1_predictions = other._predictions

    calls = []

    def fake_gather(data, dst=0, group=None):
        calls.append(dst)
        return [data, rank1_predictions] if comm.get_rank() == dst else []

    monkeypatch.setattr(comm, "gather", fake_gather)
    monkeypatch.setattr(comm, "get_rank", lambda: 0)
    main = COCOEvaluator(synthetic_coco.name, distributed=True)
    synthetic_coco.feed(main, detections=rank0)
    results = main.evaluate()
    assert calls == [0]
    for task in expected:
        assert results[task] == pytest.approx(expected[task], nan_ok=True)

    monkeypatch.setattr(comm, "get_rank", lambda: 1)
    worker = COCOEvaluator(synthetic_coco.name, distributed=True)
    synthetic_coco.feed(worker, detections=rank1)
    assert worker.evaluate() == {}


def test_no_predictions(synthetic_coco, catch_logs):
    logs = catch_logs("segtron.evaluation.coco_evaluation")
    evaluator = COCOEvaluator(synthetic_coco.name, distributed=False)
    assert evaluator.evaluate() == {}
    assert any("Did not receive valid predictions" in m for m in logs.messages(logging.WARNING))

    # Images were processed but nothing was detected: every metric is NaN.
    empty = [(image_id, {k: v[:0] for k, v in dets.items()})
             for image_id, dets in synthetic_coco.detections]
    synthetic_coco.feed(evaluator, detections=empty)
    results = evaluator.evaluate()
    assert list(results) == ["bbox"]
    assert sorted(results["bbox"]) == sorted(DET_METRICS)
    assert all(math.isnan(v) for v in results["bbox"].values())
    assert any("No predictions from the model" in m for m in logs.messages(logging.WARNING))


def test_logs_summary_and_per_category_tables(synthetic_coco, catch_logs):
    logs = catch_logs("segtron.evaluation.coco_evaluation")
    evaluator = COCOEvaluator(synthetic_coco.name, distributed=False)
    synthetic_coco.feed(evaluator)
    evaluator.evaluate()
    text = "\n".join(logs.messages())
    assert "Evaluation results for bbox" in text and "Evaluation results for segm" in text
    per_category = [m for m in logs.messages() if m.startswith("Per-category bbox AP")][0]
    header = per_category.splitlines()[1]
    assert header.count("category") == 3 and header.count("AP") == 3  # 3 column pairs


def test_dataset_without_json_is_converted(tmp_path):
    name = "synthetic_eval_no_json"
    dicts = [
        {
            "file_name": "a.png", "image_id": 5, "height": 40, "width": 50,
            "annotations": [
                {"bbox": [4.0, 5.0, 20.0, 30.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
                 "iscrowd": 0},
                {"bbox": [30.0, 2.0, 12.0, 10.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
                 "iscrowd": 0},
            ],
        }
    ]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["a", "b"])
    try:
        with pytest.raises(ValueError, match="output_dir"):
            COCOEvaluator(name)
        evaluator = COCOEvaluator(name, output_dir=str(tmp_path))
        cache = tmp_path / f"{name}_coco_format.json"
        assert cache.is_file() and MetadataCatalog.get(name).json_file == str(cache)

        inst = Instances((40, 50))
        inst.pred_boxes = Boxes(torch.tensor([[4.0, 5.0, 20.0, 30.0], [30.0, 2.0, 42.0, 12.0]]))
        inst.scores = torch.tensor([0.9, 0.8])
        inst.pred_classes = torch.tensor([0, 1])
        evaluator.process([{"image_id": 5}], [{"instances": inst}])
        results = evaluator.evaluate()
        assert results["bbox"]["AP"] == pytest.approx(100.0)
        assert results["bbox"]["AP-a"] == pytest.approx(100.0)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_missing_json_file_names_dataset(tmp_path):
    name = "synthetic_eval_missing_json"
    MetadataCatalog.get(name).set(json_file=str(tmp_path / "nope.json"), thing_classes=["a"])
    try:
        with pytest.raises(FileNotFoundError, match=name):
            COCOEvaluator(name)
    finally:
        MetadataCatalog.remove(name)


def test_falls_back_to_pycocotools_without_faster_coco_eval(synthetic_coco, monkeypatch):
    monkeypatch.setattr(fast_eval_api, "FAST_COCO_EVAL_AVAILABLE", False)
    evaluator = COCOEvaluator(synthetic_coco.name, use_fast_impl=True)
    assert evaluator._use_fast_impl is False
    assert type(evaluator._coco_api).__module__.startswith("pycocotools")


def test_box_proposals_recall(synthetic_coco, tmp_path):
    evaluator = COCOEvaluator(synthetic_coco.name, output_dir=str(tmp_path), distributed=False)
    with open(synthetic_coco.gt_file) as f:
        coco = json.load(f)
    for image in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"] and not a["iscrowd"]]
        boxes = [BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) for a in anns]
        proposals = Instances((image["height"], image["width"]))
        proposals.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        proposals.objectness_logits = torch.linspace(1, 0, len(boxes))
        evaluator.process([{"image_id": image["id"]}], [{"proposals": proposals}])
    results = evaluator.evaluate()
    assert results["box_proposals"]["AR@100"] == pytest.approx(100.0)
    assert results["box_proposals"]["AR@1000"] == pytest.approx(100.0)
    # The saved proposals load back as precomputed proposals.
    dicts = [{"image_id": image["id"]} for image in coco["images"]]
    load_proposals_into_dataset(dicts, str(tmp_path / "box_proposals.pkl"))
    assert dicts[1]["proposal_boxes"].shape[1] == 4
    assert dicts[1]["proposal_bbox_mode"] == BoxMode.XYXY_ABS


def _keypoint_dataset(tmp_path, rng):
    """3-keypoint 'person' ground truth on 4 images and jittered keypoint detections."""
    images, anns, dets = [], [], []
    for image_id in range(1, 5):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 120, "width": 160})
        inst_kpts, boxes, scores = [], [], []
        for _ in range(3):
            x0, y0 = rng.uniform(0, 80), rng.uniform(0, 60)
            w, h = rng.uniform(20, 70), rng.uniform(20, 50)
            points = np.stack([rng.uniform(x0, x0 + w, 3), rng.uniform(y0, y0 + h, 3)], axis=1)
            flat = []
            for x, y in points:
                flat += [float(round(x)), float(round(y)), 2]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1,
                         "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": 0,
                         "keypoints": flat, "num_keypoints": 3})
            noisy = points + 0.5 + rng.normal(0, 2.5, size=points.shape)
            inst_kpts.append(np.concatenate([noisy, rng.uniform(0.2, 1, (3, 1))], axis=1))
            boxes.append([x0, y0, x0 + w, y0 + h])
            scores.append(rng.uniform(0.1, 1))
        dets.append((image_id, np.array(inst_kpts), np.array(boxes), np.array(scores)))
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "person", "keypoints": ["a", "b", "c"]}]}
    gt_file = tmp_path / "kpt_gt.json"
    gt_file.write_text(json.dumps(gt))
    return str(gt_file), dets


def test_keypoint_stats_equal_pycocotools(tmp_path, monkeypatch):
    gt_file, dets = _keypoint_dataset(tmp_path, np.random.default_rng(3))
    sigmas = (0.05, 0.08, 0.1)
    name = "synthetic_eval_keypoints"
    MetadataCatalog.get(name).set(json_file=gt_file, thing_classes=["person"],
                                  thing_dataset_id_to_contiguous_id={1: 0})
    captured = _spy_on_cocoeval(monkeypatch)
    try:
        stats = {}
        for fast in (True, False):
            evaluator = COCOEvaluator(name, use_fast_impl=fast, kpt_oks_sigmas=sigmas)
            for image_id, kpts, boxes, scores in dets:
                inst = Instances((120, 160))
                inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
                inst.scores = torch.tensor(scores, dtype=torch.float32)
                inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
                inst.pred_keypoints = torch.tensor(kpts, dtype=torch.float32)
                evaluator.process([{"image_id": image_id}], [{"instances": inst}])
            results = evaluator.evaluate()
            assert sorted(results) == ["bbox", "keypoints"]
            assert sorted(results["keypoints"]) == ["AP", "AP50", "AP75", "APl", "APm"]
            stats[fast] = np.asarray(captured["keypoints"].stats)
            written = [r for p in evaluator._predictions for r in p["instances"]]

        for r in written:
            r["category_id"] = 1
        ref_file = tmp_path / "kpt_results.json"
        ref_file.write_text(json.dumps(written))
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(gt_file)
            ref = COCOeval(coco_gt, coco_gt.loadRes(str(ref_file)), "keypoints")
            ref.params.kpt_oks_sigmas = np.array(sigmas)
            ref.evaluate()
            ref.accumulate()
            ref.summarize()
        assert 0.05 < ref.stats[0] < 0.95
        for fast in (True, False):
            np.testing.assert_allclose(stats[fast], ref.stats, rtol=0, atol=1e-6)
    finally:
        MetadataCatalog.remove(name)


def test_non_coco_json_is_converted_and_config_as_tasks(tmp_path):
    name = "synthetic_eval_not_coco"
    not_coco = tmp_path / "labels.json"
    not_coco.write_text(json.dumps([{"image": "a.png", "label": 0}]))
    dicts = [{"file_name": "a.png", "image_id": 1, "height": 20, "width": 20, "annotations": [
        {"bbox": [1.0, 1.0, 8.0, 8.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0}]}]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(json_file=str(not_coco), thing_classes=["a"])
    try:
        from segtron.config import get_cfg

        cfg = get_cfg()
        cfg.TEST.KEYPOINT_OKS_SIGMAS = [0.1, 0.2]
        evaluator = COCOEvaluator(name, cfg, output_dir=str(tmp_path))
        assert evaluator._tasks is None and evaluator._kpt_oks_sigmas == (0.1, 0.2)
        assert (tmp_path / f"{name}_coco_format.json").is_file()
        assert MetadataCatalog.get(name).json_file == str(not_coco)  # metadata is set-once
        assert evaluator._coco_api.getImgIds() == [1]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
