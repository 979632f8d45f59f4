"""Keypoint R-CNN with a ResNet-50 FPN backbone: ``mask_rcnn_fpn.py``'s model with a keypoint
head instead of the mask head, as COCO-Keypoints/keypoint_rcnn_R_50_FPN_*.yaml."""

from segtron import model_zoo
from segtron.config import LazyCall as L
from segtron.layers import ShapeSpec
from segtron.modeling.poolers import ROIPooler
from segtron.modeling.roi_heads import KRCNNConvDeconvUpsampleHead

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

for _key in ("mask_in_features", "mask_pooler", "mask_head"):
    model.roi_heads.pop(_key)

model.roi_heads.update(
    num_classes=1,
    keypoint_in_features=["p2", "p3", "p4", "p5"],
    keypoint_pooler=L(ROIPooler)(
        output_size=14,
        scales=(1.0 / 4, 1.0 / 8, 1.0 / 16, 1.0 / 32),
        sampling_ratio=0,
        pooler_type="ROIAlignV2",
    ),
    keypoint_head=L(KRCNNConvDeconvUpsampleHead)(
        input_shape=ShapeSpec(channels=256, width=14, height=14),
        num_keypoints=17,
        conv_dims=[512] * 8,
        loss_normalizer="visible",
    ),
)

# Detectron1 used 2000 proposals per batch; here the count is per image, and 1000 per image
# hurts box AP, hence 1500 in training.
model.proposal_generator.post_nms_topk = (1500, 1000)

# Keypoint AP degrades (box AP improves) with a plain L1 box loss.
model.roi_heads.box_predictor.smooth_l1_beta = 0.5
