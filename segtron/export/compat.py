"""Export constants and config helpers kept for Detectron2 scripts.

Detectron2 path: ``detectron2.export.api`` (``add_export_config``) and
``detectron2.export`` (``STABLE_ONNX_OPSET_VERSION``).
"""

from ..config import CfgNode

__all__ = ["STABLE_ONNX_OPSET_VERSION", "add_export_config"]

# ONNX opset used by the ONNX export. Detectron2 uses 11, but with torch 2.14 + torchvision 0.29
# the legacy (TorchScript-based) exporter maps torchvision's roi_align to ONNX RoiAlign-10 at
# opsets 11..15, which has no `coordinate_transformation_mode`: ROIAlignV2 (aligned=True, the
# default pooler of every R-CNN config) would silently export as the unaligned op (torchvision
# only warns). RoiAlign-16 carries "half_pixel", so 16 is the lowest opset that exports our ops
# with the eager numbers (NonMaxSuppression needs >= 11, resize/grid ops are fine from 11).
STABLE_ONNX_OPSET_VERSION = 16


def add_export_config(cfg: CfgNode) -> CfgNode:
    """Add Detectron2's (Caffe2-era) export keys to ``cfg`` so that old export scripts run.

    Args:
        cfg: a config (frozen or not).

    Returns:
        the same ``cfg`` with ``EXPORT_CAFFE2.USE_HEATMAP_MAX_KEYPOINT = False`` (frozen again
        if it was frozen).
    """
    frozen = cfg.is_frozen()
    cfg.defrost()
    cfg.EXPORT_CAFFE2 = CfgNode()
    # Caffe2 only: use the heatmap max instead of the sub-pixel keypoint decoding. Unused here.
    cfg.EXPORT_CAFFE2.USE_HEATMAP_MAX_KEYPOINT = False
    if frozen:
        cfg.freeze()
    return cfg
