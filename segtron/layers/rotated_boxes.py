"""IoU of rotated boxes in pure PyTorch (Detectron2 path: ``detectron2.layers.rotated_boxes``).

A rotated box is ``(cx, cy, w, h, angle)``: centre and size in pixels, ``angle`` in degrees,
counter-clockwise as seen on the image (y pointing down). Its width axis is
``(cos a, -sin a)`` and its height axis ``(sin a, cos a)``, so the corner at local offset
``(dx, dy)`` is ``(cx + dx cos a + dy sin a, cy - dx sin a + dy cos a)``.

The intersection of two rectangles is a convex polygon whose vertices are the corners of each
rectangle lying inside the other plus the crossings of their edges. Its area is computed for
many pairs at once: collect those (up to 24) candidate points, sort them by angle around their
mean, and apply the shoelace formula. Only pairs whose axis-aligned bounding rectangles
overlap are computed; all others have IoU 0. Work is done in float64, in chunks of pairs so
memory stays bounded.
"""

import math
from typing import Optional, Tuple

import torch

__all__ = ["pairwise_iou_rotated", "rotated_box_corners"]

# Pairs whose exact intersection is computed at once (about 3 KiB of temporaries per pair).
_PAIR_CHUNK = 1 << 15
# Bounding-rectangle overlap tests done at once when searching candidate pairs.
_CANDIDATE_CHUNK = 1 << 22
# Relative slack for "corner inside rectangle" and "edges cross" tests (boxes touching or
# sharing edges must count their common points, whatever the rounding).
_REL_EPS = 1e-9


def _check_rotated(boxes: torch.Tensor, name: str, caller: str) -> None:
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 5:
        shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
        raise ValueError(
            f"{caller}: {name} must be an (N, 5) tensor of (cx, cy, w, h, angle_degrees) rows, "
            f"got {shape}; pass RotatedBoxes.tensor for RotatedBoxes."
        )


def rotated_box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """Corners of rotated boxes.

    Args:
        boxes: (..., 5) rows (cx, cy, w, h, angle in degrees, counter-clockwise).

    Returns:
        (..., 4, 2) corners (x, y) in the boxes' dtype, in the order of the local offsets
        (-w/2, -h/2), (w/2, -h/2), (w/2, h/2), (-w/2, h/2); consecutive corners share an edge.
    """
    cx, cy, w, h, angle = boxes.unbind(dim=-1)
    theta = angle * (math.pi / 180.0)
    cos, sin = torch.cos(theta)[..., None], torch.sin(theta)[..., None]
    half_w, half_h = (w / 2)[..., None], (h / 2)[..., None]
    signs_x = boxes.new_tensor([-1.0, 1.0, 1.0, -1.0])
    signs_y = boxes.new_tensor([-1.0, -1.0, 1.0, 1.0])
    dx = signs_x * half_w
    dy = signs_y * half_h
    x = cx[..., None] + dx * cos + dy * sin
    y = cy[..., None] - dx * sin + dy * cos
    return torch.stack([x, y], dim=-1)


def _bounding_rects(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) axis-aligned bounding rectangles (x0, y0, x1, y1) of (N, 5) rotated boxes, grown
    by a small margin so that touching boxes stay candidates."""
    theta = boxes[:, 4] * (math.pi / 180.0)
    cos, sin = torch.cos(theta).abs(), torch.sin(theta).abs()
    w, h = boxes[:, 2].abs(), boxes[:, 3].abs()
    half_x = (cos * w + sin * h) / 2
    half_y = (sin * w + cos * h) / 2
    margin = 1e-4 * (half_x + half_y) + 1e-6
    half_x, half_y = half_x + margin, half_y + margin
    cx, cy = boxes[:, 0], boxes[:, 1]
    return torch.stack([cx - half_x, cy - half_y, cx + half_x, cy + half_y], dim=1)


def _iou_upper_bound(
    rect1: torch.Tensor, rect2: torch.Tensor, area1: torch.Tensor, area2: torch.Tensor
) -> torch.Tensor:
    """An upper bound of the IoU of paired boxes from their bounding rectangles (P, 4) and
    areas (P,): the intersection lies in both rectangles' overlap and in each box."""
    low = torch.maximum(rect1[:, :2], rect2[:, :2])
    high = torch.minimum(rect1[:, 2:], rect2[:, 2:])
    inter = (high - low).clamp(min=0).prod(dim=1)
    inter = torch.minimum(inter, torch.minimum(area1, area2))
    union = area1 + area2 - inter
    return inter / union.clamp(min=1e-30)


def candidate_pairs(
    boxes1: torch.Tensor,
    boxes2: torch.Tensor,
    upper_triangle: bool = False,
    groups: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
    min_iou: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (i, j) whose bounding rectangles overlap: the only pairs that can have a
    non-zero intersection.

    Args:
        boxes1: (N, 5) rotated boxes.
        boxes2: (M, 5) rotated boxes.
        upper_triangle: only pairs with i < j (for a box set against itself, N == M).
        groups: optional labels ((N,), (M,)) of the two sets: only pairs with equal labels.
        min_iou: if given, also drop pairs whose IoU cannot exceed it (by a bound from the
            bounding rectangles and the areas).

    Returns:
        (P,) int64 indices into ``boxes1`` and (P,) into ``boxes2``, in row-major order.
    """
    rect1 = _bounding_rects(boxes1)
    rect2 = _bounding_rects(boxes2)
    area1 = (boxes1[:, 2] * boxes1[:, 3]).double()
    area2 = (boxes2[:, 2] * boxes2[:, 3]).double()
    m = rect2.shape[0]
    rows_per_chunk = max(1, _CANDIDATE_CHUNK // max(m, 1))
    firsts, seconds = [], []
    for start in range(0, rect1.shape[0], rows_per_chunk):
        r1 = rect1[start : start + rows_per_chunk, None, :]
        overlap = (r1[..., 0] <= rect2[None, :, 2]) & (rect2[None, :, 0] <= r1[..., 2])
        overlap &= (r1[..., 1] <= rect2[None, :, 3]) & (rect2[None, :, 1] <= r1[..., 3])
        rows = torch.arange(start, start + r1.shape[0], device=boxes1.device)
        if upper_triangle:
            overlap &= rows[:, None] < torch.arange(m, device=boxes1.device)[None, :]
        if groups is not None:
            overlap &= groups[0][start : start + r1.shape[0], None] == groups[1][None, :]
        i, j = torch.nonzero(overlap, as_tuple=True)
        i = i + start
        if min_iou is not None:
            bound = _iou_upper_bound(rect1[i].double(), rect2[j].double(), area1[i], area2[j])
            possible = bound > min_iou
            i, j = i[possible], j[possible]
        firsts.append(i)
        seconds.append(j)
    if not firsts:
        empty = torch.zeros(0, dtype=torch.int64, device=boxes1.device)
        return empty, empty
    return torch.cat(firsts), torch.cat(seconds)


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z-component of the 2-D cross product over the last dim."""
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: torch.Tensor, boxes: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
    """(P, K) bool: points (P, K, 2) lie in boxes (P, 5) (boundary included, within slack)."""
    theta = boxes[:, 4] * (math.pi / 180.0)
    axis_w = torch.stack([torch.cos(theta), -torch.sin(theta)], dim=-1)[:, None, :]
    axis_h = torch.stack([torch.sin(theta), torch.cos(theta)], dim=-1)[:, None, :]
    rel = points - boxes[:, None, :2]
    along_w = (rel * axis_w).sum(-1).abs()
    along_h = (rel * axis_h).sum(-1).abs()
    return (along_w <= boxes[:, None, 2] / 2 + slack) & (along_h <= boxes[:, None, 3] / 2 + slack)


def _edge_crossings(
    corners1: torch.Tensor, corners2: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Crossing points of the 4 edges of each rectangle with the 4 of the other.

    Args:
        corners1, corners2: (P, 4, 2) corners in edge order.

    Returns:
        points (P, 16, 2) and valid (P, 16): edge i of the first with edge j of the second at
        index 4 * i + j. Parallel edges give no point (their overlap's ends are corners of one
        rectangle inside the other, found separately).
    """
    start1 = corners1[:, :, None, :]  # (P, 4, 1, 2)
    dir1 = (corners1.roll(-1, dims=1) - corners1)[:, :, None, :]
    start2 = corners2[:, None, :, :]  # (P, 1, 4, 2)
    dir2 = (corners2.roll(-1, dims=1) - corners2)[:, None, :, :]
    denom = _cross(dir1, dir2)  # (P, 4, 4)
    scale = dir1.norm(dim=-1) * dir2.norm(dim=-1)
    crossing = denom.abs() > _REL_EPS * scale
    safe = torch.where(crossing, denom, torch.ones_like(denom))
    offset = start2 - start1
    t1 = _cross(offset, dir2) / safe  # position along edge i of the first
    t2 = _cross(offset, dir1) / safe  # position along edge j of the second
    lo, hi = -_REL_EPS, 1.0 + _REL_EPS
    valid = crossing & (t1 >= lo) & (t1 <= hi) & (t2 >= lo) & (t2 <= hi)
    points = start1 + t1[..., None] * dir1
    return points.reshape(-1, 16, 2), valid.reshape(-1, 16)


def _polygon_area(points: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Area of the convex hull of the valid points of each row (P, K, 2) -> (P,).

    The valid points are the vertices (with repeats) of a convex polygon: sorting them by
    angle around their mean orders them along its boundary. Invalid points are replaced by the
    first sorted point, which adds only zero-area steps to the shoelace sum.
    """
    weight = valid.to(points.dtype)[..., None]
    count = weight.sum(dim=1).clamp(min=1.0)
    centre = (points * weight).sum(dim=1, keepdim=True) / count[:, None]
    rel = points - centre
    angle = torch.atan2(rel[..., 1], rel[..., 0])
    angle = torch.where(valid, angle, torch.full_like(angle, 10.0))  # invalid ones sort last
    order = angle.argsort(dim=1)
    rel = torch.gather(rel, 1, order[..., None].expand_as(rel))
    valid = torch.gather(valid, 1, order)
    rel = torch.where(valid[..., None], rel, rel[:, :1, :])
    twice_area = _cross(rel, rel.roll(-1, dims=1)).sum(dim=1)
    return twice_area.abs() / 2


def _intersection_areas(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection areas of matched pairs of rotated boxes (P, 5), (P, 5) -> (P,), float64."""
    # Centre each pair on the midpoint of its centres: corner coordinates stay small.
    mid = (boxes1[:, :2] + boxes2[:, :2]) / 2
    boxes1 = torch.cat([boxes1[:, :2] - mid, boxes1[:, 2:]], dim=1)
    boxes2 = torch.cat([boxes2[:, :2] - mid, boxes2[:, 2:]], dim=1)
    corners1 = rotated_box_corners(boxes1)
    corners2 = rotated_box_corners(boxes2)
    size = torch.maximum(boxes1[:, 2:4].abs().amax(1), boxes2[:, 2:4].abs().amax(1))
    slack = (_REL_EPS * size)[:, None]
    in2 = _inside(corners1, boxes2, slack)
    in1 = _inside(corners2, boxes1, slack)
    crossings, crossing_valid = _edge_crossings(corners1, corners2)
    points = torch.cat([corners1, corners2, crossings], dim=1)
    valid = torch.cat([in2, in1, crossing_valid], dim=1)
    return _polygon_area(points, valid)


@torch.no_grad()
def paired_iou_rotated(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of matched pairs: ``iou(boxes1[k], boxes2[k])``.

    Args:
        boxes1, boxes2: (P, 5) rotated boxes (cx, cy, w, h, angle_degrees).

    Returns:
        (P,) float64 IoU in [0, 1]; 0 where either box has zero (or negative) area or any
        number is not finite.
    """
    out = torch.zeros(boxes1.shape[0], dtype=torch.float64, device=boxes1.device)
    for start in range(0, boxes1.shape[0], _PAIR_CHUNK):
        b1 = boxes1[start : start + _PAIR_CHUNK].double()
        b2 = boxes2[start : start + _PAIR_CHUNK].double()
        area1 = b1[:, 2] * b1[:, 3]
        area2 = b2[:, 2] * b2[:, 3]
        ok = (b1[:, 2] > 0) & (b1[:, 3] > 0) & (b2[:, 2] > 0) & (b2[:, 3] > 0)
        ok &= torch.isfinite(b1).all(dim=1) & torch.isfinite(b2).all(dim=1)
        inter = _intersection_areas(b1, b2)
        inter = torch.minimum(inter, torch.minimum(area1, area2))
        union = area1 + area2 - inter
        ok &= union > 0
        iou = inter / torch.where(ok, union, torch.ones_like(union))
        out[start : start + _PAIR_CHUNK] = torch.where(ok, iou.clamp(0.0, 1.0), 0.0)
    return out


@torch.no_grad()
def pairwise_iou_rotated(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of all N x M pairs of rotated boxes.

    Args:
        boxes1: (N, 5) rows (cx, cy, w, h, angle): centre and size in pixels, angle in degrees
            counter-clockwise.
        boxes2: (M, 5) rows in the same format.

    Returns:
        (N, M) IoU in ``boxes1``'s dtype and device. Pairs that do not overlap, boxes with zero
        width or height, and boxes with non-finite numbers give 0 (never NaN). Not
        differentiable (as Detectron2's).
    """
    _check_rotated(boxes1, "boxes1", "pairwise_iou_rotated")
    _check_rotated(boxes2, "boxes2", "pairwise_iou_rotated")
    out_dtype = boxes1.dtype if boxes1.is_floating_point() else torch.float32
    n, m = boxes1.shape[0], boxes2.shape[0]
    out = torch.zeros((n, m), dtype=out_dtype, device=boxes1.device)
    if n == 0 or m == 0:
        return out
    first, second = candidate_pairs(boxes1, boxes2)
    if first.numel():
        ious = paired_iou_rotated(boxes1[first], boxes2[second])
        out[first, second] = ious.to(out_dtype)
    return out
