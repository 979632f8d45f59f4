"""LVIS federated evaluation: hand-computed cases, agreement with COCOeval, the evaluator."""

import json
import math
import os
import uuid

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segtron.data.catalog import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.lvis import register_lvis_instances
from segtron.evaluation import LVISEvaluator
from segtron.evaluation.fast_eval_api import load_coco_api
from segtron.evaluation.lvis_matching import limit_detections_per_image
from segtron.evaluation.lvis_metrics import evaluate_lvis, precision_at_recalls
from segtron.structures import Boxes, Instances

from .synthetic_coco import detections_to_coco_results, make_detections, make_synthetic_coco

# Three categories, one per frequency group: APf, APc and APr are each one category's AP.
CATEGORIES = [
    {"id": 1, "name": "cup", "frequency": "f"},
    {"id": 2, "name": "kite", "frequency": "c"},
    {"id": 3, "name": "yak", "frequency": "r"},
]


def _rect(ann_id, image_id, cat_id, x, y, w, h):
    """A rectangular LVIS annotation (polygon segmentation, area w * h)."""
    poly = [x, y, x + w, y, x + w, y + h, x, y + h]
    return {"id": ann_id, "image_id": image_id, "category_id": cat_id, "bbox": [x, y, w, h],
            "area": float(w * h), "segmentation": [poly]}


def _det(image_id, cat_id, box, score):
    return {"image_id": image_id, "category_id": cat_id, "bbox": list(box), "score": score}


def _base_dataset():
    """Image 1: cup (30x30) and kite (30x30, not exhaustive), yak verified absent.
    Image 2: a yak (40x40, medium); nothing else verified."""
    images = [
        {"id": 1, "height": 100, "width": 100, "neg_category_ids": [3],
         "not_exhaustive_category_ids": [2]},
        {"id": 2, "height": 100, "width": 100, "neg_category_ids": [],
         "not_exhaustive_category_ids": []},
    ]
    anns = [_rect(1, 1, 1, 10, 10, 30, 30), _rect(2, 1, 2, 50, 50, 30, 30),
            _rect(3, 2, 3, 10, 10, 40, 40)]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}


# Exact detections of the three objects (IoU 1: true positives at every threshold).
BASE_DETS = [_det(1, 1, (10, 10, 30, 30), 0.5), _det(1, 2, (50, 50, 30, 30), 0.5),
             _det(2, 3, (10, 10, 40, 40), 0.5)]
FAR_BOX = (60, 5, 20, 20)  # overlaps no object; area 400 (small)


def _gt_api(tmp_path, data):
    path = tmp_path / f"lvis_{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(data))
    return load_coco_api(str(path), fast=False)


def test_precision_at_recalls_by_hand():
    # Ranked: TP, FP, TP with 2 gt: recall 0.5, 0.5, 1; precision 1, 0.5, 2/3 -> envelope
    # 1, 2/3, 2/3. Recall points 0..0.5 read 1, points above 0.5 read 2/3.
    prec, rec = precision_at_recalls(np.array([0.9, 0.8, 0.7]), np.array([1, 0, 1], bool), 2)
    assert rec == 1.0
    assert np.allclose(prec[:51], 1.0) and np.allclose(prec[51:], 2 / 3)
    # Recall never reaches 1 (1 of 2 gt): points above 0.5 read 0.
    prec, rec = precision_at_recalls(np.array([0.9]), np.array([True]), 2)
    assert rec == 0.5 and np.allclose(prec[:51], 1.0) and np.all(prec[51:] == 0)


def test_exact_detections_score_one(tmp_path):
    res = evaluate_lvis(_gt_api(tmp_path, _base_dataset()), BASE_DETS, "bbox")
    assert list(res) == ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                         "AR@300", "ARs@300", "ARm@300", "ARl@300"]
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APr", "APc", "APf", "AR@300"):
        assert res[key] == pytest.approx(1.0), key
    assert res["APl"] == -1 and res["ARl@300"] == -1  # no large object anywhere


# A false positive scored 0.9 above a category's only (true positive, 0.5) detection: if it
# counts, the category's AP is 0.5 (precision 1/2 at recall 1, at every recall point).
@pytest.mark.parametrize("extra, expected", [
    # cup on image 2: image 2 neither has cups nor verified their absence -> ignored.
    (_det(2, 1, FAR_BOX, 0.9), {"APf": 1.0, "APc": 1.0, "APr": 1.0}),
    # kite on image 1: kites are not exhaustively annotated there -> ignored.
    (_det(1, 2, FAR_BOX, 0.9), {"APf": 1.0, "APc": 1.0, "APr": 1.0}),
    # yak on image 1: verified absent (negative) -> a false positive.
    (_det(1, 3, FAR_BOX, 0.9), {"APf": 1.0, "APc": 1.0, "APr": 0.5}),
    # cup on image 1: exhaustively annotated positive -> a false positive.
    (_det(1, 1, FAR_BOX, 0.9), {"APf": 0.5, "APc": 1.0, "APr": 1.0}),
])
def test_federated_rules(tmp_path, extra, expected):
    res = evaluate_lvis(_gt_api(tmp_path, _base_dataset()), BASE_DETS + [extra], "bbox")
    for key, value in expected.items():
        assert res[key] == pytest.approx(value), key
    assert res["AP"] == pytest.approx(sum(expected.values()) / 3)
    assert res["AR@300"] == pytest.approx(1.0)


def test_frequency_split_and_area_ignore(tmp_path):
    # False positives on the negative yak and on the exhaustive cup of image 1.
    dets = BASE_DETS + [_det(1, 3, FAR_BOX, 0.9), _det(1, 1, FAR_BOX, 0.9)]
    res = evaluate_lvis(_gt_api(tmp_path, _base_dataset()), dets, "bbox")
    assert (res["APr"], res["APc"], res["APf"]) == pytest.approx((0.5, 1.0, 0.5))
    assert res["AP"] == pytest.approx(2 / 3)
    # Small range: cup (FP is small too: AP 0.5) and kite (1.0); the medium yak is ignored.
    assert res["APs"] == pytest.approx(0.75)
    # Medium range: only the yak; the small false positive is outside the range -> ignored.
    assert res["APm"] == pytest.approx(1.0)


def test_not_exhaustive_keeps_true_positives(tmp_path):
    # Only the kite (not exhaustive on image 1) is detected: its match still counts.
    res = evaluate_lvis(_gt_api(tmp_path, _base_dataset()), [BASE_DETS[1]], "bbox")
    assert (res["APc"], res["APf"], res["APr"]) == (pytest.approx(1.0), 0.0, 0.0)


@pytest.mark.parametrize("num_others, max_dets, expected_apf", [
    (300, 300, 0.0),  # the cup's detection is the 301st by score: dropped, recall 0
    (299, 300, 1.0),  # the 300th: kept
    (300, 301, 1.0),
    (300, -1, 1.0),   # no limit
])
def test_max_detections_per_image(tmp_path, num_others, max_dets, expected_apf):
    # Higher-scoring yak detections (negative on image 1) crowd out the exact cup detection:
    # the limit is per image, over all categories.
    others = [_det(1, 3, FAR_BOX, 0.6 + 1e-4 * i) for i in range(num_others)]
    res = evaluate_lvis(_gt_api(tmp_path, _base_dataset()), BASE_DETS + others, "bbox",
                        max_dets=max_dets)
    assert res["APf"] == pytest.approx(expected_apf)
    assert f"AR@{max_dets}" in res


def test_limit_detections_per_image_is_stable():
    dets = [_det(1, 1, FAR_BOX, s) for s in (0.1, 0.5, 0.5, 0.9)] + [_det(2, 1, FAR_BOX, 0.2)]
    for i, d in enumerate(dets):
        d["tag"] = i
    kept = limit_detections_per_image(dets, 2)
    assert [d["tag"] for d in kept] == [3, 1, 4]  # 0.9, the first 0.5; image 2 untouched


def test_errors_name_the_problem(tmp_path):
    gt = _gt_api(tmp_path, _base_dataset())
    with pytest.raises(ValueError, match="image ids \\[7\\]"):
        evaluate_lvis(gt, [_det(7, 1, FAR_BOX, 0.5)], "bbox")
    with pytest.raises(ValueError, match="iou_type 'keypoints'"):
        evaluate_lvis(gt, BASE_DETS, "keypoints")
    data = _base_dataset()
    data["categories"] = [dict(c) for c in CATEGORIES]
    del data["categories"][1]["frequency"]
    with pytest.raises(ValueError, match="category 2 \\('kite'\\)"):
        evaluate_lvis(_gt_api(tmp_path, data), BASE_DETS, "bbox")


# --------------------------------------------------------------------------- vs COCOeval

def _as_exhaustive_lvis(coco):
    """The synthetic COCO as LVIS: each category positive or negative on every image."""
    cat_ids = [c["id"] for c in coco["categories"]]
    positive = {}
    for ann in coco["annotations"]:
        positive.setdefault(ann["image_id"], set()).add(ann["category_id"])
    images = [dict(img, neg_category_ids=sorted(set(cat_ids) - positive.get(img["id"], set())),
                   not_exhaustive_category_ids=[]) for img in coco["images"]]
    anns = [{k: v for k, v in a.items() if not k.startswith("_") and k != "iscrowd"}
            for a in coco["annotations"]]
    cats = [dict(c, frequency="rcf"[i % 3]) for i, c in enumerate(coco["categories"])]
    return {"images": images, "annotations": anns, "categories": cats}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_cocoeval_when_every_category_is_verified(tmp_path, iou_type):
    coco = make_synthetic_coco(10, seed=3, crowd_prob=0.0, min_size=80, max_size=240)
    assert not any(a["iscrowd"] for a in coco["annotations"])
    results = [r for image_id, dets in make_detections(coco, seed=4)
               for r in detections_to_coco_results(image_id, dets, with_bbox=iou_type == "bbox")]
    per_image = np.bincount([r["image_id"] for r in results])
    assert per_image.max() < 100  # COCO's AP uses at most 100 detections per image

    gt_file = tmp_path / "coco.json"
    gt_file.write_text(json.dumps(
        dict(_as_exhaustive_lvis(coco), annotations=[
            {k: v for k, v in a.items() if not k.startswith("_")} for a in coco["annotations"]])
    ))
    coco_gt = COCO(str(gt_file))
    coco_eval = COCOeval(coco_gt, coco_gt.loadRes([dict(r) for r in results]), iou_type)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()

    res = evaluate_lvis(_gt_api(tmp_path, _as_exhaustive_lvis(coco)), results, iou_type)
    stats = coco_eval.stats
    expected = {"AP": stats[0], "AP50": stats[1], "AP75": stats[2], "APs": stats[3],
                "APm": stats[4], "APl": stats[5], "AR@300": stats[8], "ARs@300": stats[9],
                "ARm@300": stats[10], "ARl@300": stats[11]}
    assert 0.2 < stats[0] < 0.95  # a non-trivial case
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, abs=1e-6), key


# --------------------------------------------------------------------------- evaluator

@pytest.fixture
def lvis_dataset(tmp_path):
    json_file = tmp_path / "lvis_val.json"
    json_file.write_text(json.dumps(_base_dataset()))
    name = f"lvis_test_{uuid.uuid4().hex[:8]}"
    register_lvis_instances(name, {}, str(json_file), str(tmp_path))
    yield name
    MetadataCatalog.remove(name)
    DatasetCatalog.remove(name)


def _instances(boxes_xywh, classes, scores, with_masks=True):
    inst = Instances((100, 100))
    xyxy = [[x, y, x + w, y + h] for x, y, w, h in boxes_xywh]
    inst.pred_boxes = Boxes(torch.tensor(xyxy, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    if with_masks:
        masks = torch.zeros(len(xyxy), 100, 100, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(xyxy):
            masks[i, y0:y1, x0:x1] = True
        inst.pred_masks = masks
    return inst


def test_evaluator_bbox_and_segm(lvis_dataset, tmp_path, catch_logs):
    logs = catch_logs("segtron.evaluation.lvis_evaluation")
    out = tmp_path / "out"
    evaluator = LVISEvaluator(lvis_dataset, output_dir=str(out))
    evaluator.reset()
    # Contiguous classes 0, 1, 2 are LVIS ids 1, 2, 3. Image 1: cup, kite and a false
    # positive yak (negative there, scored above the true yak of image 2).
    evaluator.process([{"image_id": 1}], [{"instances": _instances(
        [(10, 10, 30, 30), (50, 50, 30, 30), FAR_BOX], [0, 1, 2], [0.5, 0.5, 0.9])}])
    evaluator.process([{"image_id": 2}], [{"instances": _instances(
        [(10, 10, 40, 40)], [2], [0.5])}])
    results = evaluator.evaluate()

    assert list(results) == ["bbox", "segm"]
    for task in ("bbox", "segm"):
        res = results[task]
        assert list(res)[:9] == ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc",
                                 "APf"]
        assert (res["APf"], res["APc"], res["APr"]) == pytest.approx((100.0, 100.0, 50.0))
        assert res["AP"] == pytest.approx(250 / 3)
        assert res["AR@300"] == pytest.approx(100.0)
        assert math.isnan(res["APl"])  # no large object
    saved = json.loads((out / "lvis_instances_results.json").read_text())
    assert sorted(r["category_id"] for r in saved) == [1, 2, 3, 3]
    assert os.path.isfile(out / "instances_predictions.pth")
    assert any("Evaluation results for segm" in m for m in logs.messages())


def test_evaluator_default_limit_is_300_per_image(lvis_dataset):
    # 300 yak detections (negative on image 1) above the exact cup detection.
    boxes = [FAR_BOX] * 300 + [(10, 10, 30, 30)]
    scores = [0.6 + 1e-4 * i for i in range(300)] + [0.5]
    instances = _instances(boxes, [2] * 300 + [0], scores, with_masks=False)

    def run(**kwargs):
        evaluator = LVISEvaluator(lvis_dataset, distributed=False, **kwargs)
        evaluator.reset()
        evaluator.process([{"image_id": 1}], [{"instances": instances}])
        return evaluator.evaluate()

    res = run()["bbox"]
    assert list(res)[:13] == ["AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf",
                              "AR@300", "ARs@300", "ARm@300", "ARl@300"]
    assert res["APf"] == 0.0  # the cup was the 301st detection of its image
    assert run(max_dets_per_image=301)["bbox"]["APf"] == pytest.approx(100.0)


def test_evaluator_argument_errors(lvis_dataset, tmp_path):
    with pytest.raises(ValueError, match="unknown tasks \\['keypoints'\\]"):
        LVISEvaluator(lvis_dataset, tasks=("bbox", "keypoints"))
    with pytest.raises(ValueError, match="max_dets_per_image must be a positive int"):
        LVISEvaluator(lvis_dataset, max_dets_per_image=0)
    name = f"no_json_{uuid.uuid4().hex[:6]}"
    try:
        with pytest.raises(ValueError, match="has no json_file"):
            LVISEvaluator(name)
    finally:
        MetadataCatalog.remove(name)
    evaluator = LVISEvaluator(lvis_dataset, distributed=False)
    evaluator.process([{"image_id": 1}], [{"instances": _instances(
        [FAR_BOX], [3], [0.5], with_masks=False)}])  # class 3 = LVIS id 4: not in the json
    with pytest.raises(ValueError, match="has class 3.*3 classes"):
        evaluator.evaluate()


def test_evaluator_without_predictions(lvis_dataset):
    evaluator = LVISEvaluator(lvis_dataset, distributed=False)
    evaluator.reset()
    assert evaluator.evaluate() == {}
    # Images seen but nothing detected: metrics are NaN, as Detectron2 reports.
    evaluator.process([{"image_id": 1}], [{"instances": _instances([], [], [], False)}])
    res = evaluator.evaluate()["bbox"]
    assert all(math.isnan(v) for v in res.values())


# --------------------------------------------------------------------- operating point

OP_KEYS = ["P@F1max", "R@F1max", "F1max", "thresh@F1max"]
# Detections on _base_dataset, contiguous class (0 cup, 1 kite, 2 yak), box, score:
# image 1: kite far (unmatched on a not exhaustive category: ignored), exact cup (TP), far
#          cup (FP), far yak (negative category: FP), exact kite (TP);
# image 2: far cup (cup not verified on image 2: dropped), exact yak (TP).
OP_IMAGE1 = ([FAR_BOX, (10, 10, 30, 30), FAR_BOX, FAR_BOX, (50, 50, 30, 30)],
             [1, 0, 0, 2, 1], [0.95, 0.9, 0.8, 0.7, 0.4])
OP_IMAGE2 = ([FAR_BOX, (10, 10, 40, 40)], [0, 2], [0.99, 0.6])


def _operating_points(lvis_dataset, **kwargs):
    evaluator = LVISEvaluator(lvis_dataset, distributed=False, **kwargs)
    evaluator.reset()
    evaluator.process([{"image_id": 1}], [{"instances": _instances(*OP_IMAGE1)}])
    evaluator.process([{"image_id": 2}], [{"instances": _instances(*OP_IMAGE2)}])
    return evaluator.evaluate()


def test_operating_point_by_hand(lvis_dataset, catch_logs):
    # F1 = 2 TP / (kept + num_gt), one gt per category, ignored and dropped detections out:
    #   cup:  0.9 TP -> P 1, R 1, F1 1 @ 0.9
    #   kite: 0.4 TP (0.95 ignored) -> P 1, R 1, F1 1 @ 0.4 (were 0.95 an FP: P 1/2)
    #   yak:  0.7 FP, 0.6 TP: t=0.7 0, t=0.6 2/3 -> P 1/2, R 1, F1 2/3 @ 0.6
    #   pooled (3 gt; 0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP, 0.4 TP): t=0.9 2/4, 0.8 2/5, 0.7 2/6,
    #   0.6 4/7, 0.4 6/8 -> P 3/5, R 1, F1 3/4 @ 0.4 (with 0.95 or 0.99 as FP: 6/9, P 1/2)
    logs = catch_logs("segtron.evaluation.operating_point")
    results = _operating_points(lvis_dataset)
    expected = {"": [60.0, 100.0, 75.0, 0.4], "-cup": [100.0, 100.0, 100.0, 0.9],
                "-kite": [100.0, 100.0, 100.0, 0.4], "-yak": [50.0, 100.0, 200 / 3, 0.6]}
    for task in ("bbox", "segm"):
        res = results[task]
        names = [f"{k}{suffix}" for suffix in expected for k in OP_KEYS]
        assert list(res)[13:] == names, task  # after the LVIS metrics
        for suffix, values in expected.items():
            got = [res[k + suffix] for k in OP_KEYS]
            assert got == pytest.approx(values, abs=1e-6), (task, suffix)
    messages = logs.messages()
    assert any(m.startswith("Operating point of segm") and "LVIS matching" in m
               for m in messages)
    assert any(m.startswith("Per-category bbox operating point") for m in messages)


def test_operating_point_keeps_max_dets_per_image(lvis_dataset):
    # At most 4 detections per image: image 1 loses the exact kite (0.4), the lowest.
    #   kite: no TP -> 0, 0, 0, no threshold;
    #   pooled (0.9 TP, 0.8 FP, 0.7 FP, 0.6 TP): t=0.9 2/4, 0.8 2/5, 0.7 2/6, 0.6 4/7
    #   -> P 1/2, R 2/3, F1 4/7 @ 0.6
    res = _operating_points(lvis_dataset, max_dets_per_image=4)["bbox"]
    assert [res[k] for k in OP_KEYS] == pytest.approx([50.0, 200 / 3, 400 / 7, 0.6], abs=1e-6)
    assert [res[f"{k}-kite"] for k in OP_KEYS[:3]] == [0.0, 0.0, 0.0]
    assert math.isnan(res["thresh@F1max-kite"])
