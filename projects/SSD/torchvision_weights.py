"""Loading torchvision's SSD300-VGG16 (and VGG-16) weights into this project's modules:
:func:`load_torchvision_ssd300_vgg16`, :func:`load_torchvision_vgg16_features`.

Where torchvision keeps its parameters (``torchvision.models.detection.ssd300_vgg16()``):

- ``backbone.features.<i>``: VGG-16's ``features`` Sequential up to conv4_3's ReLU, one index
  per layer (conv, ReLU, ..., max-pool), so conv1_1 is 0, conv1_2 2, conv2_1 5, ... conv4_3 21;
- ``backbone.scale_weight``: conv4_3's L2Norm scales;
- ``backbone.extra.0``: pool4, conv5_1 .. conv5_3 (indices 1, 3, 5), then at index 7 the
  Sequential (pool5, conv6, ReLU, conv7, ReLU): conv6 is ``extra.0.7.1``, conv7 ``extra.0.7.3``;
- ``backbone.extra.<j>`` for j >= 1: (1x1 conv, ReLU, second conv, ReLU) of conv{7+j};
- ``head.classification_head.module_list.<k>`` / ``head.regression_head.module_list.<k>``:
  map k's class and box convs, with the same channel layout as :class:`~.head.SSDHead`
  (background first), so tensors are copied unchanged.
"""

from typing import Dict, Mapping

import torch
from torch import nn

from .vgg import EXTRA_LAYER_SPECS, VGG16_STAGES

__all__ = [
    "load_torchvision_ssd300_vgg16",
    "load_torchvision_vgg16_features",
    "torchvision_ssd_key_map",
    "torchvision_vgg16_features_key_map",
]

_PARAMS = ("weight", "bias")


def _vgg_feature_indices() -> Dict[int, str]:
    """Index in torchvision's VGG-16 ``features`` -> our conv name (conv{s}_{i})."""
    indices, index = {}, 0
    for stage, (_, depth) in enumerate(VGG16_STAGES, start=1):
        for i in range(1, depth + 1):
            indices[index] = f"conv{stage}_{i}"
            index += 2  # the conv and its ReLU
        index += 1  # the stage's max-pool
    return indices


def torchvision_vgg16_features_key_map() -> Dict[str, str]:
    """torchvision ``vgg16().state_dict()`` key of every conv of ``features`` -> the key in
    :class:`~.vgg.SSDVGGBackbone` (e.g. "features.28.bias" -> "conv5_3.bias")."""
    return {
        f"features.{index}.{p}": f"{name}.{p}"
        for index, name in _vgg_feature_indices().items()
        for p in _PARAMS
    }


def torchvision_ssd_key_map(num_extra_layers: int = 4) -> Dict[str, str]:
    """torchvision SSD-VGG16 state-dict key -> key in this project's ``SSD`` model.

    Args:
        num_extra_layers: layers after conv7 (4 for SSD300); the head has one conv pair per
            map, ``num_extra_layers + 2`` maps.
    """
    mapping = {}
    pool4_index = 23  # conv5_1 .. conv5_3 start torchvision's backbone.extra.0 after pool4
    for index, name in _vgg_feature_indices().items():
        if index < pool4_index:
            prefix = f"backbone.features.{index}"
        else:
            prefix = f"backbone.extra.0.{index - pool4_index}"
        for p in _PARAMS:
            mapping[f"{prefix}.{p}"] = f"backbone.{name}.{p}"
    mapping["backbone.scale_weight"] = "backbone.conv4_3_norm.weight"
    for p in _PARAMS:
        mapping[f"backbone.extra.0.7.1.{p}"] = f"backbone.conv6.{p}"
        mapping[f"backbone.extra.0.7.3.{p}"] = f"backbone.conv7.{p}"
        for j in range(1, num_extra_layers + 1):
            mapping[f"backbone.extra.{j}.0.{p}"] = f"backbone.conv{7 + j}_1.{p}"
            mapping[f"backbone.extra.{j}.2.{p}"] = f"backbone.conv{7 + j}_2.{p}"
        for k in range(num_extra_layers + 2):
            mapping[f"head.classification_head.module_list.{k}.{p}"] = f"head.cls_score.{k}.{p}"
            mapping[f"head.regression_head.module_list.{k}.{p}"] = f"head.bbox_pred.{k}.{p}"
    return mapping


def _load_renamed(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], mapping: Dict[str, str], what: str
) -> None:
    """Copy ``state_dict`` into ``module`` under the names of ``mapping``. KeyError naming the
    keys of ``state_dict`` with no place in ``module`` (unused) and the keys of ``module`` left
    without a value (missing); ValueError naming the keys whose shapes differ."""
    targets = module.state_dict()
    unused = sorted(k for k in state_dict if mapping.get(k) not in targets)
    renamed = {mapping[k]: v for k, v in state_dict.items() if mapping.get(k) in targets}
    missing = sorted(set(targets) - set(renamed))
    if unused or missing:
        raise KeyError(
            f"{what}: the state dict does not fit {type(module).__name__}. Unused torchvision "
            f"keys: {unused}; model keys without a value: {missing}. Build the model with the "
            "checkpoint's layout (MODEL.SSD.EXTRA_LAYERS, IN_FEATURES, ASPECT_RATIOS)."
        )
    wrong = [
        f"{k}: {tuple(v.shape)} vs model {tuple(targets[k].shape)}"
        for k, v in renamed.items()
        if v.shape != targets[k].shape
    ]
    if wrong:
        raise ValueError(
            f"{what}: shapes differ ({'; '.join(wrong)}). For the class convs, "
            "MODEL.SSD.NUM_CLASSES must be torchvision's num_classes - 1 (it counts background)."
        )
    module.load_state_dict(renamed, strict=True)


def load_torchvision_ssd300_vgg16(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> nn.Module:
    """Load torchvision's ``ssd300_vgg16(num_classes=K + 1).state_dict()`` into ``model``, an
    ``SSD`` with ``build_ssd_vgg_backbone`` (EXTRA_LAYERS "SSD300"), NUM_CLASSES K and the six
    default maps.

    Every torchvision key must have a place and every parameter of ``model`` must receive a
    value: otherwise KeyError naming the unused torchvision keys and the model keys left
    without a value (ValueError for shape mismatches). The pixel statistics are config values,
    not weights: MODEL.PIXEL_MEAN [122.99925, 116.9991, 103.9992], PIXEL_STD [1, 1, 1] and
    INPUT.FORMAT "RGB" are torchvision's normalisation on 0..255 images.

    Returns:
        ``model``, loaded.
    """
    # backbone.extra.0 is conv5 + conv6/7; extra.1 .. extra.n the layers after conv7.
    extra_ids = {int(k.split(".")[2]) for k in state_dict if k.startswith("backbone.extra.")}
    num_extra = max(extra_ids, default=len(EXTRA_LAYER_SPECS["SSD300"]))
    _load_renamed(
        model, state_dict, torchvision_ssd_key_map(num_extra), "load_torchvision_ssd300_vgg16"
    )
    return model


def load_torchvision_vgg16_features(
    backbone: nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> nn.Module:
    """Load the 13 convs of a torchvision ``vgg16().state_dict()`` (e.g. the
    ``VGG16_Weights.IMAGENET1K_FEATURES`` that ``ssd300_vgg16`` starts from) into an
    :class:`~.vgg.SSDVGGBackbone`; its ``classifier.*`` keys are ignored. Only the VGG convs
    are filled: conv6, conv7, the extra layers and the L2Norm scales keep their
    initialisation, as in torchvision. KeyError on any other unused key.

    Returns:
        ``backbone``, loaded.
    """
    mapping = torchvision_vgg16_features_key_map()
    unused = sorted(k for k in state_dict if k not in mapping and not k.startswith("classifier."))
    if unused:
        raise KeyError(
            f"load_torchvision_vgg16_features: keys {unused} are not VGG-16 features convs; "
            "pass torchvision's vgg16().state_dict()."
        )
    missing = sorted(set(mapping) - set(state_dict))
    if missing:
        raise KeyError(f"load_torchvision_vgg16_features: the state dict lacks {missing}.")
    own = backbone.state_dict()
    renamed = {mapping[k]: v for k, v in state_dict.items() if k in mapping}
    wrong = [k for k, v in renamed.items() if k not in own or own[k].shape != v.shape]
    if wrong:
        raise ValueError(
            f"load_torchvision_vgg16_features: {wrong} do not fit {type(backbone).__name__} "
            "(a VGG-16 state dict for 3-channel images is expected)."
        )
    backbone.load_state_dict(renamed, strict=False)
    return backbone
