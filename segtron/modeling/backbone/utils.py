"""Building blocks of the transformer backbones (Detectron2 path: ``modeling.backbone.utils``).

Detectron2's public helpers, with its signatures (the ViT, MViT and Swin backbones share them):

- :func:`window_partition` / :func:`window_unpartition`: cut an (B, H, W, C) token map into
  non-overlapping square windows (zero-padding the bottom / right to a multiple of the window)
  and put them back, dropping the padding;
- :func:`add_decomposed_rel_pos`: add the decomposed relative position bias of MViTv2 / ViTDet
  to an attention map (one learned table per axis, indexed by query-key offset);
- :func:`get_abs_pos`: a pre-training absolute position embedding (optionally with a class
  token slot) resized bicubically to the current token grid;
- :class:`PatchEmbed`: the strided convolution that turns an image into a token map.

Also (segtron's, not in Detectron2's module): :class:`Mlp` and :class:`DropPath`, the two timm
layers Detectron2's transformer backbones use, with timm's parameter names (``fc1``, ``fc2``).
"""

import math
from typing import Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "window_partition",
    "window_unpartition",
    "add_decomposed_rel_pos",
    "get_abs_pos",
    "PatchEmbed",
]


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Split a token map into non-overlapping ``window_size`` x ``window_size`` windows.

    Args:
        x: (B, H, W, C) tokens.
        window_size: side of a window, in tokens.

    Returns:
        ``(windows, (Hp, Wp))``: windows (B * num_windows, window_size, window_size, C) in
        row-major window order per image, and the padded size: H and W rounded up to multiples
        of ``window_size`` (the map is zero-padded at the bottom and right first).
    """
    if window_size <= 0:
        raise ValueError(f"window_partition: window_size must be positive, got {window_size}.")
    batch, height, width, channels = x.shape
    pad_h = -height % window_size
    pad_w = -width % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = height + pad_h, width + pad_w
    rows, cols = padded_h // window_size, padded_w // window_size
    windows = x.reshape(batch, rows, window_size, cols, window_size, channels)
    windows = windows.transpose(2, 3).reshape(-1, window_size, window_size, channels)
    return windows, (padded_h, padded_w)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: Tuple[int, int], hw: Tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: reassemble windows and drop the padding.

    Args:
        windows: (B * num_windows, window_size, window_size, C).
        window_size: side of a window.
        pad_hw: the padded (Hp, Wp) that :func:`window_partition` returned.
        hw: the original (H, W).

    Returns:
        (B, H, W, C) tokens.
    """
    padded_h, padded_w = pad_hw
    height, width = hw
    rows, cols = padded_h // window_size, padded_w // window_size
    batch = windows.shape[0] // (rows * cols)
    x = windows.reshape(batch, rows, cols, window_size, window_size, -1).transpose(2, 3)
    x = x.reshape(batch, padded_h, padded_w, -1)
    if padded_h > height or padded_w > width:
        x = x[:, :height, :width, :].contiguous()
    return x


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """The relative position embedding of every (query, key) pair along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: (L, C) table, one row per offset. When L differs from
            ``2 * max(q_size, k_size) - 1`` it is first resized linearly (align_corners=False).

    Returns:
        (q_size, k_size, C): row ``offset(i, j)`` for query i and key j, where the coordinates
        of the shorter axis are stretched to the longer one's scale
        (``i * max(k/q, 1) - j * max(q/k, 1) + (k - 1) * max(q/k, 1)``, truncated).
    """
    length = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != length:
        table = F.interpolate(rel_pos.t().unsqueeze(0), size=length, mode="linear")
        table = table.squeeze(0).t()
    else:
        table = rel_pos
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    offsets = q_coords - k_coords + (k_size - 1) * k_scale
    return table[offsets.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Tuple[int, int],
    k_size: Tuple[int, int],
) -> torch.Tensor:
    """The bias :func:`add_decomposed_rel_pos` adds, on its own.

    Args:
        q: (B, q_h * q_w, C) queries (not scaled).
        rel_pos_h, rel_pos_w: (Lh, C) and (Lw, C) tables of the height and width axes.
        q_size, k_size: (q_h, q_w) and (k_h, k_w) grid sizes.

    Returns:
        (B, q_h * q_w, k_h * k_w): ``q[i, j] . Rh[i, k] + q[i, j] . Rw[j, l]`` for query (i, j)
        and key (k, l), where Rh / Rw are :func:`get_rel_pos` of each axis.
    """
    q_h, q_w = q_size
    k_h, k_w = k_size
    table_h = get_rel_pos(q_h, k_h, rel_pos_h)
    table_w = get_rel_pos(q_w, k_w, rel_pos_w)
    batch, _, dim = q.shape
    grid_q = q.reshape(batch, q_h, q_w, dim)
    bias_h = torch.einsum("bhwc,hkc->bhwk", grid_q, table_h)
    bias_w = torch.einsum("bhwc,wkc->bhwk", grid_q, table_w)
    bias = bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]
    return bias.reshape(batch, q_h * q_w, k_h * k_w)


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: Tuple[int, int],
    k_size: Tuple[int, int],
) -> torch.Tensor:
    """Add the decomposed relative position bias of MViTv2 (arXiv:2112.01526) to ``attn``.

    Args:
        attn: (B, q_h * q_w, k_h * k_w) attention logits.
        q: (B, q_h * q_w, C) queries (before the attention scale).
        rel_pos_h: (Lh, C) embeddings of height offsets.
        rel_pos_w: (Lw, C) embeddings of width offsets.
        q_size: (q_h, q_w); k_size: (k_h, k_w).

    Returns:
        a new (B, q_h * q_w, k_h * k_w) tensor: ``attn`` plus
        :func:`decomposed_rel_pos_bias`.
    """
    return attn + decomposed_rel_pos_bias(q, rel_pos_h, rel_pos_w, q_size, k_size)


def get_abs_pos(abs_pos: torch.Tensor, has_cls_token: bool, hw: Tuple[int, int]) -> torch.Tensor:
    """A square absolute position embedding brought to an (h, w) token grid.

    Args:
        abs_pos: (1, num_positions, C); its first entry belongs to a class token when
            ``has_cls_token`` (and is dropped), the rest is a square S x S grid, row-major.
        has_cls_token: whether ``abs_pos`` starts with a class-token entry.
        hw: the (h, w) token grid of the current input.

    Returns:
        (1, h, w, C): the grid, resized bicubically (align_corners=False) when S != h or w.
    """
    height, width = hw
    if has_cls_token:
        abs_pos = abs_pos[:, 1:]
    num = abs_pos.shape[1]
    side = int(math.sqrt(num))
    if side * side != num:
        raise ValueError(
            f"get_abs_pos: the position embedding has {num} grid entries "
            f"(has_cls_token={has_cls_token}), not a square number; check "
            "pretrain_use_cls_token and the checkpoint's pos_embed shape."
        )
    grid = abs_pos.reshape(1, side, side, -1)
    if side == height and side == width:
        return grid
    resized = F.interpolate(
        grid.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", align_corners=False
    )
    return resized.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Image to token map: one convolution ``proj`` (Detectron2's parameter name).

    Args:
        kernel_size, stride, padding: of the projection (patch size, usually = stride).
        in_chans: input image channels.
        embed_dim: output channels (token width).

    ``forward(x (B, C, H, W)) -> (B, H', W', embed_dim)`` (channels last).
    """

    def __init__(
        self,
        kernel_size: Tuple[int, int] = (16, 16),
        stride: Tuple[int, int] = (16, 16),
        padding: Tuple[int, int] = (0, 0),
        in_chans: int = 3,
        embed_dim: int = 768,
    ):
        super().__init__()
        self.proj = nn.Conv2d(
            in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Mlp(nn.Module):
    """Two linear layers with an activation between (timm's ``Mlp``, its parameter names).

    Args:
        in_features: input (and, by default, output) width.
        hidden_features: width of ``fc1``'s output (default: ``in_features``).
        out_features: width of ``fc2``'s output (default: ``in_features``).
        act_layer: activation class, instantiated with no argument.
        drop: dropout probability after the activation and after ``fc2`` (Swin's ``drop``;
            no parameters, so the state dict is the same either way).

    ``forward(x (..., in_features)) -> (..., out_features)``.
    """

    def __init__(
        self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0
    ):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability
    ``drop_prob`` and scale the kept ones by ``1 / (1 - drop_prob)``; identity in eval.

    ``forward(x (B, ...)) -> (B, ...)``.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def init_transformer_weights(module: nn.Module) -> None:
    """The transformer backbones' initialisation (``model.apply`` it): ``nn.Linear`` weights
    truncated normal (std 0.02) and zero biases, ``nn.LayerNorm`` weight 1 and bias 0; other
    modules keep their own."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
