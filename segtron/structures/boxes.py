"""Axis-aligned boxes: ``BoxMode`` conversions, the ``Boxes`` container and pairwise metrics.

Detectron2 path: ``detectron2.structures.boxes``.

Conventions: a box is ``(x0, y0, x1, y1)`` in absolute pixels (``BoxMode.XYXY_ABS``), stored as
float32. Width is ``x1 - x0`` and height ``y1 - y0`` (no ``+ 1``), so the area of a box is
``(x1 - x0) * (y1 - y0)``. Every operation keeps the device of its inputs.
"""

import logging
import math
from enum import IntEnum, unique
from typing import Any, List, Tuple, Union

import numpy as np
import torch
from torch import device  # (TorchScript resolves the bare name in annotations)

logger = logging.getLogger(__name__)

RawBoxType = Union[List[float], Tuple[float, ...], torch.Tensor, np.ndarray]

__all__ = [
    "BoxMode",
    "Boxes",
    "pairwise_intersection",
    "pairwise_iou",
    "pairwise_ioa",
    "pairwise_point_box_distance",
    "matched_pairwise_iou",
]


def _xywh_to_xyxy(arr: torch.Tensor) -> torch.Tensor:
    arr[:, 2] += arr[:, 0]
    arr[:, 3] += arr[:, 1]
    return arr


def _xyxy_to_xywh(arr: torch.Tensor) -> torch.Tensor:
    arr[:, 2] -= arr[:, 0]
    arr[:, 3] -= arr[:, 1]
    return arr


def _xywha_to_xyxy(arr: torch.Tensor) -> torch.Tensor:
    """Horizontal bounding rectangle of rotated boxes (cx, cy, w, h, angle in degrees, ccw)."""
    if arr.shape[-1] != 5:
        raise ValueError(
            f"BoxMode.XYWHA_ABS boxes need 5 numbers (cx, cy, w, h, angle) per box, "
            f"got boxes of shape {tuple(arr.shape)}."
        )
    in_dtype = arr.dtype
    work = arr.double()
    cx, cy, w, h, angle = work.unbind(dim=1)
    radians = angle * (math.pi / 180.0)
    abs_cos = radians.cos().abs()
    abs_sin = radians.sin().abs()
    # Extent of the rotated rectangle along the image axes.
    span_x = abs_cos * w + abs_sin * h
    span_y = abs_cos * h + abs_sin * w
    left = cx - span_x / 2.0
    top = cy - span_y / 2.0
    out = torch.stack([left, top, left + span_x, top + span_y], dim=1)
    return out.to(dtype=in_dtype)


def _xywh_to_xywha(arr: torch.Tensor) -> torch.Tensor:
    """(x0, y0, w, h) -> (cx, cy, w, h, 0): an unrotated box described by its centre."""
    in_dtype = arr.dtype
    work = arr.double()
    centre_x = work[:, 0] + work[:, 2] / 2.0
    centre_y = work[:, 1] + work[:, 3] / 2.0
    out = torch.stack(
        [centre_x, centre_y, work[:, 2], work[:, 3], torch.zeros_like(centre_x)], dim=1
    )
    return out.to(dtype=in_dtype)


@unique
class BoxMode(IntEnum):
    """How the numbers of a box are laid out.

    ``XYXY_ABS``: (x0, y0, x1, y1) in absolute pixels. ``XYWH_ABS``: (x0, y0, w, h) in absolute
    pixels. ``XYXY_REL`` / ``XYWH_REL``: the same, relative to the image size (range [0, 1]);
    these are declared for compatibility but cannot be converted. ``XYWHA_ABS``: (cx, cy, w, h,
    a) for a box rotated by ``a`` degrees counter-clockwise around its centre (cx, cy).
    """

    XYXY_ABS = 0
    XYWH_ABS = 1
    XYXY_REL = 2
    XYWH_REL = 3
    XYWHA_ABS = 4

    @staticmethod
    def convert(box: RawBoxType, from_mode: "BoxMode", to_mode: "BoxMode") -> RawBoxType:
        """Convert boxes from one ``BoxMode`` to another.

        Args:
            box: one box as a list/tuple of 4 or 5 numbers, or boxes as an (N, k) ndarray or
                Tensor (k = 4, or 5 for ``XYWHA_ABS``); a 1-D array/tensor is one box.
            from_mode, to_mode: ``BoxMode`` members (or their int values).

        Returns:
            The converted box(es), of the same kind as ``box`` (list, tuple, ndarray or Tensor on
            the same device). The input is never modified; when the modes are equal the input
            itself is returned.

        Supported: XYXY_ABS <-> XYWH_ABS, XYWHA_ABS -> XYXY_ABS (the axis-aligned bounding
        rectangle of the rotated box) and XYWH_ABS -> XYWHA_ABS (angle 0); XYXY_ABS -> XYWHA_ABS
        and XYWHA_ABS -> XYWH_ABS go through the others. Relative modes raise ``ValueError``.
        """
        from_mode = BoxMode(from_mode)
        to_mode = BoxMode(to_mode)
        if from_mode == to_mode:
            return box

        relative = (BoxMode.XYXY_REL, BoxMode.XYWH_REL)
        if from_mode in relative or to_mode in relative:
            raise ValueError(
                f"BoxMode.convert({from_mode.name} -> {to_mode.name}): relative box modes are not "
                "supported. Multiply relative coordinates by the image width/height to get "
                "absolute pixels, then convert between the *_ABS modes."
            )

        kind = type(box)
        if isinstance(box, (list, tuple)):
            if len(box) not in (4, 5):
                raise ValueError(
                    f"BoxMode.convert takes a single box as a list/tuple of 4 or 5 numbers, or an "
                    f"(N, k) array/tensor; got a {kind.__name__} of length {len(box)}."
                )
            arr = torch.tensor(box)[None, :]
        elif isinstance(box, np.ndarray):
            arr = torch.from_numpy(np.asarray(box)).clone()
        elif isinstance(box, torch.Tensor):
            arr = box.clone()
        else:
            raise TypeError(
                f"BoxMode.convert expects a list, tuple, numpy array or torch Tensor, got {kind}."
            )

        squeeze_back = arr.dim() == 1
        if squeeze_back:
            arr = arr[None, :]
        if arr.dim() != 2 or arr.shape[1] not in (4, 5):
            raise ValueError(
                f"BoxMode.convert expects boxes of shape (N, 4) or (N, 5), got {tuple(arr.shape)}."
            )

        pair = (from_mode, to_mode)
        if pair == (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS):
            arr = _xywh_to_xyxy(arr)
        elif pair == (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):
            arr = _xyxy_to_xywh(arr)
        elif pair == (BoxMode.XYWHA_ABS, BoxMode.XYXY_ABS):
            arr = _xywha_to_xyxy(arr)
        elif pair == (BoxMode.XYWH_ABS, BoxMode.XYWHA_ABS):
            arr = _xywh_to_xywha(arr)
        elif pair == (BoxMode.XYXY_ABS, BoxMode.XYWHA_ABS):
            arr = _xywh_to_xywha(_xyxy_to_xywh(arr))
        elif pair == (BoxMode.XYWHA_ABS, BoxMode.XYWH_ABS):
            arr = _xyxy_to_xywh(_xywha_to_xyxy(arr))
        else:  # pragma: no cover - every absolute pair is handled above
            raise NotImplementedError(f"Conversion {from_mode.name} -> {to_mode.name}")

        if isinstance(box, (list, tuple)):
            return kind(arr.flatten().tolist())
        if squeeze_back:
            arr = arr[0]
        if isinstance(box, np.ndarray):
            return arr.numpy()
        return arr


def _is_integer_index(item: Any) -> bool:
    """True for an int, numpy integer or 0-d integer tensor (an index that selects one row)."""
    if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
        return True
    return (
        isinstance(item, torch.Tensor)
        and item.dim() == 0
        and not item.is_floating_point()
        and item.dtype != torch.bool
    )


class Boxes:
    """N axis-aligned boxes as a float32 (N, 4) tensor of (x0, y0, x1, y1) absolute pixels.

    Attribute ``tensor`` holds the data. Behaves like a tensor of boxes: indexing, ``len``,
    iteration over (4,) rows, ``.to(device)`` and ``.device``.
    """

    def __init__(self, tensor: torch.Tensor):
        """Args:
            tensor: (N, 4) boxes as a Tensor (kept on its device, cast to float32 without a copy
                when already float32), ndarray or nested list (placed on the CPU). An input with
                no elements becomes shape (0, 4). (Annotated ``Tensor`` for TorchScript, which
                compiles this class: scripted code passes tensors.)
        """
        if isinstance(tensor, torch.Tensor):
            data = tensor.to(dtype=torch.float32)
        else:
            data = torch.as_tensor(tensor, dtype=torch.float32, device=torch.device("cpu"))
        if data.numel() == 0:
            # -1, not 0: a model traced on an image with no boxes keeps this reshape, which
            # must stay valid (a no-op) for (N, 4) boxes of other images.
            data = data.reshape((-1, 4))
        if data.dim() != 2 or data.shape[-1] != 4:
            if not torch.jit.is_scripting():
                raise ValueError(
                    f"Boxes expects an (N, 4) tensor of (x0, y0, x1, y1) rows, got shape "
                    f"{tuple(data.shape)}."
                )
            raise ValueError("Boxes expects an (N, 4) tensor of (x0, y0, x1, y1) rows.")
        self.tensor = data

    def clone(self) -> "Boxes":
        """Return a copy whose tensor does not share storage with this one."""
        return Boxes(self.tensor.clone())

    @torch.jit.unused  # (scripted code moves ``Boxes(boxes.tensor.to(device))``)
    def to(self, *args: Any, **kwargs: Any) -> "Boxes":
        """Return a copy on another device (arguments as ``Tensor.to``); boxes stay float32."""
        return Boxes(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> device:
        """Device of the box tensor."""
        return self.tensor.device

    def area(self) -> torch.Tensor:
        """Return the (N,) areas ``(x1 - x0) * (y1 - y0)`` (negative for inverted boxes)."""
        t = self.tensor
        return (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])

    def clip(self, box_size: Tuple[int, int], check_finite: bool = True) -> None:
        """Clip in place: x to [0, width], y to [0, height].

        Args:
            box_size: (height, width) of the clipping region, e.g. the image size.
            check_finite: raise ``ValueError`` if any coordinate is NaN or infinite (a
                device-to-host sync on GPUs). Callers that drop non-finite boxes themselves
                pass False: NaN then stays NaN and an infinity becomes the bound.
        """
        if check_finite and not bool(torch.isfinite(self.tensor).all()):
            raise ValueError(
                "Boxes.clip: the box tensor contains NaN or infinite values; check the box "
                "regression (exploding deltas) or the annotations that produced these boxes."
            )
        height, width = box_size
        t = self.tensor
        t[:, 0].clamp_(min=0, max=width)
        t[:, 1].clamp_(min=0, max=height)
        t[:, 2].clamp_(min=0, max=width)
        t[:, 3].clamp_(min=0, max=height)

    def nonempty(self, threshold: float = 0.0) -> torch.Tensor:
        """Return an (N,) bool tensor: True where both width and height exceed ``threshold``."""
        t = self.tensor
        return ((t[:, 2] - t[:, 0]) > threshold) & ((t[:, 3] - t[:, 1]) > threshold)

    def inside_box(self, box_size: Tuple[int, int], boundary_threshold: int = 0) -> torch.Tensor:
        """Return an (N,) bool tensor: True for boxes within the (height, width) region.

        A box counts as inside when ``x0 >= -t``, ``y0 >= -t``, ``x1 < width + t`` and
        ``y1 < height + t`` with ``t = boundary_threshold``.
        """
        height, width = box_size
        t = self.tensor
        slack = boundary_threshold
        return (
            (t[..., 0] >= -slack)
            & (t[..., 1] >= -slack)
            & (t[..., 2] < width + slack)
            & (t[..., 3] < height + slack)
        )

    def get_centers(self) -> torch.Tensor:
        """Return the (N, 2) box centres as (x, y)."""
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def scale(self, scale_x: float, scale_y: float) -> None:
        """Scale in place: x coordinates by ``scale_x`` and y coordinates by ``scale_y``."""
        self.tensor[:, 0::2] *= scale_x
        self.tensor[:, 1::2] *= scale_y

    @classmethod
    def cat(cls, boxes_list: List["Boxes"]) -> "Boxes":
        """Concatenate a list/tuple of ``Boxes`` into one (new storage); an empty list gives
        (0, 4) boxes on the CPU."""
        if not torch.jit.is_scripting():
            if not isinstance(boxes_list, (list, tuple)):
                raise TypeError(
                    f"Boxes.cat expects a list or tuple of Boxes, got {type(boxes_list)}.")
            for i, b in enumerate(boxes_list):
                if not isinstance(b, Boxes):
                    raise TypeError(f"Boxes.cat: element {i} is a {type(b).__name__}, not Boxes.")
        if len(boxes_list) == 0:
            return cls(torch.empty(0))
        return cls(torch.cat([b.tensor for b in boxes_list], dim=0))

    def __getitem__(self, item) -> "Boxes":
        """Index the boxes; the result is always a ``Boxes`` of shape (K, 4).

        ``item`` may be an int (gives 1 box), a slice, an (N,) bool mask or a 1-D index tensor
        (in TorchScript: a tensor). The result may share storage with this object, as with
        tensor indexing.
        """
        if not torch.jit.is_scripting():
            if _is_integer_index(item):
                return Boxes(self.tensor[item].view(1, -1))
        selected = self.tensor[item]
        if selected.dim() != 2:
            if not torch.jit.is_scripting():
                raise IndexError(
                    f"Indexing Boxes with {repr(item)} gave shape {tuple(selected.shape)}, not a "
                    "(K, 4) matrix; index with an int, a slice, a bool mask or a 1-D index "
                    "tensor."
                )
            raise IndexError("Indexing Boxes did not give a (K, 4) matrix.")
        return Boxes(selected)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    @torch.jit.unused
    def __iter__(self):
        """Yield each box as a (4,) tensor."""
        yield from self.tensor

    def __repr__(self) -> str:
        return "Boxes(" + str(self.tensor) + ")"


def _box_tensor(boxes: Union[Boxes, torch.Tensor], name: str) -> torch.Tensor:
    if isinstance(boxes, Boxes):
        return boxes.tensor
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 2 and boxes.shape[-1] == 4:
        return boxes
    raise TypeError(f"{name} must be Boxes or an (N, 4) tensor, got {type(boxes).__name__}.")


def _areas(t: torch.Tensor) -> torch.Tensor:
    return (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])


def pairwise_intersection(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection areas of all pairs.

    Args:
        boxes1, boxes2: ``Boxes`` with N and M boxes (XYXY).

    Returns:
        (N, M) float tensor; 0 where boxes do not overlap.
    """
    a = _box_tensor(boxes1, "boxes1")
    b = _box_tensor(boxes2, "boxes2")
    lower = torch.max(a[:, None, :2], b[None, :, :2])
    upper = torch.min(a[:, None, 2:], b[None, :, 2:])
    return (upper - lower).clamp(min=0).prod(dim=2)


def pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection over union of all pairs.

    Args:
        boxes1, boxes2: ``Boxes`` with N and M boxes (XYXY).

    Returns:
        (N, M) float tensor; pairs with no intersection (including empty boxes) are 0.
    """
    a = _box_tensor(boxes1, "boxes1")
    b = _box_tensor(boxes2, "boxes2")
    inter = pairwise_intersection(a, b)
    union = _areas(a)[:, None] + _areas(b)[None, :] - inter
    return torch.where(inter > 0, inter / union, torch.zeros_like(inter))


def pairwise_ioa(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """Intersection over the area of the second box, for all pairs.

    Args:
        boxes1, boxes2: ``Boxes`` with N and M boxes (XYXY).

    Returns:
        (N, M) float tensor ``inter(i, j) / area(boxes2[j])``; 0 where there is no intersection.
    """
    a = _box_tensor(boxes1, "boxes1")
    b = _box_tensor(boxes2, "boxes2")
    inter = pairwise_intersection(a, b)
    return torch.where(inter > 0, inter / _areas(b)[None, :], torch.zeros_like(inter))


def pairwise_point_box_distance(points: torch.Tensor, boxes: Boxes) -> torch.Tensor:
    """Signed distances from each point to the four sides of each box.

    Args:
        points: (N, 2) tensor of (x, y).
        boxes: ``Boxes`` with M boxes.

    Returns:
        (N, M, 4) tensor of (x - x0, y - y0, x1 - x, y1 - y): all positive iff the point lies
        strictly inside the box.
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(
            f"points must be an (N, 2) tensor of (x, y), got "
            f"{tuple(points.shape) if isinstance(points, torch.Tensor) else type(points)}."
        )
    b = _box_tensor(boxes, "boxes")
    px = points[:, 0:1]  # (N, 1)
    py = points[:, 1:2]
    x0, y0, x1, y1 = (b[:, k][None, :] for k in range(4))  # each (1, M)
    return torch.stack([px - x0, py - y0, x1 - px, y1 - py], dim=2)


def matched_pairwise_iou(boxes1: Boxes, boxes2: Boxes) -> torch.Tensor:
    """IoU of corresponding boxes: ``iou(boxes1[i], boxes2[i])``.

    Args:
        boxes1, boxes2: ``Boxes`` of equal length N.

    Returns:
        (N,) float tensor. As in Detectron2 there is no guard for a zero union, so two
        zero-area boxes give NaN.
    """
    a = _box_tensor(boxes1, "boxes1")
    b = _box_tensor(boxes2, "boxes2")
    if len(a) != len(b):
        raise ValueError(
            f"matched_pairwise_iou needs the same number of boxes on both sides, got {len(a)} "
            f"and {len(b)}; use pairwise_iou for all pairs."
        )
    lower = torch.max(a[:, :2], b[:, :2])
    upper = torch.min(a[:, 2:], b[:, 2:])
    wh = (upper - lower).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    return inter / (_areas(a) + _areas(b) - inter)
