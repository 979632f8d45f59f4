"""The SSD project's config keys: :func:`add_ssd_config` (also exported as ``add_config``).

Defaults are those of torchvision's ``ssd300_vgg16`` (itself the COCO SSD300 of Liu et al.),
so a config that only selects the architecture builds that model.
"""

from segtron.config import CfgNode, add_missing_keys

__all__ = ["add_ssd_config"]

# (dotted key, default, comment) for every key the project reads.
_SSD_KEYS = (
    ("MODEL.SSD.NUM_CLASSES", 80,
     "K, the number of object classes (background is not counted; the classifier predicts "
     "K + 1 scores per default box, background first)."),
    ("MODEL.SSD.IN_FEATURES",
     ["conv4_3", "conv7", "conv8_2", "conv9_2", "conv10_2", "conv11_2"],
     "Backbone outputs that get default boxes and a head, finest first."),
    ("MODEL.SSD.IMAGE_SIZE", 300,
     "Every image is resized (bilinear, aspect ratio not kept) to IMAGE_SIZE x IMAGE_SIZE "
     "pixels inside the model; the default boxes are laid out on that square."),
    ("MODEL.SSD.EXTRA_LAYERS", "SSD300",
     "The layers after conv7 of build_ssd_vgg_backbone: 'SSD300' (conv8_2 .. conv11_2: maps "
     "10, 5, 3, 1 at 300 px) or 'SSD512' (conv8_2 .. conv12_2: 16, 8, 4, 2, 1 at 512 px)."),
    ("MODEL.SSD.L2NORM_SCALE", 20.0,
     "Initial value of the learnable per-channel scale applied to the L2-normalised conv4_3."),
    ("MODEL.SSD.SCALES", [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05],
     "Default-box scales s_1 .. s_{m+1} as fractions of the image side, one per feature map "
     "plus one (s_{m+1} only sizes the last map's extra sqrt(s_m * s_{m+1}) box). Empty: "
     "derive them from MIN_SCALE / MAX_SCALE. Default: torchvision's 300 px COCO scales."),
    ("MODEL.SSD.MIN_SCALE", 0.2,
     "When SCALES is empty: s_k = MIN_SCALE + (MAX_SCALE - MIN_SCALE) * (k - 1) / (m - 1) for "
     "the m maps (paper, Eq. 4), and s_{m+1} = 1."),
    ("MODEL.SSD.MAX_SCALE", 0.9, "When SCALES is empty: the scale of the last (coarsest) map."),
    ("MODEL.SSD.ASPECT_RATIOS", [[2], [2, 3], [2, 3], [2, 3], [2], [2]],
     "Per feature map, the aspect ratios r beyond 1: each adds two boxes (w/h = r and 1/r) to "
     "the two square ones, so a map has 2 + 2 * len(ratios) boxes per location."),
    ("MODEL.SSD.STEPS", [8, 16, 32, 64, 100, 300],
     "Per feature map, the distance in input pixels between neighbouring box centres (centre "
     "of cell j: (j + 0.5) * step). Empty: IMAGE_SIZE / the map's size."),
    ("MODEL.SSD.CLIP_PRIORS", True,
     "Clamp each default box's width and height to the image size (centres are not moved)."),
    ("MODEL.SSD.IOU_THRESHOLD", 0.5,
     "Training: a default box is positive for the ground truth it overlaps most when that IoU "
     "is >= this; each ground truth also claims its best-overlapping box."),
    ("MODEL.SSD.NEG_POS_RATIO", 3.0,
     "Hard negative mining: per image, at most this many negatives (the highest background "
     "losses) per positive enter the classification loss."),
    ("MODEL.SSD.BBOX_REG_WEIGHTS", (10.0, 10.0, 5.0, 5.0),
     "Box-coder weights (wx, wy, ww, wh): the paper's variances 0.1 (centre) and 0.2 (size)."),
    ("MODEL.SSD.SMOOTH_L1_BETA", 1.0, "Beta of the smooth-L1 box loss (1.0: the paper's)."),
    ("MODEL.SSD.SCORE_THRESH_TEST", 0.01,
     "Inference: a (box, class) candidate needs a softmax score above this."),
    ("MODEL.SSD.TOPK_CANDIDATES_TEST", 400,
     "Inference: per class, at most this many highest-scoring candidates enter NMS."),
    ("MODEL.SSD.NMS_THRESH_TEST", 0.45, "Inference: IoU threshold of the per-class NMS."),
    # build_ssd_resnet_backbone only (resnet.py); the ResNet itself is MODEL.RESNETS.
    ("MODEL.SSD.RESNET_LAYOUT", "nvidia",
     "'nvidia': ResNet up to res4 with res4's first stride 1 (stride 8, no dilation), then "
     "extra1 .. extra5 (512, 512, 256, 256, 256 channels; 38, 19, 10, 5, 3, 1 at 300 px). "
     "'multi_level': res3, res4, res5 of the plain ResNet (strides 8, 16, 32), then 3x3 "
     "stride-2 extras (64, 128, ...). IN_FEATURES names the maps; as many extras are built as "
     "the highest 'extraN' it names."),
    ("MODEL.SSD.RESNET_EXTRA_NORM", "BN",
     "Norm of the ResNet backbone's extra blocks (each a 1x1 conv to half the channels, then a "
     "3x3 conv, each with this norm and a ReLU): any MODEL.RESNETS.NORM value but 'FrozenBN' "
     "(the extras start untrained), or '' for none (the convs then get biases)."),
    ("MODEL.SSD.RESNET_EXTRA_CHANNELS", [],
     "Output channels of each extra block of the ResNet backbone, one per block built. Empty: "
     "NVIDIA's 512, 512, 256, 256, 256 ('nvidia'), or res5's channels for every block "
     "('multi_level')."),
    # -- training data (DATALOADER.TRAIN_LOADER "SSDAugmentedLoader", training.py) ------------
    ("INPUT.SSD_AUG.PHOTOMETRIC", True,
     "Random brightness, contrast, saturation and hue (SSDPhotometricDistortion)."),
    ("INPUT.SSD_AUG.EXPAND_PROB", 0.5,
     "Probability of zooming out (SSDExpand) onto a canvas of MODEL.PIXEL_MEAN; 0: never."),
    ("INPUT.SSD_AUG.EXPAND_MAX_RATIO", 4.0,
     "Largest canvas side of the zoom-out, as a multiple of the image side."),
    ("INPUT.SSD_AUG.MIN_IOU_CROP", True,
     "Crop a patch whose IoU with the boxes reaches a random minimum (SSDMinIoURandomCrop)."),
)


def add_ssd_config(cfg: CfgNode) -> None:
    """Add the SSD project's keys, with torchvision's ``ssd300_vgg16`` defaults, to ``cfg``
    (in place).

    Only missing keys are added: a key ``cfg`` already has keeps its value, so calling it twice,
    or after a merge, changes nothing. Missing intermediate nodes (``MODEL.SSD``) are created.
    The number of detections kept per image is the core key TEST.DETECTIONS_PER_IMAGE (set it
    to torchvision's 200 in SSD configs).
    """
    add_missing_keys(cfg, _SSD_KEYS)
