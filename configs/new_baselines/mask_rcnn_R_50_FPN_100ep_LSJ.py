# Mask R-CNN R-50 FPN trained from scratch for 100 epochs with large-scale jitter (LSJ),
# SyncBN everywhere, a 4conv1fc box head and a 2-conv RPN head (Detectron2's new baselines).
import segtron.data.transforms as T
from fvcore.common.param_scheduler import MultiStepParamScheduler
from segtron.config.lazy import LazyCall as L
from segtron.solver import WarmupParamScheduler

from ..common.data.coco import dataloader
from ..common.models.mask_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

# Train from scratch.
train["init_checkpoint"] = ""
train["amp"]["enabled"] = True
train["ddp"]["fp16_compression"] = True
model.backbone.bottom_up.freeze_at = 0

# SyncBN in the backbone and FPN.
# fmt: off
model.backbone.bottom_up.stem.norm = \
    model.backbone.bottom_up.stages.norm = \
    model.backbone.norm = "SyncBN"

# The heads use NaiveSyncBatchNorm(stats_mode="N"), which accepts the empty batches a head can
# get (torch.nn.SyncBatchNorm does not: https://github.com/pytorch/pytorch/issues/36530).
# Detectron2 writes it as `lambda c: NaiveSyncBatchNorm(c, stats_mode="N")`; its get_norm name
# "naiveSyncBN_N" builds the same layer and keeps the config savable as YAML.
model.roi_heads.box_head.conv_norm = \
    model.roi_heads.mask_head.conv_norm = "naiveSyncBN_N"
# fmt: on

# Two 3x3 convs in the RPN head, as in the TPU detection models (-1: as many channels as the
# input): tensorflow/tpu models/official/detection/modeling/architecture/heads.py
model.proposal_generator.head.conv_dims = [-1, -1]

# 4conv1fc box head.
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]

# Large-scale jitter: resize by a random 0.1-2.0 of 1024x1024, then crop / pad to 1024x1024,
# as resize_and_crop_image of tensorflow/tpu models/official/detection/utils/input_utils.py.
image_size = 1024
dataloader.train.mapper.augmentations = [
    L(T.ResizeScale)(
        min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size
    ),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size)),
    L(T.RandomFlip)(horizontal=True),
]

# Cropping cuts boxes: recompute them from the masks.
dataloader.train.mapper.recompute_boxes = True

# Larger batch.
dataloader.train.total_batch_size = 64

# 100 epochs: 184375 iterations * 64 images / 118000 images per epoch.
train["max_iter"] = 184375

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=500 / train.max_iter,
    warmup_factor=0.067,
)

optimizer.lr = 0.1
optimizer.weight_decay = 4e-5
