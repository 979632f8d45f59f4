"""Basic layers with the ``detectron2.layers`` API: convs with norm, norms, ROIAlign, NMS,
deformable convs, mask pasting and losses. Compiled ops come from ``torchvision.ops``; the
rotated-box ops (``nms_rotated``, ``batched_nms_rotated``, ``ROIAlignRotated`` /
``roi_align_rotated``, ``pairwise_iou_rotated``), which torchvision lacks, are pure PyTorch.
"""

from .batch_norm import (
    CycleBatchNormList,
    FrozenBatchNorm2d,
    LayerNorm,
    NaiveSyncBatchNorm,
    get_norm,
)
from .deform_conv import DeformConv, ModulatedDeformConv
from .losses import ciou_loss, diou_loss, giou_loss, sigmoid_focal_loss, smooth_l1_loss
from .mask_ops import paste_masks_in_image
from .nms import batched_nms, batched_nms_rotated, batched_nms_topk, nms, nms_rotated
from .roi_align import ROIAlign, roi_align
from .roi_align_rotated import ROIAlignRotated, roi_align_rotated
from .rotated_boxes import pairwise_iou_rotated
from .shape_spec import ShapeSpec
from .winograd import winograd_available
from .wrappers import (
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Linear,
    cat,
    check_if_dynamo_compiling,
    cross_entropy,
    disable_torch_compiler,
    enable_winograd_conv,
    empty_input_loss_func_wrapper,
    interpolate,
    move_device_like,
    nonzero_tuple,
    shapes_to_tensor,
)
from .blocks import CNNBlockBase, DepthwiseSeparableConv2d
from .aspp import ASPP

__all__ = [k for k in globals().keys() if not k.startswith("_")]
