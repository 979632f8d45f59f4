"""Paste per-box mask predictions into full images (Detectron2's ``paste_masks_in_image``).

Sampling rule (output parity depends on it): output pixel (x, y) has its centre at
(x + 0.5, y + 0.5) in image coordinates; for a box (x0, y0, x1, y1) that centre maps to
normalised mask coordinates ``gx = (x + 0.5 - x0) / (x1 - x0) * 2 - 1`` (same for y), where
-1 and 1 are the outer edges of the M x M mask. The mask is sampled there bilinearly with
``grid_sample(align_corners=False)`` and zero padding, then thresholded with ``>=``.
"""

import math
from typing import Any, Tuple, Union

import torch
from torch.nn import functional as F

__all__ = ["paste_masks_in_image"]

_BYTES_PER_FLOAT = 4
# Budget for the (N, H, W) float buffer of one chunk when pasting on an accelerator.
_GPU_MEM_LIMIT = 1024**3


def _region_of(boxes: torch.Tensor, img_h: int, img_w: int) -> Tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) image region that can receive non-zero samples from ``boxes``.

    floor(min x0) - 1 clamped at 0, ceil(max x1) + 1 clamped at the image width (same in y);
    an empty region when the boxes are entirely outside the image.
    """
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"paste_masks_in_image: boxes must be finite, got {boxes.tolist()}")
    lo = boxes[:, :2].min(dim=0).values.floor() - 1
    x1 = int(boxes[:, 2].max().ceil().item()) + 1
    y1 = int(boxes[:, 3].max().ceil().item()) + 1
    x0 = min(max(int(lo[0].item()), 0), img_w)
    y0 = min(max(int(lo[1].item()), 0), img_h)
    x1 = max(min(x1, img_w), x0)
    y1 = max(min(y1, img_h), y0)
    return x0, y0, x1, y1


def _sample_masks(
    masks: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int, restrict_to_boxes: bool
) -> Tuple[torch.Tensor, Tuple[slice, ...]]:
    """Sample masks (n, 1, M, M) at the pixel centres of an image region.

    Returns the sampled values (n, h, w) and the (rows, cols) slices of the image they
    cover: the whole image, or only the boxes' region when ``restrict_to_boxes``.
    """
    if restrict_to_boxes:
        x0_int, y0_int, x1_int, y1_int = _region_of(boxes, img_h, img_w)
    else:
        x0_int, y0_int, x1_int, y1_int = 0, 0, img_w, img_h
    device = masks.device
    bx0, by0, bx1, by1 = torch.split(boxes, 1, dim=1)  # each (n, 1)
    n = masks.shape[0]

    centres_y = torch.arange(y0_int, y1_int, device=device, dtype=torch.float32) + 0.5
    centres_x = torch.arange(x0_int, x1_int, device=device, dtype=torch.float32) + 0.5
    norm_y = (centres_y - by0) / (by1 - by0) * 2 - 1  # (n, h)
    norm_x = (centres_x - bx0) / (bx1 - bx0) * 2 - 1  # (n, w)
    h, w = norm_y.shape[1], norm_x.shape[1]
    grid = torch.stack(
        [norm_x[:, None, :].expand(n, h, w), norm_y[:, :, None].expand(n, h, w)], dim=3
    )
    if not masks.dtype.is_floating_point:
        masks = masks.float()
    if h == 0 or w == 0:
        values = masks.new_zeros((n, h, w))
    else:
        values = F.grid_sample(masks, grid.to(masks.dtype), align_corners=False)[:, 0]
    if restrict_to_boxes:
        return values, (slice(y0_int, y1_int), slice(x0_int, x1_int))
    return values, ()


def _paste(
    masks: torch.Tensor,
    boxes: torch.Tensor,
    img_h: int,
    img_w: int,
    threshold: float,
    num_chunks: int,
    restrict_to_boxes: bool,
) -> torch.Tensor:
    n = masks.shape[0]
    device = boxes.device
    out = torch.zeros(
        n, img_h, img_w, device=device, dtype=torch.bool if threshold >= 0 else torch.uint8
    )
    for inds in torch.chunk(torch.arange(n, device=device), num_chunks):
        values, region = _sample_masks(
            masks[inds, None, :, :], boxes[inds], img_h, img_w, restrict_to_boxes
        )
        if threshold >= 0:
            pasted = values >= threshold
        else:
            pasted = (values * 255).to(dtype=torch.uint8)  # for visualisation and debugging
        out[(inds,) + region] = pasted
    return out


def paste_masks_in_image(
    masks: torch.Tensor,
    boxes: Union[torch.Tensor, Any],
    image_shape: Tuple[int, int],
    threshold: float = 0.5,
) -> torch.Tensor:
    """Paste one mask prediction per box into an image-sized canvas.

    Args:
        masks: (N, M, M) float mask probabilities (e.g. 28 x 28 sigmoid outputs), one per box.
        boxes: (N, 4) float XYXY boxes in image pixels, a Tensor or a ``Boxes``-like object
            with a ``.tensor`` attribute. Boxes may extend past the image.
        image_shape: (H, W) of the output.
        threshold: pixels with sampled probability ``>= threshold`` are True. A negative value
            returns the sampled probabilities as uint8 ``int(p * 255)`` instead.

    Returns:
        (N, H, W) bool tensor (uint8 if ``threshold < 0``) on the device of ``boxes``;
        (0, H, W) when N = 0.

    On CPU each mask is sampled only inside its box's integer region (fastest); on other
    devices all masks are sampled over the whole image, in chunks keeping one chunk's float
    buffer under 1 GiB.
    """
    if not isinstance(boxes, torch.Tensor):
        if not hasattr(boxes, "tensor"):
            raise TypeError(
                "paste_masks_in_image: boxes must be an (N, 4) Tensor or have a .tensor "
                f"attribute (Boxes), got {type(boxes).__name__}"
            )
        boxes = boxes.tensor
    img_h, img_w = int(image_shape[0]), int(image_shape[1])
    if masks.dim() != 3:
        raise ValueError(
            f"paste_masks_in_image: masks must have shape (N, M, M), got {tuple(masks.shape)}"
        )
    n = masks.shape[0]
    if n == 0:
        dtype = torch.bool if threshold >= 0 else torch.uint8
        return torch.zeros((0, img_h, img_w), dtype=dtype, device=boxes.device)
    if boxes.dim() != 2 or boxes.shape != (n, 4):
        raise ValueError(
            f"paste_masks_in_image: expected boxes of shape ({n}, 4) to match masks "
            f"{tuple(masks.shape)}, got {tuple(boxes.shape)}"
        )
    masks = masks.to(boxes.device)
    if boxes.device.type == "cpu":
        return _paste(masks, boxes, img_h, img_w, threshold, num_chunks=n, restrict_to_boxes=True)
    num_chunks = int(math.ceil(n * img_h * img_w * _BYTES_PER_FLOAT / _GPU_MEM_LIMIT))
    num_chunks = max(1, min(num_chunks, n))
    return _paste(
        masks, boxes, img_h, img_w, threshold, num_chunks=num_chunks, restrict_to_boxes=False
    )
