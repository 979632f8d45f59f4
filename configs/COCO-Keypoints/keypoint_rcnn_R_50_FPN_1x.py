# LazyConfig twin of keypoint_rcnn_R_50_FPN_1x.yaml. Loading it needs the metadata of
# keypoints_coco_2017_train (registered by segtron.data), whose flip map it reads.
from ..common.coco_schedule import lr_multiplier_1x as lr_multiplier
from ..common.data.coco_keypoint import dataloader
from ..common.models.keypoint_rcnn_fpn import model
from ..common.optim import SGD as optimizer
from ..common.train import train

model.backbone.bottom_up.freeze_at = 2
# As MODEL.WEIGHTS of the YAML twin (Detectron2's .py twin leaves the empty default).
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
