"""What every meta-architecture does with its batched inputs before and after the network.

Shared by the R-CNNs (``rcnn.py``) and the dense detectors (``dense_detector.py``):

- :func:`register_pixel_stats`: the ``pixel_mean`` / ``pixel_std`` buffers (not in the
  state dict: they come from the config, as in Detectron2);
- :func:`normalize_and_batch`: ``(x - mean) / std`` per image, then one zero-padded batch;
- :func:`output_size`: the "height" x "width" an input asks its results to be scaled to;
- :func:`input_config`: the constructor arguments every meta-architecture reads the same way;
- :func:`set_winograd_conv`: the MODEL.WINOGRAD_CONV switch of a whole model, and
  :data:`winograd_conv_property` / :data:`device_property`, the attributes the models expose.
"""

from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from ...layers import move_device_like
from ...layers.execution import set_model_winograd_conv, to_input_layout
from ...structures import ImageList
from ..backbone import Backbone

__all__ = [
    "register_pixel_stats",
    "normalize_and_batch",
    "batch_images",
    "output_size",
    "input_config",
    "set_winograd_conv",
    "winograd_conv_property",
    "device_property",
]


def register_pixel_stats(
    module: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> None:
    """Give ``module`` (C, 1, 1) float32 buffers ``pixel_mean`` and ``pixel_std``, kept out of
    the state dict (checkpoints do not carry them). Raises ValueError when their lengths
    differ."""
    module.register_buffer(
        "pixel_mean", torch.tensor(list(pixel_mean), dtype=torch.float32).view(-1, 1, 1), False
    )
    module.register_buffer(
        "pixel_std", torch.tensor(list(pixel_std), dtype=torch.float32).view(-1, 1, 1), False
    )
    if module.pixel_mean.shape != module.pixel_std.shape:
        raise ValueError(
            f"MODEL.PIXEL_MEAN ({list(pixel_mean)}) and MODEL.PIXEL_STD ({list(pixel_std)}) "
            "must have one value per input channel each, and as many values."
        )


def normalize_and_batch(
    module: nn.Module, batched_inputs: List[Dict], backbone: Backbone
) -> ImageList:
    """Normalise each input's "image" (C, H, W) with ``module``'s pixel statistics on its
    device and pad them (bottom / right, zeros) into one ``ImageList`` whose size suits
    ``backbone`` (``size_divisibility``, ``padding_constraints``). The batch is made NHWC when
    ``module.channels_last`` is true."""
    return batch_images(
        batched_inputs, module.pixel_mean, module.pixel_std, backbone.size_divisibility,
        backbone.padding_constraints, bool(getattr(module, "channels_last", False)),
    )


def batch_images(
    batched_inputs: List[Dict[str, torch.Tensor]],
    pixel_mean: torch.Tensor,
    pixel_std: torch.Tensor,
    size_divisibility: int,
    padding_constraints: Dict[str, int],
    channels_last: bool,
) -> ImageList:
    """:func:`normalize_and_batch` from plain values (what scripted models call): each
    input's "image" moved to ``pixel_mean``'s device, ``(x - pixel_mean) / pixel_std``, padded
    into one ``ImageList`` (``size_divisibility``, ``padding_constraints``), NHWC when
    ``channels_last``."""
    images = []
    for i, item in enumerate(batched_inputs):
        if "image" not in item:
            if not torch.jit.is_scripting():
                raise KeyError(
                    f"Batched input {i} has no 'image' key (keys: {sorted(item)}); each input "
                    "dict needs the (C, H, W) image tensor under 'image'."
                )
            raise KeyError("A batched input has no 'image' key.")
        images.append(move_device_like(item["image"], pixel_mean))
    images = [(x - pixel_mean) / pixel_std for x in images]
    batch = ImageList.from_tensors(
        images,
        size_divisibility,
        padding_constraints=padding_constraints,
    )
    batch.tensor = to_input_layout(batch.tensor, channels_last)
    return batch


def output_size(item: Dict, image_size: Tuple[int, int]) -> Tuple[int, int]:
    """(height, width) for one input's results: its "height" / "width" when given, else the
    network input size ``image_size``."""
    return item.get("height", image_size[0]), item.get("width", image_size[1])


def input_config(cfg) -> Dict:
    """The constructor arguments every meta-architecture reads the same way from ``cfg``:
    ``pixel_mean`` / ``pixel_std`` (MODEL.PIXEL_MEAN / PIXEL_STD), ``channels_last``
    (MODEL.CHANNELS_LAST) and ``winograd_conv`` (MODEL.WINOGRAD_CONV)."""
    return {
        "pixel_mean": cfg.MODEL.PIXEL_MEAN,
        "pixel_std": cfg.MODEL.PIXEL_STD,
        "channels_last": cfg.MODEL.CHANNELS_LAST,
        "winograd_conv": cfg.MODEL.WINOGRAD_CONV,
    }


@torch.jit.unused  # (the property's setter: Python only, never in scripted code)
def set_winograd_conv(model: nn.Module, enabled: bool) -> None:
    """Turn Winograd/GEMM convolutions on or off in the convs of ``model`` that
    ``layers.execution.set_model_winograd_conv`` covers (all but the backbone's bottom-up
    network). Records the state in ``model._winograd_conv``."""
    model._winograd_conv = bool(enabled)
    set_model_winograd_conv(model, enabled)


def _get_winograd_conv(self) -> bool:
    return self._winograd_conv


def _get_device(self) -> torch.device:
    return self.pixel_mean.device


# Getters written as functions (not lambdas) so that TorchScript can compile them.
winograd_conv_property = property(
    _get_winograd_conv,
    set_winograd_conv,
    doc="Whether CPU convolutions outside the bottom-up net use Winograd/GEMM kernels "
    "(MODEL.WINOGRAD_CONV); setting it switches every such conv of the model.",
)

device_property = property(_get_device, doc="The device of the model (that of ``pixel_mean``).")
