# mask_rcnn_R_50_FPN_100ep_LSJ.py with a RegNetY-4.0GF backbone (squeeze-excitation), as
# COCO-InstanceSegmentation/mask_rcnn_regnety_4gf_dds_fpn_1x.py of Detectron2.
from segtron.config import LazyCall as L
from segtron.modeling.backbone import RegNet
from segtron.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem

from .mask_rcnn_R_50_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up = L(RegNet)(
    stem_class=SimpleStem,
    stem_width=32,
    block_class=ResBottleneckBlock,
    depth=22,
    w_a=31.41,
    w_0=96,
    w_m=2.24,
    group_width=64,
    se_ratio=0.25,
    norm="SyncBN",
    out_features=["s1", "s2", "s3", "s4"],
)
# pycls ImageNet models expect the ImageNet std (BGR), unlike MSRA's ResNets.
model.pixel_std = [57.375, 57.120, 58.395]

# RegNets benefit from cudnn's benchmark mode.
train.cudnn_benchmark = True
