"""Building the whole model from a config.

Detectron2 path: ``detectron2.modeling.meta_arch.build``.
"""

import logging

import torch
from torch import nn

from ..compilation import compile_from_config
from ..registries import META_ARCH_REGISTRY

__all__ = ["META_ARCH_REGISTRY", "build_model"]

logger = logging.getLogger(__name__)


def resolve_device(name: str, key: str = "MODEL.DEVICE",
                   cpu_override: str = "'MODEL.DEVICE cpu' (a command-line override or "
                                       "cfg.MODEL.DEVICE = 'cpu')") -> torch.device:
    """The torch device ``name`` from config ``key``, checked before anything is built.

    Args:
        name: e.g. "cpu", "cuda", "cuda:1".
        key: the config key it came from, for the messages.
        cpu_override: how to switch that key to the CPU, for the message.

    Raises:
        RuntimeError: for an invalid name, or CUDA on a machine without it.
    """
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise RuntimeError(
            f"{key} = {name!r} is not a valid torch device ({err}); use e.g. 'cpu', "
            "'cuda' or 'cuda:1'."
        ) from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{key} = {name!r} but CUDA is not available on this machine (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda}). Run on the CPU with "
            f"{cpu_override}."
        )
    return device


def build_model(cfg) -> nn.Module:
    """Build the model named by ``cfg.MODEL.META_ARCHITECTURE`` and move it to
    ``cfg.MODEL.DEVICE``.

    The weights are freshly initialised; load a checkpoint with ``DetectionCheckpointer``.
    With MODEL.COMPILE.ENABLED the submodules it names are compiled in place
    (``compilation.py``).

    Raises:
        RuntimeError: when MODEL.DEVICE is not a valid device, or names CUDA on a machine
            without it.
    """
    device = resolve_device(str(cfg.MODEL.DEVICE))
    name = cfg.MODEL.META_ARCHITECTURE
    model = META_ARCH_REGISTRY.get(name)(cfg)
    model.to(device)
    compile_from_config(model, cfg)
    num_params = sum(p.numel() for p in model.parameters())
    num_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "Built %s on %s: %s parameters (%s trainable).",
        name,
        device,
        f"{num_params:,}",
        f"{num_trainable:,}",
    )
    return model
