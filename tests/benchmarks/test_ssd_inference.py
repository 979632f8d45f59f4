"""``benchmarks/ssd_inference.py``: the pair it builds gives the same detections on the benchmark
image (and the check notices when it does not), one interleaved timing round, and the
reported ratio is segtron's median over torchvision's."""

import pytest
import torch

from benchmarks import ssd_inference
from benchmarks.peer_timing import ratio_table, time_interleaved
from benchmarks.torchvision_peer import SEGTRON_MODES
from segtron.structures import Boxes, Instances


@pytest.fixture(scope="module")
def pair_and_inputs():
    """The benchmark's models (SSD300-VGG16, 90 classes, torchvision's init) and image."""
    return (*ssd_inference.build_ssd_pair(), *ssd_inference.ssd_image_inputs())


def test_inputs_are_the_same_pixels():
    tv_input, st_input = ssd_inference.ssd_image_inputs(8, 12)
    assert tv_input[0].dtype == st_input[0]["image"].dtype == torch.float32
    assert tv_input[0].max() <= 1 and st_input[0]["image"].max() > 1
    torch.testing.assert_close(st_input[0]["image"], tv_input[0] * 255, rtol=0, atol=1e-4)
    assert (st_input[0]["height"], st_input[0]["width"]) == (8, 12)


def test_nonempty_detections():
    boxes = torch.tensor([[0.0, 0, 5, 5], [1, 0, 4, 0], [2, 2, 2, 7], [3, 1, 3.5, 1.5]])
    assert ssd_inference.nonempty_detections(boxes).tolist() == [True, False, False, True]


def test_same_weights_and_same_detections(pair_and_inputs):
    tv_model, st_model, tv_input, st_input = pair_and_inputs
    assert not tv_model.training and not st_model.training
    assert torch.equal(st_model.head.cls_score[5].weight,
                       tv_model.head.classification_head.module_list[5].weight)
    assert st_model.head.cls_score[0].out_channels == 4 * 91  # 90 classes + background
    compared = ssd_inference.check_same_detections(tv_model, st_model, tv_input, st_input)
    assert 150 <= compared <= 200  # TEST.DETECTIONS_PER_IMAGE: 200


def test_compare_detections_drops_torchvisions_empty_boxes_and_fails_on_differences():
    boxes = torch.tensor([[0.0, 0, 5, 5], [1, 0, 4, 0], [2, 2, 6, 7]])  # the second: height 0
    expected = {"boxes": boxes, "labels": torch.tensor([3, 1, 7])}  # background counts

    def segtron(boxes, classes):
        return Instances((10, 10), pred_boxes=Boxes(boxes), pred_classes=torch.tensor(classes))

    kept = boxes[[0, 2]]
    assert ssd_inference.compare_detections(expected, segtron(kept + 0.009, [2, 6])) == 2
    with pytest.raises(AssertionError, match="differ by up to 0.02"):
        ssd_inference.compare_detections(expected, segtron(kept + 0.02, [2, 6]))
    with pytest.raises(AssertionError, match="classes differ"):
        ssd_inference.compare_detections(expected, segtron(kept, [2, 5]))
    with pytest.raises(AssertionError, match="segtron gave 3 detections, torchvision 2"):
        ssd_inference.compare_detections(expected, segtron(boxes, [2, 0, 6]))


def test_one_timed_round_and_the_ratio_of_medians(pair_and_inputs):
    counts = {}
    candidates = ssd_inference.ssd_candidates(*pair_and_inputs, counts=counts)
    assert list(candidates) == ["torchvision", "segtron"]
    times = time_interleaved(candidates, repeats=1, warmup=0)
    assert {k: len(v) for k, v in times.items()} == {"torchvision": 1, "segtron": 1}
    assert counts["torchvision"] == 200 and 150 <= counts["segtron"] <= 200
    tv_ms, st_ms, ratio = ssd_inference.medians_and_ratio(times)
    assert tv_ms == pytest.approx(times["torchvision"][0] * 1e3)
    assert ratio == pytest.approx(times["segtron"][0] / times["torchvision"][0])
    row = next(r for r in ratio_table(times, "torchvision").splitlines()
               if r.startswith("| segtron"))
    assert row.split("|")[4].strip() == f"{ratio:.3f}"

    all_modes = ssd_inference.ssd_candidates(*pair_and_inputs, all_modes=True)
    assert list(all_modes) == ["torchvision", *SEGTRON_MODES]


def test_medians_and_ratio_arithmetic():
    times = {"torchvision": [1.0, 4.0, 2.0], "segtron": [0.5, 1.0, 3.0]}
    assert ssd_inference.medians_and_ratio(times) == pytest.approx((2000.0, 1000.0, 0.5))
