"""The YOLOX project's config keys: :func:`add_yolox_config` (also exported as ``add_config``).

Defaults build YOLOX-s (Ge et al., "YOLOX: Exceeding YOLO Series in 2021") for COCO's 80
classes. The other official sizes differ only in MODEL.YOLOX.DEPTH / WIDTH / DEPTHWISE:

=========  =====  =====  =========  ======================
model      DEPTH  WIDTH  DEPTHWISE  params (paper, 80 cls)
=========  =====  =====  =========  ======================
nano       0.33   0.25   True       0.91 M
tiny       0.33   0.375  False      5.06 M
s          0.33   0.50   False      9.0 M
m          0.67   0.75   False      25.3 M
l          1.0    1.0    False      54.2 M
x          1.33   1.25   False      99.1 M
=========  =====  =====  =========  ======================
"""

from segtron.config import CfgNode, add_missing_keys

__all__ = ["add_yolox_config"]

# (dotted key, default, comment) for every key the project reads.
_YOLOX_KEYS = (
    # -- architecture -----------------------------------------------------------------------
    ("MODEL.YOLOX.NUM_CLASSES", 80,
     "K, the number of object classes (no background class: YOLOX scores a box as "
     "objectness x per-class sigmoid)."),
    ("MODEL.YOLOX.DEPTH", 0.33,
     "Depth multiplier: CSPDarknet's dark2 / dark5 CSP layers get max(round(3 x DEPTH), 1) "
     "bottlenecks, dark3 / dark4 three times that, the PAFPN's CSP layers round(3 x DEPTH). "
     "nano / tiny / s 0.33, m 0.67, l 1.0, x 1.33."),
    ("MODEL.YOLOX.WIDTH", 0.50,
     "Width multiplier: the stem has int(64 x WIDTH) channels, dark2..dark5 2, 4, 8, 16 times "
     "that (dark3 / dark4 / dark5 and p3 / p4 / p5: 256, 512, 1024 x WIDTH), the head "
     "int(256 x WIDTH). nano 0.25, tiny 0.375, s 0.50, m 0.75, l 1.0, x 1.25."),
    ("MODEL.YOLOX.DEPTHWISE", False,
     "Depthwise-separable 3x3 convs (3x3 depthwise + 1x1 pointwise, each with BN and the "
     "activation) in the backbone's downsampling convs and bottlenecks, the PAFPN and the "
     "head's branches, as YOLOX-nano. The Focus stem, 1x1 convs and SPP stay dense."),
    ("MODEL.YOLOX.ACT", "silu",
     "Activation after every BatchNorm: 'silu' (YOLOX), 'relu' or 'lrelu' (slope 0.1)."),
    ("MODEL.YOLOX.IN_FEATURES", ["dark3", "dark4", "dark5"],
     "The CSPDarknet outputs the PAFPN fuses (strides 8, 16, 32), finest first; with "
     "MODEL.BACKBONE.NAME build_cspdarknet_backbone (no neck) the backbone's outputs."),
    ("MODEL.YOLOX.HEAD_IN_FEATURES", ["p3", "p4", "p5"],
     "The backbone outputs the head predicts on, finest first: build_yolox_pafpn_backbone's "
     "p3, p4, p5 (dark3..dark5 for a bare build_cspdarknet_backbone)."),
    ("MODEL.YOLOX.STRIDES", [8, 16, 32],
     "Strides of HEAD_IN_FEATURES in input pixels: decoding multiplies the grid offsets and "
     "sizes by them; checked against the backbone's output_shape() when the model is built."),
    ("MODEL.YOLOX.PRIOR_PROB", 0.01,
     "Initial probability of the classification and objectness sigmoids: their prediction "
     "biases start at -log((1 - PRIOR_PROB) / PRIOR_PROB)."),
    # -- inference (YOLOX's COCO evaluation settings) ----------------------------------------
    ("MODEL.YOLOX.SCORE_THRESH_TEST", 0.01,
     "Inference: a box is kept when objectness x its best class probability is >= this "
     "(YOLOX's test_conf)."),
    ("MODEL.YOLOX.NMS_THRESH_TEST", 0.65,
     "Inference: IoU threshold of the per-class NMS (YOLOX's nmsthre). The detections kept "
     "per image are TEST.DETECTIONS_PER_IMAGE (-1: all, as YOLOX)."),
    ("MODEL.YOLOX.TOPK_CANDIDATES_TEST", -1,
     "Inference: at most this many highest-scoring boxes per image enter NMS; -1: no limit "
     "(YOLOX's evaluation). A limit such as 1000 bounds NMS time on dense outputs."),
    # -- training: SimOTA label assignment (simota.simota_assign's radius, iou_weight and
    # top_candidates) -------------------------------------------------------------------------
    ("MODEL.YOLOX.CENTER_RADIUS", 2.5,
     "SimOTA: a grid point is a candidate for a ground-truth box when its cell centre lies in "
     "the box or within CENTER_RADIUS strides of the box centre along both axes."),
    ("MODEL.YOLOX.IOU_COST_WEIGHT", 3.0,
     "SimOTA: weight of the IoU cost -log(IoU + 1e-8) added to the classification cost "
     "(binary cross-entropy of sqrt(cls x obj)) in the matching cost."),
    ("MODEL.YOLOX.DYNAMIC_K_CANDIDATES", 10,
     "SimOTA: a ground truth's dynamic k is the (integer part of the, at least 1) sum of its "
     "DYNAMIC_K_CANDIDATES highest IoUs with the candidate predictions."),
    # -- training: losses (losses.yolox_losses), each divided by the batch's number of
    # foreground cells --------------------------------------------------------------------------
    ("MODEL.YOLOX.IOU_LOSS_TYPE", "iou",
     "Box loss of the foreground cells' decoded boxes against their GT boxes: 'iou' "
     "(1 - IoU^2, YOLOX's) or 'giou' (1 - GIoU)."),
    ("MODEL.YOLOX.IOU_LOSS_WEIGHT", 5.0,
     "Factor of loss_iou (YOLOX: 5.0); loss_obj and loss_cls have weight 1."),
    ("MODEL.YOLOX.USE_L1_LOSS", False,
     "Add loss_l1: L1 distance of the foreground cells' raw (dx, dy, log w, log h) to the GT "
     "box encoded the same way, weight 1. YOLOX turns it on for the last 15 epochs, when mosaic "
     "stops (a hook can set model.use_l1_loss = True then); off otherwise."),
    ("MODEL.YOLOX.NO_AUG_ITERS", 0,
     "With SOLVER.HOOKS ['YOLOXModeSwitch']: the last NO_AUG_ITERS iterations train without "
     "mosaic / mix-up and with the L1 loss (YOLOX: the last 15 of 300 epochs). 0: no switch."),
    # -- training data: mosaic / mix-up (DATALOADER.TRAIN_LOADER "YOLOXMosaicLoader";
    # mosaic.MosaicDataset's arguments) --------------------------------------------------------
    ("INPUT.MOSAIC.SIZE", [640, 640],
     "(H, W) of a mosaic image; the mapper's INPUT.MIN_SIZE_TRAIN resize and flip follow."),
    ("INPUT.MOSAIC.PROB", 1.0, "Probability that a training sample is a mosaic of 4 images."),
    ("INPUT.MOSAIC.MIXUP_PROB", 1.0,
     "Probability that a mosaic is also mixed up with another image (YOLOX-s and larger: 1.0; "
     "nano / tiny: 0)."),
    ("INPUT.MOSAIC.SCALE", [0.1, 2.0],
     "Range of the mosaic's random scale (YOLOX-s and larger: 0.1-2; nano / tiny: 0.5-1.5)."),
    ("INPUT.MOSAIC.TRANSLATE", 0.1, "Largest random shift, as a fraction of the size."),
    ("INPUT.MOSAIC.MIXUP_SCALE", [0.5, 1.5], "Range of the mix-up image's extra scale."),
    ("INPUT.MOSAIC.MIN_BOX_SIZE", 2.0,
     "Boxes with a side below this many pixels after clipping are dropped."),
    ("INPUT.MOSAIC.FILL", 114, "Value (0..255) of the canvas where no image lands."),
)


def add_yolox_config(cfg: CfgNode) -> None:
    """Add the YOLOX project's keys (YOLOX-s defaults, table in the module docstring) to
    ``cfg``, in place.

    Only missing keys are added: a key ``cfg`` already has keeps its value, so calling it
    twice, or after a merge, changes nothing. Missing nodes (``MODEL.YOLOX``) are created.
    """
    add_missing_keys(cfg, _YOLOX_KEYS)
