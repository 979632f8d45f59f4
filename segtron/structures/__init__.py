"""Data structures shared by the whole library (Detectron2 path: ``detectron2.structures``).

Boxes (axis-aligned and rotated), instance sets, padded image batches, masks and keypoints.
All tensors keep the device of their inputs.
"""

from .boxes import (
    BoxMode,
    Boxes,
    matched_pairwise_iou,
    pairwise_intersection,
    pairwise_ioa,
    pairwise_iou,
    pairwise_point_box_distance,
)
from .image_list import ImageList
from .instances import Instances
from .keypoints import Keypoints, heatmaps_to_keypoints
from .masks import (
    BitMasks,
    PolygonMasks,
    ROIMasks,
    polygon_area,
    polygons_to_bitmask,
    rasterize_polygons_within_box,
)
from .rotated_boxes import RotatedBoxes
from .rotated_boxes import pairwise_iou as pairwise_iou_rotated

__all__ = [
    "BoxMode",
    "Boxes",
    "RotatedBoxes",
    "pairwise_iou",
    "pairwise_iou_rotated",
    "pairwise_ioa",
    "pairwise_intersection",
    "pairwise_point_box_distance",
    "matched_pairwise_iou",
    "Instances",
    "ImageList",
    "BitMasks",
    "PolygonMasks",
    "ROIMasks",
    "polygons_to_bitmask",
    "rasterize_polygons_within_box",
    "polygon_area",
    "Keypoints",
    "heatmaps_to_keypoints",
]
