"""Non-maximum suppression, as in ``detectron2.layers.nms``, on ``torchvision.ops``.

Rotated-box NMS (``nms_rotated``, ``batched_nms_rotated``) is not provided: torchvision has
no kernel for it.
"""

import torch
from torchvision.ops import boxes as _box_ops
from torchvision.ops import nms

__all__ = ["batched_nms", "nms"]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS run independently within each group of ``idxs`` (e.g. class or feature level).

    Args:
        boxes: (N, 4) XYXY boxes; computed in float32 (fp16 lacks the range for the
            per-group coordinate offsets).
        scores: (N,) scores.
        idxs: (N,) int64 group of each box; boxes in different groups never suppress each
            other.
        iou_threshold: drop a box whose IoU with a higher-scoring kept box of the same group
            is > this.

    Returns:
        int64 tensor of the kept indices into ``boxes``, sorted by decreasing score.
    """
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"batched_nms: boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    return _box_ops.batched_nms(boxes.float(), scores, idxs, iou_threshold)
