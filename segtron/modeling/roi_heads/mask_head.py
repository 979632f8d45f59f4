"""Mask-head registry (Detectron2 path: detectron2.modeling.roi_heads.mask_head)."""

from ..registries import ROI_MASK_HEAD_REGISTRY  # noqa: F401
