# Cascade Mask R-CNN with a Swin-B backbone (ImageNet-21k weights), 50 epochs of LSJ:
# Detectron2's projects/ViTDet/configs/COCO/cascade_mask_rcnn_swin_b_in21k_50ep.py.
# Detectron2 takes the model of cascade_mask_rcnn_mvitv2_b_in21k_100ep.py and swaps its MViT
# for Swin; that model (FPN with LN, 2-conv RPN head, three 4conv1fc LN box stages, LN mask
# head, ImageNet RGB input) is written out here so this file stands alone.
#
#   python tools/lazyconfig_train_net.py \
#       --config-file projects/ViTDet/configs/COCO/cascade_mask_rcnn_swin_b_in21k_50ep.py
from segtron import model_zoo
from segtron.config import LazyCall as L
from segtron.modeling import SwinTransformer

from ..common.coco_loader_lsj import dataloader
from .mask_rcnn_vitdet_b_100ep import lr_multiplier, train

model = model_zoo.get_config("common/models/cascade_rcnn.py").model
constants = model_zoo.get_config("common/data/constants.py").constants

# Swin checkpoints are pre-trained on RGB images normalised with the ImageNet statistics.
model.pixel_mean = constants.imagenet_rgb256_mean
model.pixel_std = constants.imagenet_rgb256_std
model.input_format = "RGB"

# Swin-B: width 128, 2-2-18-2 blocks, 4-8-16-32 heads, 7x7 windows; outputs p0..p3 (strides
# 4..32) feed the FPN, whose LastLevelMaxPool adds stride 64.
model.backbone.bottom_up = L(SwinTransformer)(
    depths=[2, 2, 18, 2],
    drop_path_rate=0.4,
    embed_dim=128,
    num_heads=[4, 8, 16, 32],
)
model.backbone.in_features = ("p0", "p1", "p2", "p3")
model.backbone.square_pad = 1024  # every image padded to 1024 x 1024
model.backbone.norm = "LN"  # LN in the FPN

# Two 3x3 convs in the RPN head (-1: as many channels as the input).
model.proposal_generator.head.conv_dims = [-1, -1]

# Each cascade stage: 4conv1fc box head with LN; the mask head's convs use LN too.
for box_head in model.roi_heads.box_heads:
    box_head.conv_dims = [256, 256, 256, 256]
    box_head.fc_dims = [1024]
    box_head.conv_norm = "LN"
model.roi_heads.mask_head.conv_norm = "LN"

# Trainer settings and schedule: ViTDet-B's (AMP, 100 epochs of LSJ), from Swin's ImageNet-21k
# weights, halved to 50 epochs (milestones too).
train.init_checkpoint = "detectron2://ImageNetPretrained/swin/swin_base_patch4_window7_224_22k.pth"
train.max_iter = train.max_iter // 2
lr_multiplier.scheduler.milestones = [m // 2 for m in lr_multiplier.scheduler.milestones]
lr_multiplier.scheduler.num_updates = train.max_iter

# AdamW; no weight decay on the relative position bias tables.
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 4e-5
optimizer.weight_decay = 0.05
optimizer.params.overrides = {"relative_position_bias_table": {"weight_decay": 0.0}}
