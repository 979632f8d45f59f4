"""Tests of segtron.evaluation.panoptic_quality (PQ) and .panoptic_evaluation (the evaluator).

* hand-computed 4x6 images: TP / FP / FN, IoUs and PQ / SQ / RQ worked out in the comments;
* a cross-check against panopticapi (the panopticapi-lite package) on random panoptic images
  with things, stuff, crowd regions and void, written in COCO panoptic format;
* the evaluator end to end (both prediction styles: segments_info and label_divisor labels);
* bad data failing with clear errors.
"""

import json
import logging
import math
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from segtron.data.catalog import MetadataCatalog
from segtron.evaluation import COCOPanopticEvaluator
from segtron.evaluation.panoptic_quality import (
    PQStat,
    id2rgb,
    pq_compute,
    read_panoptic_png,
    rgb2id,
)

# Dataset category ids are deliberately not contiguous.
CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 20, "name": "sky", "isthing": 0},
    {"id": 25, "name": "road", "isthing": 0},
]
PERSON, CAR, SKY, ROAD = 1, 3, 20, 25
THING_MAP = {1: 0, 3: 1}  # dataset id -> contiguous id (one id space, as "standard" COCO)
STUFF_MAP = {20: 2, 25: 3}
NAN = float("nan")


def seg(seg_id, category_id, iscrowd=0):
    return {"id": seg_id, "category_id": category_id, "iscrowd": iscrowd}


def image_stat(gt, gt_segments, pred, pred_segments):
    """PQStat of one image given as nested lists."""
    stat = PQStat(CATEGORIES)
    stat.add_image(np.array(gt), gt_segments, np.array(pred), pred_segments, image_id=1)
    return stat


def assert_summary(stat, key, pq, sq, rq, n):
    r = stat.results()[key]
    assert r["n"] == n
    for name, expected in (("pq", pq), ("sq", sq), ("rq", rq)):
        assert r[name] == pytest.approx(expected, abs=1e-12), (key, name)


def assert_class(stat, cat_id, tp, fp, fn, pq, sq, rq):
    r = stat.results()["per_class"][cat_id]
    assert (r["tp"], r["fp"], r["fn"]) == (tp, fp, fn)
    for name, expected in (("pq", pq), ("sq", sq), ("rq", rq)):
        if math.isnan(expected):
            assert math.isnan(r[name]), (cat_id, name)
        else:
            assert r[name] == pytest.approx(expected, abs=1e-12), (cat_id, name)


# ---------------------------------------------------------------------------------------------
# Hand-computed cases.


def test_matches_and_void_left_out_of_union():
    gt = [[1, 1, 1, 2, 2, 2],
          [1, 1, 1, 2, 2, 2],
          [3, 3, 3, 3, 3, 3],
          [3, 3, 3, 3, 3, 0]]
    pred = [[5, 5, 5, 5, 6, 6],
            [5, 5, 5, 6, 6, 6],
            [7, 7, 7, 7, 7, 7],
            [7, 7, 7, 7, 7, 7]]
    # Areas: gt 1 = 6, gt 2 = 6, gt 3 = 11 (+1 void pixel); pred 5 = 7, pred 6 = 5, pred 7 = 12.
    # person: inter(1, 5) = 6, union = 7 + 6 - 6 = 7            -> IoU 6/7, TP
    # car:    inter(2, 6) = 5, union = 5 + 6 - 5 = 6            -> IoU 5/6, TP
    # sky:    inter(3, 7) = 11, union = 12 + 11 - 11 - 1 (pred 7 on void) = 11 -> IoU 1, TP
    # road: absent everywhere -> not counted.
    stat = image_stat(gt, [seg(1, PERSON), seg(2, CAR), seg(3, SKY)],
                      pred, [seg(5, PERSON), seg(6, CAR), seg(7, SKY)])
    assert_class(stat, PERSON, 1, 0, 0, 6 / 7, 6 / 7, 1.0)
    assert_class(stat, CAR, 1, 0, 0, 5 / 6, 5 / 6, 1.0)
    assert_class(stat, SKY, 1, 0, 0, 1.0, 1.0, 1.0)
    assert_class(stat, ROAD, 0, 0, 0, NAN, NAN, NAN)
    assert_summary(stat, "All", (6 / 7 + 5 / 6 + 1) / 3, (6 / 7 + 5 / 6 + 1) / 3, 1.0, 3)
    assert_summary(stat, "Things", (6 / 7 + 5 / 6) / 2, (6 / 7 + 5 / 6) / 2, 1.0, 2)
    assert_summary(stat, "Stuff", 1.0, 1.0, 1.0, 1)


def test_iou_of_exactly_half_wrong_class_and_prediction_on_void():
    gt = [[1, 1, 1, 1, 0, 0],
          [1, 1, 1, 1, 0, 0],
          [2, 2, 2, 2, 2, 2],
          [2, 2, 2, 2, 2, 2]]
    pred = [[5, 5, 0, 0, 6, 6],
            [5, 5, 0, 0, 6, 6],
            [7, 7, 7, 7, 7, 7],
            [7, 7, 7, 7, 7, 7]]
    # person: inter(1, 5) = 4, union = 4 + 8 - 4 = 8 -> IoU 0.5, not > 0.5: gt 1 is a FN and
    #         pred 5 (nothing of it on void) a FP -> PQ = SQ = RQ = 0.
    # car:    pred 6 lies entirely on void (4/4 > 0.5) -> ignored; car not counted at all.
    # road gt 2 vs sky pred 7: different categories, no match -> road FN, sky FP.
    # All: person, sky, road counted (n = 3), everything 0.
    stat = image_stat(gt, [seg(1, PERSON), seg(2, ROAD)],
                      pred, [seg(5, PERSON), seg(6, CAR), seg(7, SKY)])
    assert_class(stat, PERSON, 0, 1, 1, 0.0, 0.0, 0.0)
    assert_class(stat, CAR, 0, 0, 0, NAN, NAN, NAN)
    assert_class(stat, SKY, 0, 1, 0, 0.0, 0.0, 0.0)
    assert_class(stat, ROAD, 0, 0, 1, 0.0, 0.0, 0.0)
    assert_summary(stat, "All", 0.0, 0.0, 0.0, 3)
    assert_summary(stat, "Things", 0.0, 0.0, 0.0, 1)
    assert_summary(stat, "Stuff", 0.0, 0.0, 0.0, 2)


def test_crowd_regions():
    gt = [[1, 1, 1, 2, 2, 2],
          [1, 1, 1, 2, 2, 2],
          [1, 1, 1, 2, 2, 2],
          [3, 3, 3, 3, 3, 3]]
    pred = [[5, 5, 6, 6, 6, 6],
            [5, 5, 6, 6, 6, 6],
            [8, 8, 6, 6, 6, 6],
            [7, 7, 7, 7, 7, 7]]
    # gt 1: person crowd (9 px), gt 2: person (9 px), gt 3: sky (6 px).
    # pred 6 person (12 px): crowd gt 1 is never matched; inter(2, 6) = 9,
    #        union = 12 + 9 - 9 = 12 -> IoU 0.75, TP.
    # pred 5 person (4 px): unmatched, 4 of 4 px on the person crowd -> ignored.
    # pred 8 car (2 px): on the *person* crowd, there is no car crowd -> FP.
    # pred 7 sky = gt 3 -> IoU 1, TP.
    # person: PQ = SQ = 0.75, RQ = 1; car: 0, 0, 0; sky: 1, 1, 1.
    stat = image_stat(gt, [seg(1, PERSON, iscrowd=1), seg(2, PERSON), seg(3, SKY)],
                      pred, [seg(5, PERSON), seg(6, PERSON), seg(7, SKY), seg(8, CAR)])
    assert_class(stat, PERSON, 1, 0, 0, 0.75, 0.75, 1.0)
    assert_class(stat, CAR, 0, 1, 0, 0.0, 0.0, 0.0)
    assert_class(stat, SKY, 1, 0, 0, 1.0, 1.0, 1.0)
    assert_summary(stat, "All", 1.75 / 3, 1.75 / 3, 2 / 3, 3)
    assert_summary(stat, "Things", 0.375, 0.375, 0.5, 2)
    assert_summary(stat, "Stuff", 1.0, 1.0, 1.0, 1)


def test_void_and_crowd_add_up_and_half_is_not_ignored():
    gt = [[1, 1, 1, 0, 0, 0],
          [1, 1, 1, 0, 0, 0],
          [2, 2, 2, 2, 2, 2],
          [2, 2, 2, 2, 2, 2]]
    pred = [[0, 0, 5, 5, 6, 6],
            [0, 0, 5, 5, 6, 6],
            [0, 0, 5, 5, 6, 6],
            [7, 7, 7, 7, 6, 6]]
    # gt 1: person crowd (6 px), gt 2: road (12 px), 6 void px.
    # pred 5 person (6 px): 2 px on the person crowd + 2 px on void = 4/6 > 0.5 -> ignored
    #        (either part alone, 2/6, would not be enough).
    # pred 6 car (8 px): 4 px on void, 4 on road: 4/8 = 0.5, not > 0.5 -> FP.
    # pred 7 road (4 px): inter(2, 7) = 4, union = 4 + 12 - 4 = 12 -> IoU 1/3: road FN + FP.
    # person not counted; car 0; road 0 -> All 0 over n = 2.
    stat = image_stat(gt, [seg(1, PERSON, iscrowd=1), seg(2, ROAD)],
                      pred, [seg(5, PERSON), seg(6, CAR), seg(7, ROAD)])
    assert_class(stat, PERSON, 0, 0, 0, NAN, NAN, NAN)
    assert_class(stat, CAR, 0, 1, 0, 0.0, 0.0, 0.0)
    assert_class(stat, ROAD, 0, 1, 1, 0.0, 0.0, 0.0)
    assert_summary(stat, "All", 0.0, 0.0, 0.0, 2)
    assert_summary(stat, "Things", 0.0, 0.0, 0.0, 1)
    assert_summary(stat, "Stuff", 0.0, 0.0, 0.0, 1)


def test_stats_add_up_over_images():
    # Image 1: one person with IoU 6/7 (as in the first test). Image 2: a missed person (FN)
    # and a car FP. person: TP 1, FN 1, IoU sum 6/7 -> PQ = (6/7) / 1.5, SQ = 6/7, RQ = 1/1.5.
    stat = PQStat(CATEGORIES)
    gt1 = np.array([[1, 1, 1, 0, 0, 0]] * 2)
    pred1 = np.array([[5, 5, 5, 5, 0, 0], [5, 5, 5, 0, 0, 0]])
    # inter 6, pred 7 px with 1 on void: union = 7 + 6 - 6 - 1 = 6 -> IoU 1 !
    stat.add_image(gt1, [seg(1, PERSON)], pred1, [seg(5, PERSON)], image_id=1)
    gt2 = np.array([[1, 1, 0, 0, 0, 0]] * 2)
    pred2 = np.array([[0, 0, 0, 0, 9, 9]] * 2)
    stat.add_image(gt2, [seg(1, PERSON)], pred2, [seg(9, CAR)], image_id=2)
    assert_class(stat, PERSON, 1, 0, 1, 1 / 1.5, 1.0, 1 / 1.5)
    # car: 2 px on void out of 2 -> ignored, not counted.
    assert_class(stat, CAR, 0, 0, 0, NAN, NAN, NAN)
    other = PQStat(CATEGORIES)
    other += stat
    other += stat
    assert_class(other, PERSON, 2, 0, 2, 1 / 1.5, 1.0, 1 / 1.5)


def test_empty_selection_gives_nan():
    stat = image_stat([[1, 1]], [seg(1, SKY)], [[4, 4]], [seg(4, SKY)])
    assert_summary(stat, "Stuff", 1.0, 1.0, 1.0, 1)
    things = stat.results()["Things"]
    assert things["n"] == 0 and math.isnan(things["pq"])


def test_rgb_id_round_trip(tmp_path):
    ids = np.array([[0, 1, 255, 256], [65535, 65536, 2 ** 24 - 1, 123456]])
    rgb = id2rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert rgb[0, 3].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(rgb2id(rgb), ids)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_panoptic_png(str(tmp_path / "x.png")), ids)
    with pytest.raises(ValueError, match="2\\*\\*24|16777216"):
        id2rgb(np.array([[2 ** 24]]))


# ---------------------------------------------------------------------------------------------
# Random COCO-format data and the panopticapi cross-check.


def encode(ids):
    """RGB panoptic encoding written independently of the code under test."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def random_pair(rng, height=40, width=56):
    """One random image: (gt ids, gt segments, pred ids, pred segments) in dataset ids.

    Ground truth: horizontal stuff bands, thing rectangles on top (some crowd), a void patch.
    Prediction: the ground truth shifted per segment, with class swaps, extra random segments,
    dropped segments and void patches, all under fresh segment ids.
    """
    gt = np.zeros((height, width), dtype=np.int64)
    segments = {}
    next_id = [int(rng.integers(1, 5000))]

    def new_id():
        next_id[0] += int(rng.integers(1, 3000))
        return next_id[0]

    bounds = np.sort(rng.choice(np.arange(4, height - 4), size=2, replace=False))
    for top, bottom in zip([0, *bounds], [*bounds, height]):
        sid = new_id()
        gt[top:bottom] = sid
        segments[sid] = seg(sid, int(rng.choice([SKY, ROAD])))
    for _ in range(int(rng.integers(3, 7))):
        h, w = rng.integers(4, 16, size=2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        sid = new_id()
        gt[y:y + h, x:x + w] = sid
        segments[sid] = seg(sid, int(rng.choice([PERSON, CAR])), iscrowd=int(rng.random() < 0.25))
    h, w = rng.integers(3, 10, size=2)
    y, x = rng.integers(0, height - h), rng.integers(0, width - w)
    gt[y:y + h, x:x + w] = 0
    present = set(np.unique(gt).tolist())
    gt_segments = []
    for sid, s in segments.items():
        if sid in present:
            gt_segments.append(dict(s, area=int((gt == sid).sum())))

    pred = np.zeros_like(gt)
    pred_segments = []
    for s in gt_segments:
        if rng.random() < 0.1:
            continue  # missed
        mask = gt == s["id"]
        mask = np.roll(mask, tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        sid = new_id()
        pred[mask] = sid
        category = s["category_id"]
        if rng.random() < 0.15:
            category = int(rng.choice([PERSON, CAR, SKY, ROAD]))
        pred_segments.append({"id": sid, "category_id": category})
    for _ in range(int(rng.integers(1, 4))):
        h, w = rng.integers(2, 12, size=2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        sid = new_id()
        pred[y:y + h, x:x + w] = sid
        pred_segments.append({"id": sid, "category_id": int(rng.choice([PERSON, CAR]))})
    for _ in range(2):
        h, w = rng.integers(2, 8, size=2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        pred[y:y + h, x:x + w] = 0
    present = set(np.unique(pred).tolist())
    pred_segments = [s for s in pred_segments if s["id"] in present]
    return gt, gt_segments, pred, pred_segments


class RandomPanoptic:
    """A few random images written in COCO panoptic format under ``root``."""

    def __init__(self, root, num_images=8, seed=0):
        rng = np.random.default_rng(seed)
        self.root = root
        self.gt_dir, self.pred_dir = root / "gt", root / "pred"
        self.gt_dir.mkdir()
        self.pred_dir.mkdir()
        self.images = []
        gt_anns, pred_anns = [], []
        for k in range(num_images):
            gt, gt_segments, pred, pred_segments = random_pair(rng)
            image_id = 100 + 7 * k
            name = f"img_{image_id:04d}.png"
            Image.fromarray(encode(gt)).save(self.gt_dir / name)
            Image.fromarray(encode(pred)).save(self.pred_dir / name)
            gt_anns.append({"image_id": image_id, "file_name": name, "segments_info": gt_segments})
            pred_anns.append({"image_id": image_id, "file_name": name,
                              "segments_info": pred_segments})
            self.images.append((image_id, name, gt, gt_segments, pred, pred_segments))
        # A listed gt segment without pixels (json area 0): a FN for panopticapi and for us.
        gt_anns[0]["segments_info"].append(seg(16000000, CAR) | {"area": 0})
        images = [{"id": a["image_id"], "file_name": a["file_name"].replace(".png", ".jpg"),
                   "height": 40, "width": 56} for a in gt_anns]
        self.gt_json = root / "gt.json"
        self.pred_json = root / "pred.json"
        self.gt_json.write_text(json.dumps(
            {"images": images, "categories": CATEGORIES, "annotations": gt_anns}))
        self.pred_json.write_text(json.dumps({"annotations": pred_anns}))


@pytest.fixture(scope="module")
def random_panoptic(tmp_path_factory):
    return RandomPanoptic(tmp_path_factory.mktemp("panoptic"))


def panopticapi_reference(data):
    """panopticapi's numbers, computed in this process (its single-core function)."""
    # requirements/test-reference.txt: never skipped, CI must compare against the reference.
    from panopticapi import evaluation

    gt = json.loads(data.gt_json.read_text())
    pred = json.loads(data.pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    pred_by_image = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, pred_by_image[a["image_id"]]) for a in gt["annotations"]]
    stat = evaluation.pq_compute_single_core(0, pairs, str(data.gt_dir), str(data.pred_dir),
                                             categories)
    results = {}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        results[name], per_class = stat.pq_average(categories, isthing=isthing)
        if name == "All":
            results["per_class"] = per_class
    return results, stat


def test_pq_matches_panopticapi(random_panoptic, capsys):
    expected, ref_stat = panopticapi_reference(random_panoptic)
    capsys.readouterr()  # panopticapi prints progress
    ours = pq_compute(str(random_panoptic.gt_json), str(random_panoptic.pred_json),
                      gt_folder=str(random_panoptic.gt_dir),
                      pred_folder=str(random_panoptic.pred_dir))
    assert capsys.readouterr().out == ""  # logging, not print

    # The data exercise every rule: TPs, FPs and FNs in things and stuff, crowd, void.
    totals = {k: sum(r[k] for r in ours["per_class"].values()) for k in ("tp", "fp", "fn")}
    assert min(totals.values()) >= 5, totals
    for cat in CATEGORIES:
        ref = ref_stat[cat["id"]]
        mine = ours["per_class"][cat["id"]]
        assert (mine["tp"], mine["fp"], mine["fn"]) == (ref.tp, ref.fp, ref.fn), cat["name"]
        assert mine["iou"] == pytest.approx(ref.iou, abs=1e-9)
        assert ref.tp + ref.fp + ref.fn > 0
        for metric in ("pq", "sq", "rq"):
            assert mine[metric] == pytest.approx(expected["per_class"][cat["id"]][metric],
                                                 abs=1e-9)
    for name in ("All", "Things", "Stuff"):
        assert ours[name]["n"] == expected[name]["n"]
        for metric in ("pq", "sq", "rq"):
            assert ours[name][metric] == pytest.approx(expected[name][metric], abs=1e-9)


def test_pq_compute_defaults_folders_from_json_names(random_panoptic):
    # panopticapi's convention: the pngs of X.json are in folder X (here gt.json -> gt/).
    explicit = pq_compute(str(random_panoptic.gt_json), str(random_panoptic.pred_json),
                          gt_folder=str(random_panoptic.gt_dir),
                          pred_folder=str(random_panoptic.pred_dir))
    defaulted = pq_compute(str(random_panoptic.gt_json), str(random_panoptic.pred_json))
    assert defaulted == explicit
    with pytest.raises(ValueError, match="pass gt_folder"):
        pq_compute(json.loads(random_panoptic.gt_json.read_text()),
                   str(random_panoptic.pred_json))


# ---------------------------------------------------------------------------------------------
# The evaluator.


@pytest.fixture
def panoptic_dataset(random_panoptic):
    name = f"panoptic_eval_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(
        panoptic_json=str(random_panoptic.gt_json),
        panoptic_root=str(random_panoptic.gt_dir),
        thing_dataset_id_to_contiguous_id=THING_MAP,
        stuff_dataset_id_to_contiguous_id=STUFF_MAP,
        label_divisor=1000,
        evaluator_type="coco_panoptic_seg",
    )
    yield name
    MetadataCatalog.remove(name)


def model_outputs(data, void_value=0, with_segments_info=True):
    """Model-style (inputs, outputs) for the random prediction pngs (contiguous ids)."""
    for image_id, name, _, _, pred, pred_segments in data.images:
        inputs = {"image_id": image_id, "file_name": f"/some/dir/{name[:-4]}.jpg"}
        if with_segments_info:
            ids = torch.as_tensor(np.where(pred == 0, void_value, pred), dtype=torch.int32)
            info = []
            for s in pred_segments:
                isthing = s["category_id"] in THING_MAP
                contiguous = (THING_MAP if isthing else STUFF_MAP)[s["category_id"]]
                info.append({"id": s["id"], "category_id": contiguous, "isthing": isthing,
                             "score": np.float32(0.9), "area": torch.tensor(3)})
        else:
            # Panoptic-DeepLab style: category * label_divisor + instance, -1 = void.
            ids = torch.full(pred.shape, -1, dtype=torch.int64)
            for k, s in enumerate(pred_segments):
                contiguous = {**THING_MAP, **STUFF_MAP}[s["category_id"]]
                ids[torch.as_tensor(pred == s["id"])] = contiguous * 1000 + k
            info = None
        yield inputs, {"panoptic_seg": (ids, info)}


def assert_evaluator_results(results, expected):
    res = results["panoptic_seg"]
    keys = ["PQ", "SQ", "RQ", "PQ_th", "SQ_th", "RQ_th", "PQ_st", "SQ_st", "RQ_st"]
    assert list(res)[:9] == keys
    for key in keys:
        metric, _, part = key.partition("_")
        group = {"": "All", "th": "Things", "st": "Stuff"}[part]
        assert res[key] == pytest.approx(100 * expected[group][metric.lower()], abs=1e-7)
    for cat in CATEGORIES:
        for metric in ("PQ", "SQ", "RQ"):
            assert res[f"{metric}-{cat['name']}"] == pytest.approx(
                100 * expected["per_class"][cat["id"]][metric.lower()], abs=1e-7)
    assert len(res) == 9 + 3 * len(CATEGORIES)


@pytest.mark.parametrize("void_value", [0, -1])
def test_evaluator_end_to_end(random_panoptic, panoptic_dataset, tmp_path, catch_logs,
                              void_value):
    expected = pq_compute(str(random_panoptic.gt_json), str(random_panoptic.pred_json),
                          gt_folder=str(random_panoptic.gt_dir),
                          pred_folder=str(random_panoptic.pred_dir))
    logs = catch_logs("segtron.evaluation.panoptic_evaluation")
    evaluator = COCOPanopticEvaluator(panoptic_dataset, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    for inputs, outputs in model_outputs(random_panoptic, void_value):
        evaluator.process([inputs], [outputs])
    results = evaluator.evaluate()
    assert_evaluator_results(results, expected)
    assert evaluator.evaluate() == results  # can run again

    written = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert written["categories"] == CATEGORIES
    first = written["annotations"][0]
    assert first["file_name"] == "img_0100.png" and first["image_id"] == 100
    # Dataset category ids again, isthing dropped, extra fields kept as plain numbers.
    _, _, _, _, _, pred_segments = random_panoptic.images[0]
    assert [s["category_id"] for s in first["segments_info"]] == [
        s["category_id"] for s in pred_segments]
    assert all("isthing" not in s and s["area"] == 3 for s in first["segments_info"])
    # The pngs are kept in predictions/ beside predictions.json (panopticapi's convention) and
    # hold the predicted segment ids, void (0 or -1 in the output) written as 0.
    png_dir = tmp_path / "out" / "predictions"
    assert sorted(p.name for p in png_dir.iterdir()) == sorted(
        a["file_name"] for a in written["annotations"])
    for _, name, _, _, pred, _ in random_panoptic.images:
        np.testing.assert_array_equal(read_panoptic_png(str(png_dir / name)), pred)
    # So the saved pair is usable on its own: scored again with the default folders.
    assert pq_compute(str(random_panoptic.gt_json),
                      str(tmp_path / "out" / "predictions.json")) == expected
    text = "\n".join(logs.messages(logging.INFO))
    assert "PQ" in text and "person" in text and "#categories" in text


def test_evaluator_label_divisor_outputs(random_panoptic, panoptic_dataset):
    expected = pq_compute(str(random_panoptic.gt_json), str(random_panoptic.pred_json),
                          gt_folder=str(random_panoptic.gt_dir),
                          pred_folder=str(random_panoptic.pred_dir))
    evaluator = COCOPanopticEvaluator(panoptic_dataset)
    for inputs, outputs in model_outputs(random_panoptic, with_segments_info=False):
        evaluator.process([inputs], [outputs])
    assert_evaluator_results(evaluator.evaluate(), expected)


def test_evaluator_without_predictions(panoptic_dataset):
    assert COCOPanopticEvaluator(panoptic_dataset).evaluate() == {}


def test_evaluator_needs_panoptic_metadata():
    name = f"panoptic_eval_{uuid.uuid4().hex[:8]}"
    MetadataCatalog.get(name).set(thing_classes=["a"])
    try:
        with pytest.raises(ValueError, match=f"{name}.*panoptic_json / panoptic_root"):
            COCOPanopticEvaluator(name)
    finally:
        MetadataCatalog.remove(name)


# ---------------------------------------------------------------------------------------------
# Bad data.


def test_gt_png_id_missing_from_json(tmp_path):
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(encode([[1, 1, 300], [1, 1, 0]])).save(tmp_path / "gt" / "a.png")
    Image.fromarray(encode([[5, 5, 5], [5, 5, 0]])).save(tmp_path / "pred" / "a.png")
    gt = {"categories": CATEGORIES,
          "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": [seg(1, SKY)]}]}
    pred = {"annotations": [{"image_id": 1, "file_name": "a.png",
                             "segments_info": [seg(5, SKY)]}]}
    with pytest.raises(ValueError, match=r"gt[/\\]a\.png contains segment id\(s\) \[300\]"):
        pq_compute(gt, pred, str(tmp_path / "gt"), str(tmp_path / "pred"))

    # The same image with a prediction id that its segments_info does not list.
    Image.fromarray(encode([[1, 1, 1], [1, 1, 0]])).save(tmp_path / "gt" / "a.png")
    Image.fromarray(encode([[5, 5, 7], [5, 5, 0]])).save(tmp_path / "pred" / "a.png")
    with pytest.raises(ValueError, match=r"image 1: the prediction .*a\.png contains segment "
                                         r"id\(s\) \[7\]"):
        pq_compute(gt, pred, str(tmp_path / "gt"), str(tmp_path / "pred"))

    # A gt png of another size than the prediction.
    Image.fromarray(encode([[1, 1, 1, 1], [1, 1, 1, 1]])).save(tmp_path / "gt" / "a.png")
    Image.fromarray(encode([[5, 5, 5], [5, 5, 0]])).save(tmp_path / "pred" / "a.png")
    with pytest.raises(ValueError, match=r"gt[/\\]a\.png is 2 x 4 .* is 2 x 3"):
        pq_compute(gt, pred, str(tmp_path / "gt"), str(tmp_path / "pred"))

    # A gt image without a prediction.
    with pytest.raises(ValueError, match=r"no prediction \(image ids \[1\]\)"):
        pq_compute(gt, {"annotations": []}, str(tmp_path / "gt"), str(tmp_path / "pred"))


def test_unknown_prediction_category():
    with pytest.raises(ValueError, match="segment 5 has category_id 99"):
        image_stat([[1]], [seg(1, SKY)], [[5]], [seg(5, 99)])


def test_listed_prediction_without_pixels():
    with pytest.raises(ValueError, match=r"\[6\] are listed in segments_info but have no pixel"):
        image_stat([[1]], [seg(1, SKY)], [[5]], [seg(5, SKY), seg(6, SKY)])


def test_evaluator_rejects_unlisted_segment(panoptic_dataset):
    evaluator = COCOPanopticEvaluator(panoptic_dataset)
    ids = torch.tensor([[1, 1, 2], [0, 0, 2]])
    info = [{"id": 1, "category_id": 0, "isthing": True}]
    with pytest.raises(ValueError, match=r"image 42: panoptic_seg contains segment id\(s\) \[2\]"):
        evaluator.process([{"image_id": 42, "file_name": "x.jpg"}], [{"panoptic_seg": (ids, info)}])


def test_evaluator_rejects_unknown_class(panoptic_dataset):
    evaluator = COCOPanopticEvaluator(panoptic_dataset)
    ids = torch.tensor([[1, 1], [0, 0]])
    info = [{"id": 1, "category_id": 7, "isthing": True}]
    with pytest.raises(ValueError, match="image 42: segment 1 has thing category 7"):
        evaluator.process([{"image_id": 42, "file_name": "x.jpg"}], [{"panoptic_seg": (ids, info)}])


def test_evaluator_gt_size_mismatch(random_panoptic, panoptic_dataset):
    evaluator = COCOPanopticEvaluator(panoptic_dataset)
    for inputs, outputs in model_outputs(random_panoptic):
        ids, info = outputs["panoptic_seg"]
        if inputs["image_id"] == 107:
            ids = ids[:-2]  # two rows short
            present = set(ids.unique().tolist())
            info = [s for s in info if s["id"] in present]
        evaluator.process([inputs], [{"panoptic_seg": (ids, info)}])
    with pytest.raises(ValueError, match=r"image 107: .*img_0107\.png is 40 x 56 .* is 38 x 56"):
        evaluator.evaluate()
