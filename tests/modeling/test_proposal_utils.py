"""find_top_rpn_proposals against a plain-Python reference; add_ground_truth_to_proposals.

The reference follows FACTS.md literally, one image and one level at a time: rank each level's
candidates with Python's ``sorted``, keep the top k, clip, drop small boxes, run
``torchvision.ops.nms`` per level, then merge the survivors of all levels by score. Scores are
distinct (a random permutation), so the order is fully determined.
"""

import math

import pytest
import torch
from torchvision.ops import nms as tv_nms

from segtron.modeling.proposal_generator.proposal_utils import (
    add_ground_truth_to_proposals,
    find_top_rpn_proposals,
)
from segtron.structures import Boxes, Instances


def _reference(proposals, logits, image_sizes, nms_thresh, pre_k, post_k, min_size):
    out = []
    for n, (height, width) in enumerate(image_sizes):
        survivors = []  # (score, box list)
        for boxes_l, logits_l in zip(proposals, logits):
            scores = logits_l[n].tolist()
            order = sorted(range(len(scores)), key=lambda i: -scores[i])[:pre_k]
            kept_boxes, kept_scores = [], []
            for i in order:
                x0, y0, x1, y1 = boxes_l[n, i].tolist()
                x0, x1 = min(max(x0, 0.0), width), min(max(x1, 0.0), width)
                y0, y1 = min(max(y0, 0.0), height), min(max(y1, 0.0), height)
                if x1 - x0 > min_size and y1 - y0 > min_size:
                    kept_boxes.append([x0, y0, x1, y1])
                    kept_scores.append(scores[i])
            if not kept_boxes:
                continue
            b = torch.tensor(kept_boxes, dtype=torch.float32)
            s = torch.tensor(kept_scores, dtype=torch.float32)
            for j in tv_nms(b, s, nms_thresh).tolist():
                survivors.append((kept_scores[j], kept_boxes[j]))
        survivors.sort(key=lambda item: -item[0])
        survivors = survivors[:post_k]
        out.append(
            (
                torch.tensor([b for _, b in survivors], dtype=torch.float32).reshape(-1, 4),
                torch.tensor([s for s, _ in survivors], dtype=torch.float32),
            )
        )
    return out


def _random_inputs(num_images, level_sizes, image_size, generator):
    height, width = image_size
    proposals, logits = [], []
    total = num_images * sum(level_sizes)
    # Distinct scores: a scaled random permutation.
    all_scores = torch.randperm(total, generator=generator).float() / 7.0 - 30.0
    offset = 0
    for size in level_sizes:
        ctr = torch.rand(num_images, size, 2, generator=generator)
        ctr = ctr * torch.tensor([width * 1.2, height * 1.2]) - torch.tensor([width, height]) * 0.1
        wh = torch.rand(num_images, size, 2, generator=generator) * 60 + 0.5
        boxes = torch.cat([ctr - wh / 2, ctr + wh / 2], dim=2)
        proposals.append(boxes)
        count = num_images * size
        logits.append(all_scores[offset : offset + count].view(num_images, size))
        offset += count
    return proposals, logits


@pytest.mark.parametrize(
    "pre_k,post_k,min_size,nms_thresh",
    [(50, 40, 0.0, 0.7), (1000, 1000, 3.0, 0.5), (7, 12, 1.0, 0.3)],
)
def test_matches_reference(pre_k, post_k, min_size, nms_thresh):
    generator = torch.Generator().manual_seed(123)
    image_sizes = [(90, 120), (120, 80)]
    proposals, logits = _random_inputs(2, [300, 120, 30], (120, 120), generator)
    ours = find_top_rpn_proposals(
        proposals, logits, image_sizes, nms_thresh, pre_k, post_k, min_size, training=False
    )
    expected = _reference(proposals, logits, image_sizes, nms_thresh, pre_k, post_k, min_size)
    assert len(ours) == 2
    for inst, (boxes, scores), size in zip(ours, expected, image_sizes):
        assert inst.image_size == size
        assert set(inst.get_fields()) == {"proposal_boxes", "objectness_logits"}
        assert isinstance(inst.proposal_boxes, Boxes)
        assert len(inst) == len(boxes) > 0
        torch.testing.assert_close(inst.objectness_logits, scores, rtol=0, atol=0)
        torch.testing.assert_close(inst.proposal_boxes.tensor, boxes, rtol=0, atol=1e-5)
        assert len(inst) <= post_k


def test_post_nms_topk_truncates_sorted_output():
    generator = torch.Generator().manual_seed(5)
    proposals, logits = _random_inputs(1, [200, 50], (100, 100), generator)
    full = find_top_rpn_proposals(proposals, logits, [(100, 100)], 0.7, 1000, 1000, 0.0, False)[0]
    few = find_top_rpn_proposals(proposals, logits, [(100, 100)], 0.7, 1000, 10, 0.0, False)[0]
    assert len(few) == 10
    torch.testing.assert_close(few.proposal_boxes.tensor, full.proposal_boxes.tensor[:10])
    scores = full.objectness_logits
    assert bool((scores[:-1] >= scores[1:]).all())


def test_levels_do_not_suppress_each_other():
    box = torch.tensor([[[10.0, 10.0, 50.0, 50.0]]])
    proposals = [box, box.clone()]
    logits = [torch.tensor([[2.0]]), torch.tensor([[1.0]])]
    out = find_top_rpn_proposals(proposals, logits, [(64, 64)], 0.7, 10, 10, 0.0, False)[0]
    assert out.objectness_logits.tolist() == [2.0, 1.0]
    # Within one level the identical box is suppressed.
    same_level = [torch.cat([box, box], dim=1)]
    out = find_top_rpn_proposals(
        same_level, [torch.tensor([[2.0, 1.0]])], [(64, 64)], 0.7, 10, 10, 0.0, False
    )[0]
    assert out.objectness_logits.tolist() == [2.0]


def test_nonfinite_dropped_in_eval_and_fatal_in_training():
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, float("nan"), 30.0],
                           [30.0, 30.0, 40.0, 40.0]]])
    logits = torch.tensor([[1.0, 3.0, float("inf")]])
    out = find_top_rpn_proposals([boxes], [logits], [(50, 50)], 0.7, 10, 10, 0.0, False)[0]
    assert out.objectness_logits.tolist() == [1.0]
    torch.testing.assert_close(out.proposal_boxes.tensor, torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    with pytest.raises(FloatingPointError, match="Training has diverged"):
        find_top_rpn_proposals([boxes], [logits], [(50, 50)], 0.7, 10, 10, 0.0, True)


def test_clipping_and_min_size():
    boxes = torch.tensor([[[-5.0, -5.0, 70.0, 20.0], [10.0, 10.0, 12.0, 30.0],
                           [62.0, 0.0, 80.0, 10.0]]])
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    out = find_top_rpn_proposals([boxes], [logits], [(40, 64)], 0.7, 10, 10, 2.0, False)[0]
    # Box 1 is exactly 2 px wide (dropped: sides must exceed min_box_size); box 2 is clipped
    # to 62..64 (2 px, dropped).
    assert out.objectness_logits.tolist() == [3.0]
    torch.testing.assert_close(out.proposal_boxes.tensor, torch.tensor([[0.0, 0.0, 64.0, 20.0]]))


def test_empty_result_when_everything_is_filtered():
    boxes = torch.tensor([[[100.0, 100.0, 120.0, 120.0]]])
    out = find_top_rpn_proposals([boxes], [torch.tensor([[0.5]])], [(50, 50)], 0.7, 10, 10, 0.0,
                                 False)[0]
    assert len(out) == 0 and out.proposal_boxes.tensor.shape == (0, 4)


def test_mismatched_levels_raise():
    with pytest.raises(ValueError, match="levels"):
        find_top_rpn_proposals([torch.zeros(1, 3, 4)], [], [(10, 10)], 0.7, 5, 5, 0.0, False)


# -- add_ground_truth_to_proposals -------------------------------------------------------------

GT_LOGIT = math.log((1.0 - 1e-10) / (1 - (1.0 - 1e-10)))


def _proposals(n, size=(50, 60)):
    inst = Instances(size)
    inst.proposal_boxes = Boxes(torch.arange(n * 4, dtype=torch.float32).view(n, 4))
    inst.objectness_logits = torch.linspace(1.0, -1.0, n)
    return inst


def test_add_gt_from_instances_and_boxes():
    gt = Instances((50, 60))
    gt.gt_boxes = Boxes(torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]]))
    gt.gt_classes = torch.tensor([0, 2])
    props = [_proposals(3), _proposals(2)]
    gt_boxes_only = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    out = add_ground_truth_to_proposals([gt, gt_boxes_only], props)

    assert len(out[0]) == 5 and len(out[1]) == 3
    assert set(out[0].get_fields()) == {"proposal_boxes", "objectness_logits"}
    torch.testing.assert_close(out[0].proposal_boxes.tensor[:3], props[0].proposal_boxes.tensor)
    torch.testing.assert_close(out[0].proposal_boxes.tensor[3:], gt.gt_boxes.tensor)
    torch.testing.assert_close(out[1].proposal_boxes.tensor[2:], gt_boxes_only.tensor)
    assert out[0].objectness_logits[3:].tolist() == pytest.approx([GT_LOGIT] * 2)
    assert out[0].objectness_logits[:3].tolist() == props[0].objectness_logits.tolist()
    assert GT_LOGIT == pytest.approx(23.02585, abs=1e-4)


def test_add_gt_errors():
    with pytest.raises(ValueError, match="same length"):
        add_ground_truth_to_proposals([Boxes(torch.zeros(1, 4))], [_proposals(1), _proposals(1)])
    assert add_ground_truth_to_proposals([], []) == []
    props = _proposals(2)
    props.extra = torch.zeros(2)
    with pytest.raises(ValueError, match="extra"):
        add_ground_truth_to_proposals([Boxes(torch.zeros(1, 4))], [props])
