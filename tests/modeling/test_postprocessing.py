"""detector_postprocess / sem_seg_postprocess on hand-computed examples; masks against
segtron.layers.paste_masks_in_image called directly."""

import pytest
import torch
from torch.nn import functional as F

from segtron.layers import paste_masks_in_image
from segtron.modeling.postprocessing import detector_postprocess, sem_seg_postprocess
from segtron.structures import Boxes, Instances, ROIMasks

# Network input 100 x 200 (h x w) -> output 50 x 400: scale_x = 2, scale_y = 0.5.
IN_BOXES = [
    [10.0, 20.0, 50.0, 60.0],  # -> [20, 10, 100, 30]
    [150.0, 80.0, 250.0, 120.0],  # -> [300, 40, 500, 60] -> clipped to [300, 40, 400, 50]
    [210.0, 10.0, 230.0, 20.0],  # -> [420, 5, 460, 10] -> clipped to [400, 5, 400, 10]: empty
    [10.0, 50.0, 20.0, 50.0],  # zero height: empty
    [-10.0, -4.0, 5.0, 300.0],  # -> [-20, -2, 10, 150] -> [0, 0, 10, 50]
]
OUT_BOXES = [[20.0, 10.0, 100.0, 30.0], [300.0, 40.0, 400.0, 50.0], [0.0, 0.0, 10.0, 50.0]]
KEPT = [0, 1, 4]


def _results(**extra):
    n = len(IN_BOXES)
    return Instances(
        (100, 200),
        pred_boxes=Boxes(torch.tensor(IN_BOXES)),
        scores=torch.arange(n, dtype=torch.float32) / 10,
        pred_classes=torch.arange(n),
        **extra,
    )


def test_boxes_scaled_clipped_and_empty_dropped():
    results = _results()
    out = detector_postprocess(results, 50, 400)
    assert out.image_size == (50, 400)
    assert out.pred_boxes.tensor.tolist() == OUT_BOXES
    assert out.pred_classes.tolist() == KEPT
    torch.testing.assert_close(out.scores, torch.tensor(KEPT, dtype=torch.float32) / 10)
    # The input is left untouched.
    assert results.pred_boxes.tensor.tolist() == IN_BOXES and results.image_size == (100, 200)


def test_tensor_output_size():
    out = detector_postprocess(_results(), torch.tensor(50), torch.tensor(400))
    assert out.pred_boxes.tensor.tolist() == OUT_BOXES
    assert [int(v) for v in out.image_size] == [50, 400]


def test_proposal_boxes_are_used_without_pred_boxes():
    results = Instances((100, 200), proposal_boxes=Boxes(torch.tensor(IN_BOXES)))
    out = detector_postprocess(results, 50, 400)
    assert out.proposal_boxes.tensor.tolist() == OUT_BOXES
    with pytest.raises(ValueError, match="pred_boxes"):
        detector_postprocess(Instances((10, 10), scores=torch.zeros(2)), 5, 5)


@pytest.mark.parametrize("as_roi_masks", [False, True])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_masks_pasted_like_paste_masks_in_image(as_roi_masks, threshold):
    probs = torch.rand(len(IN_BOXES), 1, 28, 28)
    masks = ROIMasks(probs[:, 0]) if as_roi_masks else probs
    out = detector_postprocess(_results(pred_masks=masks), 50, 400, mask_threshold=threshold)
    expected = paste_masks_in_image(probs[KEPT, 0], torch.tensor(OUT_BOXES), (50, 400), threshold)
    assert out.pred_masks.dtype == torch.bool and out.pred_masks.shape == (3, 50, 400)
    assert torch.equal(out.pred_masks, expected)


def test_keypoints_scaled():
    kp = torch.rand(len(IN_BOXES), 17, 3) * 100
    results = _results(pred_keypoints=kp.clone())
    out = detector_postprocess(results, 50, 400)
    expected = kp[KEPT].clone()
    expected[:, :, 0] *= 2.0
    expected[:, :, 1] *= 0.5
    torch.testing.assert_close(out.pred_keypoints, expected)
    torch.testing.assert_close(results.pred_keypoints, kp)  # input not modified


def test_sem_seg_postprocess_crops_padding_then_resizes():
    result = torch.full((3, 8, 12), 1000.0)  # padding holds a value that must not leak
    result[:, :6, :10] = torch.tensor([1.0, 2.0, 3.0])[:, None, None]
    out = sem_seg_postprocess(result, (6, 10), 12, 20)
    assert out.shape == (3, 12, 20)
    assert torch.equal(out, torch.tensor([1.0, 2.0, 3.0])[:, None, None].expand(3, 12, 20))
    ramp = torch.arange(8 * 12, dtype=torch.float32).reshape(1, 8, 12)
    expected = F.interpolate(
        ramp[None, :, :6, :10], size=(9, 15), mode="bilinear", align_corners=False
    )[0]
    torch.testing.assert_close(sem_seg_postprocess(ramp, (6, 10), 9, 15), expected)
