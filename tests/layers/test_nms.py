import importlib

import pytest
import torch

from segtron.layers import batched_nms, batched_nms_topk, nms

# The module itself: ``segtron.layers.nms`` is shadowed by the function of that name.
nms_module = importlib.import_module("segtron.layers.nms")


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


def _clustered_boxes(num, gen, clusters=30):
    """Boxes jittered around a few centres, so many overlap heavily."""
    centres = _random_boxes(clusters, gen, size=500.0)
    boxes = centres[torch.randint(0, clusters, (num,), generator=gen)]
    return boxes + torch.randn(num, 4, generator=gen) * 3.0


def _check_topk(boxes, scores, idxs, thresh, topks, **kwargs):
    full = batched_nms(boxes, scores, idxs, thresh)
    for topk in topks:
        got = batched_nms_topk(boxes, scores, idxs, thresh, topk, **kwargs)
        expected = full if topk < 0 else full[:topk]
        assert got.dtype == torch.int64
        if scores.unique().numel() == scores.numel():
            assert torch.equal(got, expected), topk
            continue
        # With tied scores the order of equal-score kept boxes is not defined: torchvision
        # sorts its per-class results with CPU torch.sort(descending=True), which is not
        # stable. So compare the score sequence, and require each score's indices to be among
        # the full run's kept indices of that score (equal counts make it set equality for
        # every score but the one straddling the topk cut).
        assert torch.equal(scores[got], scores[expected]), topk
        for value in scores[got].unique():
            kept_with_value = set(full[scores[full] == value].tolist())
            assert set(got[scores[got] == value].tolist()) <= kept_with_value
    return got


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("num", [0, 1, 700, 3000, 20000])
def test_batched_nms_topk_equals_prefix_of_batched_nms(seed, num):
    gen = torch.Generator().manual_seed(seed * 100_000 + num)
    boxes = _clustered_boxes(num, gen)
    scores = torch.randperm(num, generator=gen).float() / num  # distinct (rand has ties)
    idxs = torch.randint(0, 12, (num,), generator=gen)
    topks = [1, 5, 100, 2000, batched_nms(boxes, scores, idxs, 0.5).numel() + 1, -1]
    _check_topk(boxes, scores, idxs, 0.5, topks)
    _check_topk(boxes, scores.mul(100).round().div(100), idxs, 0.5, topks)  # many ties


def test_batched_nms_topk_retries_when_prefix_keeps_too_few(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    # 3000 near-identical class-0 boxes hold the top scores: a 1000-box prefix keeps 1 of them.
    dup = torch.tensor([[10.0, 10.0, 60.0, 60.0]]) + torch.rand(3000, 4, generator=gen) * 0.5
    rest = _random_boxes(5000, gen, size=1000.0)
    boxes = torch.cat([dup, rest])
    scores = torch.cat([1 + torch.rand(3000, generator=gen), torch.rand(5000, generator=gen)])
    classes = torch.randint(0, 8, (5000,), generator=gen)
    idxs = torch.cat([torch.zeros(3000, dtype=torch.long), classes])
    calls = []  # sizes of the prefixes NMS ran on
    per_class = nms_module._per_class_nms
    spy = lambda b, *args: calls.append(len(b)) or per_class(b, *args)  # noqa: E731
    monkeypatch.setattr(nms_module, "_per_class_nms", spy)
    keep = _check_topk(boxes, scores, idxs, 0.5, [100])
    assert keep.numel() == 100
    assert calls[0] == 1000 and len(calls) >= 2, calls  # the first prefix was not enough


def test_batched_nms_topk_takes_every_box_tied_at_the_cut():
    gen = torch.Generator().manual_seed(4)
    # 250 far-apart clusters of 40 identical class-0 boxes, all scoring 0.9, in shuffled index
    # order; greedy NMS keeps the lowest index of each cluster. The 1000-box prefix cuts inside
    # this tie, so it must take all 10000 tied boxes, not some 1000 of them.
    clusters, size = 250, 40
    grid = torch.stack(torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij"), -1)
    corners = grid.reshape(-1, 2)[:clusters] * 100
    cluster_of = torch.randperm(clusters * size, generator=gen) % clusters
    tied = torch.cat([corners, corners + 50], dim=1)[cluster_of]
    others = _random_boxes(2000, gen, size=1600.0)
    boxes = torch.cat([tied, others])
    scores = torch.cat([torch.full((len(tied),), 0.9), torch.rand(2000, generator=gen) * 0.8])
    classes = torch.randint(1, 5, (2000,), generator=gen)
    idxs = torch.cat([torch.zeros(len(tied), dtype=torch.long), classes])
    keep = batched_nms_topk(boxes, scores, idxs, 0.5, clusters)
    first_of_cluster = [int(torch.nonzero(cluster_of == c)[0]) for c in range(clusters)]
    assert sorted(keep.tolist()) == sorted(first_of_cluster)
    _check_topk(boxes, scores, idxs, 0.5, [1, clusters, clusters + 10])


def test_batched_nms_topk_matches_where_offset_boxes_round():
    # Large coordinates and group ids make torchvision's one-call path (boxes shifted by
    # group * max coordinate) round coordinates by several units, so its decisions on a
    # 1000-box prefix differ from the full run's per-group loop; the prefix must use the loop.
    gen = torch.Generator().manual_seed(0)
    num = 4000
    centres = torch.rand(10, 2, generator=gen) * 20000
    xy = centres[torch.randint(0, 10, (num,), generator=gen)]
    xy = xy + torch.randn(num, 2, generator=gen) * 10
    boxes = torch.cat([xy, xy + 40 + torch.rand(num, 2, generator=gen) * 20], dim=1)
    scores = torch.rand(num, generator=gen)
    idxs = torch.randint(0, 4, (num,), generator=gen) * 3000
    _check_topk(boxes, scores, idxs, 0.5, [100])


def test_batched_nms_topk_empty_and_bad_shape():
    no_idxs = torch.zeros(0, dtype=torch.long)
    empty = batched_nms_topk(torch.zeros(0, 4), torch.zeros(0), no_idxs, 0.5, 10)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        batched_nms_topk(torch.zeros(3, 5), torch.zeros(3), no_idxs.new_zeros(3), 0.5, 1)
