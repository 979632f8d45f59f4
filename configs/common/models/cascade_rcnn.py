"""Cascade Mask R-CNN: ``mask_rcnn_fpn.py``'s model with three class-agnostic box stages at
IoU 0.5 / 0.6 / 0.7, as Misc/cascade_mask_rcnn_R_50_FPN_*.yaml."""

from segtron.config import LazyCall as L
from segtron.layers import ShapeSpec
from segtron.modeling.box_regression import Box2BoxTransform
from segtron.modeling.matcher import Matcher
from segtron.modeling.roi_heads import CascadeROIHeads, FastRCNNConvFCHead, FastRCNNOutputLayers

from .mask_rcnn_fpn import model

# Arguments that Cascade R-CNN replaces by one per stage.
for _key in ("box_head", "box_predictor", "proposal_matcher"):
    model.roi_heads.pop(_key)

model.roi_heads.update(
    _target_=CascadeROIHeads,
    box_heads=[
        L(FastRCNNConvFCHead)(
            input_shape=ShapeSpec(channels=256, height=7, width=7),
            conv_dims=[],
            fc_dims=[1024, 1024],
        )
        for _ in range(3)
    ],
    box_predictors=[
        L(FastRCNNOutputLayers)(
            input_shape=ShapeSpec(channels=1024),
            test_score_thresh=0.05,
            box2box_transform=L(Box2BoxTransform)(weights=(w1, w1, w2, w2)),
            cls_agnostic_bbox_reg=True,
            num_classes="${...num_classes}",
        )
        for (w1, w2) in [(10, 5), (20, 10), (30, 15)]
    ],
    proposal_matchers=[
        L(Matcher)(thresholds=[th], labels=[0, 1], allow_low_quality_matches=False)
        for th in [0.5, 0.6, 0.7]
    ],
)
