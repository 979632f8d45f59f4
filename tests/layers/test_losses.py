import math

import pytest
import torch
from torch.nn import functional as F
from torchvision import ops

from segtron.layers import ciou_loss, diou_loss, giou_loss, sigmoid_focal_loss, smooth_l1_loss


def _random_boxes(num, gen):
    xy = torch.rand(num, 2, generator=gen, dtype=torch.float64) * 50
    wh = torch.rand(num, 2, generator=gen, dtype=torch.float64) * 30 + 0.1
    return torch.cat([xy, xy + wh], dim=1)


def _box_pairs(gen, num=64):
    a = _random_boxes(num, gen)
    b = _random_boxes(num, gen)
    b[:8] = a[:8]  # identical pairs
    b[8:16] = a[8:16] + 100  # disjoint pairs
    b[16:24] = a[16:24] + torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=torch.float64).clamp(min=0)
    return a, b


def _scalar_terms(a, b):
    """IoU, enclosing box and centres of two XYXY boxes, with plain Python floats."""
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    cw, ch = max(ax1, bx1) - min(ax0, bx0), max(ay1, by1) - min(ay0, by0)
    centre_d2 = ((ax0 + ax1) / 2 - (bx0 + bx1) / 2) ** 2 + ((ay0 + ay1) / 2 - (by0 + by1) / 2) ** 2
    return inter, union, cw, ch, centre_d2


@pytest.mark.parametrize("beta", [0.0, 1e-6, 0.5, 2.0])
def test_smooth_l1_matches_formula(beta):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=gen, dtype=torch.float64) * 3
    y = torch.randn(50, generator=gen, dtype=torch.float64)
    expected = []
    for xi, yi in zip(x.tolist(), y.tolist()):
        n = abs(xi - yi)
        if beta < 1e-5:
            expected.append(n)
        else:
            expected.append(0.5 * n * n / beta if n < beta else n - 0.5 * beta)
    expected = torch.tensor(expected, dtype=torch.float64)
    assert torch.allclose(smooth_l1_loss(x, y, beta), expected)
    assert torch.allclose(smooth_l1_loss(x, y, beta, reduction="sum"), expected.sum())
    assert torch.allclose(smooth_l1_loss(x, y, beta, reduction="mean"), expected.mean())
    if beta >= 1e-5:
        torch_loss = F.smooth_l1_loss(x, y, beta=beta, reduction="none")
        assert torch.allclose(smooth_l1_loss(x, y, beta), torch_loss)


def test_smooth_l1_zero_beta_gradient_is_finite():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    smooth_l1_loss(x, torch.tensor([1.0, 0.0, 5.0]), beta=0.0, reduction="sum").backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, -1.0]))


def test_giou_matches_formula_and_torchvision():
    gen = torch.Generator().manual_seed(1)
    a, b = _box_pairs(gen)
    eps = 1e-7
    expected = []
    for ra, rb in zip(a.tolist(), b.tolist()):
        inter, union, cw, ch, _ = _scalar_terms(ra, rb)
        area_c = cw * ch
        expected.append(1 - (inter / (union + eps) - (area_c - union) / (area_c + eps)))
    expected = torch.tensor(expected, dtype=torch.float64)
    a1, b1 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = giou_loss(a1, b1)
    assert torch.allclose(loss, expected, atol=1e-10)
    a2, b2 = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    reference = ops.generalized_box_iou_loss(a2, b2)
    assert torch.allclose(loss, reference, atol=1e-10)
    loss.sum().backward()
    reference.sum().backward()
    assert torch.allclose(a1.grad, a2.grad) and torch.allclose(b1.grad, b2.grad)
    assert torch.allclose(giou_loss(a, b, reduction="mean"), expected.mean())
    assert torch.allclose(giou_loss(a, b, reduction="sum"), expected.sum())
    assert torch.allclose(giou_loss(a[:8], b[:8]), torch.zeros(8, dtype=torch.float64), atol=1e-6)


def test_diou_matches_formula_and_torchvision():
    gen = torch.Generator().manual_seed(2)
    a, b = _box_pairs(gen)
    eps = 1e-7
    expected = []
    for ra, rb in zip(a.tolist(), b.tolist()):
        inter, union, cw, ch, d2 = _scalar_terms(ra, rb)
        expected.append(1 - inter / (union + eps) + d2 / (cw**2 + ch**2 + eps))
    expected = torch.tensor(expected, dtype=torch.float64)
    loss = diou_loss(a, b)
    assert torch.allclose(loss, expected, atol=1e-10)
    assert torch.allclose(loss, ops.distance_box_iou_loss(a, b), atol=1e-10)


def test_ciou_matches_formula_and_torchvision_incl_grad():
    gen = torch.Generator().manual_seed(3)
    a, b = _box_pairs(gen)
    eps = 1e-7
    expected = []
    for ra, rb in zip(a.tolist(), b.tolist()):
        inter, union, cw, ch, d2 = _scalar_terms(ra, rb)
        iou = inter / (union + eps)
        angle_b = math.atan((rb[2] - rb[0]) / (rb[3] - rb[1]))
        angle_a = math.atan((ra[2] - ra[0]) / (ra[3] - ra[1]))
        v = 4 / math.pi**2 * (angle_b - angle_a) ** 2
        alpha = v / (1 - iou + v + eps)
        expected.append(1 - iou + d2 / (cw**2 + ch**2 + eps) + alpha * v)
    expected = torch.tensor(expected, dtype=torch.float64)
    a1 = a.clone().requires_grad_(True)
    loss = ciou_loss(a1, b)
    assert torch.allclose(loss, expected, atol=1e-10)
    a2 = a.clone().requires_grad_(True)
    reference = ops.complete_box_iou_loss(a2, b)
    assert torch.allclose(loss, reference, atol=1e-10)
    loss.sum().backward()
    reference.sum().backward()  # alpha is a constant in both
    assert torch.allclose(a1.grad, a2.grad)


@pytest.mark.parametrize("loss_fn", [giou_loss, diou_loss, ciou_loss])
def test_box_losses_empty_and_bad_boxes(loss_fn):
    empty = torch.zeros(0, 4, requires_grad=True)
    loss = loss_fn(empty, torch.zeros(0, 4), reduction="mean")
    assert loss.item() == 0.0
    loss.backward()
    assert empty.grad.shape == (0, 4)
    with pytest.raises(ValueError, match="x0 larger than x1"):
        loss_fn(torch.tensor([[5.0, 0, 1, 1]]), torch.tensor([[0.0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="y0 larger than y1"):
        loss_fn(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[0.0, 3, 1, 1]]))
    with pytest.raises(ValueError, match="reduction"):
        loss_fn(torch.zeros(1, 4), torch.zeros(1, 4), reduction="avg")


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (-1.0, 1.5)])
def test_sigmoid_focal_loss_matches_formula_and_torchvision(alpha, gamma):
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(40, 3, generator=gen, dtype=torch.float64) * 4
    targets = (torch.rand(40, 3, generator=gen) > 0.7).double()
    expected = torch.empty_like(logits)
    for i, (x, t) in enumerate(zip(logits.flatten().tolist(), targets.flatten().tolist())):
        p = 1 / (1 + math.exp(-x))
        ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
        p_t = p * t + (1 - p) * (1 - t)
        value = ce * (1 - p_t) ** gamma
        if alpha >= 0:
            value *= alpha * t + (1 - alpha) * (1 - t)
        expected.view(-1)[i] = value
    loss = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    assert torch.allclose(loss, expected, atol=1e-10)
    reference = ops.sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma)
    assert torch.allclose(loss, reference, atol=1e-10)
    assert torch.allclose(
        sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="sum"), expected.sum()
    )


def test_sigmoid_focal_loss_defaults_and_dtypes():
    logits = torch.randn(10, 4)
    targets = torch.randint(0, 2, (10, 4))  # integer labels are accepted
    loss = sigmoid_focal_loss(logits, targets, reduction="mean")
    assert torch.allclose(loss, ops.sigmoid_focal_loss(logits, targets.float(), reduction="mean"))
    half = sigmoid_focal_loss(logits.half(), targets)
    assert half.dtype == torch.float32
    empty = torch.zeros(0, 4, requires_grad=True)
    assert sigmoid_focal_loss(empty, torch.zeros(0, 4), reduction="mean").item() == 0.0
