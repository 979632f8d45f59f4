# A tiny ViTDet Mask R-CNN that trains from scratch on the synthetic shapes dataset on a CPU:
# the structure of ../COCO/mask_rcnn_vitdet_b_100ep.py (plain ViT with window + global
# attention and relative positions, simple feature pyramid, LN heads, LSJ data, AdamW) at a
# fraction of its width, depth and image size.
#
#   python tools/lazyconfig_train_net.py \
#       --config-file projects/ViTDet/configs/Shapes/mask_rcnn_vitdet_tiny.py
#   ... train.max_iter=100 dataloader.train.total_batch_size=2      # key=value overrides
#
# Measured with this file at 1 thread (OMP_NUM_THREADS=1) on 2 cores shared with other jobs:
# 1500 iterations in 11 min 13 s (0.45 s each), 11 min 55 s with the three evaluations on
# shapes_val (~12 s each); at the end 7.4 bbox AP, 6.8 segm AP (5.6 / 4.8 at iteration 1000).
# A plain ViT from scratch stays far below the ResNet-18 shapes configs (50-70 bbox AP) in
# this budget: what decides its AP is the backbone, not the heads or the optimiser. Choosing
# it (shapes_val bbox AP; 500-iteration runs are ~1-2 AP apart, within seed noise):
# - 8 px patches (24 x 24 tokens) instead of 16 (12 x 12): 1500 iterations at 16 px gave 4.7
#   bbox AP; 8 px patches cost 1.45x the time per iteration (0.90 s against 0.62 side by side).
# - Residual bottleneck conv blocks after the 4 blocks (ViTDet's residual_block_indexes): 2.2
#   AP at 500 iterations against 1.4 without; 1500 iterations: 6.5 bbox / 5.3 segm AP.
# - 4 x 4 windows in blocks 0 and 2 instead of 8 x 8: 7.4 / 6.8 at 1500 iterations (cheaper).
# - No gain at 500 iterations from: AdamW at 2e-3 with gradient clipping (0.4) or 4e-4 (1.0),
#   width 192 (1.0, 1.6x the time), milder scale jitter 0.75-1.25 (1.0); at 1500 iterations
#   2e-3 lagged (0.5 AP at 500) and a 0.5 ROI positive fraction ended at 5.6 (6.5 without).
# - Testing at 256 px (square_pad 256) instead of 192: +0.4 AP only.
# - The half-width ResNet-18 FPN in place of the ViT with everything else here: 9.5 bbox AP at
#   500 iterations, against 1-2 for the ViTs: the box classifier starts to name foreground
#   classes after ~300 iterations on the ResNet, ~900 on the ViT (fast_rcnn/fg_cls_accuracy).
import segtron.data.transforms as T
from fvcore.common.param_scheduler import CosineParamScheduler

from segtron import model_zoo
from segtron.config import LazyCall as L
from segtron.layers import ShapeSpec
from segtron.modeling.backbone.fpn import LastLevelP6P7
from segtron.solver import WarmupParamScheduler

from ..common.coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

image_size = 192  # the shapes images are ~256 px; trained and tested on a 192 px square
dim = 64  # pyramid and head width

# ViT: 4 blocks of width 96 (3 heads), 8 px patches -> a 24 x 24 token map; blocks 0 and 2
# attend inside 4 x 4 windows, 1 and 3 globally; each block is followed by ViTDet's residual
# bottleneck conv block. From scratch: the position embedding is learned at the training size,
# without a class-token slot.
net = model.backbone.net
net.img_size = image_size
net.patch_size = 8
net.embed_dim, net.depth, net.num_heads = 96, 4, 3
net.drop_path_rate = 0.0
net.window_size = 4
net.window_block_indexes = [0, 2]
net.residual_block_indexes = [0, 1, 2, 3]
net.pretrain_img_size = image_size
net.pretrain_use_cls_token = False
# Stride 8 in: p2-p4 by deconvolution / identity / max-pooling (the pyramid's 2.0, 1.0, 0.5),
# p5 and p6 by two stride-2 convs from p4 (Detectron2's LastLevelP6P7), so the levels keep the
# strides 4-64 of the anchors below.
model.backbone.scale_factors = (2.0, 1.0, 0.5)
model.backbone.top_block = L(LastLevelP6P7)(in_channels=dim, out_channels=dim, in_feature="p4")
model.backbone.out_channels = dim
model.backbone.square_pad = image_size

# Heads at width 64: 2-conv RPN head, 2conv1fc box head, 2-conv mask head.
model.proposal_generator.head.in_channels = dim
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.pre_nms_topk = (500, 300)
model.proposal_generator.post_nms_topk = (200, 100)
roi_heads = model.roi_heads
roi_heads.num_classes = 5  # circle, square, triangle, star, cross
roi_heads.batch_size_per_image = 64
roi_heads.box_head.input_shape = ShapeSpec(channels=dim, height=7, width=7)
roi_heads.box_head.conv_dims = [dim, dim]
roi_heads.box_head.fc_dims = [256]
roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
roi_heads.box_predictor.test_topk_per_image = 50
roi_heads.mask_head.input_shape = ShapeSpec(channels=dim, width=14, height=14)
roi_heads.mask_head.conv_dims = [dim, dim, dim]  # two 3x3 convs, then the deconv
roi_heads.mask_head.num_classes = 1  # class-agnostic masks (a value, not the link above)

# LSJ at the shapes' scale: flip, resize by 0.5-1.5 of 192 x 192, crop to at most 192 x 192.
dataloader.train.dataset.names = "shapes_train"
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(
        min_scale=0.5, max_scale=1.5, target_height=image_size, target_width=image_size
    ),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.instance_mask_format = "bitmask"  # occluded shapes are stored as RLE
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 0  # a CPU machine: loading in the main process costs less
dataloader.test.dataset.names = "shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size),
]
dataloader.test.num_workers = 0

train = model_zoo.get_config("common/train.py").train
train.output_dir = "./output/shapes_mask_rcnn_vitdet_tiny"
train.init_checkpoint = ""  # from scratch
train.max_iter = 1500
train.checkpointer.period = 500
train.eval_period = 500
train.device = "cpu"
train.seed = 42
dataloader.evaluator.output_dir = "${train.output_dir}/inference"

# AdamW at 1e-3 without weight decay on norms or pos_embed. The COCO config's layer-wise LR
# decay (lr_factor_func) is left out: it protects pre-trained early blocks, and these start
# from scratch.
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 0.001
optimizer.weight_decay = 0.05
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}

# 150 warmup iterations from 0.1% of the LR, then a cosine decay to 0 at train.max_iter.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=150 / 1500,
    warmup_factor=0.001,
)
