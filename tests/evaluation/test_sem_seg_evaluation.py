"""Tests for segtron.evaluation.sem_seg_evaluation: SemSegEvaluator.

A 5-class dataset of two label PNGs is registered; the predictions are hand-written label maps
turned into (C, H, W) scores. Every expected number below is counted by hand from the maps
(the counts are in the comments), never produced by the code under test.
"""

import json
import logging
import math
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

from segtron.data.catalog import DatasetCatalog, MetadataCatalog
from segtron.evaluation import SemSegEvaluator, print_csv_format
from segtron.utils import comm

# pycocotools' mask.decode trips a numpy-2 DeprecationWarning that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLASSES = ["sky", "road", "tree", "car", "person"]
IGN = 255

# Image A (4 x 5). Classes present in its ground truth: sky, road; 2 ignored pixels.
GT_A = [
    [0, 0, 0, 0, 0],
    [0, 0, 0, 1, 1],
    [1, 1, 1, 1, 1],
    [IGN, IGN, 1, 1, 1],
]
PRED_A = [
    [0, 0, 0, 0, 3],
    [0, 0, 1, 1, 1],
    [1, 1, 1, 1, 1],
    [0, 0, 1, 1, 3],  # the two ignored pixels are predicted sky: they must not count
]
# Image B (3 x 4, another size). Classes in its ground truth: sky, road, tree; 1 ignored pixel.
GT_B = [
    [0, 0, 2, 2],
    [2, 2, 2, 2],
    [1, 1, IGN, 2],
]
PRED_B = [
    [0, 2, 2, 2],
    [2, 2, 1, 2],
    [1, 1, 3, 0],
]

# Counts over both images (ignored pixels left out):
#   sky:    gt 8 (A) + 2 (B) = 10; TP 6 (A) + 1 (B) = 7;
#           predicted sky: 6 + 1 TP + 1 tree pixel (B r2c3) = 8  -> union 10 + 8 - 7 = 11
#   road:   gt 10 (A) + 2 (B) = 12; TP 9 + 2 = 11;
#           predicted road: 11 TP + 1 sky pixel (A r1c2) + 1 tree pixel (B r1c2) = 13
#           -> union 12 + 13 - 11 = 14
#   tree:   gt 7 (B); TP 5; predicted tree: 5 TP + 1 sky pixel (B r0c1) = 6 -> union 7 + 6 - 5 = 8
#   car:    gt 0; predicted on 2 counted pixels (A r0c4 sky, A r3c4 road) -> no gt: NaN, not in
#           the means (Detectron2), but those 2 pixels are misses of sky and road above.
#   person: neither in gt nor predicted -> NaN, not in the means.
#   all labelled pixels: 10 + 12 + 7 = 29; correct: 7 + 11 + 5 = 23.
IOU = {"sky": 7 / 11, "road": 11 / 14, "tree": 5 / 8}
ACC = {"sky": 7 / 10, "road": 11 / 12, "tree": 5 / 7}
EXPECTED = {
    "mIoU": 100 * (7 / 11 + 11 / 14 + 5 / 8) / 3,
    "fwIoU": 100 * (10 / 29 * 7 / 11 + 12 / 29 * 11 / 14 + 7 / 29 * 5 / 8),
    "mACC": 100 * (7 / 10 + 11 / 12 + 5 / 7) / 3,
    "pACC": 100 * 23 / 29,
}


def _write_png(path, labels):
    Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L").save(path)
    return str(path)


def scores_from_labels(labels, num_classes=len(CLASSES), seed=0):
    """(H, W) labels -> (C, H, W) scores whose argmax is the label (not merely one-hot)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    one_hot = torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()
    noise = torch.rand(one_hot.shape, generator=torch.Generator().manual_seed(seed))
    return 2.0 * one_hot + noise  # the label's channel is in [2, 3), the others in [0, 1)


class TinySemSeg:
    """A registered two-image semantic segmentation dataset with unique name."""

    def __init__(self, tmp_path, gt_b=GT_B, **metadata):
        self.name = f"tiny_sem_seg_{uuid.uuid4().hex[:8]}"
        self.png_a = _write_png(tmp_path / "a_label.png", GT_A)
        self.png_b = _write_png(tmp_path / "b_label.png", gt_b)
        self.dicts = [
            {"file_name": "a.jpg", "sem_seg_file_name": self.png_a, "height": 4, "width": 5},
            {"file_name": "b.jpg", "sem_seg_file_name": self.png_b, "height": 3, "width": 4},
        ]
        DatasetCatalog.register(self.name, lambda: self.dicts)
        MetadataCatalog.get(self.name).set(stuff_classes=CLASSES, **metadata)

    def feed(self, evaluator, images=("a", "b")):
        preds = {"a": PRED_A, "b": PRED_B}
        for i, key in enumerate(images):
            evaluator.process(
                [{"file_name": f"{key}.jpg"}], [{"sem_seg": scores_from_labels(preds[key], seed=i)}]
            )

    def cleanup(self):
        DatasetCatalog.remove(self.name)
        MetadataCatalog.remove(self.name)


@pytest.fixture
def tiny(tmp_path):
    data = TinySemSeg(tmp_path, ignore_label=IGN)
    yield data
    data.cleanup()


def _check_expected(res):
    for key, value in EXPECTED.items():
        assert res[key] == pytest.approx(value, abs=1e-9), key
    for name in IOU:
        assert res[f"IoU-{name}"] == pytest.approx(100 * IOU[name], abs=1e-9), name
        assert res[f"ACC-{name}"] == pytest.approx(100 * ACC[name], abs=1e-9), name
    for name in ("car", "person"):
        assert math.isnan(res[f"IoU-{name}"]) and math.isnan(res[f"ACC-{name}"]), name


def test_metrics_counted_by_hand(tiny):
    evaluator = SemSegEvaluator(tiny.name, distributed=False)
    evaluator.reset()
    tiny.feed(evaluator)
    results = evaluator.evaluate()

    assert list(results) == ["sem_seg"]
    res = results["sem_seg"]
    # Detectron2's key order: mIoU, fwIoU, IoU-*, mACC, pACC, ACC-*.
    assert list(res) == (
        ["mIoU", "fwIoU"] + [f"IoU-{c}" for c in CLASSES]
        + ["mACC", "pACC"] + [f"ACC-{c}" for c in CLASSES]
    )
    _check_expected(res)
    # A predicted-only class is left out of mIoU: counted as 0 it would give the sum / 4.
    assert res["mIoU"] != pytest.approx(100 * sum(IOU.values()) / 4)


def test_batch_of_two_and_reset(tiny):
    evaluator = SemSegEvaluator(tiny.name, distributed=False)
    evaluator.reset()
    tiny.feed(evaluator, images=("b",))  # stale state from an earlier pass ...
    evaluator.reset()  # ... is forgotten
    evaluator.process(
        [{"file_name": "a.jpg"}, {"file_name": "b.jpg"}],
        [{"sem_seg": scores_from_labels(PRED_A)}, {"sem_seg": scores_from_labels(PRED_B)}],
    )
    _check_expected(evaluator.evaluate()["sem_seg"])


def test_ignore_label_defaults_to_255_and_can_be_overridden(tmp_path):
    data = TinySemSeg(tmp_path)  # no ignore_label in the metadata
    try:
        evaluator = SemSegEvaluator(data.name, distributed=False)
        data.feed(evaluator)
        _check_expected(evaluator.evaluate()["sem_seg"])

        # With ignore_label=0 every sky pixel is ignored and 255 becomes an invalid label.
        evaluator = SemSegEvaluator(data.name, distributed=False, ignore_label=0)
        with pytest.raises(ValueError, match="255"):
            data.feed(evaluator)
    finally:
        data.cleanup()


def test_distributed_sums_confusion_matrices(tiny, monkeypatch):
    # Single process, distributed=True: all_gather returns [own], same numbers.
    evaluator = SemSegEvaluator(tiny.name)
    tiny.feed(evaluator)
    _check_expected(evaluator.evaluate()["sem_seg"])

    # Two "processes": rank 0 saw image A, rank 1 image B.
    rank0 = SemSegEvaluator(tiny.name)
    rank1 = SemSegEvaluator(tiny.name)
    tiny.feed(rank0, images=("a",))
    tiny.feed(rank1, images=("b",))
    calls = []

    def fake_all_gather(data, group=None):
        calls.append(type(data).__name__)
        other = rank1._conf_matrix if isinstance(data, np.ndarray) else rank1._predictions
        return [data, other]

    monkeypatch.setattr(comm, "all_gather", fake_all_gather)
    _check_expected(rank0.evaluate()["sem_seg"])
    assert "ndarray" in calls

    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert rank1.evaluate() == {}


def test_distributed_false_does_not_gather(tiny, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("distributed=False must not gather")

    monkeypatch.setattr(comm, "all_gather", fail)
    evaluator = SemSegEvaluator(tiny.name, distributed=False)
    tiny.feed(evaluator, images=("a",))
    res = evaluator.evaluate()["sem_seg"]
    # Image A alone: sky gt 8, TP 6, predicted sky 6 -> IoU 6/8, ACC 6/8;
    # road gt 10, TP 9, predicted road 9 + 1 -> union 10 + 10 - 9 = 11 -> IoU 9/11, ACC 9/10;
    # pACC 15/18; tree has no gt and no prediction in A -> NaN.
    assert res["IoU-sky"] == pytest.approx(75.0)
    assert res["IoU-road"] == pytest.approx(100 * 9 / 11)
    assert res["mIoU"] == pytest.approx(100 * (6 / 8 + 9 / 11) / 2)
    assert res["pACC"] == pytest.approx(100 * 15 / 18)
    assert math.isnan(res["IoU-tree"])


def test_size_mismatch_names_png_and_sizes(tiny):
    evaluator = SemSegEvaluator(tiny.name, distributed=False)
    scores = scores_from_labels(np.zeros((4, 4), dtype=np.int64))  # A's label is 4 x 5
    with pytest.raises(ValueError) as err:
        evaluator.process([{"file_name": "a.jpg"}], [{"sem_seg": scores}])
    message = str(err.value)
    assert tiny.png_a in message
    assert "(4, 5)" in message and "(4, 4)" in message


def test_out_of_range_label_names_png_values_and_range(tmp_path):
    bad_gt = [[0, 7, 2, 2], [2, 9, 2, 2], [1, 1, IGN, 2]]  # 7 and 9 >= 5 classes
    data = TinySemSeg(tmp_path, gt_b=bad_gt, ignore_label=IGN)
    try:
        evaluator = SemSegEvaluator(data.name, distributed=False)
        with pytest.raises(ValueError) as err:
            data.feed(evaluator, images=("b",))
        message = str(err.value)
        assert data.png_b in message
        assert "7, 9" in message
        assert "[0, 5)" in message and "255" in message
    finally:
        data.cleanup()


def test_other_input_errors(tiny):
    evaluator = SemSegEvaluator(tiny.name, distributed=False)
    with pytest.raises(KeyError, match="unknown.jpg"):
        evaluator.process([{"file_name": "unknown.jpg"}], [{"sem_seg": scores_from_labels(PRED_A)}])
    # 6 channels for 5 classes, with channel 5 winning somewhere.
    labels = np.array(PRED_A)
    labels[0, 0] = 5
    with pytest.raises(ValueError, match="6 channels"):
        evaluator.process(
            [{"file_name": "a.jpg"}], [{"sem_seg": scores_from_labels(labels, num_classes=6)}]
        )
    with pytest.raises(ValueError, match="num_classes=3"):
        SemSegEvaluator(tiny.name, num_classes=3)


def test_no_pixels_gives_nan_and_warns(tiny, catch_logs):
    logs = catch_logs("segtron.evaluation.sem_seg_evaluation")
    res = SemSegEvaluator(tiny.name, distributed=False).evaluate()["sem_seg"]
    assert all(math.isnan(v) for v in res.values())
    assert any("No labelled pixel" in m for m in logs.messages(logging.WARNING))


def test_output_dir_json_and_pth(tmp_path):
    out = tmp_path / "out"
    id_map = {11: 0, 22: 1, 33: 2, 44: 3, 55: 4}  # dataset id -> contiguous id
    data = TinySemSeg(tmp_path, ignore_label=IGN, stuff_dataset_id_to_contiguous_id=id_map)
    try:
        evaluator = SemSegEvaluator(data.name, output_dir=str(out))
        data.feed(evaluator)
        results = evaluator.evaluate()
    finally:
        data.cleanup()

    with open(out / "sem_seg_predictions.json") as f:
        predictions = json.load(f)
    # A predicts sky, road, car (ids 11, 22, 44); B sky, road, tree, car (11, 22, 33, 44).
    by_image = {}
    for p in predictions:
        by_image.setdefault(p["file_name"], []).append(p["category_id"])
    assert by_image == {"a.jpg": [11, 22, 44], "b.jpg": [11, 22, 33, 44]}
    # The RLE of image A's car: pixels r0c4 and r3c4.
    car_a = next(p for p in predictions if p["file_name"] == "a.jpg" and p["category_id"] == 44)
    expected = np.zeros((4, 5), dtype=np.uint8)
    expected[0, 4] = expected[3, 4] = 1
    assert np.array_equal(mask_util.decode(car_a["segmentation"]), expected)

    saved = torch.load(out / "sem_seg_evaluation.pth", weights_only=False)
    assert list(saved) == list(results["sem_seg"])
    _check_expected(saved)


def test_print_csv_format_shows_the_four_means(tiny, catch_logs):
    evaluator = SemSegEvaluator(tiny.name, distributed=False)
    tiny.feed(evaluator)
    results = evaluator.evaluate()
    logs = catch_logs("segtron.evaluation.testing")
    print_csv_format(results)
    lines = logs.messages()
    assert "copypaste: Task: sem_seg" in lines
    assert "copypaste: mIoU,fwIoU,mACC,pACC" in lines
    expected_values = ",".join(f"{EXPECTED[k]:.4f}" for k in ("mIoU", "fwIoU", "mACC", "pACC"))
    assert f"copypaste: {expected_values}" in lines
