"""Tests for segtron.evaluation.rotated_coco_evaluation (RotatedCOCOeval, RotatedCOCOEvaluator).

The hand-made case (category id 5, "box"; boxes as (cx, cy, w, h, angle)):

image 1: G1 = (50, 50, 20, 10, 0)    D1 = (50, 50, 10, 20, 90), score 0.9: G1 turned 90 deg, IoU 1
         G2 = (150, 50, 20, 20, 0)   D2 = (160, 50, 20, 20, 0), score 0.6: shifted by half the
                                     width: overlap 10 x 20 = 200, union 600, IoU 1/3
image 2: G3 = (100, 100, 20, 20, 45) D3 = G3 moved 4 px along its own axis, score 0.8:
                                     overlap 16 x 20 = 320, union 480, IoU 2/3
                                     D4 = (300, 300, 10, 10, 0), score 0.95: no overlap

Every box has an area < 32^2 (COCO "small"). Detections by score: D4 FP, D1 TP, D3 TP only for
IoU thresholds below 2/3, D2 FP (1/3 < 0.5); 3 ground-truth boxes.

* thresholds 0.50..0.65 (4 of 10): FP TP TP FP -> recall 0, 1/3, 2/3, 2/3 and interpolated
  precision 2/3 up to recall 2/3: the 67 recall points 0.00..0.66 get 2/3, AP_t = 134/303.
* thresholds 0.70..0.95 (6 of 10): FP TP FP FP -> precision 1/2 up to recall 1/3: the 34
  points 0.00..0.33 get 1/2, AP_t = 17/101.
* AP = (4 * 134/303 + 6 * 17/101) / 10 = 842/3030; AP50 = 134/303; AP75 = 17/101.
* Operating point (IoU 0.5): keeping D4, D1, D3 (score >= 0.8) gives TP 2, FP 1, FN 1: P = R =
  F1 = 2/3, the best F1 (1 kept: 0; 2 kept: 2/5; all 4: 4/7).
"""

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from segtron.data.catalog import MetadataCatalog
from segtron.evaluation import COCOEvaluator, RotatedCOCOEvaluator
from segtron.evaluation.rotated_coco_evaluation import RotatedCOCOeval
from segtron.structures import Boxes, BoxMode, Instances, RotatedBoxes

# pycocotools' mask.decode trips a numpy-2 DeprecationWarning that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

_S = 4 / math.sqrt(2)  # 4 px along a 45-degree axis
GT_BOXES = {1: [[50, 50, 20, 10, 0], [150, 50, 20, 20, 0]], 2: [[100, 100, 20, 20, 45]]}
DETECTIONS = {
    1: ([[50, 50, 10, 20, 90], [160, 50, 20, 20, 0]], [0.9, 0.6]),
    2: ([[100 + _S, 100 - _S, 20, 20, 45], [300, 300, 10, 10, 0]], [0.8, 0.95]),
}
AP50 = 134 / 303
AP_HIGH = 17 / 101  # thresholds 0.70..0.95
AP = (4 * AP50 + 6 * AP_HIGH) / 10


def _gt_dict(boxes_by_image, crowd=()):
    anns = []
    for image_id, boxes in boxes_by_image.items():
        for box in boxes:
            area = box[2] * box[3]
            iscrowd = int(len(anns) in crowd)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 5,
                         "bbox": box, "area": area, "iscrowd": iscrowd})
    images = [{"id": i, "width": 400, "height": 400} for i in boxes_by_image]
    return {"images": images, "annotations": anns, "categories": [{"id": 5, "name": "box"}]}


def _results(detections):
    return [{"image_id": i, "category_id": 5, "bbox": b, "score": s}
            for i, (boxes, scores) in detections.items() for b, s in zip(boxes, scores)]


def _run_cocoeval(gt, results, iou_thrs=None):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_eval = RotatedCOCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        if iou_thrs is not None:
            coco_eval.params.iouThrs = np.array(iou_thrs)
        coco_eval.evaluate()
        coco_eval.accumulate()
    return coco_eval


def _instances(boxes, scores, rotated=True):
    inst = Instances((400, 400))
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    inst.pred_boxes = RotatedBoxes(boxes) if rotated else Boxes(boxes)
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(len(scores), dtype=torch.int64)
    return inst


@pytest.fixture
def hand_dataset(tmp_path):
    gt_file = tmp_path / "rotated_gt.json"
    gt_file.write_text(json.dumps(_gt_dict(GT_BOXES)))
    name = "rotated_hand_case"
    MetadataCatalog.get(name).set(json_file=str(gt_file), thing_classes=["box"],
                                  thing_dataset_id_to_contiguous_id={5: 0})
    yield name
    MetadataCatalog.remove(name)


def _feed(evaluator):
    for image_id, (boxes, scores) in DETECTIONS.items():
        evaluator.process([{"image_id": image_id}], [{"instances": _instances(boxes, scores)}])


def test_ious_computed_by_hand():
    coco_eval = _run_cocoeval(_gt_dict(GT_BOXES), _results(DETECTIONS))
    # Rows: detections by descending score; columns: ground truth in annotation order.
    np.testing.assert_allclose(coco_eval.ious[1, 5], [[1, 0], [0, 1 / 3]], atol=1e-5)
    np.testing.assert_allclose(coco_eval.ious[2, 5], [[0], [2 / 3]], atol=1e-5)


def test_iou_one_third_counts_only_below_one_third():
    coco_eval = _run_cocoeval(_gt_dict(GT_BOXES), _results(DETECTIONS), iou_thrs=[0.3, 0.35])
    precision = coco_eval.eval["precision"][:, :, 0, 0, -1]  # [threshold, recall point]
    # IoU 0.3: all three gt found, D4 first: precision 3/4 at every recall point.
    assert precision[0].mean() == pytest.approx(0.75)
    # IoU 0.35: D2 (IoU 1/3) no longer matches: the 0.50..0.65 case.
    assert precision[1].mean() == pytest.approx(AP50)


def test_evaluator_ap_by_hand(hand_dataset, tmp_path):
    evaluator = RotatedCOCOEvaluator(hand_dataset, distributed=False, output_dir=str(tmp_path))
    _feed(evaluator)
    res = evaluator.evaluate()["bbox"]
    assert list(res)[:6] == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert res["AP"] == pytest.approx(100 * AP)
    assert res["AP50"] == pytest.approx(100 * AP50)
    assert res["AP75"] == pytest.approx(100 * AP_HIGH)
    assert res["APs"] == pytest.approx(100 * AP)
    assert math.isnan(res["APm"]) and math.isnan(res["APl"])
    assert "AP-box" not in res  # one class: no per-class AP, as COCOEvaluator
    assert res["P@F1max"] == pytest.approx(200 / 3) and res["R@F1max"] == pytest.approx(200 / 3)
    assert res["F1max"] == pytest.approx(200 / 3)
    assert res["thresh@F1max"] == pytest.approx(0.8)
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(written) == 4 and all(len(r["bbox"]) == 5 and r["category_id"] == 5
                                     for r in written)


def test_custom_max_dets_reports_ap_at_the_limit(hand_dataset):
    evaluator = RotatedCOCOEvaluator(hand_dataset, distributed=False, max_dets_per_image=300)
    _feed(evaluator)
    res = evaluator.evaluate()["bbox"]
    # 2 detections per image: the limit of 300 keeps them all, AP as with 100.
    assert res["AP"] == pytest.approx(100 * AP) and res["AP50"] == pytest.approx(100 * AP50)


def test_crowd_region_swallows_detections_inside_it():
    # Ground truth: a 10 x 10 box, and a rotated 60 x 60 crowd region.
    gt = _gt_dict({1: [[50, 50, 10, 10, 0], [200, 200, 60, 60, 30]]}, crowd=(1,))
    dets = {1: ([[50, 50, 10, 10, 0], [200, 200, 20, 20, 30]], [0.5, 0.9])}
    coco_eval = _run_cocoeval(gt, _results(dets))
    # The detection inside the crowd region: intersection / its own area = 400 / 400.
    np.testing.assert_allclose(coco_eval.ious[1, 5], [[0, 1], [1, 0]], atol=1e-5)
    # It is ignored (not a false positive): the one real object is found first, AP 1.
    assert coco_eval.eval["precision"][:, :, 0, 0, -1].mean() == pytest.approx(1.0)


def test_xywh_ground_truth_against_rotated_detections():
    gt = _gt_dict({1: [[40, 45, 20, 10]]})  # XYWH of G1
    dets = {1: ([[50, 50, 10, 20, 90], [55, 50, 20, 10, 0]], [0.9, 0.8])}
    coco_eval = _run_cocoeval(gt, _results(dets))
    # Second box: G1 moved by 5 px: overlap 15 x 10 = 150, union 250.
    np.testing.assert_allclose(coco_eval.ious[1, 5], [[1], [0.6]], atol=1e-5)


def _with_detections_in_crowd_regions(detections, annotations):
    """Add, for each crowd region, a confident detection of its class inside its box."""
    crowd = [a for a in annotations if a["iscrowd"]]
    assert crowd, "the synthetic ground truth should have crowd regions"
    out = []
    for image_id, dets in detections:
        dets = dict(dets)
        for k, ann in enumerate(a for a in crowd if a["image_id"] == image_id):
            x, y, w, h = ann["bbox"]
            box = np.array([[x + w / 4, y + h / 4, x + 3 * w / 4, y + 3 * h / 4]])
            dets["boxes"] = np.concatenate([dets["boxes"], box.astype(dets["boxes"].dtype)])
            scores = np.append(dets["scores"], 0.99 - 0.001 * k)
            dets["scores"] = scores.astype(dets["scores"].dtype)
            dets["category_ids"] = np.append(dets["category_ids"], ann["category_id"])
        out.append((image_id, dets))
    return out


def test_axis_aligned_boxes_give_coco_evaluator_numbers(synthetic_coco, tmp_path):
    coco = json.loads(open(synthetic_coco.gt_file).read())
    # Detections inside crowd regions: crowd IoU (intersection / detection area) matters too.
    detections = _with_detections_in_crowd_regions(synthetic_coco.detections,
                                                   coco["annotations"])
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x + w / 2, y + h / 2, w, h, 0.0]
    rotated_file = tmp_path / "rotated.json"
    rotated_file.write_text(json.dumps(coco))
    name = synthetic_coco.name + "_rotated"
    meta = MetadataCatalog.get(synthetic_coco.name)
    MetadataCatalog.get(name).set(json_file=str(rotated_file), thing_classes=meta.thing_classes,
                                  thing_dataset_id_to_contiguous_id=synthetic_coco.id_map)
    try:
        reference = COCOEvaluator(synthetic_coco.name, tasks=("bbox",), distributed=False,
                                  use_fast_impl=False)
        synthetic_coco.feed(reference, with_masks=False, detections=detections)
        expected = reference.evaluate()["bbox"]

        evaluator = RotatedCOCOEvaluator(name, distributed=False)
        for image_id, dets in detections:
            boxes = BoxMode.convert(torch.as_tensor(dets["boxes"]), BoxMode.XYXY_ABS,
                                    BoxMode.XYWHA_ABS)
            classes = [synthetic_coco.id_map[int(c)] for c in dets["category_ids"]]
            inst = Instances((1, 1), pred_boxes=RotatedBoxes(boxes),
                             scores=torch.as_tensor(dets["scores"]),
                             pred_classes=torch.as_tensor(classes, dtype=torch.int64))
            evaluator.process([{"image_id": image_id}], [{"instances": inst}])
        got = evaluator.evaluate()["bbox"]
    finally:
        MetadataCatalog.remove(name)
    assert list(got) == list(expected) and "AP-rect" in got
    assert 0 < got["AP"] < 100
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_instances_to_json_keeps_five_numbers(hand_dataset):
    evaluator = RotatedCOCOEvaluator(hand_dataset)
    rotated = evaluator.instances_to_json(_instances([[5, 6, 4, 2, 30]], [0.5]), 7)
    assert rotated == [{"image_id": 7, "category_id": 0, "bbox": [5, 6, 4, 2, 30],
                        "score": 0.5}]
    plain = evaluator.instances_to_json(_instances([[1, 2, 4, 8]], [0.5], rotated=False), 7)
    assert plain[0]["bbox"] == [1, 2, 3, 6]  # XYXY -> XYWH
    assert evaluator.instances_to_json(_instances(torch.zeros(0, 5), []), 7) == []


def test_only_the_bbox_task(hand_dataset):
    with pytest.raises(ValueError, match="only the 'bbox' task"):
        RotatedCOCOEvaluator(hand_dataset, tasks=("bbox", "segm"))
    assert RotatedCOCOEvaluator(hand_dataset, tasks=("bbox",))._tasks == ("bbox",)


def test_box_list_helpers():
    assert RotatedCOCOeval.is_rotated([[1, 2, 3, 4, 5]])
    assert not RotatedCOCOeval.is_rotated([])
    assert not RotatedCOCOeval.is_rotated([[1, 2, 3, 4]])
    assert RotatedCOCOeval.is_rotated(np.zeros((2, 5))) and not RotatedCOCOeval.is_rotated(
        np.zeros((2, 4)))
    converted = RotatedCOCOeval.boxlist_to_tensor([[0, 0, 4, 2]], output_box_dim=5)
    assert converted.tolist() == [[2, 1, 4, 2, 0]]
    assert RotatedCOCOeval.boxlist_to_tensor([], output_box_dim=5).shape == (0, 5)
    with pytest.raises(ValueError, match="4-number"):
        RotatedCOCOeval.boxlist_to_tensor([[0, 0, 4, 2, 0]], output_box_dim=4)
