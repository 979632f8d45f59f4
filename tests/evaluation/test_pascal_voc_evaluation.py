"""PascalVOCDetectionEvaluator on a hand-made VOC directory, against AP values worked out by
hand for the 11-point (VOC2007) and the area (VOC2012) metrics.

Ground truth (VOC 1-based inclusive boxes), classes ("cat", "dog"):
  img1: cat A (10,10,50,50), cat B (100,100,140,140) difficult, dog C (60,10,100,50)
  img2: cat D (20,20,80,80), dog E (10,10,40,40)
  img3: cat F (30,30,70,70)
=> 3 cat positives (B is difficult), 2 dog positives.

cat detections, by score: 0.95 on A (TP), 0.90 on A again (duplicate: FP), 0.85 on B
(difficult: ignored), 0.80 on D (TP), 0.70 far from anything (FP), 0.60 on F shifted right
by 10 px: IoU (41-10)/(41+10) = 31/51 = 0.608, a TP at IoU thresholds 0.50, 0.55, 0.60 and
an FP at 0.65 ... 0.95.
  F as TP: (rec, prec) = (1/3,1) (1/3,1/2) (1/3,1/2) (2/3,2/3) (2/3,1/2) (1,3/5)
     area: 1/3*1 + 1/3*2/3 + 1/3*3/5 = 34/45;  11-point: (4*1 + 3*2/3 + 4*3/5)/11 = 8.4/11
  F as FP: last point (2/3, 2/5)
     area: 1/3*1 + 1/3*2/3 = 5/9;              11-point: (4*1 + 3*2/3)/11 = 6/11
dog detections: 0.95 on img3 (no dog: FP), 0.90 on C (TP); E is missed.
  (rec, prec) = (0,0) (1/2,1/2): area 1/2*1/2 = 1/4; 11-point: 6 levels <= 0.5 at 1/2 = 3/11

Operating point at max F1 (IoU 0.5, F1 = 2 TP / (kept + num_gt), the difficult 0.85 left out):
  cat (3 gt): t=0.95 2/4, 0.90 2/5, 0.80 4/6, 0.70 4/7, 0.60 6/8 -> P 3/5, R 1, F1 3/4 @ 0.60
     (were the ignored 0.85 an FP: 6/9 at 0.60, P 1/2)
  dog (2 gt): t=0.95 0, 0.90 2/4 -> P 1/2, R 1/2, F1 1/2 @ 0.90
  pooled (5 gt; 0.95 TP+FP, 0.90 FP+TP, 0.80 TP, 0.70 FP, 0.60 TP): t=0.95 2/7, 0.90 4/9,
     0.80 6/10, 0.70 6/11, 0.60 8/12 -> P 4/7, R 4/5, F1 2/3 @ 0.60
"""

import os
import uuid

import numpy as np
import pytest
import torch

from segtron.data.catalog import DatasetCatalog, MetadataCatalog
from segtron.data.datasets import register_pascal_voc
from segtron.evaluation import PascalVOCDetectionEvaluator
from segtron.evaluation.pascal_voc_evaluation import parse_rec, voc_ap, voc_eval
from segtron.structures import Boxes, Instances

CLASSES = ("cat", "dog")
# image id -> [(name, (xmin, ymin, xmax, ymax) 1-based inclusive, difficult)]
GROUND_TRUTH = {
    "img1": [("cat", (10, 10, 50, 50), 0), ("cat", (100, 100, 140, 140), 1),
             ("dog", (60, 10, 100, 50), 0)],
    "img2": [("cat", (20, 20, 80, 80), 0), ("dog", (10, 10, 40, 40), 0)],
    "img3": [("cat", (30, 30, 70, 70), 0)],
}
# image id -> [(class index, score, VOC box)]; the model's boxes are 0-based (xmin-1, ymin-1).
DETECTIONS = {
    "img1": [(0, 0.95, (10, 10, 50, 50)), (0, 0.90, (10, 10, 50, 50)),
             (0, 0.85, (100, 100, 140, 140)), (1, 0.90, (60, 10, 100, 50))],
    "img2": [(0, 0.80, (20, 20, 80, 80))],
    "img3": [(0, 0.70, (150, 150, 180, 180)), (0, 0.60, (40, 30, 80, 70)),
             (1, 0.95, (150, 150, 180, 180))],
}
CAT_TP_AREA, CAT_FP_AREA, DOG_AREA = 34 / 45, 5 / 9, 1 / 4
CAT_TP_11, CAT_FP_11, DOG_11 = 8.4 / 11, 6 / 11, 3 / 11
NUM_CAT_TP_THRESHOLDS = 3  # of the 10 thresholds 0.50 ... 0.95
AP_KEYS = ["AP", "AP50", "AP75"]
OP_KEYS = ["P@F1max", "R@F1max", "F1max", "thresh@F1max"]
# The hand-computed operating points (module docstring): [P, R, F1 (percent), threshold].
EXPECTED_OP = {"": [400 / 7, 80.0, 200 / 3, 0.60], "-cat": [60.0, 100.0, 75.0, 0.60],
               "-dog": [50.0, 50.0, 50.0, 0.90]}


def _write_xml(path, objects):
    lines = ["<annotation>", "<size><width>200</width><height>200</height><depth>3</depth></size>"]
    for name, (x0, y0, x1, y1), difficult in objects:
        lines.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        )
    lines.append("</annotation>")
    path.write_text("\n".join(lines))


@pytest.fixture
def voc_dir(tmp_path):
    """A VOC year directory with the three annotated images of split "test"."""
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    for image_id, objects in GROUND_TRUTH.items():
        _write_xml(tmp_path / "Annotations" / f"{image_id}.xml", objects)
    (tmp_path / "ImageSets" / "Main" / "test.txt").write_text("\n".join(GROUND_TRUTH) + "\n")
    return tmp_path


@pytest.fixture
def register(voc_dir):
    """register(year) -> the name of a fresh dataset on ``voc_dir`` for that VOC year."""
    names = []

    def _register(year):
        name = f"voc_test_{year}_{uuid.uuid4().hex[:8]}"
        register_pascal_voc(name, str(voc_dir), "test", year, class_names=CLASSES)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def _outputs(image_id):
    dets = DETECTIONS[image_id]
    instances = Instances((200, 200))
    instances.pred_boxes = Boxes(torch.tensor(
        [[x0 - 1, y0 - 1, x1, y1] for _, _, (x0, y0, x1, y1) in dets], dtype=torch.float32))
    instances.scores = torch.tensor([s for _, s, _ in dets])
    instances.pred_classes = torch.tensor([c for c, _, _ in dets])
    return [{"image_id": image_id}], [{"instances": instances}]


def _evaluate(name, output_dir=None):
    evaluator = PascalVOCDetectionEvaluator(name, output_dir=output_dir)
    evaluator.reset()
    for image_id in DETECTIONS:  # one batch per image, as inference_on_dataset feeds them
        evaluator.process(*_outputs(image_id))
    return evaluator.evaluate()


def _expected(cat_tp, cat_fp, dog):
    cat_aps = [cat_tp] * NUM_CAT_TP_THRESHOLDS + [cat_fp] * (10 - NUM_CAT_TP_THRESHOLDS)
    return {
        "AP": 100 * (np.mean(cat_aps) + dog) / 2,
        "AP50": 100 * (cat_tp + dog) / 2,
        "AP75": 100 * (cat_fp + dog) / 2,
    }


@pytest.mark.parametrize("year, expected", [
    (2007, _expected(CAT_TP_11, CAT_FP_11, DOG_11)),
    (2012, _expected(CAT_TP_AREA, CAT_FP_AREA, DOG_AREA)),
])
def test_hand_computed_ap(register, year, expected):
    results = _evaluate(register(year))
    assert list(results) == ["bbox"]
    assert list(results["bbox"])[:3] == AP_KEYS
    for key, value in expected.items():
        assert results["bbox"][key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("year", [2007, 2012])
def test_hand_computed_operating_point(register, year, catch_logs):
    logs = catch_logs("segtron.evaluation.operating_point")
    bbox = _evaluate(register(year))["bbox"]
    # AP keys first, then the pooled point, then each class's.
    assert list(bbox) == AP_KEYS + OP_KEYS + [f"{k}-{c}" for c in CLASSES for k in OP_KEYS]
    for suffix, expected in EXPECTED_OP.items():
        got = [bbox[k + suffix] for k in OP_KEYS]
        assert got == pytest.approx(expected, abs=1e-9), suffix
    overall = next(m for m in logs.messages() if m.startswith("Operating point of bbox"))
    assert "VOC matching" in overall


def test_no_detections_give_zero_ap(register):
    evaluator = PascalVOCDetectionEvaluator(register(2012))
    evaluator.reset()
    bbox = evaluator.evaluate()["bbox"]
    assert {k: bbox[k] for k in AP_KEYS} == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    # Ground truth but no true positive: P = R = F1 = 0, no threshold.
    for suffix in ("", "-cat", "-dog"):
        assert [bbox[k + suffix] for k in OP_KEYS[:3]] == [0.0, 0.0, 0.0], suffix
        assert np.isnan(bbox["thresh@F1max" + suffix]), suffix


def test_result_files_in_output_dir(register, tmp_path):
    out = tmp_path / "out"
    _evaluate(register(2007), output_dir=str(out))
    cat = (out / "comp4_det_test_cat.txt").read_text().splitlines()
    dog = (out / "comp4_det_test_dog.txt").read_text().splitlines()
    assert len(cat) == 6 and len(dog) == 2
    # 1-based VOC box again, score to 3 decimals, coordinates to 1.
    assert "img1 0.950 10.0 10.0 50.0 50.0" in cat
    assert "img3 0.600 40.0 30.0 80.0 70.0" in cat
    # voc_eval reads those files back: the cat AP at IoU 0.5 is the hand-computed one.
    _, _, ap = voc_eval(str(out / "comp4_det_test_{}.txt"),
                        os.path.join(str(tmp_path), "Annotations", "{}.xml"),
                        os.path.join(str(tmp_path), "ImageSets", "Main", "test.txt"), "cat",
                        ovthresh=0.5, use_07_metric=False)
    assert ap == pytest.approx(CAT_TP_AREA)


def test_parse_rec_reads_difficult_and_boxes(voc_dir):
    objects = parse_rec(str(voc_dir / "Annotations" / "img1.xml"))
    assert [(o["name"], o["bbox"], o["difficult"]) for o in objects] == [
        ("cat", [10, 10, 50, 50], 0), ("cat", [100, 100, 140, 140], 1),
        ("dog", [60, 10, 100, 50], 0)]


def test_voc_ap_small_curves():
    # Recall 0.5 at precision 1, then recall 1 at precision 0.5.
    rec, prec = np.array([0.5, 1.0]), np.array([1.0, 0.5])
    assert voc_ap(rec, prec) == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 * 1 + 5 * 0.5) / 11)
    # Recall exactly at a level (0.3 = 3/10) reaches that level.
    assert voc_ap(np.array([3 / 10]), np.array([1.0]), True) == pytest.approx(4 / 11)
    assert voc_ap(np.array([]), np.array([])) == 0.0


def test_missing_metadata_names_the_fields():
    name = f"not_voc_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(thing_classes=["a"])
    try:
        with pytest.raises(KeyError, match="dirname"):
            PascalVOCDetectionEvaluator(name)
    finally:
        MetadataCatalog.remove(name)


def test_detection_outside_the_split_is_an_error(register):
    evaluator = PascalVOCDetectionEvaluator(register(2012))
    evaluator.reset()
    inputs, outputs = _outputs("img1")
    inputs[0]["image_id"] = "not_in_split"
    evaluator.process(inputs, outputs)
    with pytest.raises(KeyError, match="not_in_split"):
        evaluator.evaluate()
