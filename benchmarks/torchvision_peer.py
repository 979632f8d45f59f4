"""torchvision's Mask R-CNN R50-FPN as a peer for segtron's, doing the same work.

``build_pair`` returns torchvision's model and a segtron model configured to compute the same
function (torchvision's preprocessing, stride on the 3x3 conv, its pooler settings) and loaded
with torchvision's weights, so both process the same proposals and detections and a timing
ratio compares implementations rather than workloads. Only anchors (torchvision rounds them to
whole pixels) differ slightly.
"""

import torch

from segtron import model_zoo
from segtron.checkpoint.torchvision_model_loading import (
    TORCHVISION_PIXEL_MEAN,
    TORCHVISION_PIXEL_STD,
    rename_torchvision_resnet_key,
)
from segtron.modeling import build_model

__all__ = ["build_pair", "segtron_candidates", "NUM_CLASSES", "SEGTRON_MODES"]

NUM_CLASSES = 80  # foreground classes; torchvision counts background too (81)

# The segtron rows of a benchmark: name -> (MODEL.CHANNELS_LAST, MODEL.WINOGRAD_CONV).
SEGTRON_MODES = {
    "segtron": (False, False),
    "segtron MODEL.CHANNELS_LAST": (True, False),
    "segtron + MODEL.WINOGRAD_CONV": (True, True),
}


def build_torchvision(frozen_bn: bool, score_thresh: float):
    """torchvision's MaskRCNN R50-FPN, random init; FrozenBN (as for pretrained) or BatchNorm2d."""
    from torch import nn
    from torchvision.models import resnet50
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc

    norm = misc.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    trainable = 3 if frozen_bn else 5  # torchvision's defaults with and without pretrained weights
    backbone = _resnet_fpn_extractor(resnet50(norm_layer=norm), trainable)
    return MaskRCNN(backbone, num_classes=NUM_CLASSES + 1, box_score_thresh=score_thresh,
                    box_detections_per_img=100)


def build_segtron(frozen_bn: bool, score_thresh: float, min_size: int, max_size: int):
    """segtron's model-zoo Mask R-CNN R50-FPN set up to compute torchvision's function."""
    cfg = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(score_thresh),
        # torchvision: RGB in [0, 1] normalised by ImageNet statistics; stride on the 3x3 conv.
        "INPUT.FORMAT", "RGB",
        "MODEL.PIXEL_MEAN", str(TORCHVISION_PIXEL_MEAN),
        "MODEL.PIXEL_STD", str(TORCHVISION_PIXEL_STD),
        "MODEL.RESNETS.STRIDE_IN_1X1", "False",
        "MODEL.RESNETS.NORM", "FrozenBN" if frozen_bn else "BN",
        "MODEL.BACKBONE.FREEZE_AT", "2" if frozen_bn else "0",
        # torchvision's MultiScaleRoIAlign: aligned=False, sampling ratio 2.
        "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign",
        "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "2",
        "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlign",
        "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "2",
        "INPUT.MIN_SIZE_TEST", str(min_size),
        "INPUT.MAX_SIZE_TEST", str(max_size),
    ])
    return build_model(cfg)


def torchvision_to_segtron_state_dict(tv_state):
    """Rename torchvision MaskRCNN parameters to segtron's (Detectron2's) names.

    torchvision puts the background class first and predicts a box and a mask for it; segtron
    (Detectron2) puts background last and predicts neither, so those rows are reordered/dropped.
    """
    out = {}
    fg = torch.arange(1, NUM_CLASSES + 1)
    for key, value in tv_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key.startswith("backbone.body."):
            out["backbone.bottom_up." + rename_torchvision_resnet_key(key[len("backbone.body."):])] = value
        elif key.startswith("backbone.fpn.inner_blocks."):
            level, _, leaf = key[len("backbone.fpn.inner_blocks."):].split(".")
            out[f"backbone.fpn_lateral{int(level) + 2}.{leaf}"] = value
        elif key.startswith("backbone.fpn.layer_blocks."):
            level, _, leaf = key[len("backbone.fpn.layer_blocks."):].split(".")
            out[f"backbone.fpn_output{int(level) + 2}.{leaf}"] = value
        elif key.startswith("rpn.head."):
            leaf = key.split(".")[-1]
            module = {"conv": "conv", "cls_logits": "objectness_logits",
                      "bbox_pred": "anchor_deltas"}[key.split(".")[2]]
            out[f"proposal_generator.rpn_head.{module}.{leaf}"] = value
        elif key.startswith("roi_heads.box_head."):
            out[key.replace("fc6", "fc1").replace("fc7", "fc2")] = value
        elif key.startswith("roi_heads.box_predictor.cls_score."):
            out[key] = torch.cat([value[fg], value[:1]])  # background last
        elif key.startswith("roi_heads.box_predictor.bbox_pred."):
            out[key] = value[4:]  # drop the background box
        elif key.startswith("roi_heads.mask_head."):
            index, _, leaf = key[len("roi_heads.mask_head."):].split(".")
            out[f"roi_heads.mask_head.mask_fcn{int(index) + 1}.{leaf}"] = value
        elif key.startswith("roi_heads.mask_predictor.conv5_mask."):
            out["roi_heads.mask_head.deconv." + key.split(".")[-1]] = value
        elif key.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            out["roi_heads.mask_head.predictor." + key.split(".")[-1]] = value[fg]
        else:
            raise KeyError(f"No segtron name for torchvision parameter '{key}'.")
    return out


def build_pair(frozen_bn: bool, score_thresh: float = 0.0, min_size: int = 800,
               max_size: int = 1333):
    """(torchvision model, segtron model) with identical weights; both in train mode."""
    torch.manual_seed(0)
    tv_model = build_torchvision(frozen_bn, score_thresh)
    tv_model.transform.min_size = (min_size,)
    tv_model.transform.max_size = max_size
    st_model = build_segtron(frozen_bn, score_thresh, min_size, max_size)
    st_model.load_state_dict(torchvision_to_segtron_state_dict(tv_model.state_dict()), strict=True)
    return tv_model, st_model


def segtron_candidates(model, run_once):
    """One timing candidate per entry of ``SEGTRON_MODES``: each sets ``model``'s
    ``channels_last`` and ``winograd_conv`` (the two keys' runtime switches) and then calls
    ``run_once(name)``. Returns {name: zero-argument callable}."""

    def candidate(name, channels_last, winograd_conv):
        def run():
            model.channels_last = channels_last
            model.winograd_conv = winograd_conv
            return run_once(name)
        return run

    return {name: candidate(name, *flags) for name, flags in SEGTRON_MODES.items()}
