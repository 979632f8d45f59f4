"""The DeepLab project's config keys: :func:`add_deeplab_config` (Detectron2's name and
defaults)."""

from segtron.config import CfgNode, add_missing_keys

__all__ = ["add_deeplab_config"]

# (dotted key, default, comment) for every key the project reads. RES4_DILATION is a segtron core
# key already (see segtron/config/defaults.py); Detectron2 adds it here.
_DEEPLAB_KEYS = (
    ("INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", 1.0,
     "Random crops are retried until no single category covers more than this fraction of the "
     "crop's labelled pixels (1.0: any crop)."),
    ("SOLVER.POLY_LR_POWER", 0.9, "WarmupPolyLR: lr = base_lr * (1 - iter / MAX_ITER) ** power."),
    ("SOLVER.POLY_LR_CONSTANT_ENDING", 0.0,
     "WarmupPolyLR: once the poly factor falls below this, hold lr at base_lr * this (0: off)."),
    ("MODEL.SEM_SEG_HEAD.LOSS_TYPE", "hard_pixel_mining",
     "'cross_entropy' over every labelled pixel, or 'hard_pixel_mining' (DeepLabCE over the "
     "20% of pixels with the largest loss)."),
    ("MODEL.SEM_SEG_HEAD.PROJECT_FEATURES", ["res2"],
     "DeepLabV3PlusHead: the low-level features the decoder fuses (finest first)."),
    ("MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", [48],
     "DeepLabV3PlusHead: channels each low-level feature is projected to by a 1x1 conv."),
    ("MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", 256, "Channels of every ASPP branch and of its output."),
    ("MODEL.SEM_SEG_HEAD.ASPP_DILATIONS", [6, 12, 18],
     "The 3 dilations of ASPP's 3x3 branches (for output stride 16; double them at 8)."),
    ("MODEL.SEM_SEG_HEAD.ASPP_DROPOUT", 0.1, "Dropout on ASPP's output, in training."),
    ("MODEL.SEM_SEG_HEAD.USE_DEPTHWISE_SEPARABLE_CONV", False,
     "Depthwise-separable convs in ASPP's dilated branches and in the V3+ decoder (one 5x5 "
     "instead of two 3x3 convs)."),
    ("MODEL.RESNETS.RES4_DILATION", 1, "Dilation of res4 (1 or 2; 2 needs RES5_DILATION 4)."),
    ("MODEL.RESNETS.RES5_MULTI_GRID", [1, 2, 4],
     "build_resnet_deeplab_backbone: res5 block i has dilation RES5_DILATION * this[i] "
     "(one entry per res5 block)."),
    ("MODEL.RESNETS.STEM_TYPE", "deeplab",
     "build_resnet_deeplab_backbone: 'basic' (one 7x7 conv) or 'deeplab' (three 3x3 convs)."),
)


def add_deeplab_config(cfg: CfgNode) -> None:
    """Add the DeepLab project's keys, with Detectron2's defaults, to ``cfg`` (in place).

    Call it on a fresh config before merging a DeepLab config file (``train_net.py`` does this
    for every project). A key that ``cfg`` already has keeps its value, so calling it twice, or
    after a merge, changes nothing.
    """
    add_missing_keys(cfg, _DEEPLAB_KEYS)
