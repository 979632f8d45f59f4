"""Keypoint annotations (``Keypoints``) and the heatmap encoding / decoding of Keypoint R-CNN.

Detectron2 path: ``detectron2.structures.keypoints``.

Discrete/continuous convention (Heckbert 1990): heatmap cell ``d`` covers the continuous range
``[d, d + 1)`` and its centre is ``d + 0.5``.
"""

import logging
from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch.nn import functional as F

from .boxes import Boxes, _is_integer_index

logger = logging.getLogger(__name__)

__all__ = ["Keypoints", "heatmaps_to_keypoints"]


class Keypoints:
    """Keypoints of N instances as a float32 (N, K, 3) tensor of (x, y, visibility).

    Coordinates are absolute pixels. Visibility follows COCO: 0 = not labelled (x = y = 0),
    1 = labelled but not visible, 2 = labelled and visible.
    """

    def __init__(self, keypoints: Union[torch.Tensor, np.ndarray, List[List[List[float]]]]):
        """Args:
            keypoints: (N, K, 3) Tensor (keeps its device), ndarray or nested list (CPU).
                An input with no elements and fewer than 3 dims becomes (0, 0, 3).
        """
        if isinstance(keypoints, torch.Tensor):
            data = keypoints.to(dtype=torch.float32)
        else:
            data = torch.as_tensor(np.asarray(keypoints, dtype=np.float32))
        if data.numel() == 0 and data.dim() < 3:
            data = data.reshape((0, 0, 3))
        if data.dim() != 3 or data.shape[2] != 3:
            raise ValueError(
                f"Keypoints expects an (N, K, 3) tensor of (x, y, visibility), got shape "
                f"{tuple(data.shape)}."
            )
        self.tensor = data

    def __len__(self) -> int:
        return self.tensor.size(0)

    def to(self, *args: Any, **kwargs: Any) -> "Keypoints":
        """Return a copy converted as by ``Tensor.to``."""
        return type(self)(self.tensor.to(*args, **kwargs))

    @property
    def device(self) -> torch.device:
        """Device of the keypoint tensor."""
        return self.tensor.device

    def to_heatmap(
        self, boxes: Union[torch.Tensor, Boxes], heatmap_size: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode the keypoints as cell indices of a ``heatmap_size``^2 grid over each box.

        Args:
            boxes: (N, 4) XYXY boxes, one per instance.
            heatmap_size: side S of the heatmap.

        Returns:
            (heatmaps, valid): (N, K) int64 flat cell index ``row * S + col`` (0 where not
            valid) and (N, K) bool, True for visible keypoints inside their box.
        """
        if isinstance(boxes, Boxes):
            boxes = boxes.tensor
        return _keypoints_to_heatmap(self.tensor, boxes, heatmap_size)

    def __getitem__(self, item: Any) -> "Keypoints":
        """Index instances (int -> 1 instance, slice, bool mask or index tensor); always
        (N', K, 3)."""
        if _is_integer_index(item):
            return Keypoints(self.tensor[item].unsqueeze(0))
        selected = self.tensor[item]
        if selected.dim() != 3:
            raise IndexError(
                f"Indexing Keypoints with {item!r} gave shape {tuple(selected.shape)}, not "
                "(N, K, 3)."
            )
        return Keypoints(selected)

    def __repr__(self) -> str:
        return f"Keypoints(num_instances={len(self)})"

    @staticmethod
    def cat(keypoints_list: Sequence["Keypoints"]) -> "Keypoints":
        """Concatenate a non-empty list of ``Keypoints`` with the same K."""
        if not isinstance(keypoints_list, (list, tuple)) or len(keypoints_list) == 0:
            raise ValueError("Keypoints.cat expects a non-empty list of Keypoints.")
        for i, k in enumerate(keypoints_list):
            if not isinstance(k, Keypoints):
                raise TypeError(f"Keypoints.cat: element {i} is a {type(k).__name__}.")
        return type(keypoints_list[0])(torch.cat([k.tensor for k in keypoints_list], dim=0))


def _keypoints_to_heatmap(
    keypoints: torch.Tensor, rois: torch.Tensor, heatmap_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Map keypoints to discrete cells of a ``heatmap_size`` x ``heatmap_size`` grid per roi.

    The half-open roi range [x0, x1) maps onto cells 0..S-1: ``col = floor((x - x0) * S /
    (x1 - x0))`` (same for rows); a keypoint exactly on the right (bottom) edge goes to the last
    column (row).

    Args:
        keypoints: (N, K, 3) tensor of (x, y, visibility).
        rois: (N, 4) XYXY boxes.
        heatmap_size: side S of the grid.

    Returns:
        heatmaps: (N, K) int64 flat index ``row * S + col``, 0 where not valid.
        valid: (N, K) bool, True where the keypoint is visible (v > 0) and its cell is inside
            the grid.
    """
    if len(rois) != len(keypoints):
        raise ValueError(
            f"_keypoints_to_heatmap: {len(keypoints)} keypoint instances but {len(rois)} rois; "
            "pass one roi per instance."
        )
    num_kpts = keypoints.shape[1]
    if rois.numel() == 0:
        empty = torch.zeros((0, num_kpts), dtype=torch.int64, device=keypoints.device)
        return empty, empty.to(torch.bool)

    left = rois[:, 0:1]
    top = rois[:, 1:2]
    right = rois[:, 2:3]
    bottom = rois[:, 3:4]
    scale_x = heatmap_size / (rois[:, 2] - rois[:, 0])
    scale_y = heatmap_size / (rois[:, 3] - rois[:, 1])

    x = keypoints[..., 0]
    y = keypoints[..., 1]
    col = ((x - left) * scale_x[:, None]).floor().long()
    row = ((y - top) * scale_y[:, None]).floor().long()
    last = heatmap_size - 1
    col = torch.where(x == right, torch.full_like(col, last), col)
    row = torch.where(y == bottom, torch.full_like(row, last), row)

    inside = (col >= 0) & (row >= 0) & (col < heatmap_size) & (row < heatmap_size)
    valid = inside & (keypoints[..., 2] > 0)
    heatmaps = (row * heatmap_size + col) * valid.long()
    return heatmaps, valid


def heatmaps_to_keypoints(maps: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """Decode predicted keypoint heatmaps into image coordinates and scores.

    For roi i with width w = max(x1 - x0, 1) and height h = max(y1 - y0, 1), each of its K
    heatmaps is resized with bicubic interpolation (align_corners=False) to ceil(h) x ceil(w);
    the argmax cell (row, col) of the resized map gives ``x = (col + 0.5) * w / ceil(w) + x0``
    and ``y = (row + 0.5) * h / ceil(h) + y0``.

    Args:
        maps: (N, K, H, W) heatmap logits.
        rois: (N, 4) XYXY boxes the heatmaps cover.

    Returns:
        (N, K, 4) tensor of (x, y, logit, score): logit is the resized map's maximum; score is
        ``exp(logit - logit) / sum(exp(maps[i, k] - logit))``, i.e. a softmax whose normaliser
        is summed over the original H x W map (Detectron2's choice, which keeps scores
        comparable across box sizes).

    No gradient flows (the inputs are detached). Scriptable with ``torch.jit.script``.
    """
    maps = maps.detach()
    rois = rois.detach()
    if maps.dim() != 4 or rois.dim() != 2 or len(maps) != len(rois):
        raise ValueError(
            f"heatmaps_to_keypoints expects maps (N, K, H, W) and rois (N, 4), got "
            f"{list(maps.shape)} and {list(rois.shape)}."
        )
    num_rois, num_kpts = maps.shape[0], maps.shape[1]
    out = maps.new_zeros((num_rois, num_kpts, 4))
    if num_rois == 0:
        return out

    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    widths_up = widths.ceil()
    heights_up = heights.ceil()
    x_step = widths / widths_up
    y_step = heights / heights_up
    # One host transfer for all output sizes instead of one per roi.
    sizes: List[List[int]] = torch.stack([heights_up, widths_up], dim=1).to("cpu").long().tolist()
    kpt_index = torch.arange(num_kpts, device=maps.device)

    for i, size in enumerate(sizes):
        out_h, out_w = size[0], size[1]
        resized = F.interpolate(
            maps[i : i + 1], size=(out_h, out_w), mode="bicubic", align_corners=False
        )[0]  # (K, out_h, out_w)
        flat = resized.reshape(num_kpts, -1)
        pos = flat.argmax(dim=1)
        peak = flat[kpt_index, pos]
        # Softmax value at the peak: exp(0) over the normaliser on the un-resized map.
        normaliser = (maps[i] - peak[:, None, None]).exp().sum(dim=(1, 2))
        score = torch.exp(peak - peak) / normaliser
        col = pos % out_w
        row = torch.div(pos - col, out_w, rounding_mode="floor")
        out[i, :, 0] = (col.float() + 0.5) * x_step[i] + rois[i, 0]
        out[i, :, 1] = (row.float() + 0.5) * y_step[i] + rois[i, 1]
        out[i, :, 2] = peak
        out[i, :, 3] = score
    return out
