"""The building blocks of the Swin Transformer backbone (see ``swin.py``, which re-exports them
at Detectron2's path ``modeling.backbone.swin``): window helpers, :class:`WindowAttention`,
:class:`SwinTransformerBlock`, :class:`PatchMerging`, :class:`BasicLayer` (one stage) and
:class:`PatchEmbed`. Attribute names follow the official Swin detection code so checkpoints
load unchanged.
"""

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint as torch_checkpoint

from .utils import DropPath, Mlp  # noqa: F401  (Mlp: a Detectron2 name of this module)
from .utils import window_partition as padded_window_partition
from .utils import window_unpartition

__all__ = [
    "Mlp",
    "window_partition",
    "window_reverse",
    "WindowAttention",
    "SwinTransformerBlock",
    "PatchMerging",
    "BasicLayer",
    "PatchEmbed",
]

# Score added to the attention logits of token pairs a shifted window must keep apart (the
# official code's value; softmax turns it into a weight of ~1e-44, not an exact zero).
_MASKED_LOGIT = -100.0


def _pair(value: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``value`` as an (h, w) pair: an int is repeated, a sequence of two is kept."""
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"Swin: expected an int or a pair (h, w), got {value!r}.")
    return value


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """Cut (B, H, W, C) into non-overlapping square windows, no padding (Swin's form of
    :func:`.utils.window_partition`).

    Returns (B * H/ws * W/ws, ws, ws, C), windows of image 0 first, each image's windows in
    row-major order. H and W must be multiples of ``window_size`` (pad first otherwise).
    """
    h, w = x.shape[1], x.shape[2]
    if h % window_size or w % window_size:
        raise ValueError(
            f"window_partition: a {h}x{w} map is not a multiple of window_size={window_size}; "
            "pad it to a multiple of the window first."
        )
    return padded_window_partition(x, window_size)[0]


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) windows -> (B, H, W, C)."""
    return window_unpartition(windows, window_size, (H, W), (H, W))


def _relative_position_index(wh: int, ww: int) -> torch.Tensor:
    """(wh*ww, wh*ww) long: for tokens p, q of a window (row-major), the row of the bias table
    that holds their offset, ``(dy + wh - 1) * (2 * ww - 1) + (dx + ww - 1)`` with
    ``(dy, dx) = p - q``."""
    rows, cols = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = rows[:, None] - rows[None, :] + (wh - 1)
    dx = cols[:, None] - cols[None, :] + (ww - 1)
    return dy * (2 * ww - 1) + dx


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, plus a learned relative position bias.

    Args:
        dim: channels; ``num_heads`` must divide it.
        window_size: (wh, ww) of the windows.
        qkv_bias: learn a bias for the fused q/k/v projection.
        qk_scale: logit scale; default ``head_dim ** -0.5``.
        attn_drop: dropout on the attention weights; proj_drop: after the output projection.

    The bias table ``relative_position_bias_table`` is ((2wh-1)(2ww-1), num_heads); the
    persistent buffer ``relative_position_index`` maps token pairs to its rows.
    """

    def __init__(
        self,
        dim,
        window_size,
        num_heads,
        qkv_bias=True,
        qk_scale=None,
        attn_drop=0.0,
        proj_drop=0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim={dim} is not divisible by num_heads="
                             f"{num_heads}; pick a head count that divides the width.")
        self.dim = dim
        self.window_size = _pair(window_size)
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        wh, ww = self.window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads)
        )
        self.register_buffer("relative_position_index", _relative_position_index(wh, ww))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """The bias added to the logits: (num_heads, N, N) with N = wh * ww."""
        n = self.window_size[0] * self.window_size[1]
        table = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return table.reshape(n, n, self.num_heads).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend within each window.

        Args:
            x: (B * nW, N, C) tokens of each window, windows of one image consecutive.
            mask: None, or (nW, N, N) scores added per window (0 or -100, shifted windows).
        Returns:
            (B * nW, N, C).
        """
        bw, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).reshape(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias().unsqueeze(0)  # (1, heads, N, N)
        if mask is not None:
            # Fold each image's windows into the head axis so one (1, nW*heads, N, N) score
            # tensor serves the whole batch.
            nw = mask.shape[0]
            bias = (bias + mask.unsqueeze(1).to(bias.dtype)).reshape(1, nw * heads, n, n)
            q, k, v = (t.reshape(bw // nw, nw * heads, n, -1) for t in (q, k, v))
        p = self.attn_drop.p if self.training else 0.0
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p, scale=self.scale
        )
        out = out.reshape(bw, heads, n, -1).transpose(1, 2).reshape(bw, n, c)
        return self.proj_drop(self.proj(out))


class SwinTransformerBlock(nn.Module):
    """Pre-norm transformer block with (shifted) window attention and an MLP.

    Args:
        dim, num_heads: channels and attention heads.
        window_size: side of the square windows; shift_size: cyclic shift, in
            ``[0, window_size)`` (0: plain windows).
        mlp_ratio: MLP hidden width / dim. qkv_bias, qk_scale, attn_drop: as
            :class:`WindowAttention`; drop: dropout after projections; drop_path: stochastic
            depth rate. act_layer, norm_layer: classes.

    The caller sets ``block.H`` and ``block.W`` (the token grid) before ``forward``.
    """

    def __init__(
        self,
        dim,
        num_heads,
        window_size=7,
        shift_size=0,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
        act_layer=nn.GELU,
        norm_layer=nn.LayerNorm,
    ):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"SwinTransformerBlock: shift_size={shift_size} must be in "
                             f"[0, window_size={window_size}).")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.shift_size = shift_size
        self.mlp_ratio = mlp_ratio
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(
            dim, _pair(window_size), num_heads, qkv_bias, qk_scale, attn_drop, drop
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.H: Optional[int] = None
        self.W: Optional[int] = None

    def forward(self, x: torch.Tensor, mask_matrix: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, H*W, C) tokens -> (B, H*W, C); ``mask_matrix`` (nW, N, N) is used only when the
        block shifts (see :meth:`BasicLayer.attention_mask`)."""
        b, length, c = x.shape
        h, w = self.H, self.W
        if h is None or w is None or length != h * w:
            raise ValueError(f"SwinTransformerBlock: got {length} tokens but H, W = {h}, {w}; "
                             "set block.H and block.W to the token grid before calling it.")
        ws, shift = self.window_size, self.shift_size
        y = self.norm1(x).reshape(b, h, w, c)
        pad_h, pad_w = (-h) % ws, (-w) % ws
        y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))  # zeros below and to the right
        hp, wp = h + pad_h, w + pad_w
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        windows = window_partition(y, ws).reshape(-1, ws * ws, c)
        windows = self.attn(windows, mask=mask_matrix if shift else None)
        y = window_reverse(windows.reshape(-1, ws, ws, c), ws, hp, wp)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :h, :w, :].reshape(b, h * w, c)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Stride-2 downsampling of a token grid: each 2x2 group of tokens is concatenated
    (4C), layer-normed and projected to 2C by ``reduction`` (no bias).

    Args:
        dim: input channels C; norm_layer: class of the norm over 4C.
    """

    def __init__(self, dim, norm_layer=nn.LayerNorm):
        super().__init__()
        self.dim = dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """(B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C); odd sides get a zero row/column."""
        b, length, c = x.shape
        if length != H * W:
            raise ValueError(f"PatchMerging: got {length} tokens for a {H}x{W} grid.")
        grid = F.pad(x.reshape(b, H, W, c), (0, 0, 0, W % 2, 0, H % 2))
        # Channel order of the 4C vector: (row, col) offsets (0,0), (1,0), (0,1), (1,1).
        parts = [grid[:, dy::2, dx::2, :] for dx in (0, 1) for dy in (0, 1)]
        merged = torch.cat(parts, dim=-1).reshape(b, -1, 4 * c)
        return self.reduction(self.norm(merged))


class BasicLayer(nn.Module):
    """One Swin stage: ``depth`` blocks (odd ones shifted by window_size // 2), then an
    optional ``downsample`` (a :class:`PatchMerging` class, built with ``dim``).

    Args: as :class:`SwinTransformerBlock`, plus ``depth``; ``drop_path`` may be a list (one
    rate per block); ``use_checkpoint`` recomputes blocks in backward to save memory.
    """

    def __init__(
        self,
        dim,
        depth,
        num_heads,
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop=0.0,
        attn_drop=0.0,
        drop_path=0.0,
        norm_layer=nn.LayerNorm,
        downsample=None,
        use_checkpoint=False,
    ):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        rates = list(drop_path) if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(
                dim,
                num_heads,
                window_size=window_size,
                shift_size=self.shift_size if i % 2 else 0,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop,
                attn_drop=attn_drop,
                drop_path=rates[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        )
        self.downsample = downsample(dim=dim, norm_layer=norm_layer) if downsample else None

    def attention_mask(self, H: int, W: int, device=None) -> Optional[torch.Tensor]:
        """(nW, ws*ws, ws*ws) float: 0 for token pairs of a shifted window that come from the
        same region of the (padded, H x W) grid, -100 for pairs the cyclic shift brought
        together from opposite borders. None when no block shifts."""
        ws, shift = self.window_size, self.shift_size
        if shift == 0:
            return None
        hp, wp = -(-H // ws) * ws, -(-W // ws) * ws

        def region(size: int) -> torch.Tensor:
            # After rolling by -shift: 0 = interior, 1 = last window minus the wrapped strip,
            # 2 = the strip wrapped around from the start.
            pos = torch.arange(size, device=device)
            return (pos >= size - ws).long() + (pos >= size - shift).long()

        labels = (3 * region(hp)[:, None] + region(wp)[None, :]).reshape(1, hp, wp, 1)
        labels = window_partition(labels, ws).reshape(-1, ws * ws)
        differs = labels[:, :, None] != labels[:, None, :]
        return differs.float() * _MASKED_LOGIT

    def forward(self, x: torch.Tensor, H: int, W: int):
        """(B, H*W, C) -> ``(out, H, W, down, Wh, Ww)``: the stage output on its H x W grid and
        the downsampled tokens on a ceil(H/2) x ceil(W/2) grid (``out`` itself and H, W
        when the stage does not downsample)."""
        mask = self.attention_mask(H, W, x.device) if self.depth > 1 else None
        for blk in self.blocks:
            blk.H, blk.W = H, W
            if self.use_checkpoint and x.requires_grad:
                x = torch_checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
        if self.downsample is None:
            return x, H, W, x, H, W
        return x, H, W, self.downsample(x, H, W), (H + 1) // 2, (W + 1) // 2


class PatchEmbed(nn.Module):
    """Image to patch tokens: a ``patch_size``-strided conv, optional LayerNorm over channels.

    Args: patch_size (int or pair), in_chans, embed_dim, norm_layer (class or None).
    ``forward``: (B, in_chans, H, W) -> (B, embed_dim, ceil(H/ph), ceil(W/pw)); the image is
    zero-padded below / right to a multiple of the patch.
    """

    def __init__(self, patch_size=4, in_chans=3, embed_dim=96, norm_layer=None):
        super().__init__()
        self.patch_size = _pair(patch_size)
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.proj = nn.Conv2d(in_chans, embed_dim, self.patch_size, stride=self.patch_size)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, embed_dim, Wh, Ww)."""
        ph, pw = self.patch_size
        x = F.pad(x, (0, (-x.shape[-1]) % pw, 0, (-x.shape[-2]) % ph))
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x
