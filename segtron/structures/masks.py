"""Instance masks: bitmaps (``BitMasks``), polygons (``PolygonMasks``) and per-box mask
probabilities (``ROIMasks``), plus polygon rasterisation helpers.

Detectron2 path: ``detectron2.structures.masks``.

Polygons are flat float64 arrays ``[x0, y0, x1, y1, ...]`` in absolute image pixels, where pixel
(row r, col c) covers ``[c, c + 1) x [r, r + 1)``. Rasterisation uses the COCO API
(``pycocotools.mask``), exactly as COCO evaluation does.
"""

import itertools
import logging
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch
from torchvision.ops import roi_align

from .boxes import Boxes, _is_integer_index

logger = logging.getLogger(__name__)

__all__ = [
    "polygon_area",
    "polygons_to_bitmask",
    "rasterize_polygons_within_box",
    "BitMasks",
    "PolygonMasks",
    "ROIMasks",
]


def _check_polygon(polygon: np.ndarray, where: str) -> None:
    if polygon.ndim != 1 or len(polygon) % 2 != 0 or len(polygon) < 6:
        raise ValueError(
            f"Cannot create a polygon from {polygon.size} coordinates ({where}): a polygon is a "
            "flat list [x0, y0, x1, y1, ...] of an even number of values with at least 3 points "
            "(6 values). Drop degenerate polygons from the annotation."
        )


def polygon_area(x: np.ndarray, y: np.ndarray) -> float:
    """Area of a simple polygon by the shoelace formula.

    Args:
        x, y: (K,) vertex coordinates in order (either orientation).

    Returns:
        The non-negative area, in squared pixel units.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    twice_signed = np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))
    return 0.5 * np.abs(twice_signed)


def polygons_to_bitmask(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise the union of polygons with the COCO API.

    Args:
        polygons: polygons of one instance, each a flat (2K,) array of absolute x, y.
        height, width: output size in pixels.

    Returns:
        (height, width) bool ndarray; all False when ``polygons`` is empty.
    """
    if len(polygons) == 0:
        return np.zeros((height, width), dtype=bool)
    arrays = []
    for i, p in enumerate(polygons):
        arr = np.asarray(p, dtype=np.float64).reshape(-1)
        _check_polygon(arr, f"polygon {i}")
        arrays.append(arr)
    rles = mask_util.frPyObjects(arrays, int(height), int(width))
    merged = mask_util.merge(rles)
    return mask_util.decode(merged).astype(bool)


def rasterize_polygons_within_box(
    polygons: Sequence[np.ndarray], box: np.ndarray, mask_size: int
) -> torch.Tensor:
    """Rasterise an instance's polygons inside ``box`` at ``mask_size x mask_size``.

    Used for Mask R-CNN training targets: the polygons are shifted so the box's top-left is the
    origin, scaled by ``mask_size / box_width`` in x and ``mask_size / box_height`` in y (box
    sides below 0.1 px count as 0.1), then rasterised.

    Args:
        polygons: polygons of one instance, flat (2K,) arrays of absolute x, y (not modified).
        box: (4,) box (x0, y0, x1, y1) as ndarray (or CPU tensor).
        mask_size: side M of the output.

    Returns:
        (M, M) bool tensor on the CPU.
    """
    if isinstance(box, torch.Tensor):
        box = box.detach().cpu().numpy()
    box = np.asarray(box)
    x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
    ratio_x = mask_size / max(x1 - x0, 0.1)
    ratio_y = mask_size / max(y1 - y0, 0.1)
    local = []
    for p in polygons:
        q = np.array(p, dtype=np.float64).reshape(-1)
        q[0::2] = (q[0::2] - x0) * ratio_x
        q[1::2] = (q[1::2] - y0) * ratio_y
        local.append(q)
    return torch.from_numpy(polygons_to_bitmask(local, mask_size, mask_size))


def _boxes_tensor(boxes: Union[Boxes, torch.Tensor], count: int, who: str) -> torch.Tensor:
    if isinstance(boxes, Boxes):
        boxes = boxes.tensor
    if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{who}: boxes must be an (N, 4) tensor or Boxes, got {boxes!r:.80}.")
    if len(boxes) != count:
        raise ValueError(f"{who}: got {len(boxes)} boxes for {count} masks; pass one box per mask.")
    return boxes


class BitMasks:
    """Instance masks of one image as a bool (N, H, W) tensor (attribute ``tensor``).

    Indexing with a 1-D integer tensor (how ROI heads copy each proposal's ground-truth mask)
    is lazy: the result remembers the source masks and the index, and only gathers the
    (K, H, W) copy if ``tensor`` is read. ``crop_and_resize`` pools straight from the source.
    """

    def __init__(self, tensor: Union[torch.Tensor, np.ndarray]):
        """Args:
            tensor: (N, H, W) masks; a Tensor keeps its device, anything else goes to the CPU.
                Converted to bool.
        """
        if isinstance(tensor, torch.Tensor):
            data = tensor.to(dtype=torch.bool)
        else:
            data = torch.as_tensor(np.asarray(tensor), dtype=torch.bool)
        if data.dim() != 3:
            raise ValueError(
                f"BitMasks expects an (N, H, W) tensor, got shape {tuple(data.shape)}; use "
                "tensor[None] for a single mask or torch.empty(0, H, W) for none."
            )
        self.image_size = data.shape[1:]
        self._tensor: Optional[torch.Tensor] = data
        self._source: Optional[torch.Tensor] = None
        self._index: Optional[torch.Tensor] = None

    @classmethod
    def _gathered(cls, source: torch.Tensor, index: torch.Tensor) -> "BitMasks":
        """``BitMasks(source[index])`` without gathering until ``tensor`` is read."""
        masks = cls.__new__(cls)
        masks.image_size = source.shape[1:]
        masks._tensor, masks._source, masks._index = None, source, index
        return masks

    @property
    def tensor(self) -> torch.Tensor:
        """The (N, H, W) bool masks (gathered on first access after a lazy index)."""
        if self._tensor is None:
            self._tensor = self._source[self._index]
            self._source = self._index = None
        return self._tensor

    @tensor.setter
    def tensor(self, value: torch.Tensor) -> None:
        self._tensor, self._source, self._index = value, None, None

    def _source_and_index(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(source masks (M, H, W), index (N,)) such that ``tensor == source[index]``."""
        if self._tensor is None:
            return self._source, self._index
        return self._tensor, torch.arange(self._tensor.shape[0], device=self._tensor.device)

    def to(self, *args: Any, **kwargs: Any) -> "BitMasks":
        """Return a copy moved as by ``Tensor.to`` (stays bool)."""
        return BitMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        """Device of the mask tensor."""
        return (self._source if self._tensor is None else self._tensor).device

    def __getitem__(self, item: Any) -> "BitMasks":
        """Index masks (int -> 1 mask, slice, bool mask or index tensor); always (K, H, W)."""
        if (isinstance(item, torch.Tensor) and item.dim() == 1 and not item.is_floating_point()
                and item.dtype != torch.bool):
            source, index = self._source_and_index()
            return BitMasks._gathered(source, index[item.to(index.device)])
        if _is_integer_index(item):
            return BitMasks(self.tensor[item].unsqueeze(0))
        selected = self.tensor[item]
        if selected.dim() != 3:
            raise IndexError(
                f"Indexing BitMasks with {item!r} gave shape {tuple(selected.shape)}, not "
                "(K, H, W); index with an int, a slice, a bool mask or a 1-D index tensor."
            )
        return BitMasks(selected)

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yield each mask as an (H, W) bool tensor."""
        yield from self.tensor

    def __len__(self) -> int:
        return (self._index if self._tensor is None else self._tensor).shape[0]

    def __repr__(self) -> str:
        return f"BitMasks(num_instances={len(self)})"

    def nonempty(self) -> torch.Tensor:
        """Return an (N,) bool tensor: True for masks with at least one True pixel."""
        return self.tensor.flatten(1).any(dim=1)

    def get_bounding_boxes(self) -> Boxes:
        """Tight boxes around the True pixels, on the masks' device.

        Returns:
            ``Boxes`` (N, 4) with x0 = first column, x1 = last column + 1 (same for y);
            (0, 0, 0, 0) for empty masks.
        """
        n = len(self)
        boxes = torch.zeros((n, 4), dtype=torch.float32, device=self.device)
        if self.tensor.numel() == 0:
            return Boxes(boxes)
        cols = self.tensor.any(dim=1).to(torch.uint8)  # (N, W)
        rows = self.tensor.any(dim=2).to(torch.uint8)  # (N, H)
        width, height = cols.shape[1], rows.shape[1]
        # argmax returns the first maximal index, so on a 0/1 vector it finds the first 1.
        first_col = cols.argmax(dim=1)
        last_col = width - 1 - cols.flip(1).argmax(dim=1)
        first_row = rows.argmax(dim=1)
        last_row = height - 1 - rows.flip(1).argmax(dim=1)
        tight = torch.stack([first_col, first_row, last_col + 1, last_row + 1], dim=1).float()
        keep = self.nonempty()[:, None]
        return Boxes(torch.where(keep, tight, boxes))

    @staticmethod
    def from_polygon_masks(
        polygon_masks: Union["PolygonMasks", List[List[np.ndarray]]], height: int, width: int
    ) -> "BitMasks":
        """Rasterise polygons (``PolygonMasks`` or list per instance of polygon arrays) into
        (N, height, width) ``BitMasks`` on the CPU."""
        if isinstance(polygon_masks, PolygonMasks):
            polygon_masks = polygon_masks.polygons
        masks = [polygons_to_bitmask(p, height, width) for p in polygon_masks]
        if len(masks) == 0:
            return BitMasks(torch.empty((0, height, width), dtype=torch.bool))
        return BitMasks(torch.from_numpy(np.stack(masks, axis=0)))

    @staticmethod
    def from_roi_masks(
        roi_masks: "ROIMasks",
        height: int,
        width: int,
        boxes: Union[Boxes, torch.Tensor, None] = None,
        threshold: float = 0.5,
    ) -> "BitMasks":
        """Paste per-box mask probabilities into (N, height, width) ``BitMasks``.

        Args:
            roi_masks: ``ROIMasks`` with N (M, M) masks.
            height, width: image size.
            boxes: (N, 4) boxes the masks belong to (required; see ``ROIMasks.to_bitmasks``).
            threshold: probability at or above which a pixel is in the mask.
        """
        if boxes is None:
            raise TypeError(
                "BitMasks.from_roi_masks needs the boxes the ROI masks belong to: call "
                "BitMasks.from_roi_masks(roi_masks, height, width, boxes=...) or "
                "roi_masks.to_bitmasks(boxes, height, width)."
            )
        return roi_masks.to_bitmasks(boxes, height, width, threshold=threshold)

    def crop_and_resize(self, boxes: Union[torch.Tensor, Boxes], mask_size: int) -> torch.Tensor:
        """Crop each mask to its box and resample it to ``mask_size x mask_size``.

        Each mask (as float) is ROIAligned to its box (``aligned=True``, adaptive sampling) and
        thresholded at >= 0.5 -- the Mask R-CNN training target.

        Args:
            boxes: (N, 4) XYXY boxes, one per mask.
            mask_size: side M of the output.

        Returns:
            (N, M, M) bool tensor on the masks' device.
        """
        boxes = _boxes_tensor(boxes, len(self), "BitMasks.crop_and_resize")
        # Pool from the source masks with each ROI's batch index pointing at its mask: no
        # per-box copy of a full-image mask (after a lazy index the source is just the gt).
        source, index = self._source_and_index()
        device = source.device
        batch_index = index.to(device=device, dtype=torch.float32)[:, None]
        rois = torch.cat([batch_index, boxes.to(device=device, dtype=torch.float32)], dim=1)
        pooled = roi_align(
            source.to(dtype=torch.float32)[:, None],
            rois,
            output_size=(mask_size, mask_size),
            spatial_scale=1.0,
            sampling_ratio=0,
            aligned=True,
        )
        return pooled.squeeze(1) >= 0.5

    @staticmethod
    def cat(bitmasks_list: Sequence["BitMasks"]) -> "BitMasks":
        """Concatenate a non-empty list of ``BitMasks`` of the same (H, W)."""
        if not isinstance(bitmasks_list, (list, tuple)) or len(bitmasks_list) == 0:
            raise ValueError("BitMasks.cat expects a non-empty list of BitMasks.")
        for i, m in enumerate(bitmasks_list):
            if not isinstance(m, BitMasks):
                raise TypeError(f"BitMasks.cat: element {i} is a {type(m).__name__}.")
        return type(bitmasks_list[0])(torch.cat([m.tensor for m in bitmasks_list], dim=0))


class PolygonMasks:
    """Instance masks of one image as polygons.

    Attribute ``polygons``: list with one entry per instance; each entry is a list of float64
    (2K,) arrays ``[x0, y0, x1, y1, ...]`` in absolute pixels (several polygons form one
    instance, e.g. an occluded object). Always held on the CPU.
    """

    def __init__(self, polygons: List[List[Union[torch.Tensor, np.ndarray, List[float]]]]):
        """Args:
            polygons: list per instance of list of polygons (Tensor, ndarray or list of
                floats), each with an even number >= 6 of coordinates.
        """
        if not isinstance(polygons, list):
            raise ValueError(
                "Cannot create PolygonMasks: expected a list (one entry per instance) of lists of "
                f"polygons, got {type(polygons).__name__}."
            )
        self.polygons: List[List[np.ndarray]] = []
        for i, per_instance in enumerate(polygons):
            if not isinstance(per_instance, list):
                raise ValueError(
                    f"Cannot create PolygonMasks: instance {i} must be a list of polygons, got "
                    f"{type(per_instance).__name__}."
                )
            converted = []
            for j, poly in enumerate(per_instance):
                if isinstance(poly, torch.Tensor):
                    poly = poly.detach().cpu().numpy()
                arr = np.asarray(poly).astype(np.float64)
                if arr.ndim > 1:
                    arr = arr.reshape(-1)
                _check_polygon(arr, f"instance {i}, polygon {j}")
                converted.append(arr)
            self.polygons.append(converted)

    def to(self, *args: Any, **kwargs: Any) -> "PolygonMasks":
        """No-op: polygons stay on the CPU. Returns ``self``."""
        return self

    @property
    def device(self) -> torch.device:
        """Always the CPU."""
        return torch.device("cpu")

    def get_bounding_boxes(self) -> Boxes:
        """Tight boxes around each instance's polygon vertices.

        Returns:
            ``Boxes`` (N, 4) on the CPU. As in Detectron2, x1/y1 are at least 0 (the maximum is
            started from 0); an instance with no polygons gets (0, 0, 0, 0).
        """
        boxes = torch.zeros((len(self.polygons), 4), dtype=torch.float32)
        for i, per_instance in enumerate(self.polygons):
            if len(per_instance) == 0:
                continue
            xy = np.concatenate([p.reshape(-1, 2) for p in per_instance], axis=0)
            coords = torch.from_numpy(xy).to(torch.float32)
            boxes[i, :2] = coords.min(dim=0).values
            boxes[i, 2:] = coords.max(dim=0).values.clamp(min=0)
        return Boxes(boxes)

    def nonempty(self) -> torch.Tensor:
        """Return an (N,) bool tensor: True for instances with at least one polygon."""
        return torch.tensor([len(p) > 0 for p in self.polygons], dtype=torch.bool)

    def __getitem__(self, item: Any) -> "PolygonMasks":
        """Select instances by int, slice, list of ints, or bool / integer tensor (or array)."""
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            selected = [self.polygons[item]]
        elif isinstance(item, slice):
            selected = self.polygons[item]
        else:
            if isinstance(item, torch.Tensor):
                item = item.detach().cpu().numpy()
            index = np.asarray(item)
            if index.dtype == bool:
                if index.ndim != 1 or len(index) != len(self.polygons):
                    raise IndexError(
                        f"PolygonMasks: bool mask of shape {index.shape} does not match "
                        f"{len(self.polygons)} instances."
                    )
                index = np.nonzero(index)[0]
            elif index.size == 0:
                index = index.astype(np.int64)
            elif not np.issubdtype(index.dtype, np.integer):
                raise ValueError(
                    f"PolygonMasks cannot be indexed with dtype {index.dtype}; use ints, a slice, "
                    "a bool mask or an integer tensor."
                )
            selected = [self.polygons[int(i)] for i in index.reshape(-1)]
        return PolygonMasks(selected)

    def __iter__(self) -> Iterator[List[np.ndarray]]:
        """Iterate over instances; each item is that instance's list of polygon arrays."""
        return iter(self.polygons)

    def __len__(self) -> int:
        return len(self.polygons)

    def __repr__(self) -> str:
        return f"PolygonMasks(num_instances={len(self)})"

    def crop_and_resize(self, boxes: Union[torch.Tensor, Boxes], mask_size: int) -> torch.Tensor:
        """Rasterise each instance inside its box at ``mask_size x mask_size``
        (``rasterize_polygons_within_box``).

        Args:
            boxes: (N, 4) XYXY boxes, one per instance.
            mask_size: side M of the output.

        Returns:
            (N, M, M) bool tensor on the boxes' device.
        """
        boxes = _boxes_tensor(boxes, len(self), "PolygonMasks.crop_and_resize")
        device = boxes.device
        if len(boxes) == 0:
            return torch.empty((0, mask_size, mask_size), dtype=torch.bool, device=device)
        boxes_np = boxes.detach().to("cpu").numpy()
        crops = [
            rasterize_polygons_within_box(poly, box, mask_size)
            for poly, box in zip(self.polygons, boxes_np)
        ]
        return torch.stack(crops, dim=0).to(device=device)

    def area(self) -> torch.Tensor:
        """Return the (N,) float64 sum of each instance's polygon areas (shoelace; overlaps
        between an instance's polygons are counted twice)."""
        areas = [
            sum(float(polygon_area(p[0::2], p[1::2])) for p in per_instance)
            for per_instance in self.polygons
        ]
        return torch.tensor(areas, dtype=torch.float64)

    @staticmethod
    def cat(polymasks_list: Sequence["PolygonMasks"]) -> "PolygonMasks":
        """Concatenate a non-empty list of ``PolygonMasks``."""
        if not isinstance(polymasks_list, (list, tuple)) or len(polymasks_list) == 0:
            raise ValueError("PolygonMasks.cat expects a non-empty list of PolygonMasks.")
        for i, m in enumerate(polymasks_list):
            if not isinstance(m, PolygonMasks):
                raise TypeError(f"PolygonMasks.cat: element {i} is a {type(m).__name__}.")
        return type(polymasks_list[0])(
            list(itertools.chain.from_iterable(m.polygons for m in polymasks_list))
        )


class ROIMasks:
    """Per-box mask probabilities as a float (N, M, M) tensor (attribute ``tensor``): mask i
    covers box i of the same image, resampled to M x M (the mask head's output)."""

    def __init__(self, tensor: torch.Tensor):
        """Args:
            tensor: (N, M, M) float tensor of probabilities in [0, 1].
        """
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 3:
            raise ValueError(
                "ROIMasks expects an (N, M, M) tensor of per-box mask probabilities, got "
                f"{tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)}."
            )
        self.tensor = tensor

    def to(self, *args: Any, **kwargs: Any) -> "ROIMasks":
        """Return a copy converted as by ``Tensor.to``."""
        return ROIMasks(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        """Device of the mask tensor."""
        return self.tensor.device

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def __getitem__(self, item: Any) -> "ROIMasks":
        """Index masks (int -> 1 mask, slice, bool mask or index tensor); always (K, M, M)."""
        if _is_integer_index(item):
            return ROIMasks(self.tensor[item].unsqueeze(0))
        selected = self.tensor[item]
        if selected.dim() != 3:
            raise IndexError(
                f"Indexing ROIMasks with {item!r} gave shape {tuple(selected.shape)}, not "
                "(K, M, M)."
            )
        return ROIMasks(selected)

    def __repr__(self) -> str:
        return f"ROIMasks(num_instances={len(self)})"

    def to_bitmasks(
        self, boxes: Union[torch.Tensor, Boxes], height: int, width: int, threshold: float = 0.5
    ) -> BitMasks:
        """Paste each mask into its box of a (height, width) image and threshold it.

        Args:
            boxes: (N, 4) XYXY boxes, one per mask.
            height, width: image size.
            threshold: probability at or above which a pixel is in the mask.

        Returns:
            ``BitMasks`` (N, height, width) on the masks' device.
        """
        # Imported here: segtron.layers depends on segtron.structures, not the other way round.
        from segtron.layers.mask_ops import paste_masks_in_image

        boxes = _boxes_tensor(boxes, len(self), "ROIMasks.to_bitmasks")
        pasted = paste_masks_in_image(self.tensor, boxes, (height, width), threshold=threshold)
        return BitMasks(pasted)
