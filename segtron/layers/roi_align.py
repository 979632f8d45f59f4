"""``ROIAlign`` (Detectron2's module) on top of ``torchvision.ops.roi_align``."""

from typing import Tuple, Union

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import roi_align

from .roi_align_nhwc import roi_align_nhwc
from .execution import uses_nhwc_roi_align

__all__ = ["ROIAlign", "roi_align"]


class ROIAlign(nn.Module):
    """Crop and bilinearly resample regions of a feature map to a fixed size.

    Args:
        output_size: (h, w) or an int, size of each pooled region.
        spatial_scale: factor mapping box coordinates (input-image pixels) to feature-map
            coordinates, e.g. 1/16 for a stride-16 feature map.
        sampling_ratio: bilinear samples per output bin along each axis; 0 means adaptive
            (``ceil(roi_size / output_size)``).
        aligned: if True, shift box coordinates by -0.5 before sampling so that a box's
            continuous coordinates align with pixel centres (Detectron2's default and what its
            models use). If False, the legacy Caffe2 behaviour (no shift, regions at least
            1x1).

    ``forward(input (N, C, H, W), rois (K, 5)) -> (K, C, output_h, output_w)`` where each row
    of ``rois`` is (batch index, x0, y0, x1, y1). ``rois`` are cast to ``input``'s dtype.
    Channels-last CPU inputs use :func:`roi_align_nhwc` (same values up to float rounding;
    ``layers.execution.uses_nhwc_roi_align`` decides); others use torchvision's kernel.
    """

    def __init__(
        self,
        output_size: Union[int, Tuple[int, int]],
        spatial_scale: float,
        sampling_ratio: int,
        aligned: bool = True,
    ):
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._forward_eager(input, rois)
        # TorchScript (inference export): torchvision's kernel, as for NCHW inputs below.
        rois = rois.to(dtype=input.dtype, device=input.device)
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def _forward_eager(self, input: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """The forward outside TorchScript (checks, empty batches, the NHWC CPU kernel)."""
        if rois.dim() != 2 or rois.size(1) != 5:
            raise ValueError(
                "ROIAlign: rois must have shape (K, 5) as (batch index, x0, y0, x1, y1), got "
                f"{tuple(rois.shape)}"
            )
        if input.is_quantized:
            input = input.dequantize()
        rois = rois.to(dtype=input.dtype, device=input.device)
        if rois.shape[0] == 0:
            out_h, out_w = _pair(self.output_size)
            # Keep the graph connected so backward through an empty batch works.
            return input.new_zeros((0, input.shape[1], out_h, out_w)) + input.sum() * 0
        if uses_nhwc_roi_align(input):
            # NHWC CPU features (MODEL.CHANNELS_LAST): a multi-threaded sparse product.
            return roi_align_nhwc(input, rois, _pair(self.output_size), self.spatial_scale,
                                  self.sampling_ratio, self.aligned)
        return roi_align(
            input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(output_size={self.output_size}, "
            f"spatial_scale={self.spatial_scale}, sampling_ratio={self.sampling_ratio}, "
            f"aligned={self.aligned})"
        )
