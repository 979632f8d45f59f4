"""ViTDet's backbone (segtron.modeling.backbone.vit / .utils) and its configs
(projects/ViTDet/configs).

Numbers: the plain ViT against timm's VisionTransformer, and the windowed / relative-position
ViT against timm's VisionTransformerSAM (SAM's image encoder is ViTDet's ViT), with weights
copied by name and timm's explicit (non-fused) attention; the helpers against slow references
written here. Names: the state_dict of a tiny configuration against the names and shapes
Detectron2's classes give. Configs: they build, the layer-wise LR decay reaches the optimizer,
and the tiny shapes config trains with tools/lazyconfig_train_net.py.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import segtron.data.transforms as T
from segtron.config import LazyConfig, instantiate
from segtron.data.datasets.shapes import prepare_shapes_split
from segtron.layers import LayerNorm
from segtron.modeling.backbone.fpn import LastLevelMaxPool
from segtron.modeling.backbone.utils import (
    DropPath,
    add_decomposed_rel_pos,
    get_abs_pos,
    window_partition,
    window_unpartition,
)
from segtron.modeling.backbone.vit import (
    Block,
    SimpleFeaturePyramid,
    ViT,
    get_vit_lr_decay_rate,
)

timm = pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[2]
VITDET = REPO / "projects" / "ViTDet" / "configs"
COCO_B = VITDET / "COCO" / "mask_rcnn_vitdet_b_100ep.py"
SHAPES_TINY = VITDET / "Shapes" / "mask_rcnn_vitdet_tiny.py"


def _randomize(module, seed=0):
    """Give every parameter random values (zero-initialised ones would hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return module


# ----------------------------------------------------------------------------- helpers


def test_window_partition_pads_cuts_and_inverts():
    x = torch.randn(2, 5, 7, 3)
    windows, pad_hw = window_partition(x, 3)
    assert pad_hw == (6, 9)
    assert windows.shape == (2 * 2 * 3, 3, 3, 3)
    padded = torch.zeros(2, 6, 9, 3)
    padded[:, :5, :7] = x
    # Window order: image, then window row, then window column.
    for b in range(2):
        for r in range(2):
            for c in range(3):
                expected = padded[b, 3 * r:3 * r + 3, 3 * c:3 * c + 3]
                assert torch.equal(windows[b * 6 + r * 3 + c], expected)
    assert torch.equal(window_unpartition(windows, 3, pad_hw, (5, 7)), x)
    exact, pad = window_partition(x[:, :3, :6], 3)  # no padding needed
    assert pad == (3, 6) and torch.equal(window_unpartition(exact, 3, pad, (3, 6)), x[:, :3, :6])


def _linear_resize(table, length):
    """1-D linear resampling with half-pixel centres (align_corners=False), one row at a
    time."""
    n = table.shape[0]
    rows = []
    for i in range(length):
        src = max((i + 0.5) * n / length - 0.5, 0.0)
        lo = min(int(math.floor(src)), n - 1)
        hi = min(lo + 1, n - 1)
        frac = src - lo
        rows.append(table[lo] * (1 - frac) + table[hi] * frac)
    return torch.stack(rows)


def _rel_pos_reference(attn, q, table_h, table_w, q_size, k_size):
    """add_decomposed_rel_pos by loops over every query and key position."""
    (qh, qw), (kh, kw) = q_size, k_size
    out = attn.clone()
    table_h = _linear_resize(table_h, 2 * max(qh, kh) - 1)
    table_w = _linear_resize(table_w, 2 * max(qw, kw) - 1)
    sh_q, sh_k = max(kh / qh, 1.0), max(qh / kh, 1.0)
    sw_q, sw_k = max(kw / qw, 1.0), max(qw / kw, 1.0)
    for b in range(q.shape[0]):
        for i in range(qh):
            for j in range(qw):
                query = q[b, i * qw + j]
                for k in range(kh):
                    for m in range(kw):
                        dh = int(i * sh_q - k * sh_k + (kh - 1) * sh_k)
                        dw = int(j * sw_q - m * sw_k + (kw - 1) * sw_k)
                        out[b, i * qw + j, k * kw + m] += query @ table_h[dh] + query @ table_w[dw]
    return out


@pytest.mark.parametrize("q_size, k_size, lengths", [
    ((3, 4), (3, 4), (5, 7)),   # ViT: tables of exactly 2 * size - 1
    ((3, 4), (3, 4), (9, 4)),   # tables of another length: resized linearly first
    ((4, 4), (2, 2), (7, 7)),   # MViT: pooled keys, coordinates rescaled
])
def test_decomposed_rel_pos_matches_loop(q_size, k_size, lengths):
    gen = torch.Generator().manual_seed(1)
    dim = 6
    q = torch.randn(2, q_size[0] * q_size[1], dim, generator=gen)
    attn = torch.randn(2, q_size[0] * q_size[1], k_size[0] * k_size[1], generator=gen)
    table_h = torch.randn(lengths[0], dim, generator=gen)
    table_w = torch.randn(lengths[1], dim, generator=gen)
    got = add_decomposed_rel_pos(attn, q, table_h, table_w, q_size, k_size)
    expected = _rel_pos_reference(attn, q, table_h, table_w, q_size, k_size)
    assert torch.allclose(got, expected, atol=1e-5)


def test_get_abs_pos_drops_class_token_and_resizes_like_timm():
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1, 1 + 4 * 4, 8)
    same = get_abs_pos(pos, True, (4, 4))
    assert torch.equal(same, pos[:, 1:].reshape(1, 4, 4, 8))
    assert torch.equal(get_abs_pos(pos[:, 1:], False, (4, 4)), same)
    resized = get_abs_pos(pos, True, (6, 5))
    expected = resample_abs_pos_embed(pos, (6, 5), (4, 4), num_prefix_tokens=1,
                                      interpolation="bicubic", antialias=False)
    assert resized.shape == (1, 6, 5, 8)
    assert torch.allclose(resized.reshape(1, 30, 8), expected[:, 1:], atol=1e-6)
    with pytest.raises(ValueError, match="pretrain_use_cls_token"):
        get_abs_pos(pos, False, (4, 4))  # 17 entries: not a square grid


def test_drop_path_drops_whole_samples_in_training_only():
    layer = DropPath(0.5)
    x = torch.ones(4000, 3, 2)
    torch.manual_seed(0)
    y = layer(x)
    per_sample = y.reshape(4000, -1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}
    assert torch.all(per_sample == per_sample[:, :1])  # a whole sample is kept or dropped
    assert abs(y.mean().item() - 1.0) < 0.05
    assert torch.equal(layer.eval()(x), x)


# ----------------------------------------------------------------------------- against timm


def _copy_blocks(blocks, timm_blocks):
    """Copy timm blocks' weights into ours (same names: norm1, attn.qkv, attn.proj,
    attn.rel_pos_h/w, norm2, mlp.fc1, mlp.fc2); timm's explicit attention math."""
    for ours, theirs in zip(blocks, timm_blocks):
        theirs.attn.fused_attn = False
        state = {k: v for k, v in theirs.state_dict().items()}
        ours.load_state_dict(state, strict=True)


def test_plain_vit_matches_timm_vision_transformer():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    ref = _randomize(VisionTransformer(
        img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, class_token=False,
        global_pool="avg", num_classes=0)).eval()
    ours = ViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2,
               pretrain_img_size=64, pretrain_use_cls_token=False).eval()
    ours.patch_embed.proj.load_state_dict(ref.patch_embed.proj.state_dict())
    with torch.no_grad():
        ours.pos_embed.copy_(ref.pos_embed)
    _copy_blocks(ours.blocks, ref.blocks)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = ref.blocks(ref._pos_embed(ref.patch_embed(image)))  # (2, 16, 32)
        out = ours(image)["last_feat"]
    assert out.shape == (2, 32, 4, 4)
    expected = tokens.reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    assert torch.allclose(out, expected, atol=1e-5)


def _sam_pair(use_abs_pos):
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    torch.manual_seed(0)
    kwargs = dict(img_size=80, patch_size=16, embed_dim=32, depth=3, num_heads=2)
    ref = _randomize(VisionTransformerSAM(
        **kwargs, window_size=3, global_attn_indexes=(1,), use_rel_pos=True,
        use_abs_pos=use_abs_pos, neck_chans=None, num_classes=0)).eval()
    ours = ViT(**kwargs, window_size=3, window_block_indexes=[0, 2], use_rel_pos=True,
               use_abs_pos=use_abs_pos, pretrain_img_size=80,
               pretrain_use_cls_token=False).eval()
    ours.patch_embed.proj.load_state_dict(ref.patch_embed.proj.state_dict())
    if use_abs_pos:
        with torch.no_grad():  # timm: (1, 5, 5, C); Detectron2: (1, 25, C)
            ours.pos_embed.copy_(ref.pos_embed.reshape(1, 25, 32))
    _copy_blocks(ours.blocks, ref.blocks)
    return ours, ref


def test_windowed_vit_with_rel_pos_matches_timm_sam_encoder():
    """5 x 5 tokens: blocks 0 and 2 in 3 x 3 windows (padded to 6 x 6), block 1 global."""
    ours, ref = _sam_pair(use_abs_pos=True)
    assert ours.blocks[0].attn.rel_pos_h.shape == (5, 16)  # 2 * window - 1
    assert ours.blocks[1].attn.rel_pos_h.shape == (9, 16)  # 2 * (80 / 16) - 1
    image = torch.randn(2, 3, 80, 80)
    with torch.no_grad():
        expected = ref.blocks(ref.patch_embed(image) + ref.pos_embed).permute(0, 3, 1, 2)
        out = ours(image)["last_feat"]
    assert torch.allclose(out, expected, atol=1e-5)


def test_vit_on_another_size_matches_timm_sam_encoder():
    """6 x 7 tokens: the global block's relative tables are resized from 9 to 11 / 13 rows,
    windows are padded to 6 x 9."""
    ours, ref = _sam_pair(use_abs_pos=False)
    image = torch.randn(1, 3, 96, 112)
    with torch.no_grad():
        expected = ref.blocks(ref.patch_embed(image)).permute(0, 3, 1, 2)
        out = ours(image)["last_feat"]
    assert out.shape == (1, 32, 6, 7)
    assert torch.allclose(out, expected, atol=1e-5)


def test_window_as_large_as_the_map_is_global_attention():
    torch.manual_seed(0)
    windowed = _randomize(Block(16, 2, use_rel_pos=True, window_size=4))
    global_ = Block(16, 2, use_rel_pos=True, window_size=0, input_size=(4, 4))
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(2, 4, 4, 16)
    assert torch.allclose(windowed(x), global_(x), atol=1e-6)


def test_residual_block_starts_as_identity_and_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    kwargs = dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                  residual_block_indexes=[0], window_size=2, window_block_indexes=[1],
                  drop_path_rate=0.0, pretrain_img_size=64)
    plain = ViT(**kwargs)
    block = plain.blocks[0]
    x = torch.randn(1, 4, 4, 32)
    with torch.no_grad():  # norm3 starts at zero: the residual bottleneck adds nothing
        assert torch.equal(block.residual(x.permute(0, 3, 1, 2)), x.permute(0, 3, 1, 2))
    _randomize(plain)
    checkpointed = ViT(**kwargs, use_act_checkpoint=True)
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 64, 64)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        model(image)["last_feat"].square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4), name


# ----------------------------------------------------------------------------- names, pyramid


def _expected_state_dict_shapes():
    """Detectron2's state_dict of the tiny configuration below, name -> shape, as its classes
    lay it out (detectron2/modeling/backbone/vit.py and utils.py: SimpleFeaturePyramid
    registers simfp_{log2 stride} stages before ``net``; ViT holds pos_embed, patch_embed.proj
    and blocks.{i} = norm1, attn (rel_pos_h, rel_pos_w, qkv, proj), norm2, mlp (timm's Mlp:
    fc1, fc2) and, for residual blocks, residual (conv1 / norm1 / conv2 / norm2 / conv3 /
    norm3 of ResBottleneckBlock); simfp stages are nn.Sequential of ConvTranspose2d / LN /
    GELU / MaxPool2d, then Conv2d 1x1 and 3x3 with an LN ``norm`` and no bias)."""
    c, out, head = 32, 16, 16  # embed_dim, pyramid width, head dim
    shapes = {}

    def conv_ln(prefix, cin, k):
        shapes[f"{prefix}.weight"] = (out, cin, k, k)
        shapes[f"{prefix}.norm.weight"] = shapes[f"{prefix}.norm.bias"] = (out,)

    shapes.update({"simfp_2.0.weight": (c, c // 2, 2, 2), "simfp_2.0.bias": (c // 2,),
                   "simfp_2.1.weight": (c // 2,), "simfp_2.1.bias": (c // 2,),
                   "simfp_2.3.weight": (c // 2, c // 4, 2, 2), "simfp_2.3.bias": (c // 4,)})
    conv_ln("simfp_2.4", c // 4, 1)
    conv_ln("simfp_2.5", out, 3)
    shapes.update({"simfp_3.0.weight": (c, c // 2, 2, 2), "simfp_3.0.bias": (c // 2,)})
    conv_ln("simfp_3.1", c // 2, 1)
    conv_ln("simfp_3.2", out, 3)
    conv_ln("simfp_4.0", c, 1)
    conv_ln("simfp_4.1", out, 3)
    conv_ln("simfp_5.1", c, 1)  # simfp_5.0 is the max pool
    conv_ln("simfp_5.2", out, 3)
    shapes["net.pos_embed"] = (1, 2 * 2 + 1, c)  # pretrain 32 px / 16 = 2 x 2, + class token
    shapes["net.patch_embed.proj.weight"] = (c, 3, 16, 16)
    shapes["net.patch_embed.proj.bias"] = (c,)
    for i, rel_rows in ((0, 2 * 2 - 1), (1, 2 * 4 - 1)):  # window 2; global on 64 / 16 = 4
        p = f"net.blocks.{i}"
        shapes.update({
            f"{p}.norm1.weight": (c,), f"{p}.norm1.bias": (c,),
            f"{p}.attn.rel_pos_h": (rel_rows, head), f"{p}.attn.rel_pos_w": (rel_rows, head),
            f"{p}.attn.qkv.weight": (3 * c, c), f"{p}.attn.qkv.bias": (3 * c,),
            f"{p}.attn.proj.weight": (c, c), f"{p}.attn.proj.bias": (c,),
            f"{p}.norm2.weight": (c,), f"{p}.norm2.bias": (c,),
            f"{p}.mlp.fc1.weight": (4 * c, c), f"{p}.mlp.fc1.bias": (4 * c,),
            f"{p}.mlp.fc2.weight": (c, 4 * c), f"{p}.mlp.fc2.bias": (c,),
        })
    r = "net.blocks.1.residual"
    shapes.update({
        f"{r}.conv1.weight": (c // 2, c, 1, 1), f"{r}.norm1.weight": (c // 2,),
        f"{r}.norm1.bias": (c // 2,), f"{r}.conv2.weight": (c // 2, c // 2, 3, 3),
        f"{r}.norm2.weight": (c // 2,), f"{r}.norm2.bias": (c // 2,),
        f"{r}.conv3.weight": (c, c // 2, 1, 1), f"{r}.norm3.weight": (c,),
        f"{r}.norm3.bias": (c,),
    })
    return shapes


def _tiny_pyramid(**kwargs):
    net = ViT(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=2,
              window_block_indexes=[0], residual_block_indexes=[1], use_rel_pos=True,
              pretrain_img_size=32)
    args = dict(in_feature="last_feat", out_channels=16, scale_factors=(4.0, 2.0, 1.0, 0.5),
                top_block=LastLevelMaxPool(), square_pad=0)
    args.update(kwargs)
    return SimpleFeaturePyramid(net, **args)


def test_state_dict_names_and_shapes_are_detectron2s():
    model = _tiny_pyramid()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _expected_state_dict_shapes()
    assert got == expected
    assert list(got)[:2] == ["simfp_2.0.weight", "simfp_2.0.bias"]  # Detectron2's order


def test_simple_feature_pyramid_levels():
    model = _randomize(_tiny_pyramid(square_pad=128)).eval()
    shapes = model.output_shape()
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "p2": (16, 4), "p3": (16, 8), "p4": (16, 16), "p5": (16, 32), "p6": (16, 64)}
    assert model.size_divisibility == 32
    assert model.padding_constraints == {"size_divisibility": 32, "square_size": 128}
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = model(image)
        feat = model.net(image)["last_feat"]  # (1, 32, 4, 6)
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (16, 24), "p3": (8, 12), "p4": (4, 6), "p5": (2, 3), "p6": (1, 2)}

    def convs(stage, x):  # 1x1 conv, LN over channels, 3x3 conv, LN
        for conv in stage[-2:]:
            x = F.conv2d(x, conv.weight, padding=conv.padding)
            mean = x.mean(1, keepdim=True)
            var = x.var(1, unbiased=False, keepdim=True)
            x = (x - mean) / torch.sqrt(var + 1e-6)
            x = x * conv.norm.weight[:, None, None] + conv.norm.bias[:, None, None]
        return x

    with torch.no_grad():
        assert torch.allclose(out["p4"], convs(model.simfp_4, feat), atol=1e-4)
        assert torch.allclose(out["p5"], convs(model.simfp_5, F.max_pool2d(feat, 2)), atol=1e-4)
        up = model.simfp_3[0]
        assert torch.allclose(
            out["p3"], convs(model.simfp_3, F.conv_transpose2d(feat, up.weight, up.bias, 2)),
            atol=1e-4)
    assert torch.equal(out["p6"], out["p5"][:, :, ::2, ::2])  # max pool, kernel 1, stride 2
    assert isinstance(model.simfp_2[1], LayerNorm) and isinstance(model.simfp_2[2], nn.GELU)


def test_pyramid_errors_name_the_problem():
    with pytest.raises(NotImplementedError, match="scale_factor=3.0"):
        _tiny_pyramid(scale_factors=(3.0,))
    with pytest.raises(ValueError, match="twice the previous"):
        _tiny_pyramid(scale_factors=(4.0, 1.0))
    with pytest.raises(KeyError, match="'res5'.*last_feat"):
        _tiny_pyramid(in_feature="res5")
    with pytest.raises(ValueError, match="window_block_indexes"):
        ViT(depth=2, window_block_indexes=[2])


# ----------------------------------------------------------------------------- LR decay


def test_vit_lr_decay_rate():
    rate = 0.7
    assert get_vit_lr_decay_rate("backbone.net.pos_embed", rate, 12) == pytest.approx(rate**13)
    assert get_vit_lr_decay_rate("backbone.net.patch_embed.proj.weight", rate, 12) == \
        pytest.approx(rate**13)
    assert get_vit_lr_decay_rate("backbone.net.blocks.0.attn.qkv.weight", rate, 12) == \
        pytest.approx(rate**12)
    assert get_vit_lr_decay_rate("backbone.net.blocks.11.mlp.fc2.bias", rate, 12) == \
        pytest.approx(rate)
    for name in ("backbone.net.blocks.3.residual.conv1.weight", "backbone.simfp_2.0.weight",
                 "roi_heads.box_head.fc1.weight", "blocks.2.attn.qkv.weight"):
        assert get_vit_lr_decay_rate(name, rate, 12) == 1.0, name


def _layer_of(name):
    """Layer index for the LR decay, from the ViTDet paper's rule: embeddings 0, ViT block i
    is i + 1, everything else 13 (no decay)."""
    parts = name.split(".")
    if parts[:2] == ["backbone", "net"]:
        if parts[2] in ("pos_embed", "patch_embed"):
            return 0
        if parts[2] == "blocks" and "residual" not in parts:
            return int(parts[3]) + 1
    return 13


def test_coco_config_builds_vitdet_b_with_decayed_lrs():
    cfg = LazyConfig.load(str(COCO_B))
    with torch.device("meta"):
        model = instantiate(cfg.model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["backbone.net.pos_embed"] == (1, 197, 768)  # 224 px MAE weights + class
    assert shapes["backbone.net.blocks.0.attn.rel_pos_h"] == (27, 64)  # 14 x 14 windows
    assert shapes["backbone.net.blocks.2.attn.rel_pos_h"] == (127, 64)  # global, 64 x 64
    assert shapes["backbone.simfp_2.0.weight"] == (768, 384, 2, 2)
    assert shapes["backbone.simfp_5.1.weight"] == (256, 768, 1, 1)
    assert not any(".residual." in k for k in shapes)
    assert shapes["roi_heads.box_head.conv1.norm.weight"] == (256,)  # LN box head
    # The ViTDet paper (Table 3) gives 111M parameters for its ViT-B Mask R-CNN.
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == 111
    assert model.backbone.padding_constraints["square_size"] == 1024
    assert model.input_format == "RGB"

    cfg.optimizer.params.model = model
    groups = instantiate(cfg.optimizer.params)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = 0
    for group in groups:
        for p in group["params"]:
            name = names[id(p)]
            assert group["lr"] == pytest.approx(1e-4 * 0.7 ** (13 - _layer_of(name))), name
            if name.endswith("pos_embed") or "norm" in name.split(".")[-2]:
                assert group["weight_decay"] == 0.0, name
            seen += 1
    assert seen == len(names)
    assert cfg.optimizer.lr == 1e-4 and cfg.optimizer.weight_decay == 0.1

    train_augs = instantiate(cfg.dataloader.train.mapper.augmentations)
    assert [type(a) for a in train_augs] == [T.RandomFlip, T.ResizeScale, T.FixedSizeCrop]
    assert train_augs[2].crop_size == (1024, 1024) and train_augs[2].pad is False
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert cfg.dataloader.train.mapper.recompute_boxes is True
    assert cfg.dataloader.train.total_batch_size == 64
    scheduler = instantiate(cfg.lr_multiplier)
    assert scheduler(0.0) == pytest.approx(0.001)
    assert scheduler(170000 / 184375) == pytest.approx(0.1)
    assert cfg.train.init_checkpoint.endswith("mae_pretrain_vit_base.pth?matching_heuristics=True")


# ----------------------------------------------------------------------------- shapes config


def test_tiny_shapes_config_trains_with_lazyconfig_train_net(tmp_path):
    """Three iterations on 6 shapes images of 128 px, then evaluation on 3: losses finite,
    the ViT's weights train, and the checkpoint holds Detectron2's backbone.net / simfp names."""
    root = tmp_path / "datasets"
    prepare_shapes_split(str(root / "shapes"), "train", 6, 0, image_size=128, num_workers=1)
    prepare_shapes_split(str(root / "shapes"), "val", 3, 1, image_size=128, num_workers=1)
    env = dict(os.environ, SEGTRON_DATASETS=str(root), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "tools" / "lazyconfig_train_net.py"),
           "--config-file", str(SHAPES_TINY), f"train.output_dir='{out}'", "train.max_iter=3",
           "dataloader.train.total_batch_size=2", "train.log_period=1", "train.eval_period=0"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    with open(out / "metrics.json", encoding="utf-8") as f:
        metrics = [json.loads(line) for line in f]
    steps = [m for m in metrics if "total_loss" in m]
    assert [m["iteration"] for m in steps] == [0, 1, 2]
    losses = {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(losses <= set(m) and all(math.isfinite(m[k]) for k in losses) for m in steps)
    assert {"bbox/AP", "segm/AP"} <= set(metrics[-1])
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    # 8 px patches on a 192 px square: 24 x 24 tokens, 4 x 4 windows in blocks 0 and 2.
    assert state["backbone.net.blocks.1.attn.rel_pos_h"].shape == (47, 32)  # global, 24 x 24
    assert state["backbone.net.blocks.0.attn.rel_pos_h"].shape == (7, 32)  # 4 x 4 windows
    assert state["backbone.net.pos_embed"].shape == (1, 576, 96)
    assert state["backbone.net.blocks.3.residual.conv2.weight"].shape == (48, 48, 3, 3)
    # Stride-8 map -> p2..p4 in the pyramid, p5 and p6 from LastLevelP6P7 on p4.
    assert {k.split(".")[1] for k in state if k.startswith("backbone.simfp")} == {
        "simfp_2", "simfp_3", "simfp_4"}
    assert state["backbone.top_block.p6.weight"].shape == (64, 64, 3, 3)
    # The relative position tables start at zero: trained, they are not.
    for i in range(4):
        assert state[f"backbone.net.blocks.{i}.attn.rel_pos_w"].abs().sum() > 0, i
