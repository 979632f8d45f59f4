"""YOLOX (Ge et al., "YOLOX: Exceeding YOLO Series in 2021") as a segtron project: the
network (CSPDarknet-53 backbone, PAFPN neck, decoupled anchor-free head), its inference, the
SimOTA label assignment (``simota_assign``) and the mosaic / mix-up data wrapper
(``MosaicDataset``, ``MosaicDatasetMapper``) and, in ``training.py``, the trainer plug-ins
that use them from a config: the loader "YOLOXMosaicLoader" and the hook "YOLOXModeSwitch".

Importing it registers the "YOLOX" meta-architecture (META_ARCH_REGISTRY) and the backbones
``build_cspdarknet_backbone`` and ``build_yolox_pafpn_backbone`` (BACKBONE_REGISTRY);
``add_yolox_config(cfg)`` (also ``add_config``, which ``train_net.py`` calls) adds the
MODEL.YOLOX keys. Importable as ``projects.YOLO``, ``segtron.projects.yolo`` and
``detectron2.projects.yolo``. Configs: ``projects/YOLO/configs``.
"""

from .config import add_yolox_config
from .conv_block import ConvBNAct, DepthwiseSeparableConv, get_activation, make_conv
from .csp_layer import Bottleneck, CSPLayer
from .darknet import CSPDarknet, build_cspdarknet_backbone
from .decode import decode, decode_boxes, flatten_predictions, grid_points
from .focus import Focus, space_to_depth
from .head import YOLOXHead, prior_bias
from .mosaic import MosaicDataset, MosaicDatasetMapper
from .pafpn import YOLOPAFPN, build_yolox_pafpn_backbone
from .simota import SimOTAResult, simota_assign
from .spp import SPPBottleneck
from .training import YOLOXModeSwitchHook, build_mosaic_dataset
from .yolox import YOLOX

add_config = add_yolox_config

__all__ = [
    "add_config",
    "add_yolox_config",
    "Bottleneck",
    "build_cspdarknet_backbone",
    "build_yolox_pafpn_backbone",
    "build_mosaic_dataset",
    "ConvBNAct",
    "CSPDarknet",
    "CSPLayer",
    "decode",
    "decode_boxes",
    "DepthwiseSeparableConv",
    "flatten_predictions",
    "Focus",
    "get_activation",
    "grid_points",
    "make_conv",
    "MosaicDataset",
    "MosaicDatasetMapper",
    "prior_bias",
    "SimOTAResult",
    "simota_assign",
    "space_to_depth",
    "SPPBottleneck",
    "YOLOPAFPN",
    "YOLOX",
    "YOLOXHead",
    "YOLOXModeSwitchHook",
]
