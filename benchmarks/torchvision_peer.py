"""torchvision's R50-FPN detectors as peers for segtron's, doing the same work.

Two pairs, each torchvision's model plus a segtron model configured to compute the same
function (torchvision's preprocessing: RGB, ImageNet mean/std, stride on the 3x3 conv) and
loaded with torchvision's weights, so a timing ratio compares implementations rather than
workloads:

- ``build_pair``: Mask R-CNN (``maskrcnn_resnet50_fpn``), with torchvision's pooler settings.
  Only anchors (torchvision rounds them to whole pixels) differ slightly.
- ``build_retinanet_pair``: RetinaNet (``retinanet_resnet50_fpn``). torchvision's v1 RetinaNet
  computes P6 from the FPN's P5 (its ``LastLevelP6P7(256, 256)``), whereas Detectron2's
  RetinaNet computes it from C5 (``res5``, 2048 channels); segtron therefore uses its
  ``build_fcos_resnet_fpn_backbone`` (the same FPN with P6 from P5), so every weight copies.
  Anchor sizes are torchvision's (``int(x * 2 ** (k / 3))``, truncated); its cell anchors are
  also rounded to whole pixels, its anchor strides on P6/P7 are ``image size // grid size``
  (64 / 128 only when the padded image is a multiple of 128), and it clips boxes to the image
  before NMS where segtron clips after. Those are the differences that remain.
"""

import copy
from typing import Callable, Dict, Optional

import torch

from segtron import model_zoo
from segtron.checkpoint.torchvision_model_loading import (
    TORCHVISION_PIXEL_MEAN,
    TORCHVISION_PIXEL_STD,
    rename_torchvision_resnet_key,
)
from segtron.modeling import build_model

__all__ = [
    "build_pair",
    "build_retinanet_pair",
    "build_torchvision_retinanet",
    "build_segtron_retinanet",
    "segtron_candidates",
    "random_image_inputs",
    "torchvision_to_segtron_state_dict",
    "torchvision_retinanet_to_segtron_state_dict",
    "ratio_major_to_size_major",
    "NUM_CLASSES",
    "SEGTRON_MODES",
    "COMPILE_ROWS",
    "compiled_twin",
]

NUM_CLASSES = 80  # foreground classes; torchvision's Mask R-CNN counts background too (81)

# The segtron rows of a benchmark: name -> (MODEL.CHANNELS_LAST, MODEL.WINOGRAD_CONV).
SEGTRON_MODES = {
    "segtron": (False, False),
    "segtron MODEL.CHANNELS_LAST": (True, False),
    "segtron + MODEL.WINOGRAD_CONV": (True, True),
}


# -- shared by both pairs ----------------------------------------------------------------------


def _torchvision_resnet50_fpn(frozen_bn: bool, **extractor_kwargs):
    """torchvision's ResNet-50 + FPN feature extractor, random init, as its detection builders
    make it: FrozenBN and the last 3 stages trainable (its defaults with pretrained weights),
    or BatchNorm2d with every stage trainable (without). ``extractor_kwargs`` go to
    ``_resnet_fpn_extractor`` (``returned_layers``, ``extra_blocks``)."""
    from torch import nn
    from torchvision.models import resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc

    norm = misc.FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
    trainable = 3 if frozen_bn else 5
    return _resnet_fpn_extractor(resnet50(norm_layer=norm), trainable, **extractor_kwargs)


def _segtron_config(zoo_config: str, frozen_bn: bool, min_size: int, max_size: int, overrides):
    """The model-zoo config ``zoo_config`` on CPU without weights, set to torchvision's input
    handling (RGB in [0, 1] normalised by ImageNet statistics, stride on the 3x3 conv, the
    given test sizes) and backbone norm / freezing, then ``overrides`` (a KEY VALUE list)."""
    cfg = model_zoo.get_config(zoo_config)
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.WEIGHTS", "",
        "INPUT.FORMAT", "RGB",
        "MODEL.PIXEL_MEAN", str(TORCHVISION_PIXEL_MEAN),
        "MODEL.PIXEL_STD", str(TORCHVISION_PIXEL_STD),
        "MODEL.RESNETS.STRIDE_IN_1X1", "False",
        "MODEL.RESNETS.NORM", "FrozenBN" if frozen_bn else "BN",
        "MODEL.BACKBONE.FREEZE_AT", "2" if frozen_bn else "0",
        "INPUT.MIN_SIZE_TEST", str(min_size),
        "INPUT.MAX_SIZE_TEST", str(max_size),
        *overrides,
    ])
    return cfg


def _rename_resnet_fpn_key(key: str, first_level: int) -> Optional[str]:
    """segtron's name for a parameter of torchvision's ResNet-FPN backbone, or None if ``key``
    is not one.

    ``backbone.body.*`` -> ``backbone.bottom_up.*`` (``rename_torchvision_resnet_key``);
    ``backbone.fpn.inner_blocks.{i}.0.*`` / ``layer_blocks.{i}.0.*`` ->
    ``backbone.fpn_lateral{i + first_level}.*`` / ``fpn_output{...}.*`` (``first_level`` is
    the level of torchvision's first returned stage: 2 for Mask R-CNN's C2, 3 for RetinaNet's
    C3); ``backbone.fpn.extra_blocks.*`` -> ``backbone.top_block.*``.
    """
    if key.startswith("backbone.body."):
        return "backbone.bottom_up." + rename_torchvision_resnet_key(key[len("backbone.body."):])
    for block, name in (("inner_blocks", "fpn_lateral"), ("layer_blocks", "fpn_output")):
        prefix = f"backbone.fpn.{block}."
        if key.startswith(prefix):
            index, _, leaf = key[len(prefix):].split(".")
            return f"backbone.{name}{int(index) + first_level}.{leaf}"
    if key.startswith("backbone.fpn.extra_blocks."):
        return "backbone.top_block." + key[len("backbone.fpn.extra_blocks."):]
    return None


def _convert(tv_state, first_level: int,
             rename_head: Callable[[str, torch.Tensor], Optional[Dict]]):
    """torchvision state dict -> segtron's: backbone keys by ``_rename_resnet_fpn_key``, every
    other key by ``rename_head(key, value)`` (a dict of segtron name -> tensor, or None for a
    key it does not know, which raises KeyError). BatchNorm counters are dropped."""
    out = {}
    for key, value in tv_state.items():
        if key.endswith("num_batches_tracked"):
            continue
        name = _rename_resnet_fpn_key(key, first_level)
        renamed = {name: value} if name is not None else rename_head(key, value)
        if renamed is None:
            raise KeyError(f"No segtron name for torchvision parameter '{key}'.")
        out.update(renamed)
    return out


def _load_pair(tv_model, st_model, state_dict, min_size: int, max_size: int):
    """Set torchvision's resize to (min_size, max_size), load ``state_dict`` (strictly) into
    ``st_model`` and return (tv_model, st_model)."""
    tv_model.transform.min_size = (min_size,)
    tv_model.transform.max_size = max_size
    st_model.load_state_dict(state_dict, strict=True)
    return tv_model, st_model


# -- Mask R-CNN ------------------------------------------------------------------------------


def build_torchvision(frozen_bn: bool, score_thresh: float):
    """torchvision's MaskRCNN R50-FPN, random init; FrozenBN (as for pretrained) or BatchNorm2d."""
    from torchvision.models.detection import MaskRCNN

    return MaskRCNN(_torchvision_resnet50_fpn(frozen_bn), num_classes=NUM_CLASSES + 1,
                    box_score_thresh=score_thresh, box_detections_per_img=100)


def build_segtron(frozen_bn: bool, score_thresh: float, min_size: int, max_size: int):
    """segtron's model-zoo Mask R-CNN R50-FPN set up to compute torchvision's function."""
    cfg = _segtron_config(
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", frozen_bn, min_size, max_size, [
            "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST", str(score_thresh),
            # torchvision's MultiScaleRoIAlign: aligned=False, sampling ratio 2.
            "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlign",
            "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "2",
            "MODEL.ROI_MASK_HEAD.POOLER_TYPE", "ROIAlign",
            "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "2",
        ])
    return build_model(cfg)


def torchvision_to_segtron_state_dict(tv_state):
    """Rename torchvision MaskRCNN parameters to segtron's (Detectron2's) names.

    torchvision puts the background class first and predicts a box and a mask for it; segtron
    (Detectron2) puts background last and predicts neither, so those rows are reordered/dropped.

    Args:
        tv_state: the state dict of ``build_torchvision``'s model.
    Returns:
        a state dict that ``build_segtron``'s model loads strictly.
    """
    fg = torch.arange(1, NUM_CLASSES + 1)

    def rename_head(key, value):
        if key.startswith("rpn.head."):
            module = {"conv": "conv", "cls_logits": "objectness_logits",
                      "bbox_pred": "anchor_deltas"}[key.split(".")[2]]
            return {f"proposal_generator.rpn_head.{module}.{key.split('.')[-1]}": value}
        if key.startswith("roi_heads.box_head."):
            return {key.replace("fc6", "fc1").replace("fc7", "fc2"): value}
        if key.startswith("roi_heads.box_predictor.cls_score."):
            return {key: torch.cat([value[fg], value[:1]])}  # background last
        if key.startswith("roi_heads.box_predictor.bbox_pred."):
            return {key: value[4:]}  # drop the background box
        if key.startswith("roi_heads.mask_head."):
            index, _, leaf = key[len("roi_heads.mask_head."):].split(".")
            return {f"roi_heads.mask_head.mask_fcn{int(index) + 1}.{leaf}": value}
        if key.startswith("roi_heads.mask_predictor.conv5_mask."):
            return {"roi_heads.mask_head.deconv." + key.split(".")[-1]: value}
        if key.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
            return {"roi_heads.mask_head.predictor." + key.split(".")[-1]: value[fg]}
        return None

    return _convert(tv_state, 2, rename_head)


def build_pair(frozen_bn: bool, score_thresh: float = 0.0, min_size: int = 800,
               max_size: int = 1333):
    """(torchvision model, segtron model) with identical weights; both in train mode."""
    torch.manual_seed(0)
    tv_model = build_torchvision(frozen_bn, score_thresh)
    st_model = build_segtron(frozen_bn, score_thresh, min_size, max_size)
    return _load_pair(tv_model, st_model, torchvision_to_segtron_state_dict(tv_model.state_dict()),
                      min_size, max_size)


# -- RetinaNet -------------------------------------------------------------------------------


def build_torchvision_retinanet(frozen_bn: bool, score_thresh: float,
                                num_classes: int = NUM_CLASSES):
    """torchvision's ``retinanet_resnet50_fpn`` (v1), random init, built as its builder does
    (ResNet-50 returning C3-C5, ``LastLevelP6P7(256, 256)``, its default anchors and head)
    but with FrozenBN or BatchNorm2d as asked (the builder picks FrozenBN only when given
    pretrained weights). Keeps the top 1000 candidates per level scoring above
    ``score_thresh``, NMS at 0.5, 100 detections per image."""
    from torchvision.models.detection import RetinaNet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    backbone = _torchvision_resnet50_fpn(frozen_bn, returned_layers=[2, 3, 4],
                                         extra_blocks=LastLevelP6P7(256, 256))
    return RetinaNet(backbone, num_classes, score_thresh=score_thresh, nms_thresh=0.5,
                     detections_per_img=100, topk_candidates=1000)


def build_segtron_retinanet(frozen_bn: bool, score_thresh: float, min_size: int, max_size: int,
                            anchor_sizes, aspect_ratios, num_classes: int = NUM_CLASSES):
    """segtron's model-zoo RetinaNet R50-FPN set up to compute torchvision's v1 function: P6
    from P5 (``build_fcos_resnet_fpn_backbone``), the given anchor sizes (one list per level)
    and aspect ratios, 1000 candidates per level above ``score_thresh``, NMS 0.5, 100
    detections per image."""
    cfg = _segtron_config(
        "COCO-Detection/retinanet_R_50_FPN_1x.yaml", frozen_bn, min_size, max_size, [
            "MODEL.BACKBONE.NAME", "build_fcos_resnet_fpn_backbone",
            "MODEL.ANCHOR_GENERATOR.SIZES", str([list(s) for s in anchor_sizes]),
            "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", str([list(r) for r in aspect_ratios]),
            "MODEL.RETINANET.NUM_CLASSES", str(num_classes),
            "MODEL.RETINANET.SCORE_THRESH_TEST", str(score_thresh),
            "MODEL.RETINANET.TOPK_CANDIDATES_TEST", "1000",
            "MODEL.RETINANET.NMS_THRESH_TEST", "0.5",
            "TEST.DETECTIONS_PER_IMAGE", "100",
        ])
    return build_model(cfg)


def ratio_major_to_size_major(value: torch.Tensor, num_sizes: int, num_ratios: int):
    """Reorder a dense head's output channels (dim 0 of a conv weight or bias) from
    torchvision's anchor order to Detectron2's.

    Both lay channels out as ``anchor * K + k``. torchvision numbers a location's anchors
    ratio-major (anchor ``r * num_sizes + s``), Detectron2 size-major (``s * num_ratios + r``),
    so segtron's block ``s * num_ratios + r`` takes torchvision's block ``r * num_sizes + s``.

    Args:
        value: (A * K, ...) with A = num_sizes * num_ratios.
    Returns:
        a tensor of the same shape with the K-channel blocks permuted.
    """
    A = num_sizes * num_ratios
    if value.shape[0] % A != 0:
        raise ValueError(f"{value.shape[0]} output channels are not a multiple of {A} anchors.")
    blocks = value.reshape(num_ratios, num_sizes, value.shape[0] // A, *value.shape[1:])
    return blocks.transpose(0, 1).reshape(value.shape)


def torchvision_retinanet_to_segtron_state_dict(tv_state, num_sizes: int = 3,
                                                num_ratios: int = 3):
    """Rename torchvision RetinaNet parameters to segtron's (Detectron2's) names.

    The subnets' conv ``i`` (``head.classification_head.conv.{i}.0``) is Detectron2's
    ``head.cls_subnet.{2i}`` (its Sequential interleaves ReLUs), likewise for the box subnet;
    ``cls_logits`` / ``bbox_reg`` become ``cls_score`` / ``bbox_pred`` with their output
    channels reordered by ``ratio_major_to_size_major`` so that segtron's anchor order gets
    the same predictions. Both libraries use sigmoid scores without a background class.

    Args:
        tv_state: the state dict of ``build_torchvision_retinanet``'s model.
        num_sizes, num_ratios: anchor sizes and aspect ratios per level.
    Returns:
        a state dict that ``build_segtron_retinanet``'s model loads strictly.
    """
    subnets = {"classification_head": "cls_subnet", "regression_head": "bbox_subnet"}
    predictors = {"cls_logits": "cls_score", "bbox_reg": "bbox_pred"}

    def rename_head(key, value):
        parts = key.split(".")
        if parts[0] != "head" or parts[1] not in subnets:
            return None
        if parts[2] == "conv" and len(parts) == 6 and parts[4] == "0":
            return {f"head.{subnets[parts[1]]}.{2 * int(parts[3])}.{parts[5]}": value}
        if parts[2] in predictors and len(parts) == 4:
            return {f"head.{predictors[parts[2]]}.{parts[3]}":
                    ratio_major_to_size_major(value, num_sizes, num_ratios)}
        return None

    return _convert(tv_state, 3, rename_head)


def build_retinanet_pair(frozen_bn: bool = True, score_thresh: float = 0.0, min_size: int = 800,
                         max_size: int = 1333, num_classes: int = NUM_CLASSES):
    """(torchvision RetinaNet, segtron RetinaNet) with identical weights; both in train mode.

    segtron's anchor sizes and ratios are read from torchvision's anchor generator; see the
    module docstring for what still differs.
    """
    torch.manual_seed(0)
    tv_model = build_torchvision_retinanet(frozen_bn, score_thresh, num_classes)
    sizes = tv_model.anchor_generator.sizes
    ratios = tv_model.anchor_generator.aspect_ratios
    st_model = build_segtron_retinanet(frozen_bn, score_thresh, min_size, max_size, sizes,
                                       ratios, num_classes)
    state = torchvision_retinanet_to_segtron_state_dict(tv_model.state_dict(), len(sizes[0]),
                                                        len(ratios[0]))
    return _load_pair(tv_model, st_model, state, min_size, max_size)


def random_image_inputs(height: int, width: int, seed: int = 0):
    """One random RGB image as each library takes it: (torchvision's ``[float (3, H, W) in
    [0, 1]]``, segtron's ``[{"image": uint8 (3, H, W), "height": H, "width": W}]``)."""
    import numpy as np

    image_rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    chw = torch.from_numpy(image_rgb).permute(2, 0, 1).contiguous()
    return [chw.float() / 255], [{"image": chw, "height": height, "width": width}]


# -- timing ----------------------------------------------------------------------------------


COMPILE_ROWS = {  # name -> MODEL.CHANNELS_LAST of a row run by a compiled twin (--compile)
    "segtron + MODEL.COMPILE": False,
    "segtron MODEL.CHANNELS_LAST + MODEL.COMPILE": True,
}


def compiled_twin(model):
    """A copy of ``model`` whose backbone is compiled with torch.compile (inductor), as
    MODEL.COMPILE does; the original is left eager."""
    from segtron.modeling.compilation import compile_submodules

    twin = copy.deepcopy(model)
    compile_submodules(twin, ["backbone"])
    return twin


def segtron_candidates(model, run_once, device: Optional[torch.device] = None):
    """One timing candidate per entry of ``SEGTRON_MODES``: each sets ``model``'s
    ``channels_last`` and ``winograd_conv`` (the two keys' runtime switches) and then calls
    ``run_once(name)``. On a CUDA ``device`` the Winograd row is left out (NNPACK's kernels are
    CPU-only). Returns {name: zero-argument callable}."""

    def candidate(name, channels_last, winograd_conv):
        def run():
            model.channels_last = channels_last
            model.winograd_conv = winograd_conv
            return run_once(name)
        return run

    on_gpu = device is not None and device.type == "cuda"
    return {name: candidate(name, *flags) for name, flags in SEGTRON_MODES.items()
            if not (on_gpu and flags[1])}
