# The CPU quickstart as a Python (LazyConfig) config: the twin of mask_rcnn_R_18_FPN_demo.yaml
# (which explains every choice), with the same model, data, optimiser and schedule written as
# LazyCall on segtron's classes. Train it with tools/lazyconfig_train_net.py:
#
#   python tools/lazyconfig_train_net.py --config-file configs/Shapes/mask_rcnn_R_18_FPN.py
#   python tools/lazyconfig_train_net.py --config-file configs/Shapes/mask_rcnn_R_18_FPN.py \
#       train.max_iter=100 dataloader.train.total_batch_size=2        # key=value overrides
#
# The data, optimiser and training options start from ../common (Detectron2's files) and are
# changed below; the model is written out whole, as nearly every value of
# ../common/models/mask_rcnn_fpn.py would change (widths, depth, norms, sizes, heads).
import torch
from fvcore.common.param_scheduler import CosineParamScheduler

import segtron.data.transforms as T
from segtron.config import LazyCall as L
from segtron.layers import ShapeSpec
from segtron.modeling.anchor_generator import DefaultAnchorGenerator
from segtron.modeling.backbone import FPN, BasicBlock, BasicStem, ResNet
from segtron.modeling.backbone.fpn import LastLevelMaxPool
from segtron.modeling.box_regression import Box2BoxTransform
from segtron.modeling.matcher import Matcher
from segtron.modeling.meta_arch import GeneralizedRCNN
from segtron.modeling.poolers import ROIPooler
from segtron.modeling.proposal_generator import RPN, StandardRPNHead
from segtron.modeling.roi_heads import (
    FastRCNNConvFCHead,
    FastRCNNOutputLayers,
    MaskRCNNConvUpsampleHead,
    StandardROIHeads,
)
from segtron.solver import WarmupParamScheduler, maybe_add_gradient_clipping

from ..common.data.coco import dataloader
from ..common.optim import AdamW as optimizer
from ..common.train import train

NUM_CLASSES = 5        # circle, square, triangle, star, cross
NORM = "naiveSyncBN"   # batch statistics; averaged across processes when there are several
FPN_DIM = 48           # a 48-channel FPN
STAGE_WIDTHS = [32, 64, 128, 256]  # a half-width ResNet-18 (stem of 32 channels)
POOLED_LEVELS = ["p2", "p3", "p4", "p5"]
LEVEL_SCALES = (1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32)


def _resnet18_stage(index):
    """res2..res5 of the half-width ResNet-18: two basic blocks, the first strided (but res2's)."""
    in_channels = STAGE_WIDTHS[index - 1] if index else STAGE_WIDTHS[0]
    return L(ResNet.make_stage)(
        block_class=BasicBlock,
        num_blocks=2,
        in_channels=in_channels,
        out_channels=STAGE_WIDTHS[index],
        stride_per_block=[1 if index == 0 else 2, 1],
        norm=NORM,
    )


model = L(GeneralizedRCNN)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=STAGE_WIDTHS[0], norm=NORM),
            stages=[_resnet18_stage(i) for i in range(4)],
            out_features=["res2", "res3", "res4", "res5"],
            freeze_at=0,  # from scratch: every stage trains
        ),
        in_features="${.bottom_up.out_features}",
        out_channels=FPN_DIM,
        top_block=L(LastLevelMaxPool)(),
    ),
    proposal_generator=L(RPN)(
        in_features=["p2", "p3", "p4", "p5", "p6"],
        head=L(StandardRPNHead)(in_channels=FPN_DIM, num_anchors=3),
        anchor_generator=L(DefaultAnchorGenerator)(
            sizes=[[16], [32], [64], [128], [256]],  # shapes span ~10 to ~170 px
            aspect_ratios=[0.5, 1.0, 2.0],
            strides=[4, 8, 16, 32, 64],
            offset=0.0,
        ),
        anchor_matcher=L(Matcher)(
            thresholds=[0.3, 0.7], labels=[0, -1, 1], allow_low_quality_matches=True
        ),
        box2box_transform=L(Box2BoxTransform)(weights=[1.0, 1.0, 1.0, 1.0]),
        batch_size_per_image=256,
        positive_fraction=0.5,
        pre_nms_topk=(500, 300),   # (training, test), per level
        post_nms_topk=(200, 100),  # (training, test), per image
        nms_thresh=0.7,
    ),
    roi_heads=L(StandardROIHeads)(
        num_classes=NUM_CLASSES,
        batch_size_per_image=64,  # at most 8 objects per image
        positive_fraction=0.25,
        proposal_matcher=L(Matcher)(
            thresholds=[0.5], labels=[0, 1], allow_low_quality_matches=False
        ),
        box_in_features=POOLED_LEVELS,
        box_pooler=L(ROIPooler)(
            output_size=7, scales=LEVEL_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        box_head=L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=FPN_DIM, height=7, width=7),
            conv_dims=[],
            fc_dims=[256, 256],
        ),
        box_predictor=L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=256),
            test_score_thresh=0.05,
            test_topk_per_image=50,
            box2box_transform=L(Box2BoxTransform)(weights=(10, 10, 5, 5)),
            num_classes="${..num_classes}",
            cls_agnostic_bbox_reg=True,  # every object trains the same regressor
        ),
        mask_in_features=POOLED_LEVELS,
        mask_pooler=L(ROIPooler)(
            output_size=14, scales=LEVEL_SCALES, sampling_ratio=0, pooler_type="ROIAlignV2"
        ),
        mask_head=L(MaskRCNNConvUpsampleHead)(
            input_shape=ShapeSpec(channels=FPN_DIM, width=14, height=14),
            num_classes=1,  # class-agnostic masks
            conv_dims=[48, 48, 48, 48, 48],  # four 3x3 convs, then the deconv
        ),
    ),
    pixel_mean=[103.530, 116.280, 123.675],
    # Random colours: the usual ImageNet std, not Detectron2's 1.0 (meant for Caffe2 weights).
    pixel_std=[57.375, 57.120, 58.395],
    input_format="BGR",
    channels_last=True,  # NHWC convolutions: faster on CPU
)

# The COCO data settings of ../common/data/coco.py, moved to the shapes dataset at the quickstart's
# sizes: 144 px on average in training (the data is drawn at ~256: a step costs less than half),
# tested larger than trained (upsampled small objects are found and outlined better).
dataloader.train.dataset.names = "shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(128, 144, 160), max_size=240, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.mapper.instance_mask_format = "bitmask"  # occluded shapes are stored as RLE
dataloader.train.total_batch_size = 4  # from scratch, more updates beat bigger ones
dataloader.train.num_workers = 0  # 2 cores: loading in the main process costs less
dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=208, max_size=350, sample_style="choice"),
]
dataloader.test.num_workers = 0
dataloader.evaluator.output_dir = "${train.output_dir}/inference"

# AdamW at 2e-3 (no weight decay on norms), with the YAML's SOLVER.CLIP_GRADIENTS: the optimizer
# class is maybe_add_gradient_clipping's subclass of AdamW, whose step() first clips the norm of
# all gradients taken together to 5 (against early spikes).
optimizer.lr = 0.002
optimizer.weight_decay = 1e-4
optimizer.foreach = True  # one multi-tensor update: the per-parameter loop is slow on CPU
optimizer._target_ = L(maybe_add_gradient_clipping)(
    cfg=dict(SOLVER=dict(CLIP_GRADIENTS=dict(
        ENABLED=True, CLIP_TYPE="full_model", CLIP_VALUE=5.0, NORM_TYPE=2.0))),
    optimizer=torch.optim.AdamW,
)

train.output_dir = "./output/shapes_mask_rcnn_py"
train.init_checkpoint = ""  # from scratch: nothing pretrained can be downloaded here
train.max_iter = 1750
train.checkpointer.period = 500  # a crash loses at most 500 iterations (--resume continues)
train.eval_period = 600  # COCO AP during training too, for the AP curve
train.device = "cpu"
train.seed = 42

# 200 warmup iterations from 1% of the LR, then a cosine decay to 0 at train.max_iter. The
# warmup is a fraction of training: overriding train.max_iter keeps 200/1750 of it.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=200 / 1750,
    warmup_factor=0.01,
    warmup_method="linear",
)
