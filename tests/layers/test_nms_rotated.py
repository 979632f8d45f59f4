"""Rotated NMS against a textbook greedy NMS (tests/structures/rotated_reference.py)."""

import importlib
import random

import pytest
import torch

from segtron.layers import batched_nms_rotated, nms_rotated
from segtron.layers.rotated_boxes import pairwise_iou_rotated
from tests.structures import rotated_reference as ref


def clustered_boxes(rng, n, clusters, jitter):
    """Boxes scattered around a few centres, so that many overlap (long suppression chains)."""
    centres = [(rng.uniform(0, 40), rng.uniform(0, 40)) for _ in range(clusters)]
    rows = []
    for _ in range(n):
        cx, cy = rng.choice(centres)
        rows.append([cx + rng.uniform(-jitter, jitter), cy + rng.uniform(-jitter, jitter),
                     rng.uniform(2, 10), rng.uniform(2, 10), rng.uniform(-180, 180)])
    return rows


def test_exported_at_detectron2_paths():
    nms_module = importlib.import_module("segtron.layers.nms")
    assert nms_module.nms_rotated is nms_rotated
    assert nms_module.batched_nms_rotated is batched_nms_rotated


def test_chain_keeps_first_and_third():
    # 4x2 boxes centred at x = 0, 1.5, 3: neighbours overlap 2.5 x 2 (IoU 5 / 11 = 0.45), the
    # outer two 1 x 2 (IoU 2 / 14 = 0.14). At 0.3 greedy keeps 0, drops 1 and keeps 2, since a
    # dropped box suppresses nothing.
    boxes = torch.tensor([[0, 0, 4, 2, 0], [1.5, 0, 4, 2, 0], [3, 0, 4, 2, 0.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_rotated(boxes, scores, 0.3).tolist() == [0, 2]
    assert nms_rotated(boxes, scores, 0.1).tolist() == [0]
    assert nms_rotated(boxes, scores, 0.5).tolist() == [0, 1, 2]


def test_matches_greedy_reference_with_polygon_iou():
    rng = random.Random(0)
    rows = clustered_boxes(rng, 60, clusters=4, jitter=3)
    scores = [rng.random() for _ in rows]
    iou = [[ref.iou(a, b) for b in rows] for a in rows]
    boxes, score_t = torch.tensor(rows), torch.tensor(scores)
    for threshold in (0.05, 0.3, 0.5, 0.8):
        expected = ref.greedy_nms(iou, scores, threshold)
        assert nms_rotated(boxes, score_t, threshold).tolist() == expected, threshold


@pytest.mark.parametrize("block", [7, 64, 512])
def test_matches_greedy_reference_on_a_large_dense_set(block, monkeypatch):
    # Hundreds of heavily overlapping boxes, resolved in blocks of several sizes.
    monkeypatch.setattr(importlib.import_module("segtron.layers.nms"), "_NMS_BLOCK", block)
    rng = random.Random(1)
    rows = clustered_boxes(rng, 400, clusters=3, jitter=8)
    boxes = torch.tensor(rows)
    scores = torch.rand(400, generator=torch.Generator().manual_seed(0))
    iou = pairwise_iou_rotated(boxes, boxes).tolist()
    for threshold in (0.1, 0.5):
        expected = ref.greedy_nms(iou, scores.tolist(), threshold)
        got = nms_rotated(boxes, scores, threshold).tolist()
        assert got == expected
        assert 1 < len(got) < 400


def test_ties_are_visited_in_index_order_and_output_is_by_score():
    boxes = torch.tensor([[0, 0, 2, 2, 0], [0, 0, 2, 2, 10], [20, 0, 2, 2, 0], [40, 0, 2, 2, 0.0]])
    scores = torch.tensor([0.5, 0.5, 0.2, 0.9])
    assert nms_rotated(boxes, scores, 0.5).tolist() == [3, 0, 2]


def test_degenerate_boxes_suppress_nothing_and_are_kept():
    boxes = torch.tensor([[0, 0, 2, 2, 0], [0, 0, 0, 2, 0], [0, 0, 2, 2, 0], [float("nan")] * 5])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert nms_rotated(boxes, scores, 0.5).tolist() == [0, 1, 3]


def test_empty_and_bad_inputs():
    out = nms_rotated(torch.zeros(0, 5), torch.zeros(0), 0.5)
    assert out.dtype == torch.int64 and out.shape == (0,)
    out = batched_nms_rotated(torch.zeros(0, 5), torch.zeros(0), torch.zeros(0).long(), 0.5)
    assert out.dtype == torch.int64 and out.shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        nms_rotated(torch.zeros(3, 4), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms_rotated(torch.zeros(3, 5), torch.zeros(2), 0.5)
    with pytest.raises(ValueError, match="idxs"):
        batched_nms_rotated(torch.zeros(3, 5), torch.zeros(3), torch.zeros(2).long(), 0.5)


@pytest.mark.parametrize("block", [5, 512])
def test_batched_nms_is_nms_within_each_group(block, monkeypatch):
    monkeypatch.setattr(importlib.import_module("segtron.layers.nms"), "_NMS_BLOCK", block)
    rng = random.Random(2)
    rows = clustered_boxes(rng, 90, clusters=3, jitter=4)
    boxes = torch.tensor(rows)
    scores = torch.rand(90, generator=torch.Generator().manual_seed(3))
    groups = torch.randint(0, 3, (90,), generator=torch.Generator().manual_seed(4))
    iou = pairwise_iou_rotated(boxes, boxes).tolist()
    expected = ref.greedy_nms(iou, scores.tolist(), 0.4, groups=groups.tolist())
    assert batched_nms_rotated(boxes, scores, groups, 0.4).tolist() == expected
    # Identical boxes of different groups survive together.
    same = torch.tensor([[5, 5, 3, 3, 20.0]] * 2)
    kept = batched_nms_rotated(same, torch.tensor([0.9, 0.8]), torch.tensor([0, 1]), 0.5)
    assert kept.tolist() == [0, 1]
