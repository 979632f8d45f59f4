"""The plain Vision Transformer of ViTDet and its simple feature pyramid (Detectron2 path:
``modeling.backbone.vit``; "Exploring Plain Vision Transformer Backbones for Object Detection",
arXiv:2203.16527).

- :class:`ViT`: patch embedding, absolute position embedding (resized from pre-training),
  transformer blocks with window or global attention, optional decomposed relative position
  bias and optional convolutional "residual propagation" blocks. One output, stride
  ``patch_size``.
- :class:`SimpleFeaturePyramid`: p2..p5 (+ p6 from a top block) from that single map by
  deconvolution / identity / max-pooling, each followed by a 1x1 and a 3x3 conv.
- :func:`get_vit_lr_decay_rate`: the layer-wise LR decay factor of a parameter, for
  ``get_default_optimizer_params(lr_factor_func=...)``.

Parameter names are Detectron2's (``patch_embed.proj``, ``pos_embed``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,attn.rel_pos_w,norm2,mlp.fc1,mlp.fc2}``,
``blocks.{i}.residual.*``; ``simfp_{k}.{j}`` and ``net.*`` in the pyramid), so ViTDet model-zoo
checkpoints (``backbone.net.*``, ``backbone.simfp_*``) load unchanged.
"""

import logging
import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...layers import Conv2d, get_norm
from .backbone import Backbone
from .utils import PatchEmbed, get_abs_pos, init_transformer_weights
from .vit_blocks import Attention, Block, ResBottleneckBlock  # noqa: F401 (Detectron2's names)

logger = logging.getLogger(__name__)

__all__ = ["ViT", "SimpleFeaturePyramid", "get_vit_lr_decay_rate"]


class ViT(Backbone):
    """The plain ViT backbone of ViTDet: a single feature map ``out_feature`` of stride
    ``patch_size`` and ``embed_dim`` channels.

    Args:
        img_size: the training image size (square); sizes the relative position tables of the
            global-attention blocks (``img_size // patch_size`` tokens per side).
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: the usual ViT
            shape (defaults: ViT-B/16).
        drop_path_rate: stochastic depth, increasing linearly from 0 over the blocks.
        norm_layer, act_layer: token norm and MLP activation classes.
        use_abs_pos: learn an absolute position embedding ``pos_embed`` of shape
            (1, (pretrain_img_size // patch_size) ** 2 [+ 1 with pretrain_use_cls_token], C),
            resized bicubically to the input's token grid.
        use_rel_pos, rel_pos_zero_init: decomposed relative position bias in every block.
        window_size: window side of the blocks listed in ``window_block_indexes`` (the others
            attend globally).
        residual_block_indexes: blocks followed by a :class:`ResBottleneckBlock`.
        use_act_checkpoint: recompute each block in the backward pass (saves memory).
        pretrain_img_size, pretrain_use_cls_token: how ``pos_embed`` was pre-trained.
        out_feature: name of the output.

    ``forward(x (N, in_chans, H, W)) -> {out_feature: (N, embed_dim, H / p, W / p)}``.
    """

    def __init__(
        self,
        img_size=1024,
        patch_size=16,
        in_chans=3,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.0,
        norm_layer=nn.LayerNorm,
        act_layer=nn.GELU,
        use_abs_pos=True,
        use_rel_pos=False,
        rel_pos_zero_init=True,
        window_size=0,
        window_block_indexes=(),
        residual_block_indexes=(),
        use_act_checkpoint=False,
        pretrain_img_size=224,
        pretrain_use_cls_token=True,
        out_feature="last_feat",
    ):
        super().__init__()
        bad = [i for i in list(window_block_indexes) + list(residual_block_indexes)
               if not 0 <= i < depth]
        if bad:
            raise ValueError(
                f"ViT: block indexes {bad} in window_block_indexes / residual_block_indexes are "
                f"outside 0..{depth - 1} (depth={depth})."
            )
        self.pretrain_use_cls_token = pretrain_use_cls_token
        self.use_act_checkpoint = use_act_checkpoint
        self.patch_embed = PatchEmbed(
            kernel_size=(patch_size, patch_size),
            stride=(patch_size, patch_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
        )
        if use_abs_pos:
            grid = pretrain_img_size // patch_size
            positions = grid * grid + (1 if pretrain_use_cls_token else 0)
            self.pos_embed = nn.Parameter(torch.zeros(1, positions, embed_dim))
        else:
            self.pos_embed = None

        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        tokens = (img_size // patch_size, img_size // patch_size)
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=rates[i],
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                rel_pos_zero_init=rel_pos_zero_init,
                window_size=window_size if i in window_block_indexes else 0,
                use_residual_block=i in residual_block_indexes,
                input_size=tokens,
            )
            for i in range(depth)
        )
        self._out_feature_channels = {out_feature: embed_dim}
        self._out_feature_strides = {out_feature: patch_size}
        self._out_features = [out_feature]

        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_transformer_weights)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + get_abs_pos(self.pos_embed, self.pretrain_use_cls_token, x.shape[1:3])
        for block in self.blocks:
            if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return {self._out_features[0]: x.permute(0, 3, 1, 2)}


_SCALES = (4.0, 2.0, 1.0, 0.5)


class SimpleFeaturePyramid(Backbone):
    """ViTDet's simple feature pyramid: several scales from one feature map of ``net``.

    For each factor in ``scale_factors`` (each of 4.0, 2.0, 1.0, 0.5, coarsest last), a stage
    ``simfp_{k}`` (k = log2 of its stride) resizes the input map: 4.0 = deconv(2x2, stride 2)
    to C/2, norm, GELU, deconv to C/4; 2.0 = one deconv to C/2; 1.0 = nothing; 0.5 = 2x2 max
    pool; then a 1x1 and a 3x3 conv to ``out_channels``, each followed by ``norm`` (with a
    bias only when ``norm`` is ""). Outputs are named ``p{k}``; ``top_block`` (e.g.
    ``LastLevelMaxPool``) adds coarser levels as in FPN.

    Args:
        net: the :class:`Backbone` giving the single-scale map (e.g. :class:`ViT`).
        in_feature: name of that map among ``net``'s outputs.
        out_channels: channels of every output.
        scale_factors: resize factors, finest first; the strides they give must each double.
        top_block: None or a module with ``num_levels`` and ``in_feature`` attributes.
        norm: norm of the convs (:func:`get_norm` name; ``"LN"`` is channels-first).
        square_pad: when > 0, inputs are padded to this square size.

    ``forward(x (N, C, H, W)) -> {"p2": ..., ..., "p6": ...}``. H and W should be multiples of
    :attr:`size_divisibility` (the coarsest stride).
    """

    def __init__(
        self,
        net: Backbone,
        in_feature: str,
        out_channels: int,
        scale_factors: Sequence[float],
        top_block: Optional[nn.Module] = None,
        norm: str = "LN",
        square_pad: int = 0,
    ):
        super().__init__()
        if not isinstance(net, Backbone):
            raise ValueError(
                f"SimpleFeaturePyramid: net must be a Backbone, got {type(net).__name__}."
            )
        input_shapes = net.output_shape()
        if in_feature not in input_shapes:
            raise KeyError(
                f"SimpleFeaturePyramid: in_feature={in_feature!r} is not an output of "
                f"{type(net).__name__} (outputs: {sorted(input_shapes)})."
            )
        self.scale_factors = scale_factors
        in_stride = input_shapes[in_feature].stride
        strides = [int(in_stride / scale) for scale in scale_factors]
        for i in range(1, len(strides)):
            if strides[i] != 2 * strides[i - 1]:
                raise ValueError(
                    f"SimpleFeaturePyramid: scale_factors {list(scale_factors)} on a stride-"
                    f"{in_stride} input give strides {strides}; each must be twice the "
                    "previous one (e.g. scale_factors=(4.0, 2.0, 1.0, 0.5))."
                )

        dim = input_shapes[in_feature].channels
        use_bias = norm == ""
        self.stages = []  # the simfp_* modules in order (registered under those names)
        for scale, stride in zip(scale_factors, strides):
            layers, stage_dim = _resize_layers(scale, dim, norm)
            layers += [
                Conv2d(stage_dim, out_channels, kernel_size=1, bias=use_bias,
                       norm=get_norm(norm, out_channels)),
                Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=use_bias,
                       norm=get_norm(norm, out_channels)),
            ]
            stage = nn.Sequential(*layers)
            self.add_module(f"simfp_{int(math.log2(stride))}", stage)
            self.stages.append(stage)

        self.net = net
        self.in_feature = in_feature
        self.top_block = top_block
        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last = int(math.log2(strides[-1]))
            for level in range(last + 1, last + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{level}"] = 2**level
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {name: out_channels for name in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad

    @property
    def size_divisibility(self) -> int:
        """The coarsest pyramid stride (before the top block): input sizes pad to its
        multiples."""
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """``{"size_divisibility": coarsest stride, "square_size": square_pad}``.

        Detectron2 spells the first key ``"size_divisiblity"``, which its ``ImageList`` never
        reads; with the ``square_pad`` of every ViTDet config (a multiple of 32) the padded
        size is the same either way.
        """
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        bottom_up = self.net(x)
        features = bottom_up[self.in_feature]
        results = [stage(features) for stage in self.stages]
        if self.top_block is not None:
            source = self.top_block.in_feature
            if source in bottom_up:
                top_input = bottom_up[source]
            else:
                top_input = results[self._out_features.index(source)]
            results.extend(self.top_block(top_input))
        if len(results) != len(self._out_features):
            raise RuntimeError(
                f"SimpleFeaturePyramid: got {len(results)} maps for outputs "
                f"{self._out_features}; top_block.num_levels does not match what it returns."
            )
        return dict(zip(self._out_features, results))


def _resize_layers(scale: float, dim: int, norm: str):
    """The layers bringing a ``dim``-channel map to ``scale`` x its resolution, and the
    channels they output."""
    if scale == 4.0:
        return [
            nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2),
            get_norm(norm, dim // 2),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, kernel_size=2, stride=2),
        ], dim // 4
    if scale == 2.0:
        return [nn.ConvTranspose2d(dim, dim // 2, kernel_size=2, stride=2)], dim // 2
    if scale == 1.0:
        return [], dim
    if scale == 0.5:
        return [nn.MaxPool2d(kernel_size=2, stride=2)], dim
    raise NotImplementedError(
        f"SimpleFeaturePyramid: scale_factor={scale} is not supported; use factors among "
        f"{_SCALES}."
    )


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """Layer-wise LR decay factor of the parameter ``name`` of a detector with a ViT backbone.

    Args:
        name: the parameter's full name in the model (``backbone.net.blocks.3.attn.qkv.weight``).
        lr_decay_rate: decay per layer.
        num_layers: number of ViT blocks.

    Returns:
        ``lr_decay_rate ** (num_layers + 1 - layer_id)`` where ``layer_id`` is 0 for the
        backbone's ``pos_embed`` / ``patch_embed``, ``i + 1`` for parameters of ``blocks.i``
        (except its ``residual`` block), and ``num_layers + 1`` (factor 1) for everything else
        (the pyramid, the heads, residual blocks).
    """
    layer_id = num_layers + 1
    if name.startswith("backbone"):
        if ".pos_embed" in name or ".patch_embed" in name:
            layer_id = 0
        elif ".blocks." in name and ".residual." not in name:
            layer_id = int(name[name.find(".blocks."):].split(".")[2]) + 1
    return lr_decay_rate ** (num_layers + 1 - layer_id)
