"""Keypoint-head registry (Detectron2 path: detectron2.modeling.roi_heads.keypoint_head)."""

from ..registries import ROI_KEYPOINT_HEAD_REGISTRY  # noqa: F401
