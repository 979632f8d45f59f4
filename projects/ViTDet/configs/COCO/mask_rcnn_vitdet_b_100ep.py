# ViTDet-B Mask R-CNN on COCO, 100 epochs of LSJ from MAE-pretrained ViT-B weights:
# Detectron2's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py.
#
#   python tools/lazyconfig_train_net.py \
#       --config-file projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py
from functools import partial

from fvcore.common.param_scheduler import MultiStepParamScheduler

from segtron import model_zoo
from segtron.config import LazyCall as L
from segtron.modeling import get_vit_lr_decay_rate
from segtron.solver import WarmupParamScheduler

from ..common.coco_loader_lsj import dataloader

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model

# Initialization and trainer settings
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = (
    "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth?matching_heuristics=True"
)

# Schedule: 100 epochs = 184375 iterations * 64 images / 118000 images per epoch.
train.max_iter = 184375

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

# AdamW with layer-wise LR decay: block i of the 12 gets 0.7 ** (12 - i) of the LR, the patch
# and position embeddings 0.7 ** 13, the pyramid and heads the full LR; no weight decay on
# pos_embed.
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}
