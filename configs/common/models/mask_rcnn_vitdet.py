# Mask R-CNN with a ViT-B/16 backbone and a simple feature pyramid: Detectron2's
# configs/common/models/mask_rcnn_vitdet.py (ViTDet, arXiv:2203.16527), built on segtron's
# configs/common/models/mask_rcnn_fpn.py with its backbone replaced.
from functools import partial

import torch.nn as nn

from segtron import model_zoo
from segtron.config import LazyCall as L
from segtron.modeling import SimpleFeaturePyramid, ViT
from segtron.modeling.backbone.fpn import LastLevelMaxPool

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
constants = model_zoo.get_config("common/data/constants.py").constants

# ViT checkpoints are pre-trained on RGB images normalised with the ImageNet statistics.
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"

# ViT-B: width, depth, heads, stochastic depth rate.
embed_dim, depth, num_heads, dp = 768, 12, 12, 0.1
model.backbone = L(SimpleFeaturePyramid)(
    net=L(ViT)(  # single-scale ViT, stride 16
        img_size=1024,
        patch_size=16,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        drop_path_rate=dp,
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        # 14x14 window attention everywhere but blocks 2, 5, 8 and 11 (global attention)
        window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
        residual_block_indexes=[],
        use_rel_pos=True,
        out_feature="last_feat",
    ),
    in_feature="${.net.out_feature}",
    out_channels=256,
    scale_factors=(4.0, 2.0, 1.0, 0.5),  # p2 .. p5 (strides 4 .. 32); p6 from the top block
    top_block=L(LastLevelMaxPool)(),
    norm="LN",
    square_pad=1024,  # every image padded to 1024 x 1024
)

# Channels-first layer norm in the ROI heads' convs.
model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = "LN"

# Two 3x3 convs in the RPN head (-1: as many channels as the input).
model.proposal_generator.head.conv_dims = [-1, -1]

# 4conv1fc box head.
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
