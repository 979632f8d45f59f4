"""SSD's default boxes ("priors", Liu et al. Sec. 2.2): :class:`PriorBoxGenerator`.

Feature map k (of m) tiles the image with a grid of its own size; every cell gets the same
set of boxes of scale s_k (a fraction of the image side):

- a square of side s_k and one of side sqrt(s_k * s_{k+1}) (the "extra" box for ratio 1);
- for each aspect ratio r of the map, a box of width s_k * sqrt(r) and height s_k / sqrt(r),
  then the same box turned (width and height swapped).

Boxes are listed cell by cell (rows top to bottom, columns left to right) and, within a cell, in
the order above: row ``(y * W + x) * A + a`` is box a of cell (y, x), the layout of the head's
outputs after :func:`~segtron.modeling.meta_arch.dense_detector.permute_to_N_HWA_K` (and of
torchvision's ``DefaultBoxGenerator``).
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from segtron.config import configurable
from segtron.structures import Boxes

__all__ = ["PriorBoxGenerator", "prior_scales", "prior_shapes", "grid_prior_boxes"]


def prior_scales(num_maps: int, min_scale: float, max_scale: float) -> List[float]:
    """The paper's scales (Eq. 4) for ``num_maps`` maps, evenly spaced from ``min_scale`` (the
    finest map) to ``max_scale`` (the coarsest), plus 1.0 as s_{m+1} (torchvision's choice) for
    the last map's extra box.

    Returns:
        ``num_maps + 1`` floats; a single map gets ``[min_scale, max_scale]``.
    """
    if num_maps < 1:
        raise ValueError(f"prior_scales: num_maps must be >= 1, got {num_maps}.")
    if num_maps == 1:
        return [float(min_scale), float(max_scale)]
    step = (max_scale - min_scale) / (num_maps - 1)
    return [float(min_scale + step * k) for k in range(num_maps)] + [1.0]


def prior_shapes(scale: float, next_scale: float, aspect_ratios: Sequence[float]) -> torch.Tensor:
    """(width, height) of the boxes of one cell, as fractions of the image's width / height.

    Args:
        scale: s_k.
        next_scale: s_{k+1} (only for the extra square box of side sqrt(s_k * s_{k+1})).
        aspect_ratios: the ratios r beyond 1 (each gives the boxes r and 1/r).

    Returns:
        float64 tensor (2 + 2 * len(aspect_ratios), 2), in the module docstring's order.
    """
    extra = math.sqrt(scale * next_scale)
    shapes = [(scale, scale), (extra, extra)]
    for ratio in aspect_ratios:
        root = math.sqrt(ratio)
        shapes += [(scale * root, scale / root), (scale / root, scale * root)]
    return torch.tensor(shapes, dtype=torch.float64)


def grid_prior_boxes(
    grid_size: Tuple[int, int],
    image_size: Tuple[int, int],
    shapes: torch.Tensor,
    step: Optional[float] = None,
    clip: bool = True,
) -> torch.Tensor:
    """All default boxes of one feature map, in absolute XYXY pixels of the image.

    Args:
        grid_size: (h, w) of the feature map.
        image_size: (H, W) of the network input.
        shapes: (A, 2) relative (width, height) of a cell's boxes (:func:`prior_shapes`).
        step: pixels between neighbouring centres, on both axes (centre of cell j:
            ``(j + 0.5) * step``); None: ``W / w`` horizontally and ``H / h`` vertically.
        clip: clamp the relative widths and heights to [0, 1] (boxes no larger than the image;
            centres stay).

    Returns:
        float64 tensor (h * w * A, 4), row ``(y * w + x) * A + a``.
    """
    rows, cols = int(grid_size[0]), int(grid_size[1])
    height, width = float(image_size[0]), float(image_size[1])
    step_y = height / rows if step is None else float(step)
    step_x = width / cols if step is None else float(step)
    centre_y = (torch.arange(rows, dtype=torch.float64) + 0.5) * step_y
    centre_x = (torch.arange(cols, dtype=torch.float64) + 0.5) * step_x
    grid = torch.meshgrid(centre_x, centre_y, indexing="xy")  # each (h, w)
    centres = torch.stack(grid, dim=-1).reshape(-1, 1, 2)  # (x, y) per cell, row-major
    if clip:
        shapes = shapes.clamp(0.0, 1.0)
    half = 0.5 * shapes * torch.tensor([width, height], dtype=torch.float64)  # (A, 2)
    boxes = torch.cat((centres - half, centres + half), dim=-1)  # (h * w, A, 4)
    return boxes.reshape(-1, 4)


class PriorBoxGenerator(nn.Module):
    """SSD's default boxes for a list of feature maps (module docstring).

    ``forward(features: m maps (N, C, h_k, w_k), image_size (H, W)) -> m Boxes`` of
    ``h_k * w_k * A_k`` float32 XYXY boxes in input pixels, on the features' device (the same
    for every image of the batch). ``num_cell_anchors`` is [A_1, ..., A_m].
    """

    @configurable
    def __init__(
        self,
        *,
        scales: Sequence[float],
        aspect_ratios: Sequence[Sequence[float]],
        steps: Optional[Sequence[float]] = None,
        clip: bool = True,
    ):
        """Args:
            scales: s_1 .. s_{m+1} (one more than the maps).
            aspect_ratios: m lists of ratios r > 0 (each adds r and 1/r).
            steps: m centre spacings in pixels, or None / empty for image size / map size.
            clip: clamp box widths and heights to the image size.
        """
        super().__init__()
        num_maps = len(aspect_ratios)
        if num_maps < 1:
            raise ValueError(
                "MODEL.SSD.ASPECT_RATIOS is empty: give one list of ratios per feature map "
                "(an empty list for the two square boxes only)."
            )
        if len(scales) != num_maps + 1:
            raise ValueError(
                f"MODEL.SSD.SCALES has {len(scales)} values for {num_maps} feature maps; give "
                f"{num_maps + 1} (one per map plus the scale of the last map's extra box), or "
                "leave it empty to derive them from MIN_SCALE / MAX_SCALE."
            )
        if min(scales) <= 0:
            raise ValueError(f"MODEL.SSD.SCALES must all be > 0, got {list(scales)}.")
        if any(r <= 0 for ratios in aspect_ratios for r in ratios):
            raise ValueError(
                f"MODEL.SSD.ASPECT_RATIOS must all be > 0, got {[list(r) for r in aspect_ratios]}."
            )
        steps = list(steps) if steps else None
        if steps is not None and (len(steps) != num_maps or min(steps) <= 0):
            raise ValueError(
                f"MODEL.SSD.STEPS = {steps}: give one positive step per feature map ({num_maps}), "
                "or leave it empty to use image size / map size."
            )
        self.scales = [float(s) for s in scales]
        self.aspect_ratios = [[float(r) for r in ratios] for ratios in aspect_ratios]
        self.steps = steps
        self.clip = bool(clip)
        self._shapes = [
            prior_shapes(self.scales[k], self.scales[k + 1], self.aspect_ratios[k])
            for k in range(num_maps)
        ]
        self._cache = None  # ((grid sizes, image size, device), boxes) of the last call

    @classmethod
    def from_config(cls, cfg):
        """MODEL.SSD.{SCALES (or MIN_SCALE / MAX_SCALE for the maps of IN_FEATURES),
        ASPECT_RATIOS, STEPS, CLIP_PRIORS}."""
        ssd = cfg.MODEL.SSD
        num_maps = len(ssd.IN_FEATURES)
        if len(ssd.ASPECT_RATIOS) != num_maps:
            raise ValueError(
                f"MODEL.SSD.ASPECT_RATIOS has {len(ssd.ASPECT_RATIOS)} lists for the "
                f"{num_maps} maps of MODEL.SSD.IN_FEATURES; give one list per map."
            )
        scales = list(ssd.SCALES) or prior_scales(num_maps, ssd.MIN_SCALE, ssd.MAX_SCALE)
        return {
            "scales": scales,
            "aspect_ratios": ssd.ASPECT_RATIOS,
            "steps": list(ssd.STEPS),
            "clip": ssd.CLIP_PRIORS,
        }

    @property
    def num_cell_anchors(self) -> List[int]:
        """Boxes per location of each map: 2 + 2 * (number of its aspect ratios)."""
        return [len(shapes) for shapes in self._shapes]

    def grid_boxes(
        self, grid_sizes: Sequence[Tuple[int, int]], image_size: Tuple[int, int]
    ) -> List[torch.Tensor]:
        """float64 (h_k * w_k * A_k, 4) XYXY boxes of each map, on the CPU."""
        if len(grid_sizes) != len(self._shapes):
            raise ValueError(
                f"PriorBoxGenerator was built for {len(self._shapes)} feature maps, got "
                f"{len(grid_sizes)}; MODEL.SSD.IN_FEATURES and the default-box settings disagree."
            )
        return [
            grid_prior_boxes(
                size, image_size, shapes, None if self.steps is None else self.steps[k], self.clip
            )
            for k, (size, shapes) in enumerate(zip(grid_sizes, self._shapes))
        ]

    def forward(self, features: List[torch.Tensor], image_size: Tuple[int, int]) -> List[Boxes]:
        grid_sizes = tuple(tuple(int(s) for s in f.shape[-2:]) for f in features)
        device = features[0].device
        key = (grid_sizes, tuple(int(s) for s in image_size), device)
        if self._cache is None or self._cache[0] != key:
            # The sizes rarely change (SSD's input is a fixed square): build them once.
            boxes = [
                b.to(device=device, dtype=torch.float32)
                for b in self.grid_boxes(grid_sizes, image_size)
            ]
            self._cache = (key, boxes)
        return [Boxes(b.clone()) for b in self._cache[1]]  # callers may edit them in place

    def extra_repr(self) -> str:
        return (
            f"scales={self.scales}, aspect_ratios={self.aspect_ratios}, steps={self.steps}, "
            f"clip={self.clip}"
        )
