import pytest
import torch

from segtron.layers import batched_nms, nms


def _random_boxes(num, gen, size=100.0):
    xy = torch.rand(num, 2, generator=gen) * size
    wh = torch.rand(num, 2, generator=gen) * size * 0.3 + 1.0
    return torch.cat([xy, xy + wh], dim=1)


def _per_class_reference(boxes, scores, idxs, thresh):
    kept = []
    for c in idxs.unique().tolist():
        members = torch.nonzero(idxs == c).flatten()
        kept.append(members[nms(boxes[members], scores[members], thresh)])
    kept = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)
    return kept


def _check(boxes, scores, idxs, thresh):
    keep = batched_nms(boxes, scores, idxs, thresh)
    expected = _per_class_reference(boxes, scores, idxs, thresh)
    assert keep.dtype == torch.int64
    assert sorted(keep.tolist()) == sorted(expected.tolist())
    kept_scores = scores[keep]
    assert torch.all(kept_scores[:-1] >= kept_scores[1:]), "keep must be sorted by decreasing score"
    return keep


@pytest.mark.parametrize("num", [300, 1500])  # 1500 boxes takes torchvision's per-class loop path
@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7])
def test_batched_nms_equals_per_class_nms(num, thresh):
    gen = torch.Generator().manual_seed(num)
    boxes = _random_boxes(num, gen)
    scores = torch.rand(num, generator=gen)
    idxs = torch.randint(0, 5, (num,), generator=gen)
    _check(boxes, scores, idxs, thresh)


def test_batched_nms_ties_across_classes():
    gen = torch.Generator().manual_seed(7)
    per_class, classes = 40, 4
    boxes = _random_boxes(per_class, gen).repeat(classes, 1)  # identical boxes in every class
    scores = torch.randperm(per_class, generator=gen).float().div(per_class).repeat(classes)
    idxs = torch.arange(classes).repeat_interleave(per_class)
    keep = _check(boxes, scores, idxs, 0.5)
    # Every class keeps the same boxes: identical boxes in different classes never suppress.
    kept_per_class = [sorted((keep[idxs[keep] == c] % per_class).tolist()) for c in range(classes)]
    assert all(k == kept_per_class[0] for k in kept_per_class)


def test_batched_nms_fully_overlapping_boxes_within_class():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.95, 0.1])
    idxs = torch.tensor([0, 1, 0, 0])
    assert batched_nms(boxes, scores, idxs, 0.5).tolist() == [2, 1, 3]


def test_batched_nms_half_boxes_and_empty():
    gen = torch.Generator().manual_seed(1)
    boxes = _random_boxes(50, gen, size=1000.0)
    scores = torch.rand(50, generator=gen)
    idxs = torch.randint(0, 3, (50,), generator=gen)
    half = boxes.half()
    expected = batched_nms(half.float(), scores, idxs, 0.5)
    assert torch.equal(batched_nms(half, scores, idxs, 0.5), expected)
    empty = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        batched_nms(torch.zeros(3, 5), torch.zeros(3), torch.zeros(3, dtype=torch.long), 0.5)
