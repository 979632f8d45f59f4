"""``ROIAlignRotated`` (Detectron2's module and function) in pure PyTorch.

Pools a fixed-size grid of bilinear samples from rotated regions of a feature map. A region
(batch index, cx, cy, w, h, angle) is scaled to feature coordinates and shifted by -0.5 pixel
(always "aligned": continuous coordinates, pixel centres at +0.5); it is split into
out_h x out_w bins, each averaged over a sampling grid of gh x gw points placed in the
region's own (rotated) frame. With angle 0 this is ``torchvision.ops.roi_align(...,
aligned=True)``. Sample points outside [-1, H] x [-1, W] count as zero; others are clamped to
the map as in ROIAlign.

Like ROIAlign the output is linear in the features, so it is computed as one sparse-by-dense
product (``roi_align_nhwc._SparseRowsProduct``): one sparse row of bilinear weights per
(region, bin), times the (N*H*W, C) feature matrix. Gradients flow to the features only.
"""

import math
from typing import Tuple, Union

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from .roi_align_nhwc import _offsets, _SparseRowsProduct

__all__ = ["ROIAlignRotated", "roi_align_rotated"]


def _axis_taps(pos: torch.Tensor, size: int) -> Tuple[torch.Tensor, ...]:
    """Clamp sample positions along one axis as ROIAlign does.

    Args:
        pos: positions (any shape), already known to be in [-1, size].
        size: the feature map's size along this axis.

    Returns:
        low, high (long) neighbouring pixels and the weights of low and high.
    """
    pos = pos.clamp(min=0.0)
    low = pos.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, torch.full_like(low, size - 1), low)
    pos = torch.where(at_edge, low, pos)
    high = torch.where(at_edge, low, low + 1)
    frac = pos - low
    return low.long(), high.long(), 1.0 - frac, frac


def _bilinear_taps(
    y: torch.Tensor, x: torch.Tensor, height: int, width: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Four bilinear taps of each sample point.

    Args:
        y, x: (...) sample positions in feature pixels (pixel centres at integers).
        height, width: feature map size.

    Returns:
        index (..., 4) long, flat pixel index ``row * width + col``, and weight (..., 4): for
        (low row, low col), (low row, high col), (high row, low col), (high row, high col).
        Points outside [-1, height] x [-1, width] (or NaN) get weight 0 and index 0.
    """
    valid = (y >= -1.0) & (y <= height) & (x >= -1.0) & (x <= width)
    y = torch.where(valid, y, torch.zeros_like(y))
    x = torch.where(valid, x, torch.zeros_like(x))
    y_low, y_high, wy_low, wy_high = _axis_taps(y, height)
    x_low, x_high, wx_low, wx_high = _axis_taps(x, width)
    index = torch.stack(
        [y_low * width + x_low, y_low * width + x_high, y_high * width + x_low,
         y_high * width + x_high],
        dim=-1,
    )
    weight = torch.stack(
        [wy_low * wx_low, wy_low * wx_high, wy_high * wx_low, wy_high * wx_high], dim=-1
    )
    return index, weight * valid[..., None].to(weight.dtype)


def _group_taps(rois: torch.Tensor, grid: Tuple[int, int], output_size: Tuple[int, int],
                spatial_scale: float, feature_shape: Tuple[int, int]):
    """Sparse weights of the regions sharing one sampling grid.

    Args:
        rois: (K, 6) regions (batch index, cx, cy, w, h, angle_degrees), compute dtype.
        grid: (gh, gw) sample points per bin along the region's height and width.
        output_size: (out_h, out_w) bins.
        spatial_scale: image -> feature coordinates factor.
        feature_shape: (H, W) of the feature map.

    Returns:
        cols (K * out_h * out_w, gh * gw * 4) long indices into the (N*H*W) feature rows and
        values of the same shape (bilinear weights divided by the number of samples).
    """
    grid_h, grid_w = grid
    out_h, out_w = output_size
    height, width = feature_shape
    k = rois.shape[0]
    dtype, device = rois.dtype, rois.device
    centre_x = rois[:, 1] * spatial_scale - 0.5
    centre_y = rois[:, 2] * spatial_scale - 0.5
    roi_w = rois[:, 3] * spatial_scale
    roi_h = rois[:, 4] * spatial_scale
    theta = rois[:, 5] * (math.pi / 180.0)
    bin_w, bin_h = roi_w / out_w, roi_h / out_h

    def offsets(num_bins, num_samples, bin_size, extent):
        """(K, num_bins, num_samples) positions along one box axis, relative to the centre."""
        bins = torch.arange(num_bins, dtype=dtype, device=device)[None, :, None]
        steps = torch.arange(num_samples, dtype=dtype, device=device)[None, None, :] + 0.5
        size = bin_size[:, None, None]
        return -extent[:, None, None] / 2 + bins * size + steps * size / num_samples

    # Dims (K, out_h, out_w, gh, gw): yy along the box height, xx along its width.
    yy = offsets(out_h, grid_h, bin_h, roi_h)[:, :, None, :, None]
    xx = offsets(out_w, grid_w, bin_w, roi_w)[:, None, :, None, :]
    cos = torch.cos(theta).view(k, 1, 1, 1, 1)
    sin = torch.sin(theta).view(k, 1, 1, 1, 1)
    y = yy * cos - xx * sin + centre_y.view(k, 1, 1, 1, 1)
    x = yy * sin + xx * cos + centre_x.view(k, 1, 1, 1, 1)
    index, weight = _bilinear_taps(y, x, height, width)
    batch = rois[:, 0].long().view(k, 1, 1, 1, 1, 1)
    cols = batch * (height * width) + index
    values = weight / max(grid_h * grid_w, 1)
    rows = k * out_h * out_w
    return cols.reshape(rows, -1), values.reshape(rows, -1)


def _grid_sizes(rois: torch.Tensor, output_size, spatial_scale, sampling_ratio):
    """(K,) long sample counts per bin along the height and the width of each region."""
    if sampling_ratio > 0:
        full = torch.full((rois.shape[0],), int(sampling_ratio), dtype=torch.long,
                          device=rois.device)
        return full, full
    out_h, out_w = output_size
    grid_h = torch.ceil(rois[:, 4] * spatial_scale / out_h).long()
    grid_w = torch.ceil(rois[:, 3] * spatial_scale / out_w).long()
    return grid_h, grid_w


def roi_align_rotated(
    input: torch.Tensor,
    rois: torch.Tensor,
    output_size: Union[int, Tuple[int, int]],
    spatial_scale: float,
    sampling_ratio: int,
) -> torch.Tensor:
    """Pool rotated regions of a feature map (Detectron2's ``roi_align_rotated``).

    Args:
        input: (N, C, H, W) float features.
        rois: (K, 6) rows (batch index, cx, cy, w, h, angle): centre and size in input-image
            pixels, angle in degrees counter-clockwise; cast to ``input``'s dtype.
        output_size: int or (out_h, out_w) bins per region.
        spatial_scale: image -> feature coordinates, e.g. 1/16 for a stride-16 map.
        sampling_ratio: sample points per bin along each region axis; <= 0 means adaptive,
            ``ceil(h * spatial_scale / out_h)`` along the height and likewise for the width.

    Returns:
        (K, C, out_h, out_w) in ``input``'s dtype, differentiable w.r.t. ``input`` (not
        ``rois``).
    """
    if input.dim() != 4:
        raise ValueError(
            f"roi_align_rotated: input must be an (N, C, H, W) feature map, got shape "
            f"{tuple(input.shape)}."
        )
    if rois.dim() != 2 or rois.shape[1] != 6:
        raise ValueError(
            "roi_align_rotated: rois must have shape (K, 6) as (batch index, cx, cy, w, h, "
            f"angle_degrees), got {tuple(rois.shape)}."
        )
    output_size = _pair(output_size)
    n, c, height, width = input.shape
    k = rois.shape[0]
    out_h, out_w = output_size
    if k == 0:
        # Keep the graph connected so backward through an empty batch works.
        return input.new_zeros((0, c, out_h, out_w)) + input.sum() * 0
    compute = torch.promote_types(input.dtype, torch.float32)
    rois = rois.detach().to(device=input.device, dtype=compute)
    if bool((rois[:, 3] < 0).any() | (rois[:, 4] < 0).any()):
        raise ValueError(
            "roi_align_rotated: rois have negative width or height (columns 3 and 4); pass "
            "boxes with w, h >= 0 (e.g. filter them with RotatedBoxes.nonempty())."
        )
    batch = rois[:, 0]
    if bool((batch < 0).any() | (batch >= n).any()):
        raise ValueError(
            f"roi_align_rotated: roi batch indices (column 0) must be in [0, {n - 1}] for an "
            f"input of {n} images."
        )

    grid_h, grid_w = _grid_sizes(rois, output_size, spatial_scale, sampling_ratio)
    # Regions sharing a sampling grid are processed together; sort them into such runs.
    key = grid_h * (int(grid_w.max()) + 1) + grid_w
    order = torch.argsort(key, stable=True)
    _, run_lengths = torch.unique_consecutive(key[order], return_counts=True)
    all_cols, all_values = [], []
    start = 0
    for length in run_lengths.tolist():
        members = order[start : start + length]
        first = int(members[0])
        grid = (int(grid_h[first]), int(grid_w[first]))
        cols, values = _group_taps(rois[members], grid, output_size, spatial_scale,
                                   (height, width))
        keep = values != 0  # drop taps outside the map, and beyond-edge duplicates
        all_cols.append((cols, values, keep))
        start += length
    row_counts = torch.cat([keep.sum(dim=1) for _, _, keep in all_cols])
    cols = torch.cat([cols[keep] for cols, _, keep in all_cols])
    values = torch.cat([values[keep] for _, values, keep in all_cols])

    work = input if input.dtype == compute else input.to(compute)
    features = work.permute(0, 2, 3, 1).reshape(n * height * width, c)
    pooled = _SparseRowsProduct.apply(features, _offsets(row_counts), cols, values)
    pooled = pooled.view(k, out_h, out_w, c)
    pooled = pooled.index_select(0, torch.argsort(order))  # back to the order of ``rois``
    return pooled.permute(0, 3, 1, 2).contiguous().to(input.dtype)


class ROIAlignRotated(nn.Module):
    """Pool rotated regions of a feature map to a fixed size (Detectron2's module).

    ``forward(input (N, C, H, W), rois (K, 6)) -> (K, C, out_h, out_w)``, each row of
    ``rois`` being (batch index, cx, cy, w, h, angle_degrees) in input-image pixels; see
    :func:`roi_align_rotated`.
    """

    def __init__(
        self, output_size: Union[int, Tuple[int, int]], spatial_scale: float, sampling_ratio: int
    ):
        """Args:
            output_size: (h, w) or an int, size of each pooled region.
            spatial_scale: factor mapping box coordinates (input-image pixels) to feature-map
                coordinates, e.g. 1/16 for a stride-16 feature map.
            sampling_ratio: sample points per bin along each region axis; 0 means adaptive
                (``ceil(roi_size / output_size)``).
        """
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        return roi_align_rotated(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio})"
        )
