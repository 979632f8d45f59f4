"""The transformer block of ViTDet's ViT and its parts (Detectron2 defines them in
``modeling.backbone.vit``, which re-exports them from here).

- :class:`Attention`: multi-head self-attention on a (B, H, W, C) map, optionally with the
  decomposed relative position bias;
- :class:`ResBottleneckBlock`: the convolutional "residual propagation" block;
- :class:`Block`: pre-norm attention (global or windowed) + MLP, with stochastic depth.
"""

from typing import Optional, Tuple

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from ...layers import CNNBlockBase, Conv2d, get_norm
from .utils import DropPath, Mlp, decomposed_rel_pos_bias, window_partition, window_unpartition

__all__ = ["Attention", "ResBottleneckBlock", "Block"]


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) token map, with an optional decomposed
    relative position bias.

    Args:
        dim: token width C.
        num_heads: number of heads (C must be divisible by it).
        qkv_bias: whether the ``qkv`` projection has a bias.
        use_rel_pos: add the decomposed relative position bias (tables ``rel_pos_h`` and
            ``rel_pos_w`` of shapes (2 * input_size[0] - 1, C / heads), (2 * input_size[1] - 1,
            C / heads)).
        rel_pos_zero_init: start the tables at zero (else truncated normal, std 0.02).
        input_size: (h, w) the tables are sized for; needed when ``use_rel_pos``.

    ``forward(x (B, H, W, C)) -> (B, H, W, C)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        rel_pos_zero_init: bool = True,
        input_size: Optional[Tuple[int, int]] = None,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(
                f"ViT Attention: dim={dim} is not divisible by num_heads={num_heads}; choose "
                "an embed_dim that is a multiple of num_heads."
            )
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError(
                    "ViT Attention: use_rel_pos=True needs input_size (the token grid the "
                    "relative position tables are sized for)."
                )
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        # (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.use_rel_pos:
            flat_q = q.reshape(batch * self.num_heads, tokens, -1)
            bias = decomposed_rel_pos_bias(
                flat_q, self.rel_pos_h, self.rel_pos_w, (height, width), (height, width)
            ).reshape(batch, self.num_heads, tokens, tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = out.transpose(1, 2).reshape(batch, height, width, -1)
        return self.proj(out)


class ResBottleneckBlock(CNNBlockBase):
    """1x1 -> 3x3 -> 1x1 bottleneck with a residual connection and no final activation (the
    "residual propagation" block placed after some ViT blocks).

    Args:
        in_channels, out_channels: channels of input and output (equal: the residual is the
            identity).
        bottleneck_channels: channels of the 3x3 conv.
        norm: norm after each conv (:func:`get_norm` name, default channels-first "LN").
        act_layer: activation class after the first two norms.

    Convs are MSRA-initialised, the first two norms start at (1, 0) and the last at zero, so
    the block starts as the identity. ``forward(x (N, C, H, W)) -> (N, C, H, W)``.
    """

    def __init__(self, in_channels, out_channels, bottleneck_channels, norm="LN",
                 act_layer=nn.GELU):
        super().__init__(in_channels, out_channels, 1)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, bias=False)
        self.norm1 = get_norm(norm, bottleneck_channels)
        self.act1 = act_layer()
        self.conv2 = Conv2d(bottleneck_channels, bottleneck_channels, 3, padding=1, bias=False)
        self.norm2 = get_norm(norm, bottleneck_channels)
        self.act2 = act_layer()
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False)
        self.norm3 = get_norm(norm, out_channels)
        for conv in (self.conv1, self.conv2, self.conv3):
            weight_init.c2_msra_fill(conv)
        for layer in (self.norm1, self.norm2):
            layer.weight.data.fill_(1.0)
            layer.bias.data.zero_()
        self.norm3.weight.data.zero_()
        self.norm3.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.act2(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return x + out


class Block(nn.Module):
    """A pre-norm transformer block on a (B, H, W, C) map: attention (global, or inside
    ``window_size`` windows) and an MLP, each residual with stochastic depth, then optionally a
    :class:`ResBottleneckBlock` (``residual``).

    Args:
        dim, num_heads, mlp_ratio, qkv_bias: width, heads, MLP hidden width / dim, qkv bias.
        drop_path: stochastic depth rate of both residual branches.
        norm_layer, act_layer: classes of the two token norms and of the MLP activation.
        use_rel_pos, rel_pos_zero_init: as :class:`Attention`.
        window_size: 0 for global attention, else the side of the attention windows.
        use_residual_block: append a residual bottleneck with ``dim // 2`` channels.
        input_size: the (h, w) token grid of global attention (relative tables' size).

    ``forward(x (B, H, W, C)) -> (B, H, W, C)``.
    """

    def __init__(
        self,
        dim,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path=0.0,
        norm_layer=nn.LayerNorm,
        act_layer=nn.GELU,
        use_rel_pos=False,
        rel_pos_zero_init=True,
        window_size=0,
        use_residual_block=False,
        input_size=None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.window_size = window_size
        self.use_residual_block = use_residual_block
        if use_residual_block:
            self.residual = ResBottleneckBlock(
                dim, dim, bottleneck_channels=dim // 2, norm="LN", act_layer=act_layer
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            hw = (x.shape[1], x.shape[2])
            x, pad_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, pad_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + self.drop_path(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        if self.use_residual_block:
            x = self.residual(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x
