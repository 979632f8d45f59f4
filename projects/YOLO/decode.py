"""From YOLOX's raw head outputs to boxes and scores.

Grid convention (YOLOX's): the cell in column i and row j of a level of stride s has the
offset (x, y) = (i, j); a box prediction (dx, dy, tw, th) there decodes to

    centre = ((i + dx) * s, (j + dy) * s),   size = (exp(tw) * s, exp(th) * s)

in input pixels, then to XYXY. There is no +0.5 in the decoding: dx = dy = 0 is the cell's
top-left corner, dx = dy = 0.5 its middle. (SimOTA's centre prior, on the other hand, places
the cell at its middle, ((i + 0.5) * s, (j + 0.5) * s).) A box's score for class c is
``sigmoid(obj) * sigmoid(cls_c)``.

All levels are flattened to R = sum(H_l * W_l) predictions, level by level (finest first),
row-major inside a level (index ``j * W_l + i``).
"""

import math
from typing import List, Sequence, Tuple

import torch

from segtron.layers import cat

__all__ = ["decode", "decode_boxes", "flatten_predictions", "grid_points"]

_MAX_LOG_SIZE = math.log(1e4)
"""tw / th are clamped to this (boxes at most 10^4 strides wide) so that exp stays finite."""


def grid_points(
    sizes: Sequence[Tuple[int, int]],
    strides: Sequence[int],
    device=None,
    dtype=torch.float32,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The grid cells of all levels in the flattened order.

    Args:
        sizes: (H_l, W_l) of each level.
        strides: each level's stride in input pixels.
        device, dtype: of the returned tensors.

    Returns:
        offsets: (R, 2) cell indices (i, j) = (column, row), as ``dtype``;
        cell_strides: (R,) the stride of each cell's level, as ``dtype``.
    """
    if len(sizes) != len(strides):
        raise ValueError(
            f"grid_points: {len(sizes)} levels but {len(strides)} strides; MODEL.YOLOX.STRIDES "
            "needs one stride per MODEL.YOLOX.HEAD_IN_FEATURES entry."
        )
    offsets, cell_strides = [], []
    for (height, width), stride in zip(sizes, strides):
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device, dtype=dtype),
            torch.arange(width, device=device, dtype=dtype),
            indexing="ij",
        )
        offsets.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=1))
        cell_strides.append(
            torch.full((height * width,), float(stride), device=device, dtype=dtype)
        )
    return cat(offsets, dim=0), cat(cell_strides, dim=0)


def flatten_predictions(
    cls_logits: List[torch.Tensor],
    box_preds: List[torch.Tensor],
    obj_logits: List[torch.Tensor],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's per-level outputs ((N, K, H, W), (N, 4, H, W), (N, 1, H, W) lists) as
    (N, R, K) class logits, (N, R, 4) box values and (N, R) objectness logits."""

    def flat(levels):
        return cat([x.flatten(2).transpose(1, 2) for x in levels], dim=1)

    return flat(cls_logits), flat(box_preds), flat(obj_logits).squeeze(2)


def decode_boxes(
    box_preds: torch.Tensor, offsets: torch.Tensor, cell_strides: torch.Tensor
) -> torch.Tensor:
    """(..., R, 4) box values (dx, dy, tw, th) at the R cells of :func:`grid_points` ->
    (..., R, 4) XYXY boxes in input pixels (module docstring)."""
    strides = cell_strides[:, None]
    centres = (box_preds[..., :2] + offsets) * strides
    sizes = box_preds[..., 2:].clamp(max=_MAX_LOG_SIZE).exp() * strides
    return torch.cat((centres - sizes / 2, centres + sizes / 2), dim=-1)


def decode(
    cls_logits: List[torch.Tensor],
    box_preds: List[torch.Tensor],
    obj_logits: List[torch.Tensor],
    strides: Sequence[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Boxes and scores of every cell of every level.

    Args:
        cls_logits, box_preds, obj_logits: :class:`~.head.YOLOXHead`'s outputs, lists of
            (N, K, H_l, W_l), (N, 4, H_l, W_l), (N, 1, H_l, W_l).
        strides: each level's stride.

    Returns:
        boxes: (N, R, 4) XYXY in input pixels;
        scores: (N, R, K) ``sigmoid(obj) * sigmoid(cls)``.
    """
    cls_flat, box_flat, obj_flat = flatten_predictions(cls_logits, box_preds, obj_logits)
    offsets, cell_strides = grid_points(
        [tuple(x.shape[-2:]) for x in box_preds], strides, box_flat.device, box_flat.dtype
    )
    boxes = decode_boxes(box_flat, offsets, cell_strides)
    scores = obj_flat.sigmoid()[..., None] * cls_flat.sigmoid()
    return boxes, scores
