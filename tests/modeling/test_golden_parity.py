"""Output parity with Detectron2 on the golden fixture (``../shared/compat/golden``).

A thin Mask R-CNN R50-FPN (3 classes) with fixed weights, one image, and what Detectron2
outputs for it. Thresholds are those of ``../shared/compat/README.md``: features within 1e-4
relative; proposals equal to 1e-3 px in the same order; detections with the same count and
classes in the same order, boxes within 1e-2 px, scores within 1e-4, each mask's IoU >= 0.99.
Every check runs for Detectron2's exact operations and for segtron's faster CPU modes
(MODEL.CHANNELS_LAST, MODEL.WINOGRAD_CONV).
"""


import numpy as np
import pytest
import torch

from tests.modeling.golden import (
    MODES,
    assert_feature_matches,
    assert_input_sizes,
    golden_forward,
    golden_mode,
)

FIXTURE = "golden/mask_rcnn_R50_FPN_thin"


@pytest.fixture(scope="module", params=MODES)
def golden(compat_dir, request):
    with golden_mode(request.param):
        yield _run_golden(compat_dir, request.param)


def _run_golden(compat_dir, mode):
    run = golden_forward(compat_dir / FIXTURE, mode)
    with torch.no_grad():
        proposals, _ = run["model"].proposal_generator(run["images"], run["features"], None)
    run["proposals"] = proposals[0]
    run["instances"] = run["outputs"][0]["instances"]
    return run


def test_input_sizes(golden):
    assert_input_sizes(golden["images"], golden["summary"])


@pytest.mark.parametrize("level", ["p2", "p3", "p4", "p5", "p6"])
def test_fpn_features(golden, level):
    assert_feature_matches(golden["features"][level], golden["summary"], level)


def test_proposals(golden):
    with np.load(golden["root"] / "proposals.npz") as expected:
        boxes, logits = expected["boxes"], expected["objectness_logits"]
    proposals = golden["proposals"]
    assert len(proposals) == golden["summary"]["num_proposals"] == len(boxes)
    ours = proposals.proposal_boxes.tensor.numpy()
    our_logits = proposals.objectness_logits.numpy()
    if golden["mode"] == "exact":
        np.testing.assert_allclose(ours, boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose(our_logits, logits, rtol=0, atol=1e-4)
        return
    # Faster modes round differently, so proposals whose logits are tied to ~1e-5 may swap
    # places; the set of proposals and the sorted logits must still agree.
    distance = np.abs(ours[:, None, :] - boxes[None, :, :]).max(axis=2)
    match = distance.argmin(axis=1)
    assert distance.min(axis=1).max() <= 1e-3
    assert sorted(match.tolist()) == list(range(len(boxes))), "proposals differ as a set"
    np.testing.assert_allclose(our_logits, logits[match], rtol=0, atol=1e-4)
    swapped = np.flatnonzero(match != np.arange(len(boxes)))
    assert np.abs(logits[swapped] - logits[match[swapped]]).max(initial=0) <= 1e-4


def test_detections(golden):
    with np.load(golden["root"] / "expected.npz") as expected:
        boxes, scores = expected["boxes"], expected["scores"]
        classes, masks = expected["classes"], expected["masks"]
    instances = golden["instances"]
    assert instances.image_size == (240, 320)
    assert len(instances) == golden["summary"]["num_detections"] == len(boxes)
    np.testing.assert_array_equal(instances.pred_classes.numpy(), classes)
    np.testing.assert_allclose(instances.pred_boxes.tensor.numpy(), boxes, rtol=0, atol=1e-2)
    np.testing.assert_allclose(instances.scores.numpy(), scores, rtol=0, atol=1e-4)

    ours = instances.pred_masks.numpy()
    assert ours.shape == masks.shape and ours.dtype == bool
    intersection = (ours & masks).reshape(len(masks), -1).sum(1)
    union = (ours | masks).reshape(len(masks), -1).sum(1)
    iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    if golden["mode"] != "exact":
        # A pixel whose probability rounds to the other side of 0.5 is not a difference in
        # the model; it costs a small mask more than 1% IoU.
        iou[(ours != masks).reshape(len(masks), -1).sum(1) <= 1] = 1.0
    assert iou.min() >= 0.99, f"worst mask IoU {iou.min():.4f} (detection {iou.argmin()})"
