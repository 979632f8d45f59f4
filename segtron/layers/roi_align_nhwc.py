"""ROIAlign on channels-last (NHWC) CPU feature maps, as one sparse-by-dense matrix product.

ROIAlign is linear in the features: every output value is a weighted sum of feature pixels
(bilinear weights of the bin's sample points, divided by the number of samples). Viewing an
NHWC map as an (N*H*W, C) matrix, which needs no copy, the pooled output of all boxes is
``S @ F`` for a sparse matrix S with one row per (box, bin) and a few non-zeros per row. Its
backward is ``S^T @ grad``. Both products run as ``embedding_bag`` sums (weighted row
gathers; multi-threaded, no zero-filled output), where torchvision's CPU kernels are
single-threaded and need NCHW input. Sample points, clamping and validity follow
``torchvision.ops.roi_align`` exactly; only the summation order differs (float rounding).
"""

from typing import Tuple

import torch
from torch.nn import functional as F

__all__ = ["roi_align_nhwc"]


def _axis_taps(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, max_grid: int,
               num_bins: int, size: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bilinear taps along one axis for every box, bin and sample point.

    Args:
        start, bin_size, grid: (R,) box start (feature pixels), bin size, samples per bin.
        max_grid: samples allocated per bin (max of ``grid``); the extra ones get weight 0.
        num_bins: output bins along this axis.
        size: feature map size along this axis.
    Returns:
        index (R, num_bins, max_grid, 2) long and weight (R, num_bins, max_grid, 2): the two
        neighbouring pixels of each sample point and their interpolation weights (0 for
        samples outside [-1, size] or beyond the box's own ``grid``).
    """
    dtype = start.dtype
    bins = torch.arange(num_bins, dtype=dtype, device=start.device)[None, :, None]
    samples = torch.arange(max_grid, dtype=dtype, device=start.device)[None, None, :]
    step = bin_size[:, None, None]
    per_bin = grid[:, None, None]
    # A box with no samples (zero size, adaptive sampling) must not divide 0 by 0.
    pos = start[:, None, None] + bins * step + (samples + 0.5) * step / per_bin.clamp(min=1.0)
    valid = (pos >= -1.0) & (pos <= size) & (samples < per_bin)
    pos = pos.clamp(min=0.0)
    low = pos.floor()
    at_edge = low >= size - 1
    last = torch.full_like(low, size - 1)
    low = torch.where(at_edge, last, low)
    pos = torch.where(at_edge, low, pos)
    high = torch.where(at_edge, low, low + 1)
    frac = pos - low
    index = torch.stack([low, high], dim=-1).long()
    weight = torch.where(valid[..., None], torch.stack([1.0 - frac, frac], dim=-1), 0.0)
    return index, weight


def roi_align_nhwc(input: torch.Tensor, rois: torch.Tensor, output_size: Tuple[int, int],
                   spatial_scale: float, sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """``torchvision.ops.roi_align`` for an NHWC (channels-last) feature map, via a sparse matmul.

    Args:
        input: (N, C, H, W) features stored channels-last.
        rois: (R, 5) rows (batch index, x0, y0, x1, y1) in input-image coordinates, same dtype.
        output_size: (out_h, out_w).
        spatial_scale, sampling_ratio, aligned: as ``torchvision.ops.roi_align``.
    Returns:
        (R, C, out_h, out_w), stored channels-last; differentiable w.r.t. ``input``.
    """
    n, c, h, w = input.shape
    out_h, out_w = output_size
    r = rois.shape[0]
    offset = 0.5 if aligned else 0.0
    x0 = rois[:, 1] * spatial_scale - offset
    y0 = rois[:, 2] * spatial_scale - offset
    width = rois[:, 3] * spatial_scale - offset - x0
    height = rois[:, 4] * spatial_scale - offset - y0
    if not aligned:  # legacy behaviour: regions at least 1x1
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    bin_w, bin_h = width / out_w, height / out_h
    if sampling_ratio > 0:
        grid_w = torch.full_like(width, float(sampling_ratio))
        grid_h = grid_w
    else:
        grid_w, grid_h = torch.ceil(bin_w), torch.ceil(bin_h)
    count = (grid_w * grid_h).clamp(min=1.0)
    max_gh = max(int(grid_h.max().item()), 1)
    max_gw = max(int(grid_w.max().item()), 1)
    y_index, y_weight = _axis_taps(y0, bin_h, grid_h, max_gh, out_h, h)  # (R, oh, gh, 2)
    x_index, x_weight = _axis_taps(x0, bin_w, grid_w, max_gw, out_w, w)  # (R, ow, gw, 2)

    # Broadcast to (R, oh, ow, gh, 2, gw, 2): every sample's four bilinear taps.
    batch = rois[:, 0].long().view(r, 1, 1, 1, 1, 1, 1)
    cols = (batch * h + y_index.view(r, out_h, 1, max_gh, 2, 1, 1)) * w \
        + x_index.view(r, 1, out_w, 1, 1, max_gw, 2)
    values = (y_weight.view(r, out_h, 1, max_gh, 2, 1, 1)
              * x_weight.view(r, 1, out_w, 1, 1, max_gw, 2)) / count.view(r, 1, 1, 1, 1, 1, 1)
    # Rows are (box, bin) in order, so CSR is built directly. Boxes share the largest box's
    # sampling grid, so most taps of small boxes are zero: they are dropped here, which keeps
    # the gathers (and the transpose of the backward) small.
    num_rows = r * out_h * out_w
    values = values.reshape(num_rows, -1)
    keep = values != 0
    crow = _offsets(keep.sum(dim=1))
    cols, values = cols.reshape(num_rows, -1)[keep], values[keep].to(input.dtype)
    features = input.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view for NHWC input
    pooled = _SparseRowsProduct.apply(features, crow, cols, values)
    return pooled.view(r, out_h, out_w, c).permute(0, 3, 1, 2)


def _offsets(counts: torch.Tensor) -> torch.Tensor:
    """CSR row offsets (len(counts) + 1,) int64 from the non-zeros per row ``counts``."""
    offsets = counts.new_zeros(counts.numel() + 1, dtype=torch.long)
    torch.cumsum(counts, dim=0, out=offsets[1:])
    return offsets


def _csr_product(crow: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
                 dense: torch.Tensor) -> torch.Tensor:
    """``S @ dense`` for the CSR matrix S = (crow, cols, values): row i of the result is the
    sum of ``values[k] * dense[cols[k]]`` over k in [crow[i], crow[i+1]); empty rows are 0.
    Returns (len(crow) - 1, dense.shape[1])."""
    return F.embedding_bag(cols, dense, crow[:-1], mode="sum", per_sample_weights=values)


class _SparseRowsProduct(torch.autograd.Function):
    """``S @ features`` (see :func:`_csr_product`), differentiable w.r.t. ``features`` only;
    the backward multiplies by S^T, built by sorting the non-zeros by column."""

    @staticmethod
    def forward(ctx, features, crow, cols, values):
        ctx.save_for_backward(crow, cols, values)
        ctx.num_features = features.shape[0]
        return _csr_product(crow, cols, values, features)

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        crow, cols, values = ctx.saved_tensors
        rows = torch.repeat_interleave(
            torch.arange(crow.numel() - 1, device=crow.device), crow[1:] - crow[:-1]
        )
        order = torch.argsort(cols, stable=True)
        transposed_crow = _offsets(torch.bincount(cols, minlength=ctx.num_features))
        grad_features = _csr_product(transposed_crow, rows[order], values[order],
                                     grad.contiguous())
        return grad_features, None, None, None
