"""Box-head registry (Detectron2 path: detectron2.modeling.roi_heads.box_head)."""

from ..registries import ROI_BOX_HEAD_REGISTRY  # noqa: F401
