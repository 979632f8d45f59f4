"""Faster CPU convolutions for the FPN, RPN and mask heads (``MODEL.WINOGRAD_CONV``).

Two kernels, both writing NCHW outputs:

- 3x3 stride-1 convolutions run on NNPACK's Winograd kernels (``F(6x6, 3x3)``), which need
  about 2.5x fewer multiplications than a direct convolution. On a 2-core AVX-512 CPU a
  256->256 conv on a 200x272 map takes ~125 ms instead of ~320 ms with oneDNN; outputs match
  the direct convolution to ~1e-5 relative (rounding of the transforms). In training the input
  gradient uses the same kernels (a convolution with the flipped weight) and the weight
  gradient torch's own backward: a 256->256 conv on 2 x 128x176 maps, forward and backward,
  takes ~610 ms instead of ~960 ms.
- 1x1 stride-1 convolutions run as matrix products ``W @ X_n`` that write NCHW: on NCHW
  inputs (oneDNN is 2.5x slower on few output channels, e.g. the RPN's logits; in training
  only for a few images, not large ROI batches), and in inference on one channels-last image
  too, read as it is, so a channels-last backbone feeds the NCHW maps NNPACK works on without
  a separate transposing copy.

Where NNPACK is missing (some builds) or slower (small maps, narrow convs) the ordinary
convolution runs instead. NNPACK sizes its thread pool from ``torch.get_num_threads()`` at its
first call in a process.
"""

import functools

import torch
from torch import nn

__all__ = [
    "winograd_available",
    "winograd_applies",
    "winograd_conv3x3",
    "pointwise_conv_nchw",
]

# NNPACK beats oneDNN's direct convolution on maps of at least this many pixels per image, or
# on batches (e.g. ROI features) of at least this many pixels in all; measured on 2 cores with
# 256 channels (200x272: 2.5x faster, 50x68: 1.5x, 25x34: equal, 100 ROIs of 14x14: 1.45x).
_MIN_PIXELS_PER_IMAGE = 2048
_MIN_PIXELS_PER_BATCH = 4096
# With autograd, 1x1 products are used while the per-image weight gradients they sum (N x K x C
# floats) stay this small; 2 x 256 x 2048 on FPN levels, 100 x 80 x 256 for a mask predictor.
_MAX_PER_IMAGE_WEIGHT_GRADS = 1 << 22
# Narrow convolutions gain too little to pay for reading NHWC inputs as NCHW.
_MIN_CHANNEL_PRODUCT = 128 * 128


@functools.lru_cache(maxsize=None)
def winograd_available() -> bool:
    """True when this torch build has NNPACK for this CPU (and initialises it)."""
    backends = getattr(torch.backends, "nnpack", None)
    return bool(backends is not None and backends.is_available())


def winograd_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """True when ``conv`` on input ``x`` (N, C, H, W) should use :func:`winograd_conv3x3` or
    :func:`pointwise_conv_nchw`: CPU float32, stride 1, no dilation or groups,
    a 1x1 kernel without padding on an NCHW input (or on one NHWC image without autograd),
    or a 3x3 kernel with enough channels on a large enough map."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if x.dim() != 4 or x.numel() == 0:
        return False
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        return False
    if conv.kernel_size == (1, 1):
        # NCHW inputs (e.g. the RPN's outputs on a Winograd conv's map): batched products,
        # with or without autograd; fwd+bwd of 256->3 on 2 x 128x176 takes 40 ms instead of
        # oneDNN's 100. NHWC inputs only for one image without autograd (an FPN level in
        # inference): on ROI batches the product copies its NHWC operand, and in training its
        # backward writes an NCHW gradient into the channels-last backbone.
        if conv.padding != (0, 0):
            return False
        if not x.is_contiguous():
            return x.shape[0] == 1 and not torch.is_grad_enabled()
        # With autograd the weight gradient is one (K, C) product per image, summed: fine for
        # a few maps or a mask predictor, 2x slower than oneDNN for big ROI batches (C4's res5).
        return (not torch.is_grad_enabled()
                or x.shape[0] * conv.in_channels * conv.out_channels <= _MAX_PER_IMAGE_WEIGHT_GRADS)
    if conv.kernel_size != (3, 3) or not winograd_available():
        return False
    if conv.padding not in ((0, 0), (1, 1)):
        return False
    if conv.in_channels * conv.out_channels < _MIN_CHANNEL_PRODUCT:
        return False
    pixels = x.shape[-2] * x.shape[-1]
    return pixels >= _MIN_PIXELS_PER_IMAGE or x.shape[0] * pixels >= _MIN_PIXELS_PER_BATCH


def winograd_conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding
) -> torch.Tensor:
    """3x3 stride-1 convolution with NNPACK's Winograd kernels; differentiable.

    The backward computes the input gradient with the same kernels (a 3x3 convolution of the
    output gradient with the flipped, transposed weight) and the weight and bias gradients with
    torch's own convolution backward.

    Args:
        x: (N, C, H, W) float32 CPU input, any memory format (NHWC is copied to NCHW).
        weight: (K, C, 3, 3). bias: (K,) or None.
        padding: (pad_h, pad_w), each 0 or 1.
    Returns:
        (N, K, H + 2 * pad_h - 2, W + 2 * pad_w - 2), NCHW-contiguous.
    """
    padding = tuple(int(p) for p in padding)
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad
                                           or (bias is not None and bias.requires_grad)):
        return _nnpack_conv3x3(x, weight, bias, padding)
    return _WinogradConv3x3.apply(x, weight, bias, padding)


def _nnpack_conv3x3(x, weight, bias, padding):
    x = x.contiguous()
    weight = weight.contiguous()
    padding = list(padding)
    if x.shape[0] == 1 or x.shape[-2] * x.shape[-1] < _MIN_PIXELS_PER_IMAGE:
        return torch._nnpack_spatial_convolution(x, weight, bias, padding, [1, 1])
    # NNPACK's batched entry point is slower than one call per image for large maps.
    return torch.cat(
        [torch._nnpack_spatial_convolution(x[i : i + 1], weight, bias, padding, [1, 1])
         for i in range(x.shape[0])]
    )


class _WinogradConv3x3(torch.autograd.Function):
    """Autograd for :func:`winograd_conv3x3` (NNPACK has no backward kernels)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return _nnpack_conv3x3(x, weight, bias, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # d(out)/d(x) is the "full" correlation with the flipped kernel: padding 2 - p.
            flipped = weight.transpose(0, 1).flip(2, 3)
            grad_x = _nnpack_conv3x3(grad_out, flipped, None, [2 - p for p in ctx.padding])
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad_out, x, weight, [weight.shape[0]] if ctx.has_bias else None,
                [1, 1], list(ctx.padding), [1, 1], False, [0, 0], 1,
                [False, ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]],
            )
        return grad_x, grad_w, grad_b, None


def pointwise_conv_nchw(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """1x1 stride-1 convolution as one matrix product per image, output NCHW; differentiable.

    Args:
        x: (N, C, H, W), NCHW or channels-last (read in place through a (N, C, H*W) view).
        weight: (K, C, 1, 1). bias: (K,) or None.
    Returns:
        (N, K, H, W), NCHW-contiguous.
    """
    n, c, h, w = x.shape
    columns = x.reshape(n, c, h * w)
    matrix = weight.reshape(weight.shape[0], c)
    if n == 1:
        out = (torch.mm(matrix, columns[0]) if bias is None
               else torch.addmm(bias[:, None], matrix, columns[0])).unsqueeze(0)
    else:
        # bmm on the expanded weight: torch.matmul's broadcasting path is ~6x slower here.
        matrices = matrix.unsqueeze(0).expand(n, -1, -1)
        out = (torch.bmm(matrices, columns) if bias is None
               else torch.baddbmm(bias[None, :, None], matrices, columns))
    return out.view(n, -1, h, w)
