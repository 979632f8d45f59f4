"""Every config key segtron knows, with Detectron2's default value.

``segtron.config.get_cfg()`` returns a copy of ``_C``. Keys and defaults follow Detectron2 v0.6
exactly (``tests/config/test_defaults_parity.py`` checks this against Detectron2's own dump), so
Detectron2 YAML files merge unchanged. Keys that segtron adds are listed in
``SEGTRON_ADDED_KEYS`` at the bottom; a key is never removed or given another default.

Conventions: sizes are pixels of the network input; "train"/"test" suffixes select the phase;
list-valued keys are replaced (not appended to) by a YAML file or command-line override.
"""

from .config import CfgNode as CN

_C = CN()

# Version of the config format. Detectron2 configs without VERSION are read as version 2.
_C.VERSION = 2

# -----------------------------------------------------------------------------
# Model
# -----------------------------------------------------------------------------
_C.MODEL = CN()
_C.MODEL.LOAD_PROPOSALS = False
_C.MODEL.MASK_ON = False
_C.MODEL.KEYPOINT_ON = False
_C.MODEL.DEVICE = "cuda"
_C.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
# Path or URL of a checkpoint to initialise from (a .pth/.pkl file or a model-zoo URL).
_C.MODEL.WEIGHTS = ""
# Per-channel mean and std of input images, in INPUT.FORMAT channel order, 0..255 scale.
_C.MODEL.PIXEL_MEAN = [103.530, 116.280, 123.675]
_C.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
# segtron: run convolutions on channels-last (NHWC) batches, and fold frozen batch norms into
# the convolutions. Faster on CPU; results differ from Detectron2's by float rounding, so
# near-tied scores may swap order. False keeps Detectron2's exact sequence of operations.
_C.MODEL.CHANNELS_LAST = False
# segtron: on CPU, run the wide 3x3 convolutions of the FPN, RPN and ROI heads with NNPACK's
# Winograd kernels (forward and input gradient), and their 1x1 convolutions as matrix
# products writing NCHW maps: ~2.5x fewer multiplications, outputs equal to ~1e-5 relative.
# Best with CHANNELS_LAST (which the bottom-up network keeps). See segtron/layers/winograd.py.
_C.MODEL.WINOGRAD_CONV = False
# segtron: torch.compile these submodules in place (names and checkpoints unchanged). Fuses the
# element-wise work around convolutions, for GPU training; changes float rounding, hence off by
# default; every new input shape costs a compilation.
_C.MODEL.COMPILE = CN({"ENABLED": False})
_C.MODEL.COMPILE.MODULES = ["backbone"]
# torch.compile's mode ("default", "reduce-overhead", "max-autotune") and backend.
_C.MODEL.COMPILE.MODE = "default"
_C.MODEL.COMPILE.BACKEND = "inductor"

# -----------------------------------------------------------------------------
# Input
# -----------------------------------------------------------------------------
_C.INPUT = CN()
# Shortest-edge sizes for training; one is picked per image (see MIN_SIZE_TRAIN_SAMPLING).
_C.INPUT.MIN_SIZE_TRAIN = (800,)
# "choice": pick one of MIN_SIZE_TRAIN; "range": sample uniformly in [min, max].
_C.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
_C.INPUT.MAX_SIZE_TRAIN = 1333
# 0 disables test-time resizing.
_C.INPUT.MIN_SIZE_TEST = 800
_C.INPUT.MAX_SIZE_TEST = 1333
# "horizontal", "vertical" or "none".
_C.INPUT.RANDOM_FLIP = "horizontal"

_C.INPUT.CROP = CN({"ENABLED": False})
# One of "relative_range", "relative", "absolute", "absolute_range".
_C.INPUT.CROP.TYPE = "relative_range"
_C.INPUT.CROP.SIZE = [0.9, 0.9]

# Channel order the model expects: "BGR", "RGB", "L" or "YUV-BT.601".
_C.INPUT.FORMAT = "BGR"
# "polygon" or "bitmask": how instance masks are kept between the mapper and the model.
_C.INPUT.MASK_FORMAT = "polygon"

# -----------------------------------------------------------------------------
# Datasets (names registered in DatasetCatalog)
# -----------------------------------------------------------------------------
_C.DATASETS = CN()
_C.DATASETS.TRAIN = ()
_C.DATASETS.PROPOSAL_FILES_TRAIN = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN = 2000
_C.DATASETS.TEST = ()
_C.DATASETS.PROPOSAL_FILES_TEST = ()
_C.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST = 1000

# -----------------------------------------------------------------------------
# Data loader
# -----------------------------------------------------------------------------
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Batch images of similar aspect ratio (landscape vs portrait) together.
_C.DATALOADER.ASPECT_RATIO_GROUPING = True
# "TrainingSampler", "RepeatFactorTrainingSampler" or "RandomSubsetTrainingSampler".
_C.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
_C.DATALOADER.REPEAT_THRESHOLD = 0.0
_C.DATALOADER.REPEAT_SQRT = True
# Drop training images that have no usable annotation.
_C.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
# segtron: the name of a training loader in segtron.engine.TRAIN_LOADER_REGISTRY (a project's,
# e.g. "YOLOXMosaicLoader"); "" builds the trainer's default loader.
_C.DATALOADER.TRAIN_LOADER = ""

# -----------------------------------------------------------------------------
# Backbone
# -----------------------------------------------------------------------------
_C.MODEL.BACKBONE = CN()
_C.MODEL.BACKBONE.NAME = "build_resnet_backbone"
# Stages up to this one are frozen: 0 none, 1 the stem, 2 stem and res2, ...
_C.MODEL.BACKBONE.FREEZE_AT = 2

_C.MODEL.FPN = CN()
_C.MODEL.FPN.IN_FEATURES = []
_C.MODEL.FPN.OUT_CHANNELS = 256
_C.MODEL.FPN.NORM = ""
# "sum" or "avg": how the top-down and lateral features are fused.
_C.MODEL.FPN.FUSE_TYPE = "sum"

# segtron: a timm model (features_only=True) as the backbone, with MODEL.BACKBONE.NAME
# "build_timm_backbone", "build_timm_fpn_backbone" or "build_timm_retinanet_fpn_backbone".
_C.MODEL.TIMM = CN()
_C.MODEL.TIMM.NAME = "resnet18"   # any timm.list_models() name that supports features_only
# timm feature levels (0-based); (): the model's default levels of stride >= 4 (res2..res5).
_C.MODEL.TIMM.OUT_INDICES = ()
# timm's pretrained weights, from the local cache only (nothing is downloaded).
_C.MODEL.TIMM.PRETRAINED = False
# "FrozenBN": every BatchNorm frozen (Detectron2's default for pretrained backbones); "": kept.
_C.MODEL.TIMM.NORM = "FrozenBN"
_C.MODEL.TIMM.DROP_PATH_RATE = 0.0

# -----------------------------------------------------------------------------
# Proposal generator
# -----------------------------------------------------------------------------
_C.MODEL.PROPOSAL_GENERATOR = CN()
# "RPN" or "PrecomputedProposals".
_C.MODEL.PROPOSAL_GENERATOR.NAME = "RPN"
# Proposals with a side below this (input pixels) are dropped.
_C.MODEL.PROPOSAL_GENERATOR.MIN_SIZE = 0

# -----------------------------------------------------------------------------
# Anchor generator
# -----------------------------------------------------------------------------
_C.MODEL.ANCHOR_GENERATOR = CN()
_C.MODEL.ANCHOR_GENERATOR.NAME = "DefaultAnchorGenerator"
# One list of sizes (sqrt of area, input pixels) per feature map, or one list for all.
_C.MODEL.ANCHOR_GENERATOR.SIZES = [[32, 64, 128, 256, 512]]
# Height / width ratios, per feature map or one list for all.
_C.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]
# Rotated anchors only: angles in degrees.
_C.MODEL.ANCHOR_GENERATOR.ANGLES = [[-90, 0, 90]]
# Anchor centre offset in units of the feature stride, in [0, 1).
_C.MODEL.ANCHOR_GENERATOR.OFFSET = 0.0

# -----------------------------------------------------------------------------
# RPN
# -----------------------------------------------------------------------------
_C.MODEL.RPN = CN()
_C.MODEL.RPN.HEAD_NAME = "StandardRPNHead"
_C.MODEL.RPN.IN_FEATURES = ["res4"]
# Anchors this many pixels outside the image are ignored in training; -1 keeps all.
_C.MODEL.RPN.BOUNDARY_THRESH = -1
_C.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]
_C.MODEL.RPN.IOU_LABELS = [0, -1, 1]
_C.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
_C.MODEL.RPN.POSITIVE_FRACTION = 0.5
# "smooth_l1", "giou", "diou" or "ciou".
_C.MODEL.RPN.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.RPN.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# 0.0 makes smooth-L1 an L1 loss.
_C.MODEL.RPN.SMOOTH_L1_BETA = 0.0
_C.MODEL.RPN.LOSS_WEIGHT = 1.0
# Top proposals kept per feature map before NMS, and per image after NMS.
_C.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 12000
_C.MODEL.RPN.PRE_NMS_TOPK_TEST = 6000
_C.MODEL.RPN.POST_NMS_TOPK_TRAIN = 2000
_C.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
_C.MODEL.RPN.NMS_THRESH = 0.7
# Channels of the head's hidden convs; -1 means "same as the input".
_C.MODEL.RPN.CONV_DIMS = [-1]

# -----------------------------------------------------------------------------
# ROI heads
# -----------------------------------------------------------------------------
_C.MODEL.ROI_HEADS = CN()
_C.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
# Number of foreground classes.
_C.MODEL.ROI_HEADS.NUM_CLASSES = 80
_C.MODEL.ROI_HEADS.IN_FEATURES = ["res4"]
_C.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
_C.MODEL.ROI_HEADS.IOU_LABELS = [0, 1]
# Sampled proposals per image for the box head, and their foreground share.
_C.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
_C.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
_C.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
_C.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
# Add the ground-truth boxes to the proposals during training.
_C.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT = True

# -----------------------------------------------------------------------------
# Box head
# -----------------------------------------------------------------------------
_C.MODEL.ROI_BOX_HEAD = CN()
_C.MODEL.ROI_BOX_HEAD.NAME = ""
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "smooth_l1"
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 1.0
_C.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
_C.MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA = 0.0
_C.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 0
# "ROIAlignV2" (aligned), "ROIAlign", "ROIPool" or "ROIAlignRotated".
_C.MODEL.ROI_BOX_HEAD.POOLER_TYPE = "ROIAlignV2"
_C.MODEL.ROI_BOX_HEAD.NUM_FC = 0
_C.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
_C.MODEL.ROI_BOX_HEAD.NUM_CONV = 0
_C.MODEL.ROI_BOX_HEAD.CONV_DIM = 256
_C.MODEL.ROI_BOX_HEAD.NORM = ""
_C.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False
_C.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES = False
# Federated loss (LVIS) and sigmoid cross-entropy options.
_C.MODEL.ROI_BOX_HEAD.USE_FED_LOSS = False
_C.MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE = False
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER = 0.5
_C.MODEL.ROI_BOX_HEAD.FED_LOSS_NUM_CLASSES = 50

# -----------------------------------------------------------------------------
# Cascade box head
# -----------------------------------------------------------------------------
_C.MODEL.ROI_BOX_CASCADE_HEAD = CN()
_C.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = (
    (10.0, 10.0, 5.0, 5.0),
    (20.0, 20.0, 10.0, 10.0),
    (30.0, 30.0, 15.0, 15.0),
)
_C.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.5, 0.6, 0.7)

# -----------------------------------------------------------------------------
# Mask head
# -----------------------------------------------------------------------------
_C.MODEL.ROI_MASK_HEAD = CN()
_C.MODEL.ROI_MASK_HEAD.NAME = "MaskRCNNConvUpsampleHead"
_C.MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_MASK_HEAD.NUM_CONV = 0
_C.MODEL.ROI_MASK_HEAD.CONV_DIM = 256
_C.MODEL.ROI_MASK_HEAD.NORM = ""
_C.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK = False
_C.MODEL.ROI_MASK_HEAD.POOLER_TYPE = "ROIAlignV2"

# -----------------------------------------------------------------------------
# Keypoint head
# -----------------------------------------------------------------------------
_C.MODEL.ROI_KEYPOINT_HEAD = CN()
_C.MODEL.ROI_KEYPOINT_HEAD.NAME = "KRCNNConvDeconvUpsampleHead"
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_RESOLUTION = 14
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_SAMPLING_RATIO = 0
_C.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = tuple(512 for _ in range(8))
_C.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 17
# Images with fewer visible keypoints than this are skipped in training.
_C.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1
# True: normalise the loss by the visible keypoints of each batch; False: by a fixed count.
_C.MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS = True
_C.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT = 1.0
_C.MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE = "ROIAlignV2"

# -----------------------------------------------------------------------------
# Semantic segmentation head
# -----------------------------------------------------------------------------
_C.MODEL.SEM_SEG_HEAD = CN()
_C.MODEL.SEM_SEG_HEAD.NAME = "SemSegFPNHead"
_C.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["p2", "p3", "p4", "p5"]
# Label ignored by the loss.
_C.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
# Number of stuff classes (+1 for "things" in panoptic FPN).
_C.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 54
_C.MODEL.SEM_SEG_HEAD.CONVS_DIM = 128
_C.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
_C.MODEL.SEM_SEG_HEAD.NORM = "GN"
_C.MODEL.SEM_SEG_HEAD.LOSS_WEIGHT = 1.0

_C.MODEL.PANOPTIC_FPN = CN()
_C.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 1.0
_C.MODEL.PANOPTIC_FPN.COMBINE = CN({"ENABLED": True})
_C.MODEL.PANOPTIC_FPN.COMBINE.OVERLAP_THRESH = 0.5
_C.MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT = 4096
_C.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = 0.5

# -----------------------------------------------------------------------------
# RetinaNet
# -----------------------------------------------------------------------------
_C.MODEL.RETINANET = CN()
# Number of object classes (no background class).
_C.MODEL.RETINANET.NUM_CLASSES = 80
# Backbone outputs the head runs on, finest first (one anchor size list per level).
_C.MODEL.RETINANET.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
# Hidden 3x3 convs in each of the two subnets (classification, box regression).
_C.MODEL.RETINANET.NUM_CONVS = 4
# Anchor labels by IoU with the best gt: < 0.4 background (0), 0.4-0.5 ignored (-1), >= 0.5
# foreground (1); each gt also claims its best anchors.
_C.MODEL.RETINANET.IOU_THRESHOLDS = [0.4, 0.5]
_C.MODEL.RETINANET.IOU_LABELS = [0, -1, 1]
# Initial foreground probability of the classification layer.
_C.MODEL.RETINANET.PRIOR_PROB = 0.01
# Inference keeps (anchor, class) scores above this, then the top-k per level, then NMS per class.
_C.MODEL.RETINANET.SCORE_THRESH_TEST = 0.05
_C.MODEL.RETINANET.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.RETINANET.NMS_THRESH_TEST = 0.5
# Weights (wx, wy, ww, wh) of the anchor-to-box deltas.
_C.MODEL.RETINANET.BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
# Sigmoid focal loss: alpha weighs foreground targets (1 - alpha background), gamma the focus.
_C.MODEL.RETINANET.FOCAL_LOSS_GAMMA = 2.0
_C.MODEL.RETINANET.FOCAL_LOSS_ALPHA = 0.25
# Beta of the smooth-L1 box loss, in delta units; 0 is plain L1.
_C.MODEL.RETINANET.SMOOTH_L1_LOSS_BETA = 0.1
# "smooth_l1" (on deltas), "giou", "diou" or "ciou" (on decoded boxes).
_C.MODEL.RETINANET.BBOX_REG_LOSS_TYPE = "smooth_l1"
# Norm after each hidden conv of the head: "" (none), "GN", "BN" / "SyncBN" (statistics per level).
_C.MODEL.RETINANET.NORM = ""

# -----------------------------------------------------------------------------
# FCOS (segtron: Detectron2 configures FCOS only in Python; these are its defaults)
# -----------------------------------------------------------------------------
_C.MODEL.FCOS = CN()
# Number of object classes (no background class).
_C.MODEL.FCOS.NUM_CLASSES = 80
# Backbone outputs the head runs on, finest first. Level i (stride s) is responsible for gt
# boxes whose largest distance from the point to a side is in (4s, 8s), the finest level from 0
# and the coarsest to infinity (P3-P7: 0-64, 64-128, 128-256, 256-512, 512+ px).
_C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
# Hidden 3x3 convs in each of the two subnets; the centerness branch shares the box subnet.
_C.MODEL.FCOS.NUM_CONVS = 4
# Norm after each hidden conv of the head ("GN", "", "BN", ...).
_C.MODEL.FCOS.NORM = "GN"
# Initial foreground probability of the classification layer.
_C.MODEL.FCOS.PRIOR_PROB = 0.01
# A point is a positive for a gt box only if it lies inside the box and within this many
# strides of the box centre (in each axis).
_C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
# Sigmoid focal loss weights, as for RetinaNet.
_C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
_C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
# Box loss on the decoded boxes: "giou" (Detectron2's), "diou", "ciou" or "smooth_l1".
_C.MODEL.FCOS.BBOX_REG_LOSS_TYPE = "giou"
# Inference: score = sqrt(class probability * centerness) > this, top-k per level, NMS per class.
_C.MODEL.FCOS.SCORE_THRESH_TEST = 0.2
_C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000
_C.MODEL.FCOS.NMS_THRESH_TEST = 0.6

# -----------------------------------------------------------------------------
# ResNet
# -----------------------------------------------------------------------------
_C.MODEL.RESNETS = CN()
_C.MODEL.RESNETS.DEPTH = 50
_C.MODEL.RESNETS.OUT_FEATURES = ["res4"]
# 1 for ResNet, > 1 for ResNeXt.
_C.MODEL.RESNETS.NUM_GROUPS = 1
# "FrozenBN", "BN", "SyncBN", "GN", "nnSyncBN", "LN" or "" (no norm).
_C.MODEL.RESNETS.NORM = "FrozenBN"
_C.MODEL.RESNETS.WIDTH_PER_GROUP = 64
# True: stride 2 sits on the first 1x1 conv of a bottleneck (MSRA); False: on the 3x3 (torchvision).
_C.MODEL.RESNETS.STRIDE_IN_1X1 = True
# Dilation of res5's 3x3 convs: 1, 2 or 4. 2 gives the "DC5" variant (res5 keeps stride 16);
# 4 only with RES4_DILATION 2 (output stride 8).
_C.MODEL.RESNETS.RES5_DILATION = 1
# segtron (the name and meaning of Detectron2's DeepLab project): dilation of res4's 3x3 convs,
# 1 or 2. 2 keeps res4 at stride 8 and needs RES5_DILATION 4 (each dilated stage's dilation is
# the product of the strides removed up to it): the "DC8" output-stride-8 ResNet of FCN/DeepLab.
_C.MODEL.RESNETS.RES4_DILATION = 1
# Output channels of res2; 64 for R18/R34.
_C.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
_C.MODEL.RESNETS.STEM_OUT_CHANNELS = 64
# Deformable convolution in res2..res5.
_C.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, False]
_C.MODEL.RESNETS.DEFORM_MODULATED = False
_C.MODEL.RESNETS.DEFORM_NUM_GROUPS = 1

# -----------------------------------------------------------------------------
# Solver
# -----------------------------------------------------------------------------
_C.SOLVER = CN()
# "WarmupMultiStepLR", "WarmupCosineLR" or "WarmupStepWithFixedGammaLR".
_C.SOLVER.LR_SCHEDULER_NAME = "WarmupMultiStepLR"
# segtron: "SGD" (momentum, optional Nesterov), "AdamW" or "Adam" (betas (0.9, 0.999)).
_C.SOLVER.OPTIMIZER = "SGD"
_C.SOLVER.MAX_ITER = 40000
_C.SOLVER.BASE_LR = 0.001
# Final LR of WarmupCosineLR.
_C.SOLVER.BASE_LR_END = 0.0
_C.SOLVER.MOMENTUM = 0.9
_C.SOLVER.NESTEROV = False
_C.SOLVER.WEIGHT_DECAY = 0.0001
_C.SOLVER.WEIGHT_DECAY_NORM = 0.0
_C.SOLVER.GAMMA = 0.1
# Iterations at which the LR is multiplied by GAMMA.
_C.SOLVER.STEPS = (30000,)
# Number of decays of WarmupStepWithFixedGammaLR.
_C.SOLVER.NUM_DECAYS = 3
_C.SOLVER.WARMUP_FACTOR = 1.0 / 1000
_C.SOLVER.WARMUP_ITERS = 1000
# "linear" or "constant".
_C.SOLVER.WARMUP_METHOD = "linear"
# Whether WarmupStepWithFixedGammaLR rescales its decay interval after warmup.
_C.SOLVER.RESCALE_INTERVAL = False
_C.SOLVER.CHECKPOINT_PERIOD = 5000
# Total images per iteration over all processes.
_C.SOLVER.IMS_PER_BATCH = 16
# When > 0, scale LR, batch and schedule linearly from this world size to the actual one.
_C.SOLVER.REFERENCE_WORLD_SIZE = 0
_C.SOLVER.BIAS_LR_FACTOR = 1.0
# None means "same as WEIGHT_DECAY".
_C.SOLVER.WEIGHT_DECAY_BIAS = None

_C.SOLVER.CLIP_GRADIENTS = CN({"ENABLED": False})
# "value" clips each gradient element; "norm" clips each parameter's gradient norm.
_C.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
_C.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
_C.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

_C.SOLVER.AMP = CN({"ENABLED": False})

# segtron: names in segtron.engine.HOOK_REGISTRY whose hooks DefaultTrainer adds (after the LR
# scheduler, before checkpointing and evaluation), e.g. projects/YOLO's "YOLOXModeSwitch".
_C.SOLVER.HOOKS = []

# segtron: an exponential moving average of the weights, evaluated and saved as the final model
# (segtron/engine/model_ema.py). Decay after n updates: DECAY * (1 - exp(-n / DECAY_RAMP_ITERS))
# when DECAY_RAMP_ITERS > 0 (YOLOX: 0.9998, 2000), else DECAY.
_C.MODEL_EMA = CN()
_C.MODEL_EMA.ENABLED = False
_C.MODEL_EMA.DECAY = 0.9998
_C.MODEL_EMA.DECAY_RAMP_ITERS = 0

# -----------------------------------------------------------------------------
# Test
# -----------------------------------------------------------------------------
_C.TEST = CN()
# Each entry is [task, metric, value, tolerance], e.g. ["bbox", "AP", 38.5, 0.2].
_C.TEST.EXPECTED_RESULTS = []
# Evaluate every this many iterations during training; 0 only at the end.
_C.TEST.EVAL_PERIOD = 0
# segtron: compute the training losses on DATASETS.TEST (no gradients, frozen norms) every this
# many iterations and log them as "val_<loss>"; 0 disables.
_C.TEST.VAL_LOSS_PERIOD = 0
# OKS sigmas for keypoint AP; empty means COCO's 17 sigmas.
_C.TEST.KEYPOINT_OKS_SIGMAS = []
_C.TEST.DETECTIONS_PER_IMAGE = 100

_C.TEST.AUG = CN({"ENABLED": False})
_C.TEST.AUG.MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
_C.TEST.AUG.MAX_SIZE = 4000
_C.TEST.AUG.FLIP = True

_C.TEST.PRECISE_BN = CN({"ENABLED": False})
_C.TEST.PRECISE_BN.NUM_ITER = 200

# segtron: on a GPU, R-CNN inference replays its static-shape part (backbone, RPN head, anchor
# decoding, per-level top-k) as a CUDA graph, one per input size, instead of launching each
# kernel: the same kernels, so the same numbers. Costs a capture per new size (up to MAX_SHAPES;
# later sizes run eagerly) and the memory of each graph's buffers. No effect on CPU.
_C.TEST.CUDA_GRAPHS = CN({"ENABLED": False})
_C.TEST.CUDA_GRAPHS.MAX_SHAPES = 8

# -----------------------------------------------------------------------------
# Misc
# -----------------------------------------------------------------------------
_C.OUTPUT_DIR = "./output"
# Negative: a random seed per run (logged); otherwise fixed.
_C.SEED = -1
_C.CUDNN_BENCHMARK = False
# torch.backends float32 matmul precision ("highest", "high", "medium"); "" leaves it alone.
_C.FLOAT32_PRECISION = ""
# Visualise training batches every this many iterations; 0 disables.
_C.VIS_PERIOD = 0

# segtron: minutes a process waits for the others at a collective (joining the group, barriers,
# gradient all-reduce) before the job fails; train_net.py's --dist-timeout overrides it.
_C.DIST = CN()
_C.DIST.TIMEOUT_MINUTES = 30.0

# A place for experimental keys without a home; Detectron2 keeps it too.
_C.GLOBAL = CN()
_C.GLOBAL.HACK = 1.0

# Keys segtron adds to Detectron2's set (fully-qualified names). Kept here so the parity test can
# tell an intended addition from an accident.
SEGTRON_ADDED_KEYS = (
    "MODEL.CHANNELS_LAST", "MODEL.WINOGRAD_CONV", "SOLVER.OPTIMIZER", "TEST.VAL_LOSS_PERIOD",
    "MODEL.FCOS.NUM_CLASSES", "MODEL.FCOS.IN_FEATURES", "MODEL.FCOS.NUM_CONVS", "MODEL.FCOS.NORM",
    "MODEL.FCOS.PRIOR_PROB", "MODEL.FCOS.CENTER_SAMPLING_RADIUS", "MODEL.FCOS.FOCAL_LOSS_ALPHA",
    "MODEL.FCOS.FOCAL_LOSS_GAMMA", "MODEL.FCOS.BBOX_REG_LOSS_TYPE", "MODEL.FCOS.SCORE_THRESH_TEST",
    "MODEL.FCOS.TOPK_CANDIDATES_TEST", "MODEL.FCOS.NMS_THRESH_TEST",
    "MODEL.RESNETS.RES4_DILATION", "DATALOADER.TRAIN_LOADER", "SOLVER.HOOKS",
    "MODEL_EMA.ENABLED", "MODEL_EMA.DECAY", "MODEL_EMA.DECAY_RAMP_ITERS",
    "DIST.TIMEOUT_MINUTES",
    "MODEL.TIMM.NAME", "MODEL.TIMM.OUT_INDICES", "MODEL.TIMM.PRETRAINED", "MODEL.TIMM.NORM",
    "MODEL.TIMM.DROP_PATH_RATE", "TEST.CUDA_GRAPHS.ENABLED", "TEST.CUDA_GRAPHS.MAX_SHAPES",
    "MODEL.COMPILE.ENABLED", "MODEL.COMPILE.MODULES", "MODEL.COMPILE.MODE",
    "MODEL.COMPILE.BACKEND",
)
