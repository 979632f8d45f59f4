"""Pooling box regions from a feature pyramid (Detectron2 path: ``detectron2.modeling.poolers``).

Each box is pooled from one level of the pyramid, chosen by its size (FPN paper, eq. 1):
``level = floor(canonical_level + log2(sqrt(area) / canonical_box_size + 1e-8))``, clamped to
the levels present. A 224 x 224 box goes to level 4 (p4, stride 16) by default. Rotated boxes
(``RotatedBoxes``, pooled with "ROIAlignRotated") use their area ``w * h`` the same way.
"""

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch import nn
from torchvision.ops import RoIPool

from ..layers import ROIAlign, ROIAlignRotated, cat, shapes_to_tensor
from ..layers.execution import new_pooled_output
from ..structures import Boxes, RotatedBoxes

__all__ = ["ROIPooler", "assign_boxes_to_levels", "convert_boxes_to_pooler_format"]


def _box_tensor(boxes: Union[Boxes, torch.Tensor]) -> torch.Tensor:
    if isinstance(boxes, Boxes):  # RotatedBoxes too
        return boxes.tensor
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2 and (
        boxes.shape[1] == 4 or boxes.shape[1] == 5
    ):
        return boxes
    if torch.jit.is_scripting():
        raise TypeError("ROIPooler: each entry of box_lists must be Boxes or a tensor.")
    raise TypeError(
        f"ROIPooler: each entry of box_lists must be Boxes or RotatedBoxes (or an (N, 4) / "
        f"(N, 5) tensor), got "
        f"{type(boxes).__name__}{tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else ''}."
    )


def _areas(boxes: Union[Boxes, torch.Tensor]) -> torch.Tensor:
    """(N,) areas of XYXY boxes, or ``w * h`` of rotated (N, 5) boxes."""
    t = _box_tensor(boxes)
    if not torch.jit.is_scripting():  # (RotatedBoxes is not a TorchScript class)
        if t.shape[1] == 5:
            return RotatedBoxes(t).area()
    return Boxes(t).area()


def assign_boxes_to_levels(
    box_lists: List[Boxes],
    min_level: int,
    max_level: int,
    canonical_box_size: float,
    canonical_level: int,
) -> torch.Tensor:
    """Pyramid level of each box, as an offset from ``min_level``.

    Args:
        box_lists: one ``Boxes`` (XYXY, input pixels) or ``RotatedBoxes`` per image.
        min_level, max_level: the levels present (level L has stride 2**L).
        canonical_box_size: box size (sqrt of the area, pixels) mapped to ``canonical_level``.
        canonical_level: level of a box of the canonical size.

    Returns:
        (M,) int64, M = total number of boxes over the images (concatenated in order); value i
        means level ``min_level + i``.
    """
    sizes = torch.sqrt(cat([_areas(b) for b in box_lists]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_box_size + 1e-8))
    levels = torch.clamp(levels, min=min_level, max=max_level)
    return levels.to(torch.int64) - min_level


def convert_boxes_to_pooler_format(box_lists: List[Boxes]) -> torch.Tensor:
    """Concatenate per-image boxes into ROI format.

    Args:
        box_lists: one ``Boxes`` (or (Ni, 4) tensor) per image of the batch, or one
            ``RotatedBoxes`` (or (Ni, 5) tensor) per image.

    Returns:
        (M, 5) tensor, M = sum(Ni), rows (batch index, x0, y0, x1, y1) in image order, in the
        boxes' dtype and device; (M, 6) rows (batch index, cx, cy, w, h, angle) for rotated
        boxes.
    """
    tensors = [_box_tensor(b) for b in box_lists]
    boxes = torch.cat(tensors, dim=0)
    counts = shapes_to_tensor([t.shape[0] for t in tensors], device=boxes.device)
    image_index = torch.arange(len(tensors), dtype=boxes.dtype, device=boxes.device)
    if torch.jit.is_tracing():  # a traced graph keeps the box count dynamic
        batch_index = torch.repeat_interleave(image_index, counts)
    else:  # the output size is known on the host: without it, a GPU would sync here
        batch_index = torch.repeat_interleave(image_index, counts, output_size=boxes.shape[0])
    return torch.cat([batch_index[:, None], boxes], dim=1)


class _RoIPoolLevel(nn.Module):
    """``torchvision.ops.RoIPool`` with ROIs cast to the features' dtype and device."""

    def __init__(self, output_size: Tuple[int, int], spatial_scale: float):
        super().__init__()
        self.pool = RoIPool(output_size, spatial_scale)

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return self.pool(features, rois.to(dtype=features.dtype, device=features.device))


class ROIPooler(nn.Module):
    """Pool a fixed-size feature patch for every box from a feature pyramid.

    ``forward(x, box_lists)``: ``x`` holds one (N, C, Hl, Wl) feature map per level (strides
    increasing by 2), ``box_lists`` one ``Boxes`` per image; returns (M, C, out_h, out_w) with
    the boxes in their original order (image by image). With one level every box is pooled
    from it; otherwise each box from the level given by ``assign_boxes_to_levels``.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        scales: Sequence[float],
        sampling_ratio: int,
        pooler_type: str,
        canonical_box_size: int = 224,
        canonical_level: int = 4,
    ):
        """Args:
            output_size: int or (h, w) of each pooled patch.
            scales: 1 / stride of each level, in level order (e.g. 1/4, 1/8, 1/16, 1/32);
                each a power of 2, consecutive levels halving.
            sampling_ratio: ROIAlign samples per bin along each axis; 0 = adaptive.
            pooler_type: "ROIAlignV2" (ROIAlign with aligned=True, Detectron2's default),
                "ROIAlign" (aligned=False, legacy), "ROIPool" (max pooling) or
                "ROIAlignRotated" (for ``RotatedBoxes``).
            canonical_box_size, canonical_level: a box of this size (sqrt of the area, px)
                is pooled from this level (FPN eq. 1: 224 and 4).
        """
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        output_size = tuple(output_size)
        if len(output_size) != 2 or not all(isinstance(s, int) for s in output_size):
            raise ValueError(
                f"ROIPooler: output_size must be an int or (h, w) ints, got {output_size}."
            )
        self.output_size = output_size
        scales = [float(s) for s in scales]
        if not scales:
            raise ValueError("ROIPooler: scales is empty; give 1/stride for each feature map.")

        if pooler_type == "ROIAlign":
            poolers = [ROIAlign(output_size, s, sampling_ratio, aligned=False) for s in scales]
        elif pooler_type == "ROIAlignV2":
            poolers = [ROIAlign(output_size, s, sampling_ratio, aligned=True) for s in scales]
        elif pooler_type == "ROIPool":
            poolers = [_RoIPoolLevel(output_size, s) for s in scales]
        elif pooler_type == "ROIAlignRotated":
            poolers = [ROIAlignRotated(output_size, s, sampling_ratio) for s in scales]
        else:
            raise ValueError(
                f"ROIPooler: unknown pooler_type {pooler_type!r} (MODEL.ROI_*_HEAD.POOLER_TYPE); "
                "use 'ROIAlignV2', 'ROIAlign', 'ROIPool' or 'ROIAlignRotated'."
            )
        self.level_poolers = nn.ModuleList(poolers)
        self._box_dim = 5 if pooler_type == "ROIAlignRotated" else 4
        self._pooler_type = pooler_type

        levels = []
        for s in scales:
            level = -math.log2(s) if s > 0 else float("nan")
            if not math.isclose(level, round(level), abs_tol=1e-6) or round(level) < 0:
                raise ValueError(
                    f"ROIPooler: scale {s} (1/stride) is not 1/2**k for an integer k >= 0; "
                    f"feature map strides must be powers of 2 (got scales {scales})."
                )
            levels.append(int(round(level)))
        if levels != list(range(levels[0], levels[0] + len(levels))):
            raise ValueError(
                f"ROIPooler: scales {scales} give levels {levels}, which do not form a pyramid; "
                "give consecutive levels in increasing stride order (e.g. 1/4, 1/8, 1/16, 1/32)."
            )
        self.min_level = levels[0]
        self.max_level = levels[-1]
        if canonical_box_size <= 0:
            raise ValueError(
                f"ROIPooler: canonical_box_size must be > 0, got {canonical_box_size}."
            )
        self.canonical_level = canonical_level
        self.canonical_box_size = canonical_box_size

    def forward(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> torch.Tensor:
        """Args:
            x: one (N, C, Hl, Wl) feature map per level, in the order of ``scales``.
            box_lists: N ``Boxes`` (XYXY in input-image pixels), one per image;
                ``RotatedBoxes`` with pooler_type "ROIAlignRotated".

        Returns:
            (M, C, out_h, out_w), M = total number of boxes, in the order of the boxes
            (image 0's first); (0, C, out_h, out_w) when there are none. Same dtype and device
            as ``x``.
        """
        num_levels = len(self.level_poolers)
        if not torch.jit.is_scripting():
            self._check_inputs(x, box_lists)
        out_h, out_w = self.output_size
        channels = x[0].shape[1]
        if len(box_lists) == 0:
            return x[0].new_zeros((0, channels, out_h, out_w))

        rois = convert_boxes_to_pooler_format(box_lists)
        if num_levels == 1:
            return self.level_poolers[0](x[0], rois)

        levels = assign_boxes_to_levels(
            box_lists, self.min_level, self.max_level, float(self.canonical_box_size),
            self.canonical_level,
        )
        if torch.jit.is_tracing():
            # Traced: one nonzero per level, so the per-level box counts stay dynamic (the
            # host-side counts below would be frozen into the graph).
            level_inds = [torch.nonzero(levels == lv).squeeze(1) for lv in range(num_levels)]
        else:
            # Group boxes by level with one sort and one host transfer of the counts (instead
            # of one synchronising nonzero per level).
            order = torch.argsort(levels, stable=True)
            counts: List[int] = torch.bincount(levels, minlength=num_levels).tolist()
            level_inds = order.split(counts)
        # Every box belongs to exactly one level, so every row is written below: no zero fill.
        output = new_pooled_output(x[0], (rois.shape[0], channels, out_h, out_w))
        for level, pooler in enumerate(self.level_poolers):
            # Every level is pooled, even with no boxes, so all levels stay in the graph.
            inds = level_inds[level]
            output.index_put_((inds,), pooler(x[level], rois[inds]))
        return output

    def _check_inputs(self, x: List[torch.Tensor], box_lists: List[Boxes]) -> None:
        """TypeError / ValueError unless ``x`` has one map per level and ``box_lists`` one
        set of boxes of this pooler's kind per image (outside TorchScript)."""
        num_levels = len(self.level_poolers)
        if not isinstance(x, (list, tuple)) or not isinstance(box_lists, (list, tuple)):
            raise TypeError(
                "ROIPooler: x and box_lists must be lists (features per level, Boxes per image)."
            )
        if len(x) != num_levels:
            raise ValueError(
                f"ROIPooler was built for {num_levels} levels (scales) but got {len(x)} feature "
                "maps; the pooler's in_features and scales must agree."
            )
        if len(box_lists) != x[0].shape[0]:
            raise ValueError(
                f"ROIPooler: {len(box_lists)} box lists for a batch of {x[0].shape[0]} images; "
                "give one Boxes per image."
            )
        if len(box_lists) == 0:
            return
        box_dim = _box_tensor(box_lists[0]).shape[1]
        if box_dim != self._box_dim:
            raise ValueError(
                f"ROIPooler: pooler_type {self._pooler_type!r} pools "
                f"{'RotatedBoxes' if self._box_dim == 5 else 'Boxes'} ({self._box_dim} numbers "
                f"per box) but got boxes with {box_dim}; use 'ROIAlignRotated' for RotatedBoxes "
                "and 'ROIAlignV2' for Boxes (MODEL.ROI_*_HEAD.POOLER_TYPE)."
            )
