"""MViTv2 backbone (Detectron2: ``modeling.backbone.mvit``), "MViTv2: Improved Multiscale Vision
Transformers for Classification and Detection" (Li et al., CVPR 2022).

Tokens stay in (B, H, W, C) layout from the patch embedding to the outputs. Four stages
(``scale2`` .. ``scale5``, strides 4 .. 32) double the width and the number of heads and halve the
resolution; the first block of each later stage pools its queries with stride 2 and its shortcut
with a max-pool. Keys and values are pooled by depthwise convolutions with an "adaptive" stride
that keeps the key/value map about the same size in every stage. Detection uses Detectron2's
hybrid window attention: attention is local in windows, except in the last block of stages 3, 4
and 5, which attend globally (and, in stages 3 and 4, pool keys/values twice as hard).

Submodule and parameter names (``patch_embed.proj``, ``blocks.<i>.attn.{qkv,proj,pool_q,norm_q,
pool_k,norm_k,pool_v,norm_v,rel_pos_h,rel_pos_w}``, ``blocks.<i>.{norm1,norm2,mlp.fc1,mlp.fc2,
proj}``, ``scale<k>_norm``, ``pos_embed``) and shapes are Detectron2's, so its MViTv2 model-zoo
checkpoints load unchanged.
"""

import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbone import Backbone
from .utils import (
    DropPath,
    Mlp,
    PatchEmbed,
    add_decomposed_rel_pos,
    get_abs_pos,
    init_transformer_weights,
    window_partition,
    window_unpartition,
)

logger = logging.getLogger(__name__)

__all__ = ["MViT"]

_STAGE_NAMES = ("scale2", "scale3", "scale4", "scale5")


def attention_pool(x: torch.Tensor, pool: nn.Module, norm: Optional[nn.Module] = None):
    """Apply the NCHW pooling module ``pool`` to an NHWC tensor, then ``norm`` if given.

    Takes ``x`` (B, H, W, C); returns (B, H', W', C) where H', W' are the pooled sizes.
    """
    out = pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return norm(out) if norm is not None else out


def _depthwise_pool(channels: int, kernel: Tuple[int, int], stride: int) -> nn.Conv2d:
    """A bias-free depthwise convolution that pools a (.., channels, H, W) map by ``stride``."""
    padding = [k // 2 for k in kernel]
    return nn.Conv2d(
        channels, channels, kernel, stride=stride, padding=padding, groups=channels, bias=False
    )


class MultiScaleAttention(nn.Module):
    """Multi-head attention with pooled queries, keys and values (MViTv2).

    Takes (B, H, W, dim) tokens and returns (B, H / stride_q, W / stride_q, dim_out). Queries are
    pooled by ``stride_q`` and keys/values by ``stride_kv`` (depthwise convolutions shared by all
    heads, each followed by a norm). With ``window_size`` > 0 attention runs inside
    non-overlapping windows of ``window_size / stride`` pooled tokens; ``use_rel_pos`` adds the
    decomposed relative-position bias; ``residual_pooling`` adds the pooled queries to the output.
    """

    def __init__(
        self,
        dim,
        dim_out,
        num_heads,
        qkv_bias=True,
        norm_layer=nn.LayerNorm,
        pool_kernel=(3, 3),
        stride_q=1,
        stride_kv=1,
        residual_pooling=True,
        window_size=0,
        use_rel_pos=False,
        rel_pos_zero_init=True,
        input_size=None,
    ):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(
                f"MultiScaleAttention: dim_out={dim_out} is not divisible by num_heads="
                f"{num_heads}; choose a width that is a multiple of the number of heads."
            )
        self.num_heads = num_heads
        head_dim = dim_out // num_heads
        self.scale = head_dim**-0.5

        self.qkv = nn.Linear(dim, 3 * dim_out, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)

        # Pooling convolutions act per head on head_dim channels (weights shared across heads).
        self.pool_q = _depthwise_pool(head_dim, pool_kernel, stride_q)
        self.norm_q = norm_layer(head_dim)
        self.pool_k = _depthwise_pool(head_dim, pool_kernel, stride_kv)
        self.norm_k = norm_layer(head_dim)
        self.pool_v = _depthwise_pool(head_dim, pool_kernel, stride_kv)
        self.norm_v = norm_layer(head_dim)

        self.window_size = window_size
        if window_size:
            self.q_win_size = window_size // stride_q
            self.kv_win_size = window_size // stride_kv
        self.residual_pooling = residual_pooling

        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None or input_size[0] != input_size[1]:
                raise ValueError(
                    f"MultiScaleAttention: use_rel_pos needs a square input_size (got "
                    f"{input_size}); pass input_size=(S, S), the token grid at this block."
                )
            side = input_size[0]
            length = 2 * max(side // stride_q, side // stride_kv) - 1
            self.rel_pos_h = nn.Parameter(torch.zeros(length, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(length, head_dim))
            if not rel_pos_zero_init:
                nn.init.trunc_normal_(self.rel_pos_h, std=0.02)
                nn.init.trunc_normal_(self.rel_pos_w, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out), H' and W' the query-pooled sizes."""
        batch, height, width, _ = x.shape
        heads = self.num_heads
        # (B, H, W, 3 * C) -> 3 x (B * heads, H, W, head_dim)
        qkv = self.qkv(x).view(batch, height, width, 3, heads, -1)
        qkv = qkv.permute(3, 0, 4, 1, 2, 5).reshape(3, batch * heads, height, width, -1)
        q, k, v = qkv.unbind(0)
        q = attention_pool(q, self.pool_q, self.norm_q)
        k = attention_pool(k, self.pool_k, self.norm_k)
        v = attention_pool(v, self.pool_v, self.norm_v)
        pooled_q = q

        if self.window_size:
            q, q_padded_hw = window_partition(q, self.q_win_size)
            k, _ = window_partition(k, self.kv_win_size)
            v, _ = window_partition(v, self.kv_win_size)
        q_hw = (q.shape[1], q.shape[2])
        kv_hw = (k.shape[1], k.shape[2])
        q, k, v = q.flatten(1, 2), k.flatten(1, 2), v.flatten(1, 2)

        attn = (q * self.scale) @ k.transpose(-2, -1)
        if self.use_rel_pos:
            attn = add_decomposed_rel_pos(attn, q, self.rel_pos_h, self.rel_pos_w, q_hw, kv_hw)
        out = (attn.softmax(dim=-1) @ v).view(-1, q_hw[0], q_hw[1], v.shape[-1])

        if self.window_size:
            hw = (pooled_q.shape[1], pooled_q.shape[2])
            out = window_unpartition(out, self.q_win_size, q_padded_hw, hw)
        if self.residual_pooling:
            out = out + pooled_q

        out_h, out_w = out.shape[1], out.shape[2]
        out = out.view(batch, heads, out_h, out_w, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, out_h, out_w, -1))


class MultiScaleBlock(nn.Module):
    """One MViTv2 transformer block: pooled attention and an MLP, each with a residual.

    Takes (B, H, W, dim) and returns (B, H / stride_q, W / stride_q, dim_out). When
    ``dim != dim_out`` the shortcut is projected (``proj``) from the normalised input; when
    ``stride_q > 1`` it is max-pooled (kernel ``stride_q + 1``). Other arguments are those of
    :class:`MultiScaleAttention`, plus ``mlp_ratio`` (MLP hidden width / dim_out),
    ``drop_path`` (stochastic-depth rate) and ``act_layer`` (the MLP activation class).
    """

    def __init__(
        self,
        dim,
        dim_out,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path=0.0,
        norm_layer=nn.LayerNorm,
        act_layer=nn.GELU,
        qkv_pool_kernel=(3, 3),
        stride_q=1,
        stride_kv=1,
        residual_pooling=True,
        window_size=0,
        use_rel_pos=False,
        rel_pos_zero_init=True,
        input_size=None,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = MultiScaleAttention(
            dim,
            dim_out,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            norm_layer=norm_layer,
            pool_kernel=qkv_pool_kernel,
            stride_q=stride_q,
            stride_kv=stride_kv,
            residual_pooling=residual_pooling,
            window_size=window_size,
            use_rel_pos=use_rel_pos,
            rel_pos_zero_init=rel_pos_zero_init,
            input_size=input_size,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), dim_out, act_layer=act_layer)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        if stride_q > 1:
            kernel = stride_q + 1
            self.pool_skip = nn.MaxPool2d(kernel, stride_q, kernel // 2, ceil_mode=False)
        else:
            self.pool_skip = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H', W', dim_out)."""
        normed = self.norm1(x)
        attended = self.attn(normed)
        shortcut = x if self.proj is None else self.proj(normed)
        if self.pool_skip is not None:
            shortcut = attention_pool(shortcut, self.pool_skip)
        x = shortcut + self.drop_path(attended)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _block_settings(
    depth: int,
    last_block_indexes: Sequence[int],
    embed_dim: int,
    num_heads: int,
    kv_stride: int,
    window_size: int,
    grid: Tuple[int, int],
):
    """Per-block arguments of Detectron2's MViT layout, as a list of dicts (one per block).

    Each dict holds ``dim``, ``dim_out``, ``num_heads``, ``stride_q``, ``stride_kv``,
    ``window_size`` and ``input_size``. A stage's first block (after stage 2) pools queries by 2
    and widens the tokens; the last blocks of stages 3..5 attend globally and those of stages 3
    and 4 pool keys/values twice as hard. Window size and the token grid are halved after each
    stage's first block, the key/value stride after each stage's last block.
    """
    last = list(last_block_indexes)
    settings = []
    dim, dim_out, heads = embed_dim, embed_dim, num_heads
    for i in range(depth):
        stride_kv = kv_stride * 2 if i in (last[1], last[2]) else kv_stride
        settings.append(
            dict(
                dim=dim,
                dim_out=dim_out,
                num_heads=heads,
                stride_q=2 if i - 1 in last else 1,
                stride_kv=stride_kv,
                window_size=0 if i in last[1:] else window_size,
                input_size=tuple(grid),
            )
        )
        dim = dim_out
        if i in last:
            dim_out, heads, kv_stride = dim_out * 2, heads * 2, max(kv_stride // 2, 1)
        if i - 1 in last:
            window_size = window_size // 2
            grid = (grid[0] // 2, grid[1] // 2)
    return settings


class MViT(Backbone):
    """Multiscale Vision Transformer v2 backbone (Detectron2's ``MViT``, same arguments).

    Takes an (N, in_chans, H, W) image batch and returns ``{name: (N, C, H / s, W / s)}`` for
    each name in ``out_features`` (``"scale2"`` .. ``"scale5"``: strides 4, 8, 16, 32 for the
    default 4x4 patches, widths ``embed_dim`` x 1, 2, 4, 8), each after its own LayerNorm
    (``scale<k>_norm``). Main arguments:

    - ``img_size``: the training input side; it sets the relative-position table lengths (other
      sizes interpolate them);
    - ``patch_kernel`` / ``patch_stride`` / ``patch_padding``: the patch-embedding convolution;
    - ``embed_dim`` / ``num_heads``: width and heads of stage 2, doubled in each later stage;
    - ``depth`` and ``last_block_indexes``: total blocks and the index of each stage's last one;
    - ``qkv_pool_kernel``, ``adaptive_kv_stride`` (key/value pooling stride of stage 2, halved
      per stage), ``adaptive_window_size`` (window side of stage 2 in tokens, halved per stage);
    - ``use_abs_pos`` (a ``pos_embed`` learned at ``pretrain_img_size``, with a class-token slot
      when ``pretrain_use_cls_token``), ``use_rel_pos``, ``rel_pos_zero_init``;
    - ``use_act_checkpoint``: recompute each block in the backward pass to save memory.

    No padding constraint: windows are padded internally, any input size works.
    """

    def __init__(
        self,
        img_size=224,
        patch_kernel=(7, 7),
        patch_stride=(4, 4),
        patch_padding=(3, 3),
        in_chans=3,
        embed_dim=96,
        depth=16,
        num_heads=1,
        last_block_indexes=(0, 2, 11, 15),
        qkv_pool_kernel=(3, 3),
        adaptive_kv_stride=4,
        adaptive_window_size=56,
        residual_pooling=True,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.0,
        norm_layer=nn.LayerNorm,
        act_layer=nn.GELU,
        use_abs_pos=False,
        use_rel_pos=True,
        rel_pos_zero_init=True,
        use_act_checkpoint=False,
        pretrain_img_size=224,
        pretrain_use_cls_token=True,
        out_features=("scale2", "scale3", "scale4", "scale5"),
    ):
        super().__init__()
        last = tuple(last_block_indexes)
        if len(last) != 4 or list(last) != sorted(set(last)) or last[-1] != depth - 1:
            raise ValueError(
                f"MViT: last_block_indexes={last_block_indexes} must be 4 increasing block "
                f"indexes (the last block of each stage) ending at depth - 1 = {depth - 1}."
            )
        unknown = [name for name in out_features if name not in _STAGE_NAMES]
        if unknown:
            raise ValueError(
                f"MViT: unknown out_features {unknown}; choose among {list(_STAGE_NAMES)}."
            )
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self._use_act_checkpoint = use_act_checkpoint

        self.patch_embed = PatchEmbed(
            kernel_size=patch_kernel,
            stride=patch_stride,
            padding=patch_padding,
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        if use_abs_pos:
            # Learned at the pretraining resolution; resized to the input in forward().
            grid = (pretrain_img_size // patch_stride[0]) * (pretrain_img_size // patch_stride[1])
            slots = grid + 1 if pretrain_use_cls_token else grid
            self.pos_embed = nn.Parameter(torch.zeros(1, slots, embed_dim))
        else:
            self.pos_embed = None

        # Built on the CPU: a list even when the model is built on the meta device.
        drop_rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        settings = _block_settings(
            depth,
            last,
            embed_dim,
            num_heads,
            adaptive_kv_stride,
            adaptive_window_size,
            (img_size // patch_stride[0], img_size // patch_stride[1]),
        )
        self.blocks = nn.ModuleList(
            MultiScaleBlock(
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=drop_rates[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                qkv_pool_kernel=qkv_pool_kernel,
                residual_pooling=residual_pooling,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                **block_args,
            )
            for i, block_args in enumerate(settings)
        )

        self._out_feature_channels = {}
        self._out_feature_strides = {}
        for stage, (name, block_index) in enumerate(zip(_STAGE_NAMES, last)):
            if name in out_features:
                channels = settings[block_index]["dim_out"]
                self._out_feature_channels[name] = channels
                self._out_feature_strides[name] = patch_stride[0] * 2**stage
                self.add_module(f"{name}_norm", norm_layer(channels))
        self._out_features = out_features
        self._last_block_indexes = last
        logger.debug(
            "MViT: %d blocks, stage ends %s, windows %s, key/value strides %s",
            depth, last, [b["window_size"] for b in settings], [b["stride_kv"] for b in settings],
        )

        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, in_chans, H, W) images -> ``{name: (N, C, h, w)}`` for each of ``out_features``."""
        if x.dim() != 4:
            raise ValueError(
                f"MViT.forward: expected an (N, C, H, W) image batch, got shape {tuple(x.shape)}."
            )
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, x.shape[1:3])

        outputs = {}
        stage_ends = dict(zip(self._last_block_indexes, _STAGE_NAMES))
        recompute = self._use_act_checkpoint and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
            name = stage_ends.get(i)
            if name is not None and name in self._out_features:
                outputs[name] = getattr(self, f"{name}_norm")(x).permute(0, 3, 1, 2)
        return outputs
