"""FCOS (anchor-free, GN head, P6/P7 from P5): ``retinanet.py``'s model turned into the model
of COCO-Detection/fcos_R_50_FPN_1x.yaml."""

from segtron.modeling.meta_arch.fcos import FCOS, FCOSHead

from .retinanet import model

model._target_ = FCOS

del model.anchor_generator
del model.box2box_transform
del model.anchor_matcher
del model.input_format

# P6/P7 are computed from P5 instead of C5 (Sec. 2.2 of https://arxiv.org/abs/2006.09214).
model.backbone.top_block.in_feature = "p5"
model.backbone.top_block.in_channels = 256

# Scores are sqrt(classification score * centerness), hence a higher threshold.
model.test_score_thresh = 0.2
model.test_nms_thresh = 0.6

model.head._target_ = FCOSHead
del model.head.num_anchors
model.head.norm = "GN"
