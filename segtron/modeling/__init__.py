"""Models: backbones, proposal generators, ROI heads and meta-architectures, all registry-built.

Importing this package registers every builtin component, so ``build_model(cfg)`` can find any
name a Detectron2 config uses for the R-CNN family and the dense detectors.
"""

from ..layers import ShapeSpec
from .anchor_generator import ANCHOR_GENERATOR_REGISTRY, build_anchor_generator
from .backbone import (
    BACKBONE_REGISTRY,
    FPN,
    MViT,
    Backbone,
    ResNet,
    ResNetBlockBase,
    SimpleFeaturePyramid,
    SwinTransformer,
    TimmBackbone,
    ViT,
    build_backbone,
    build_resnet_backbone,
    get_vit_lr_decay_rate,
    make_stage,
)
from .meta_arch import (
    META_ARCH_REGISTRY,
    FCOS,
    DenseDetector,
    FCNHead,
    GeneralizedRCNN,
    PanopticFPN,
    ProposalNetwork,
    RetinaNet,
    SemanticSegmentor,
    SemSegFPNHead,
    build_model,
    build_sem_seg_head,
)
from .postprocessing import detector_postprocess
from .proposal_generator import (
    PROPOSAL_GENERATOR_REGISTRY,
    RPN_HEAD_REGISTRY,
    build_proposal_generator,
    build_rpn_head,
)
from .registries import SEM_SEG_HEADS_REGISTRY
from .roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_KEYPOINT_HEAD_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    BaseKeypointRCNNHead,
    BaseMaskRCNNHead,
    FastRCNNOutputLayers,
    ROIHeads,
    StandardROIHeads,
    build_box_head,
    build_keypoint_head,
    build_mask_head,
    build_roi_heads,
)
from .test_time_augmentation import DatasetMapperTTA, GeneralizedRCNNWithTTA

__all__ = [k for k in globals().keys() if not k.startswith("_")]
