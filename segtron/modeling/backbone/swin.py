"""Swin Transformer backbone (Detectron2: ``modeling.backbone.swin``).

Swin v1 ("Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", Liu et al.,
2021) as in the official Swin object-detection code that Detectron2 adopted: a patch embedding
(stride ``patch_size``), then stages (:class:`BasicLayer`) of :class:`SwinTransformerBlock` that
alternate plain and shifted window attention, each stage but the last ending in a
:class:`PatchMerging` (stride 2, channels x2). Stage ``i`` is output as ``"p{i}"`` after its own
LayerNorm ``norm{i}``: channels ``embed_dim * 2**i``, stride ``4 * 2**i`` with the default 4x4
patches. Module and parameter names (``patch_embed.proj``, ``layers.0.blocks.1.attn.qkv``,
``layers.0.downsample.reduction``, ``norm0``, ...) are Detectron2's, so its Swin checkpoints
and the official Swin ImageNet weights load unchanged. The blocks live in ``swin_blocks.py``
and are re-exported here, at Detectron2's path.
"""

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Backbone
from .swin_blocks import (  # noqa: F401  (re-exported at Detectron2's path)
    BasicLayer,
    Mlp,
    PatchEmbed,
    PatchMerging,
    SwinTransformerBlock,
    WindowAttention,
    _pair,
    window_partition,
    window_reverse,
)
from .utils import init_transformer_weights

__all__ = [
    "Mlp",
    "window_partition",
    "window_reverse",
    "WindowAttention",
    "SwinTransformerBlock",
    "PatchMerging",
    "BasicLayer",
    "PatchEmbed",
    "SwinTransformer",
]


class SwinTransformer(Backbone):
    """Swin Transformer backbone: (N, in_chans, H, W) -> ``{"p{i}": (N, C_i, H_i, W_i)}``.

    Args (Detectron2's, same defaults: Swin-T):
        pretrain_img_size: image size of the pretraining, sets the size of the absolute
            position embedding (used only when ``ape``).
        patch_size: patch side (int or pair); in_chans: input channels.
        embed_dim: channels of stage 0; stage i has ``embed_dim * 2**i``.
        depths, num_heads: blocks and attention heads of each stage.
        window_size: side of the attention windows; odd blocks shift by half of it.
        mlp_ratio, qkv_bias, qk_scale: as :class:`SwinTransformerBlock`.
        drop_rate, attn_drop_rate: dropout probabilities; drop_path_rate: stochastic depth,
            rising linearly from 0 over all blocks to this value.
        norm_layer: normalisation class (LayerNorm).
        ape: add a learned absolute position embedding ``absolute_pos_embed`` (1, embed_dim,
            Ph, Pw), bicubically resized to the token grid of each image.
        patch_norm: LayerNorm after the patch embedding.
        out_indices: stages returned, as ``"p{i}"``.
        frozen_stages: -1 trains all; 0 freezes the patch embedding; 1 also the absolute
            position embedding; k >= 2 also stages 0 .. k-2.
        use_checkpoint: recompute blocks during backward to save memory.

    Output shapes: ``p{i}`` has ``embed_dim * 2**i`` channels and stride ``patch * 2**i``
    (Detectron2 writes ``2**(i + 2)``, the same for its 4x4 patches); an H x W image gives
    ``ceil(H / patch)`` tokens per column at p0, then ``ceil(previous / 2)`` per stage.
    """

    def __init__(
        self,
        pretrain_img_size=224,
        patch_size=4,
        in_chans=3,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=7,
        mlp_ratio=4.0,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
        norm_layer=nn.LayerNorm,
        ape=False,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        use_checkpoint=False,
    ):
        super().__init__()
        if len(num_heads) != len(depths):
            raise ValueError(f"SwinTransformer: num_heads={tuple(num_heads)} needs one entry "
                             f"per stage of depths={tuple(depths)}.")
        bad = [i for i in out_indices if not 0 <= i < len(depths)]
        if bad:
            raise ValueError(f"SwinTransformer: out_indices {bad} are not stages; valid are "
                             f"0..{len(depths) - 1}.")
        self.pretrain_img_size = pretrain_img_size
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.ape = ape
        self.patch_norm = patch_norm
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages

        self.patch_embed = PatchEmbed(
            patch_size, in_chans, embed_dim, norm_layer=norm_layer if patch_norm else None
        )
        if ape:
            grid = [s // p for s, p in zip(_pair(pretrain_img_size), _pair(patch_size))]
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(p=drop_rate)

        # Built on the CPU: a list even when the model is built on the meta device.
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.num_features = [int(embed_dim * 2**i) for i in range(self.num_layers)]
        self.layers = nn.ModuleList()
        for i, depth in enumerate(depths):
            first = sum(depths[:i])
            self.layers.append(
                BasicLayer(
                    dim=self.num_features[i],
                    depth=depth,
                    num_heads=num_heads[i],
                    window_size=window_size,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[first : first + depth],
                    norm_layer=norm_layer,
                    downsample=PatchMerging if i < self.num_layers - 1 else None,
                    use_checkpoint=use_checkpoint,
                )
            )
        for i in out_indices:
            self.add_module(f"norm{i}", norm_layer(self.num_features[i]))

        self._freeze_stages()
        patch = max(_pair(patch_size))
        self._out_features = [f"p{i}" for i in out_indices]
        self._out_feature_channels = {f"p{i}": self.num_features[i] for i in out_indices}
        self._out_feature_strides = {f"p{i}": patch * 2**i for i in out_indices}
        self._size_divisibility = 32
        self.apply(init_transformer_weights)

    def _freeze_stages(self) -> None:
        """Stop gradients (and dropout) of the parts ``frozen_stages`` names."""
        frozen = []
        if self.frozen_stages >= 0:
            frozen.append(self.patch_embed)
        if self.frozen_stages >= 1 and self.ape:
            self.absolute_pos_embed.requires_grad = False
        if self.frozen_stages >= 2:
            frozen.append(self.pos_drop)
            frozen.extend(self.layers[: self.frozen_stages - 1])
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    @property
    def size_divisibility(self) -> int:
        """32, as Detectron2 intends (its own property reads a misspelt attribute and raises)."""
        return self._size_divisibility

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(N, in_chans, H, W) image batch -> dict ``"p{i}"`` -> (N, C_i, H_i, W_i)."""
        if x.dim() != 4 or x.shape[1] != self.patch_embed.in_chans:
            raise ValueError(f"SwinTransformer: expected (N, {self.patch_embed.in_chans}, H, W) "
                             f"images, got shape {tuple(x.shape)}.")
        x = self.patch_embed(x)
        h, w = x.shape[-2:]
        if self.ape:
            x = x + F.interpolate(self.absolute_pos_embed, size=(h, w), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outs = {}
        for i, layer in enumerate(self.layers):
            out, out_h, out_w, x, h, w = layer(x, h, w)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                out = out.reshape(-1, out_h, out_w, self.num_features[i])
                outs[f"p{i}"] = out.permute(0, 3, 1, 2).contiguous()
        return outs
