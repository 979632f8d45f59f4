"""Slow plain-Python references for rotated boxes (float64, no torch), shared by the tests.

Corners follow Detectron2's documented convention: angle in degrees, counter-clockwise on the
image (y down); the corner at local offset (dx, dy) is
(cx + dx cos a + dy sin a, cy - dx sin a + dy cos a).
"""

import math


def corners(box):
    """The 4 corners [(x, y), ...] of (cx, cy, w, h, angle_degrees), going round the box."""
    cx, cy, w, h, a = (float(v) for v in box)
    c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
    out = []
    for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2)):
        out.append((cx + dx * c + dy * s, cy - dx * s + dy * c))
    return out


def polygon_area(poly):
    """Shoelace area of a simple polygon given as a vertex list (either orientation)."""
    n = len(poly)
    twice = 0.0
    for k in range(n):
        x0, y0 = poly[k]
        x1, y1 = poly[(k + 1) % n]
        twice += x0 * y1 - x1 * y0
    return abs(twice) / 2


def _clip(subject, a, b, inside_ref):
    """Sutherland-Hodgman: keep the part of polygon ``subject`` on the side of line a->b where
    point ``inside_ref`` lies."""

    def side(p):
        return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])

    ref = side(inside_ref)

    def inside(p):
        return side(p) * ref >= 0

    def crossing(p, q):
        sp, sq = side(p), side(q)
        t = sp / (sp - sq)
        return (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))

    out = []
    for k in range(len(subject)):
        cur, prev = subject[k], subject[k - 1]
        if inside(cur):
            if not inside(prev):
                out.append(crossing(prev, cur))
            out.append(cur)
        elif inside(prev):
            out.append(crossing(prev, cur))
    return out


def intersection_area(box1, box2):
    """Area of the intersection of two rotated boxes, by clipping one polygon by the other."""
    if box1[2] <= 0 or box1[3] <= 0 or box2[2] <= 0 or box2[3] <= 0:
        return 0.0
    poly = corners(box1)
    clip_poly = corners(box2)
    centre = (float(box2[0]), float(box2[1]))
    for k in range(4):
        if not poly:
            return 0.0
        poly = _clip(poly, clip_poly[k], clip_poly[(k + 1) % 4], centre)
    return polygon_area(poly) if len(poly) >= 3 else 0.0


def iou(box1, box2):
    """IoU of two rotated boxes (0 when either is empty)."""
    inter = intersection_area(box1, box2)
    if inter <= 0:
        return 0.0
    return inter / (box1[2] * box1[3] + box2[2] * box2[3] - inter)


def greedy_nms(iou_matrix, scores, threshold, groups=None):
    """Textbook greedy NMS: visit boxes by decreasing score (ties by index); keep a box unless
    a kept box of its group overlaps it with IoU > threshold. Returns kept indices in visit
    order."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        same = [k for k in kept if groups is None or groups[k] == groups[i]]
        if all(iou_matrix[k][i] <= threshold for k in same):
            kept.append(i)
    return kept
