"""ROI-heads registry (Detectron2 path: detectron2.modeling.roi_heads.roi_heads)."""

from ..registries import ROI_HEADS_REGISTRY  # noqa: F401
