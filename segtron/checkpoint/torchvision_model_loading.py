"""Recognise torchvision ResNet ImageNet state dicts and rename them to Detectron2 names.

torchvision names a ResNet ``conv1``/``bn1`` (stem), ``layer1..4`` (stages), ``bnK`` (the norm
of ``convK``), ``downsample.0/1`` (projection shortcut conv/norm) and ``fc`` (classifier).
Detectron2 names the same parameters ``stem.conv1``, ``res2..5``, ``convK.norm``, ``shortcut``
and ``shortcut.norm``, and has no classifier. The renamed dict still goes through the suffix
matching of ``align_and_update_state_dicts``, so it loads into a bare backbone as well as into
a detector (``backbone.bottom_up.*``).
"""

import re
from typing import Any, Dict, Mapping

__all__ = [
    "is_torchvision_resnet_state_dict",
    "convert_torchvision_resnet_names",
    "rename_torchvision_resnet_key",
    "TORCHVISION_PIXEL_MEAN",
    "TORCHVISION_PIXEL_STD",
    "TORCHVISION_CONFIG_HINT",
]

# torchvision normalises RGB input in [0, 1] with mean (0.485, 0.456, 0.406) and std
# (0.229, 0.224, 0.225); Detectron2 feeds 0..255 pixels, so both scale by 255.
TORCHVISION_PIXEL_MEAN = [123.675, 116.28, 103.53]
TORCHVISION_PIXEL_STD = [58.395, 57.12, 57.375]

TORCHVISION_CONFIG_HINT = (
    "torchvision's ResNet weights were trained with the stride on the 3x3 conv and RGB input "
    "normalised by ImageNet mean/std. Set MODEL.RESNETS.STRIDE_IN_1X1 False, INPUT.FORMAT RGB, "
    f"MODEL.PIXEL_MEAN {TORCHVISION_PIXEL_MEAN} and MODEL.PIXEL_STD {TORCHVISION_PIXEL_STD} "
    "in the config, or the features will be wrong."
)

_STAGE = re.compile(r"^layer([1-4])\.")
_BLOCK_NORM = re.compile(r"\.bn([1-3])\.")


def _strip_module_prefix(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def is_torchvision_resnet_state_dict(state_dict: Mapping[str, Any]) -> bool:
    """True if the keys are those of a torchvision ``ResNet`` (``conv1``, ``bn1``, ``layer1.0``).

    A ``module.`` prefix (from DataParallel) is ignored.
    """
    keys = {_strip_module_prefix(k) for k in state_dict}
    return (
        "conv1.weight" in keys
        and "bn1.weight" in keys
        and any(k.startswith("layer1.0.") for k in keys)
        and not any(k.startswith(("stem.", "res2.")) for k in keys)
    )


def rename_torchvision_resnet_key(key: str) -> str:
    """The Detectron2 name of one torchvision ResNet key (``layer1.0.bn1.weight`` ->
    ``res2.0.conv1.norm.weight``); see ``convert_torchvision_resnet_names``."""
    key = _strip_module_prefix(key)
    stage = _STAGE.match(key)
    if stage is None:
        # Stem: conv1.weight, bn1.{weight,bias,running_mean,...}
        key = key.replace("bn1.", "conv1.norm.", 1)
        return "stem." + key
    key = f"res{int(stage.group(1)) + 1}." + key[stage.end() :]
    key = _BLOCK_NORM.sub(lambda m: f".conv{m.group(1)}.norm.", key)
    key = key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    return key


def convert_torchvision_resnet_names(
    state_dict: Mapping[str, Any], keep_num_batches_tracked: bool = True
) -> Dict[str, Any]:
    """Rename a torchvision ResNet state dict to Detectron2 names; the ``fc`` classifier is dropped.

    ``conv1.weight`` -> ``stem.conv1.weight``, ``bn1.*`` -> ``stem.conv1.norm.*``,
    ``layer{i}.{j}.conv{k}`` -> ``res{i+1}.{j}.conv{k}``, ``layer{i}.{j}.bn{k}.*`` ->
    ``res{i+1}.{j}.conv{k}.norm.*``, ``downsample.0``/``downsample.1`` -> ``shortcut`` /
    ``shortcut.norm``.

    Args:
        state_dict: the torchvision state dict (values are passed through untouched).
        keep_num_batches_tracked: keep BatchNorm's ``num_batches_tracked`` counters (a model with
            FrozenBN has no such buffers, so they would be reported as unexpected).

    Returns:
        A new dict with Detectron2 names.
    """
    out: Dict[str, Any] = {}
    for key, value in state_dict.items():
        bare = _strip_module_prefix(key)
        if bare.startswith("fc."):
            continue
        if not keep_num_batches_tracked and bare.endswith("num_batches_tracked"):
            continue
        out[rename_torchvision_resnet_key(bare)] = value
    return out
