"""Tests for the operating point at maximum F1 (segtron.evaluation.operating_point) and the
COCO matching it rests on (segtron.evaluation.coco_matching).

The hand-made cases are checked through ``COCOEvaluator`` end to end against values worked
out by hand in the comments; the matching is checked against pycocotools' own per-image
matches (``evalImgs``) on the synthetic dataset.
"""

import contextlib
import io
import json
import math
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segtron.data.catalog import MetadataCatalog
from segtron.evaluation import COCOEvaluator
from segtron.evaluation.coco_matching import match_detections
from segtron.evaluation.fast_eval_api import load_coco_api, run_coco_eval
from segtron.evaluation.operating_point import best_f1_point
from segtron.evaluation.testing import print_csv_format
from segtron.structures import Boxes, Instances

from .synthetic_coco import detections_to_coco_results, make_detections, make_synthetic_coco
from .synthetic_coco import strip_private

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SIZE = 100  # every hand-made image is 100 x 100
OP_KEYS = ("P@F1max", "R@F1max", "F1max", "thresh@F1max")


def _gt(ann_id, image_id, category_id, box, crowd=False):
    x, y, w, h = box
    ann = {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": list(box),
           "area": float(w * h), "iscrowd": int(crowd)}
    if crowd:
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        mask[y:y + h, x:x + w] = 1
        rle = mask_util.encode(np.asfortranarray(mask))
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    else:
        ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return ann


class HandMadeCoco:
    """A registered dataset from hand-written ground truth; detections given per image as
    ``[(class name, score, (x, y, w, h)), ...]``."""

    def __init__(self, tmp_path, categories, gts):
        self.names = [name for _, name in categories]
        self.id_map = {cat_id: i for i, (cat_id, _) in enumerate(categories)}
        image_ids = sorted({g[0] for g in gts})
        coco = {
            "images": [{"id": i, "file_name": f"{i}.png", "height": SIZE, "width": SIZE}
                       for i in image_ids],
            "annotations": [_gt(n + 1, *g) for n, g in enumerate(gts)],
            "categories": [{"id": cat_id, "name": name} for cat_id, name in categories],
        }
        path = tmp_path / f"hand_{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(coco))
        self.name = f"hand_coco_{uuid.uuid4().hex[:8]}"
        MetadataCatalog.get(self.name).set(
            json_file=str(path), thing_classes=self.names,
            thing_dataset_id_to_contiguous_id=self.id_map, evaluator_type="coco")

    def evaluate(self, detections, **kwargs):
        evaluator = COCOEvaluator(self.name, distributed=False, **kwargs)
        for image_id, dets in detections.items():
            inst = Instances((SIZE, SIZE))
            inst.pred_boxes = Boxes(torch.tensor([[x, y, x + w, y + h] for _, _, (x, y, w, h)
                                                  in dets], dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor([s for _, s, _ in dets], dtype=torch.float32)
            inst.pred_classes = torch.tensor([self.names.index(c) for c, _, _ in dets],
                                             dtype=torch.int64)
            evaluator.process([{"image_id": image_id}], [{"instances": inst}])
        return evaluator.evaluate()

    def cleanup(self):
        MetadataCatalog.remove(self.name)


@pytest.fixture
def hand_made(tmp_path):
    made = []

    def build(categories, gts):
        made.append(HandMadeCoco(tmp_path, categories, gts))
        return made[-1]

    yield build
    for data in made:
        data.cleanup()


# Two images, classes "apple" (id 1) and "pear" (id 5). (image, category, xywh box[, crowd])
TWO_CLASS_GT = [
    (1, 1, (10, 10, 20, 20)),  # apple A1
    (1, 1, (50, 50, 20, 20)),  # apple A2
    (1, 5, (10, 60, 20, 20)),  # pear P1
    (2, 1, (20, 20, 20, 20)),  # apple A3
    (2, 1, (50, 50, 40, 40), True),  # an apple crowd region
    (2, 5, (60, 10, 20, 20)),  # pear P2
    (2, 5, (60, 60, 20, 20)),  # pear P3: never detected (the miss)
]
TWO_CLASS_DETS = {
    1: [("apple", 0.9, (10, 10, 20, 20)),  # A1: TP
        ("apple", 0.8, (12, 12, 20, 20)),  # A1 again (IoU 0.68): duplicate, FP
        ("apple", 0.6, (50, 50, 20, 20)),  # A2: TP
        ("pear", 0.62, (40, 0, 15, 15)),  # nothing there: FP
        ("pear", 0.7, (75, 0, 20, 15)),  # FP
        ("pear", 0.3, (10, 60, 20, 20))],  # P1: TP
    2: [("apple", 0.95, (80, 0, 15, 15)),  # FP
        ("apple", 0.5, (55, 55, 20, 20)),  # inside the crowd region: ignored
        ("apple", 0.4, (20, 20, 20, 20)),  # A3: TP
        ("pear", 0.85, (60, 10, 20, 20)),  # P2: TP
        ("pear", 0.65, (0, 80, 15, 15))],  # FP
}


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_two_classes_by_hand(hand_made, use_fast_impl):
    data = hand_made([(1, "apple"), (5, "pear")], TWO_CLASS_GT)
    bbox = data.evaluate(TWO_CLASS_DETS, use_fast_impl=use_fast_impl)["bbox"]

    # apple, 3 gt (the crowd is not counted); by score (TP count / kept -> F1 = 2TP/(kept+3)):
    # 0.95 FP 0/1 -> 0, 0.9 TP 1/2 -> 2/5, 0.8 FP 1/3 -> 2/6, 0.6 TP 2/4 -> 4/7,
    # 0.4 TP 3/5 -> 6/8 (the 0.5 detection on the crowd is neither TP nor FP).
    expect = {"P@F1max-apple": 60.0, "R@F1max-apple": 100.0, "F1max-apple": 75.0,
              "thresh@F1max-apple": 0.4}
    # pear, 3 gt: 0.85 TP 1/1 -> 2/4, 0.7 FP 1/2 -> 2/5, 0.65 FP 1/3 -> 2/6, 0.62 FP 1/4 -> 2/7,
    # 0.3 TP 2/5 -> 4/8: F1 0.5 twice, the highest threshold (0.85) wins.
    expect.update({"P@F1max-pear": 100.0, "R@F1max-pear": 100 / 3, "F1max-pear": 50.0,
                   "thresh@F1max-pear": 0.85})
    # Pooled, 6 gt: 0.95 FP, 0.9 TP, 0.85 TP, 0.8 FP, 0.7 FP, 0.65 FP, 0.62 FP, 0.6 TP, 0.4 TP,
    # 0.3 TP -> F1 at each: 0, 2/8, 4/9, 4/10, 4/11, 4/12, 4/13, 6/14, 8/15, 10/16 (best).
    expect.update({"P@F1max": 50.0, "R@F1max": 500 / 6, "F1max": 62.5, "thresh@F1max": 0.3})
    for key, value in expect.items():
        assert bbox[key] == pytest.approx(value, abs=1e-5), key
    assert {"AP", "AP50", "AP-apple", "AP-pear"} <= set(bbox)


def test_edge_cases_no_detections_no_ground_truth(hand_made):
    categories = [(1, "cat"), (2, "dog"), (3, "bird"), (4, "fish")]
    gts = [(7, 1, (10, 10, 20, 20)), (7, 2, (50, 10, 20, 20)), (7, 4, (10, 50, 20, 20))]
    data = hand_made(categories, gts)
    bbox = data.evaluate({7: [("cat", 0.7, (10, 10, 20, 20)),  # TP
                              ("bird", 0.9, (50, 50, 20, 20)),  # a class without gt: FP
                              ("fish", 0.8, (70, 70, 20, 20))]})["bbox"]  # FP
    point = {name: [bbox[f"{key}-{name}"] for key in OP_KEYS] for _, name in categories}
    assert point["cat"] == pytest.approx([100.0, 100.0, 100.0, 0.7])
    # Ground truth but no true positive (dog: no detections; fish: only a miss): 0, threshold NaN.
    for name in ("dog", "fish"):
        assert point[name][:3] == [0.0, 0.0, 0.0] and math.isnan(point[name][3]), name
    # No ground truth: skipped like COCO's AP (NaN).
    assert all(math.isnan(v) for v in point["bird"]) and math.isnan(bbox["AP-bird"])
    # Pooled over 3 gt: 0.9 FP, 0.8 FP, 0.7 TP -> 1 TP of 3 kept, 1 of 3 gt found.
    assert [bbox[k] for k in OP_KEYS] == pytest.approx([100 / 3, 100 / 3, 100 / 3, 0.7])


def test_one_class_has_no_per_class_keys(hand_made):
    data = hand_made([(1, "cat")], [(3, 1, (10, 10, 20, 20)), (3, 1, (60, 60, 30, 30))])
    bbox = data.evaluate({3: [("cat", 0.6, (10, 10, 20, 20))]})["bbox"]
    assert sorted(bbox) == sorted(["AP", "AP50", "AP75", "APs", "APm", "APl", *OP_KEYS])
    assert [bbox[k] for k in OP_KEYS] == pytest.approx([100.0, 50.0, 200 / 3, 0.6])


def test_logs_and_copypaste_stay_compact(hand_made, catch_logs):
    data = hand_made([(1, "apple"), (5, "pear")], TWO_CLASS_GT)
    logs = catch_logs("segtron.evaluation.coco_evaluation")
    op_logs = catch_logs("segtron.evaluation.operating_point")
    results = data.evaluate(TWO_CLASS_DETS)
    summary = next(m for m in logs.messages() if m.startswith("Evaluation results for bbox"))
    assert "F1" not in summary  # the AP table is unchanged
    messages = op_logs.messages()
    overall = next(m for m in messages if m.startswith("Operating point of bbox at max F1"))
    assert "SCORE_THRESH_TEST" in overall and "0.300" in overall
    assert "a lower test threshold might do better" in overall  # best = lowest score, 0.3
    table = next(m for m in messages if m.startswith("Per-category bbox operating point"))
    header = [c.strip() for c in table.splitlines()[1].strip("|").split("|")]
    assert header == ["category", "P", "R", "F1", "thresh"] * 2  # two classes per row
    row = [c.strip() for c in table.splitlines()[3].strip("|").split("|")]
    assert row == ["apple", "60.000", "100.000", "75.000", "0.400",
                   "pear", "100.000", "33.333", "50.000", "0.850"]

    csv_logs = catch_logs("segtron.evaluation.testing")
    print_csv_format(results)
    names = csv_logs.messages()[1]
    assert names.endswith("APl,P@F1max,R@F1max,F1max,thresh@F1max")  # no per-class keys


# ------------------------------------------------------------------------ the sweep alone


def test_equal_scores_are_kept_together():
    # 2 gt; scores 0.9 (TP), 0.5 (TP), 0.5 (FP). Keeping only one of the two 0.5s is
    # impossible: t=0.9 -> F1 2/3, t=0.5 -> 2 TP of 3 kept -> F1 4/5 (splitting the tie
    # after the TP would claim F1 1.0).
    point = best_f1_point(np.array([0.9, 0.5, 0.5]), np.array([True, True, False]), 2)
    assert point == pytest.approx((200 / 3, 100.0, 80.0, 0.5))
    assert best_f1_point(np.array([]), np.array([], dtype=bool), 0)[2] != 0  # NaN: no gt
    with pytest.raises(ValueError, match="one flag per detection"):
        best_f1_point(np.array([0.5, 0.4]), np.array([True]), 1)


# ------------------------------------------------------------ the matching against COCO


def _reference_matches(coco_gt, results, iou_type, max_dets):
    """Per category from pycocotools' evalImgs at IoU 0.5, area all, the largest maxDets:
    sorted (score, is TP) of the non-ignored detections, and the non-ignored gt count."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), iou_type)
        coco_eval.params.maxDets = list(max_dets)
        coco_eval.evaluate()
    assert coco_eval.params.iouThrs[0] == 0.5
    reference = {c: ([], 0) for c in coco_eval.params.catIds}
    for entry in coco_eval.evalImgs:
        if entry is None or entry["aRng"] != coco_eval.params.areaRng[0]:
            continue
        keep = ~entry["dtIgnore"][0].astype(bool)
        pairs = [(s, bool(m > 0)) for s, m in zip(np.asarray(entry["dtScores"])[keep],
                                                   entry["dtMatches"][0][keep])]
        old_pairs, old_gt = reference[entry["category_id"]]
        num_gt = int((~np.asarray(entry["gtIgnore"], dtype=bool)).sum())
        reference[entry["category_id"]] = (old_pairs + pairs, old_gt + num_gt)
    return {c: (sorted(p), n) for c, (p, n) in reference.items()}


@pytest.mark.parametrize("max_dets", [(1, 10, 100), (1, 2, 3)])
def test_matching_equals_pycocotools_evalimgs(tmp_path, max_dets):
    coco = make_synthetic_coco(12, seed=5, crowd_prob=0.25, max_objects=10)
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(strip_private(coco)))
    dets = list(make_detections(coco, seed=6, false_positives=(2, 8)))
    crowds = [a for a in coco["annotations"] if a["iscrowd"]]
    assert crowds  # detections on crowd regions must be ignored, not counted as FP
    checked = 0
    for iou_type in ("bbox", "segm"):
        results = [r for image_id, d in dets
                   for r in detections_to_coco_results(image_id, d, iou_type == "bbox")]
        results += [{"image_id": a["image_id"], "category_id": a["category_id"], "score": 0.55,
                     "bbox": a["bbox"], "segmentation": a["segmentation"]} for a in crowds]
        with contextlib.redirect_stdout(io.StringIO()):
            reference = _reference_matches(COCO(str(gt_file)), [dict(r) for r in results],
                                           iou_type, max_dets)
        for fast in (True, False):
            coco_gt = load_coco_api(str(gt_file), fast)
            with contextlib.redirect_stdout(io.StringIO()):
                coco_dt = coco_gt.loadRes([dict(r) for r in results])
            coco_eval = run_coco_eval(coco_gt, coco_dt, iou_type, fast=fast, max_dets=max_dets)
            matches = match_detections(coco_eval, 0.5)
            assert sorted(matches) == sorted(reference)
            for cat_id, m in matches.items():
                got = sorted(zip(m.scores.tolist(), m.is_tp.tolist()))
                assert (got, m.num_gt) == reference[cat_id], (iou_type, fast, cat_id)
                checked += sum(tp for _, tp in got)
    assert checked > 50  # true positives were compared, not only empty lists


@pytest.mark.parametrize("use_fast_impl", [True, False])
def test_equal_iou_goes_to_the_later_ground_truth_as_in_coco(hand_made, use_fast_impl):
    # G1 x 0..20 and G2 x 4..24; D1 (0.9, x 2..22) overlaps both by 18 px: IoU 360/440 each.
    # COCO gives an equal-IoU tie to the later ground truth (G2), so D2 (0.8, x 8..28; IoU 0.43
    # with G1, 0.67 with G2) finds G2 taken and is a false positive: best F1 at 0.9 is 2/3.
    data = hand_made([(1, "cat")], [(4, 1, (0, 0, 20, 20)), (4, 1, (4, 0, 20, 20))])
    bbox = data.evaluate({4: [("cat", 0.9, (2, 0, 20, 20)), ("cat", 0.8, (8, 0, 20, 20))]},
                         use_fast_impl=use_fast_impl)["bbox"]
    assert [bbox[k] for k in OP_KEYS] == pytest.approx([100.0, 50.0, 200 / 3, 0.9])
    assert bbox["AP50"] == pytest.approx(50.0, abs=0.5)  # COCO's own matching agrees: 1 TP


def test_crowd_region_does_not_take_a_detection_that_matches_an_object(hand_made):
    # An object inside a crowd region. D1 has IoU 0.68 with the object and "IoU" 1 with the
    # crowd (COCO divides by the detection's area): COCO keeps the object match (TP). D2 lies in
    # the crowd only: ignored. D3 matches nothing: FP. 1 gt: best at 0.9 with 1 TP of 1 kept.
    data = hand_made([(1, "cat")], [(5, 1, (10, 10, 20, 20)), (5, 1, (0, 0, 60, 60), True)])
    bbox = data.evaluate({5: [("cat", 0.9, (12, 12, 20, 20)), ("cat", 0.8, (40, 40, 15, 15)),
                              ("cat", 0.7, (70, 70, 20, 20))]})["bbox"]
    assert [bbox[k] for k in OP_KEYS] == pytest.approx([100.0, 100.0, 100.0, 0.9])


def _many_class_detections(num_classes):
    """Per class c: 2 ground-truth objects, detections scored 0.9 (true) and 0.4 (false)."""
    scores, is_tp, classes = [], [], []
    for c in range(num_classes):
        scores += [0.9, 0.4]
        is_tp += [True, False]
        classes += [c, c]
    return (np.array(scores), np.array(is_tp), np.array(classes), [2] * num_classes,
            [f"class{c}" for c in range(num_classes)])


def test_many_classes_go_to_a_csv_instead_of_the_results(tmp_path, catch_logs):
    """LVIS-sized label sets: 4 keys per class would swamp metrics.json, so beyond 100 classes
    the per-class points are written to a CSV (one row per class) and named in the log."""
    from segtron.evaluation.operating_point import (
        MAX_CLASSES_IN_RESULTS,
        report_operating_points_from_detections,
    )

    logs = catch_logs("segtron.evaluation.operating_point")
    n = MAX_CLASSES_IN_RESULTS + 1
    scores, is_tp, classes, num_gt, names = _many_class_detections(n)
    results = report_operating_points_from_detections(
        scores, is_tp, classes, num_gt, iou_type="segm", class_names=names,
        output_dir=str(tmp_path))
    assert sorted(results) == ["F1max", "P@F1max", "R@F1max", "thresh@F1max"]
    # Pooled: at t = 0.9, n TP, 0 FP, n FN -> P 100, R 50.
    assert results["P@F1max"] == pytest.approx(100.0) and results["R@F1max"] == pytest.approx(50)
    rows = (tmp_path / "operating_points_segm.csv").read_text().splitlines()
    assert rows[0] == "category,P,R,F1,thresh" and len(rows) == n + 1
    assert rows[1].split(",")[0] == "class0"
    assert [float(v) for v in rows[1].split(",")[1:]] == pytest.approx([100, 50, 66.6667, 0.9],
                                                                        abs=1e-3)
    assert any("operating_points_segm.csv" in m for m in logs.messages())
    assert not any("class50" in m for m in logs.messages())  # no 101-row table in the log


def test_up_to_the_limit_per_class_keys_stay_in_the_results(tmp_path):
    from segtron.evaluation.operating_point import (
        MAX_CLASSES_IN_RESULTS,
        report_operating_points_from_detections,
    )

    scores, is_tp, classes, num_gt, names = _many_class_detections(MAX_CLASSES_IN_RESULTS)
    results = report_operating_points_from_detections(
        scores, is_tp, classes, num_gt, iou_type="bbox", class_names=names,
        output_dir=str(tmp_path))
    assert results["F1max-class7"] == pytest.approx(200 / 3)
    assert len(results) == 4 * (MAX_CLASSES_IN_RESULTS + 1)
    assert not list(tmp_path.iterdir())
