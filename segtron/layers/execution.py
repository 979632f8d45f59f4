"""How layers execute: the memory layout of tensors (NCHW / NHWC) and the convolution kernel.

Every such decision of the library is made here, from two model settings and the tensors
themselves (device, layout, autograd, tracing), so that heads and meta-architectures stay plain
PyTorch and call one named function where a decision is needed:

- ``MODEL.CHANNELS_LAST`` (``model.channels_last``): the normalised batch is made NHWC
  (:func:`to_input_layout`); NHWC then flows on by itself (oneDNN / cuDNN convs keep it), and
  the layers below follow it. On any device.
- ``MODEL.WINOGRAD_CONV`` (``model.winograd_conv``): the segtron ``Conv2d`` modules outside
  the backbone's bottom-up network (:func:`set_model_winograd_conv`) may run NNPACK's Winograd
  3x3 kernel or a 1x1 matrix product, both writing NCHW maps (``layers/winograd.py``). Only
  on CPU float32 tensors: on other devices the policy never picks them.

Decisions, each with the function that makes it:

- :func:`conv_plan`: which kernel a ``Conv2d`` runs and whether its ``FrozenBatchNorm2d`` is
  folded into the weights. The fold happens when autograd is enabled, when the input is NHWC,
  or with the Winograd / GEMM kernels; plain NCHW inference keeps Detectron2's exact sequence
  (convolution, then ``batch_norm``), which the default settings' bit-parity relies on.
- :func:`uses_nhwc_roi_align`: ``ROIAlign`` on an NHWC CPU map runs ``roi_align_nhwc``
  (not while tracing: its sampling grid would be frozen into the trace).
- :func:`new_pooled_output`: pooled region features are NHWC when the feature maps are.
- :func:`features_for_roi_pooling`: with both settings on, the FPN / RPN ran NCHW (Winograd
  writes NCHW); the maps go back to NHWC once for the ROI poolers.
- :func:`mask_deconv_input`: the mask head's transposed conv gets NHWC input when its pooled
  features were NHWC (the Winograd convs before it write NCHW).
- :class:`LinearOnMap`: a box head's first fc on an NHWC map in CPU inference runs as one
  convolution with a map-sized kernel, without the flatten copy.
"""

from typing import Dict, Iterable, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from .winograd import winograd_applies

__all__ = [
    "is_channels_last",
    "to_input_layout",
    "features_for_roi_pooling",
    "new_pooled_output",
    "mask_deconv_input",
    "uses_nhwc_roi_align",
    "ConvPlan",
    "conv_plan",
    "LinearOnMap",
    "enable_winograd_conv",
    "set_model_winograd_conv",
]

# Kernels a Conv2d can run (ConvPlan.kernel).
DIRECT = "direct"  # the module's own convolution (oneDNN / cuDNN / ...)
WINOGRAD = "winograd"  # layers.winograd.winograd_conv3x3 (NNPACK, CPU)
POINTWISE = "pointwise"  # layers.winograd.pointwise_conv_nchw (a matrix product, CPU)


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor stored NHWC (and not also NCHW-contiguous, as 1x1 maps are)."""
    return (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    )


# ---- Layouts ---------------------------------------------------------------------------------


def to_input_layout(batch: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """The normalised (N, C, H, W) input ``batch`` in the layout the backbone is fed: NHWC when
    ``channels_last`` (MODEL.CHANNELS_LAST), else as it is."""
    if channels_last:
        return batch.contiguous(memory_format=torch.channels_last)
    return batch


def features_for_roi_pooling(
    features: Dict[str, torch.Tensor], channels_last: bool, winograd_conv: bool
) -> Dict[str, torch.Tensor]:
    """The feature maps ROI heads pool from: with both MODEL.CHANNELS_LAST and
    MODEL.WINOGRAD_CONV the FPN and RPN ran on NCHW maps, and ROIAlign reads NHWC maps faster,
    so each map is converted once for all ROI heads; otherwise ``features`` unchanged."""
    if not (winograd_conv and channels_last):
        return features
    return {k: v.contiguous(memory_format=torch.channels_last) for k, v in features.items()}


def new_pooled_output(feature: torch.Tensor, shape: Tuple[int, int, int, int]) -> torch.Tensor:
    """An uninitialised (R, C, h, w) tensor for pooled region features, with ``feature``'s
    dtype and device, NHWC when ``feature`` (a pooled map) is: the mask head's convolutions
    then run NHWC too, and a box head that flattens reads (C, H, W) order either way."""
    layout = torch.channels_last if is_channels_last(feature) else torch.contiguous_format
    return torch.empty(shape, dtype=feature.dtype, device=feature.device, memory_format=layout)


def mask_deconv_input(x: torch.Tensor, pooled_nhwc: bool) -> torch.Tensor:
    """The input of a mask head's transposed conv: ``x`` made NHWC when the head's pooled
    features were NHWC (``pooled_nhwc``) but its convs wrote NCHW (Winograd): the transposed
    conv and the predictor run ~2x faster NHWC. Otherwise ``x`` itself."""
    if pooled_nhwc and not is_channels_last(x):
        return x.contiguous(memory_format=torch.channels_last)
    return x


# ---- Kernels ---------------------------------------------------------------------------------


def uses_nhwc_roi_align(x: torch.Tensor) -> bool:
    """True when ROIAlign on the feature map ``x`` should run ``roi_align_nhwc`` (an NHWC map on
    CPU, outside tracing) rather than torchvision's kernel. Not while tracing: its sampling
    grid depends on the boxes, and torchvision's op is the one with an ONNX export."""
    return x.device.type == "cpu" and is_channels_last(x) and not torch.jit.is_tracing()


class ConvPlan(NamedTuple):
    """How one ``Conv2d`` call runs: ``kernel`` (``"direct"``, ``"winograd"`` or
    ``"pointwise"``) and ``fold_norm`` (whether its norm is folded into the weights)."""

    kernel: str
    fold_norm: bool


def conv_plan(conv: nn.Conv2d, x: torch.Tensor) -> ConvPlan:
    """The kernel and norm folding for ``conv`` (a segtron ``Conv2d``: ``norm`` and ``winograd``
    attributes) on input ``x`` (N, C, H, W).

    The Winograd / GEMM kernels run when ``conv.winograd`` is set (MODEL.WINOGRAD_CONV), the
    conv's output is the conv's alone (no norm, or one that folds) and ``winograd_applies``
    (CPU float32, suitable shape); the norm is then folded. Otherwise a norm with
    ``fold_into_conv`` (``FrozenBatchNorm2d``) is folded when autograd is enabled or ``x`` is
    NHWC (MODEL.CHANNELS_LAST, not bit-exact to Detectron2 anyway); plain NCHW inference keeps
    convolution then batch_norm.
    """
    norm = getattr(conv, "norm", None)
    foldable = getattr(norm, "fold_into_conv", None) is not None
    if getattr(conv, "winograd", False) and (foldable or norm is None) and winograd_applies(
        conv, x
    ):
        return ConvPlan(POINTWISE if conv.kernel_size == (1, 1) else WINOGRAD, foldable)
    fold = foldable and (torch.is_grad_enabled() or is_channels_last(x))
    return ConvPlan(DIRECT, fold)


class LinearOnMap:
    """Applies a box head's first ``nn.Linear`` to (R, C, H, W) region features, flattened in
    (C, H, W) order: ``fc(x.flatten(1))``.

    On an NHWC map in CPU inference (MODEL.CHANNELS_LAST) it runs as one convolution with a
    kernel the size of the map: the same sums, without first copying the map to (C, H, W)
    order (~25% faster for 1000 boxes of 256x7x7). Not while tracing: the kernel's shape
    would come from traced sizes, which the ONNX export of a convolution cannot take.

    The channels-last kernel is kept between calls while the weight tensor is unchanged (same
    storage and version counter): oneDNN would otherwise reorder it on every call (51 MB for
    the FPN default, ~35 ms). :meth:`clear` drops it (a head's ``train()``).
    """

    def __init__(self):
        self._cache: Optional[Tuple[tuple, torch.Tensor]] = None

    def __call__(self, fc: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``fc`` on ``x`` (R, C, H, W) flattened -> (R, fc.out_features)."""
        if (x.dim() == 4 and not torch.is_grad_enabled() and not torch.jit.is_tracing()
                and x.device.type == "cpu" and is_channels_last(x)):
            return F.conv2d(x, self._kernel(fc, x.shape[1:]), fc.bias).flatten(1)
        return fc(x.flatten(1))

    @property
    def cached_kernel(self) -> Optional[torch.Tensor]:
        """The kept channels-last kernel, or None."""
        return None if self._cache is None else self._cache[1]

    def clear(self) -> None:
        """Drop the kept kernel."""
        self._cache = None

    def _kernel(self, fc: nn.Linear, map_shape) -> torch.Tensor:
        weight = fc.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device, tuple(map_shape))
        if self._cache is None or self._cache[0] != key:
            kernel = weight.detach().view(fc.out_features, *map_shape)
            self._cache = (key, kernel.contiguous(memory_format=torch.channels_last))
        return self._cache[1]


# ---- Which convolutions the Winograd switch covers -------------------------------------------


def enable_winograd_conv(
    module: nn.Module, enabled: bool = True, exclude: Iterable[Union[str, nn.Module]] = ()
) -> int:
    """Set ``winograd`` on every segtron ``Conv2d`` (a conv with a ``winograd`` switch) under
    ``module``.

    Args:
        module: the root module.
        enabled: the value to set.
        exclude: sub-modules whose convs are left alone, as module objects (everything under
            them, by identity) or as names (as in ``named_modules``), e.g. the backbone's
            bottom-up network.
    Returns:
        the number of convs whose flag was set.
    """
    exclude = list(exclude)
    names = tuple(e for e in exclude if isinstance(e, str))
    # Every module under an excluded one, also where it is reachable by another name.
    skipped = {id(m) for e in exclude if not isinstance(e, str) for m in e.modules()}
    count = 0
    for name, child in module.named_modules():
        if id(child) in skipped or any(name == e or name.startswith(e + ".") for e in names):
            continue
        if isinstance(child, nn.Conv2d) and hasattr(child, "winograd"):
            child.winograd = bool(enabled)
            count += 1
    return count


def set_model_winograd_conv(model: nn.Module, enabled: bool) -> int:
    """MODEL.WINOGRAD_CONV for a whole meta-architecture: Winograd/GEMM convolutions on or off
    in every conv of ``model`` except the backbone's bottom-up network (``model.backbone.
    bottom_up``, left on oneDNN and channels-last when asked), or the whole ``model.backbone``
    when it has no bottom-up part (e.g. a plain ResNet). Returns the number of convs set."""
    backbone = model.backbone
    return enable_winograd_conv(
        model, enabled, exclude=(getattr(backbone, "bottom_up", backbone),)
    )
