"""Rotated boxes: the ``RotatedBoxes`` container and their pairwise IoU.

Detectron2 path: ``detectron2.structures.rotated_boxes``.

A rotated box is ``(cx, cy, w, h, angle)`` (``BoxMode.XYWHA_ABS``): centre and size in
absolute pixels, ``angle`` in degrees. Angle 0 is the axis-aligned box with ``w`` along x and
``h`` along y; a positive angle rotates it counter-clockwise about its centre as seen on the
image (whose y axis points down), a negative one clockwise. So the corner at local offset
``(dx, dy)`` (``|dx| = w/2``, ``|dy| = h/2``) is at
``(cx + dx cos(a) + dy sin(a), cy - dx sin(a) + dy cos(a))``.

``(x, y, w, h, a)`` and ``(x, y, w, h, a + 360 k)`` are the same box; ``a`` and ``a + 180``
cover the same region (IoU 1) but pool features in opposite orders. The principal range of
angles is [-180, 180) (``normalize_angles``).
"""

import math
from typing import Any, Sequence, Tuple, Union

import numpy as np
import torch

from ..layers.rotated_boxes import pairwise_iou_rotated
from .boxes import Boxes, _is_integer_index

__all__ = ["RotatedBoxes", "pairwise_iou"]


class RotatedBoxes(Boxes):
    """N rotated boxes as a float32 (N, 5) tensor of (cx, cy, w, h, angle_degrees) rows.

    Attribute ``tensor`` holds the data. Behaves like a tensor of boxes: indexing, ``len``,
    iteration over (5,) rows, ``.to(device)`` and ``.device``. A subclass of ``Boxes`` (as in
    Detectron2), with every method redefined for the rotated format.
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray, Sequence[Sequence[float]]]):
        """Args:
            tensor: (N, 5) boxes as a Tensor (kept on its device, cast to float32), ndarray
                or nested list (placed on the CPU). An input with no elements becomes (0, 5).
        """
        if isinstance(tensor, torch.Tensor):
            data = tensor.to(dtype=torch.float32)
        else:
            data = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        if data.numel() == 0:
            data = data.reshape((0, 5))
        if data.dim() != 2 or data.shape[-1] != 5:
            raise ValueError(
                f"RotatedBoxes expects an (N, 5) tensor of (cx, cy, w, h, angle) rows, got "
                f"shape {tuple(data.shape)}; axis-aligned (x0, y0, x1, y1) boxes belong in Boxes."
            )
        self.tensor = data

    def clone(self) -> "RotatedBoxes":
        """Return a copy whose tensor does not share storage with this one."""
        return RotatedBoxes(self.tensor.clone())

    def to(self, *args: Any, **kwargs: Any) -> "RotatedBoxes":
        """Return a copy on another device (arguments as ``Tensor.to``); boxes stay float32."""
        return RotatedBoxes(self.tensor.to(*args, **kwargs))

    def area(self) -> torch.Tensor:
        """Return the (N,) areas ``w * h``."""
        return self.tensor[:, 2] * self.tensor[:, 3]

    def normalize_angles(self) -> None:
        """Bring every angle into [-180, 180) degrees, in place (the same boxes)."""
        self.tensor[:, 4] = (self.tensor[:, 4] + 180.0) % 360.0 - 180.0

    def clip(self, box_size: Tuple[int, int], clip_angle_threshold: float = 1.0) -> None:
        """Clip nearly horizontal boxes to the image, in place.

        Angles are first normalised to [-180, 180). Boxes with ``|angle| <=
        clip_angle_threshold`` are clipped as if they were axis-aligned: x to [0, width] and y
        to [0, height]; their angle is kept and their width / height never grow. Other boxes
        are left as they are (a rotated box has no single best clipped version; ROIAlignRotated
        copes with boxes reaching outside the image).

        Args:
            box_size: (height, width) of the clipping region, e.g. the image size.
            clip_angle_threshold: largest |angle| (degrees) of the boxes that are clipped.
        """
        height, width = box_size
        self.normalize_angles()
        idx = torch.where(self.tensor[:, 4].abs() <= clip_angle_threshold)[0]
        sel = self.tensor[idx]
        x0 = (sel[:, 0] - sel[:, 2] / 2.0).clamp(min=0, max=width)
        y0 = (sel[:, 1] - sel[:, 3] / 2.0).clamp(min=0, max=height)
        x1 = (sel[:, 0] + sel[:, 2] / 2.0).clamp(min=0, max=width)
        y1 = (sel[:, 1] + sel[:, 3] / 2.0).clamp(min=0, max=height)
        clipped = torch.stack(
            [
                (x0 + x1) / 2.0,
                (y0 + y1) / 2.0,
                torch.minimum(sel[:, 2], x1 - x0),  # rounding must not grow a box
                torch.minimum(sel[:, 3], y1 - y0),
                sel[:, 4],
            ],
            dim=1,
        )
        self.tensor[idx] = clipped

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """Return an (N,) bool tensor: True where both width and height exceed ``threshold``."""
        return (self.tensor[:, 2] > threshold) & (self.tensor[:, 3] > threshold)

    def inside_box(self, box_size: Tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """Return an (N,) bool tensor: True for boxes whose axis-aligned bounding rectangle is
        within the (height, width) region.

        With the rectangle (x0, y0, x1, y1) and ``t = boundary_threshold``: ``x0 >= -t``,
        ``y0 >= -t``, ``x1 < width + t`` and ``y1 < height + t``.
        """
        height, width = box_size
        t = self.tensor
        theta = t[..., 4] * (math.pi / 180.0)
        cos, sin = torch.cos(theta).abs(), torch.sin(theta).abs()
        half_x = cos * t[..., 2] / 2.0 + sin * t[..., 3] / 2.0
        half_y = cos * t[..., 3] / 2.0 + sin * t[..., 2] / 2.0
        slack = boundary_threshold
        return (
            (t[..., 0] - half_x >= -slack)
            & (t[..., 1] - half_y >= -slack)
            & (t[..., 0] + half_x < width + slack)
            & (t[..., 1] + half_y < height + slack)
        )

    def get_centers(self) -> torch.Tensor:
        """Return the (N, 2) box centres as (x, y)."""
        return self.tensor[:, :2]

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale in place by ``scale_x`` along x and ``scale_y`` along y.

        Centres scale exactly. A rotated rectangle scaled unevenly becomes a parallelogram;
        it is approximated by the rectangle whose width and height are the scaled lengths of
        the box's width and height vectors and whose angle is that of the scaled height
        vector. Equal factors give the exact result (angles unchanged).
        """
        t = self.tensor
        t[:, 0] *= scale_x
        t[:, 1] *= scale_y
        theta = t[:, 4] * (math.pi / 180.0)
        cos, sin = torch.cos(theta), torch.sin(theta)
        # The width vector (cos, -sin) * w scales to (sx cos, -sy sin) * w; the height
        # vector (sin, cos) * h to (sx sin, sy cos) * h.
        t[:, 2] *= torch.sqrt((scale_x * cos) ** 2 + (scale_y * sin) ** 2)
        t[:, 3] *= torch.sqrt((scale_x * sin) ** 2 + (scale_y * cos) ** 2)
        t[:, 4] = torch.atan2(scale_x * sin, scale_y * cos) * (180.0 / math.pi)

    @classmethod
    def cat(cls, boxes_list: Sequence["RotatedBoxes"]) -> "RotatedBoxes":
        """Concatenate a list/tuple of ``RotatedBoxes`` into one (new storage); an empty list
        gives (0, 5) boxes on the CPU."""
        if not isinstance(boxes_list, (list, tuple)):
            raise TypeError(
                f"RotatedBoxes.cat expects a list or tuple of RotatedBoxes, got "
                f"{type(boxes_list)}."
            )
        if len(boxes_list) == 0:
            return cls(torch.empty(0))
        for i, b in enumerate(boxes_list):
            if not isinstance(b, RotatedBoxes):
                raise TypeError(
                    f"RotatedBoxes.cat: element {i} is a {type(b).__name__}, not RotatedBoxes."
                )
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))

    def __getitem__(self, item: Any) -> "RotatedBoxes":
        """Index the boxes; the result is always a ``RotatedBoxes`` of shape (K, 5).

        ``item`` may be an int (gives 1 box), a slice, an (N,) bool mask or a 1-D index tensor.
        The result may share storage with this object, as with tensor indexing.
        """
        if _is_integer_index(item):
            return RotatedBoxes(self.tensor[item].view(1, -1))
        selected = self.tensor[item]
        if selected.dim() != 2:
            raise IndexError(
                f"Indexing RotatedBoxes with {item!r} gave shape {tuple(selected.shape)}, not a "
                "(K, 5) matrix; index with an int, a slice, a bool mask or a 1-D index tensor."
            )
        return RotatedBoxes(selected)

    def __repr__(self) -> str:
        return "RotatedBoxes(" + str(self.tensor) + ")"


def pairwise_iou(boxes1: RotatedBoxes, boxes2: RotatedBoxes) -> torch.Tensor:
    """IoU of all N x M pairs of rotated boxes.

    Args:
        boxes1, boxes2: ``RotatedBoxes`` with N and M boxes.

    Returns:
        (N, M) float32 tensor; 0 for pairs that do not overlap and for empty boxes.
    """
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not isinstance(boxes, RotatedBoxes):
            raise ValueError(
                f"rotated_boxes.pairwise_iou: {name} must be RotatedBoxes, got "
                f"{type(boxes).__name__}; use segtron.structures.pairwise_iou for Boxes."
            )
    return pairwise_iou_rotated(boxes1.tensor, boxes2.tensor)
