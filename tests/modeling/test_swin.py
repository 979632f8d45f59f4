"""SwinTransformer (segtron.modeling.backbone.swin): Detectron2's parameter names and shapes,
numbers equal to timm's independent Swin v1 for the same weights, and the parts timm does
differently (padding before the shift, odd grids, absolute position embedding) against slow
references written here."""

import math

import pytest
import torch
from torch import nn

from segtron.layers import ShapeSpec
from segtron.modeling.backbone.swin import (
    BasicLayer,
    PatchMerging,
    SwinTransformer,
    window_partition,
    window_reverse,
)


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Give every parameter random values (LayerNorm weights stay near 1) so that no term of
    the computation vanishes (a zero bias table or a unit norm could hide a wrong layout)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("relative_position_bias_table"):
                p.copy_(noise)
            elif p.dim() == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.3 * noise)


# --------------------------------------------------------------------------- state dict
def test_state_dict_names_and_shapes_are_detectron2s():
    # Expected names / shapes written from the module tree of Detectron2's
    # detectron2/modeling/backbone/swin.py (PatchEmbed.proj/norm, BasicLayer.blocks /
    # downsample, SwinTransformerBlock.norm1/attn/norm2/mlp, WindowAttention's table, index
    # buffer, qkv, proj, PatchMerging.reduction/norm, absolute_pos_embed, norm{i}) for
    # embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=2, patch 4, ape on a 16 image.
    model = SwinTransformer(
        pretrain_img_size=16, embed_dim=8, depths=(2, 1), num_heads=(1, 2), window_size=2,
        ape=True, out_indices=(0, 1), drop_path_rate=0.0,
    )

    def block(prefix, c, heads):
        return {
            f"{prefix}.norm1.weight": (c,), f"{prefix}.norm1.bias": (c,),
            f"{prefix}.attn.relative_position_bias_table": (9, heads),
            f"{prefix}.attn.relative_position_index": (4, 4),
            f"{prefix}.attn.qkv.weight": (3 * c, c), f"{prefix}.attn.qkv.bias": (3 * c,),
            f"{prefix}.attn.proj.weight": (c, c), f"{prefix}.attn.proj.bias": (c,),
            f"{prefix}.norm2.weight": (c,), f"{prefix}.norm2.bias": (c,),
            f"{prefix}.mlp.fc1.weight": (4 * c, c), f"{prefix}.mlp.fc1.bias": (4 * c,),
            f"{prefix}.mlp.fc2.weight": (c, 4 * c), f"{prefix}.mlp.fc2.bias": (c,),
        }

    expected = {
        "absolute_pos_embed": (1, 8, 4, 4),
        "patch_embed.proj.weight": (8, 3, 4, 4), "patch_embed.proj.bias": (8,),
        "patch_embed.norm.weight": (8,), "patch_embed.norm.bias": (8,),
        **block("layers.0.blocks.0", 8, 1), **block("layers.0.blocks.1", 8, 1),
        "layers.0.downsample.reduction.weight": (16, 32),
        "layers.0.downsample.norm.weight": (32,), "layers.0.downsample.norm.bias": (32,),
        **block("layers.1.blocks.0", 16, 2),
        "norm0.weight": (8,), "norm0.bias": (8,), "norm1.weight": (16,), "norm1.bias": (16,),
    }
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    # The persistent index buffer is the official one: row-major tokens, offset (dy, dx) ->
    # (dy + 1) * 3 + (dx + 1) for a 2x2 window.
    index = model.layers[0].blocks[0].attn.relative_position_index
    assert index[0].tolist() == [4, 3, 1, 0] and index[3].tolist() == [8, 7, 5, 4]


def test_output_shape_strides_and_padding_properties():
    model = SwinTransformer(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                            window_size=3, out_indices=(1, 3))
    assert model.output_shape() == {"p1": ShapeSpec(channels=16, stride=8),
                                    "p3": ShapeSpec(channels=64, stride=32)}
    assert model.size_divisibility == 32 and model.padding_constraints == {}
    out = model(torch.randn(2, 3, 37, 50))
    # ceil(37 / 4) = 10 -> 5 -> 3 -> 2 rows; ceil(50 / 4) = 13 -> 7 -> 4 -> 2 columns.
    assert {k: tuple(v.shape) for k, v in out.items()} == {"p1": (2, 16, 5, 7),
                                                          "p3": (2, 64, 2, 2)}
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(1, 1, 32, 32))


# --------------------------------------------------------------------------- against timm
def test_matches_timm_swin_for_the_same_weights():
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    torch.manual_seed(0)
    cfg = dict(patch_size=2, embed_dim=8, depths=(2, 2, 2), num_heads=(1, 2, 2), window_size=2)
    ref = TimmSwin(img_size=32, num_classes=0, drop_path_rate=0.0, **cfg).eval()
    ours = SwinTransformer(drop_path_rate=0.0, out_indices=(0, 1, 2), **cfg).eval()
    _randomize(ref)
    _randomize(ours, seed=1)  # norm0 / norm1 keep these; everything else comes from timm

    # timm puts the merge at the start of stage i (layers.i.downsample), Detectron2 at the end
    # of stage i - 1; timm's final `norm` is Detectron2's norm of the last stage.
    def our_name(name):
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            return ".".join(["layers", str(int(parts[1]) - 1)] + parts[2:])
        if parts[0] == "norm":
            return "norm2." + parts[1]
        return name

    ours_sd = ours.state_dict()
    mapped = {our_name(k): v for k, v in ref.state_dict().items() if not k.startswith("head")}
    assert set(mapped) <= set(ours_sd)
    left = {k for k in ours_sd if k not in mapped}
    assert left == {"norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias"} | {
        k for k in ours_sd if k.endswith("relative_position_index")
    }
    for k in left:  # timm's index buffers are not persistent; they must still agree
        if k.endswith("relative_position_index"):
            assert torch.equal(ours_sd[k], ref.get_submodule(k.rsplit(".", 1)[0])
                               .relative_position_index)
    ours.load_state_dict(mapped, strict=False)

    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = ours(image)
        x = ref.patch_embed(image)
        for i, stage in enumerate(ref.layers):
            x = stage(x)  # (N, H, W, C), before any output norm
            norm = ours.norm2 if i == 2 else getattr(ours, f"norm{i}")
            expected = (ref.norm(x) if i == 2 else norm(x)).permute(0, 3, 1, 2)
            assert out[f"p{i}"].shape == expected.shape
            torch.testing.assert_close(out[f"p{i}"], expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- windows
def test_window_partition_and_reverse():
    x = torch.randn(2, 6, 9, 5)
    windows = window_partition(x, 3)
    assert windows.shape == (2 * 2 * 3, 3, 3, 5)
    # Window k of image b is at (row r, column c) of the 2 x 3 window grid, row-major.
    for b in range(2):
        for r in range(2):
            for c in range(3):
                k = b * 6 + r * 3 + c
                assert torch.equal(windows[k], x[b, 3 * r:3 * r + 3, 3 * c:3 * c + 3])
    assert torch.equal(window_reverse(windows, 3, 6, 9), x)
    with pytest.raises(ValueError, match="multiple"):
        window_partition(torch.randn(1, 5, 6, 2), 3)


def _reference_block(block, x, H, W):
    """One Swin block by brute force: a query attends to the tokens (padding included) of its
    window in a grid partitioned with offset ``shift`` and no wrap-around, with the bias of
    the table row given by their offset (dy, dx)."""
    ws, s, attn = block.window_size, block.shift_size, block.attn
    c, heads = x.shape[-1], attn.num_heads
    d = c // heads
    hp, wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    grid = torch.zeros(hp, wp, c)
    grid[:H, :W] = block.norm1(x[0]).reshape(H, W, c)
    q, k, v = attn.qkv(grid).reshape(hp, wp, 3, heads, d).unbind(2)
    table = attn.relative_position_bias_table
    out = torch.zeros(H, W, c)
    for i in range(H):
        for j in range(W):
            keys = [(a, b) for a in range(hp) for b in range(wp)
                    if (a - s) // ws == (i - s) // ws and (b - s) // ws == (j - s) // ws]
            for h in range(heads):
                logits = torch.stack([
                    (q[i, j, h] * k[a, b, h]).sum() * attn.scale
                    + table[(i - a + ws - 1) * (2 * ws - 1) + (j - b + ws - 1), h]
                    for a, b in keys
                ])
                weights = logits.softmax(0)
                out[i, j, h * d:(h + 1) * d] = sum(
                    wgt * v[a, b, h] for wgt, (a, b) in zip(weights, keys))
    y = x + attn.proj(out.reshape(1, H * W, c))
    return y + block.mlp(block.norm2(y))


def _reference_merge(merge, x, H, W):
    """PatchMerging by a loop: token (i, j) <- [x(2i, 2j), x(2i+1, 2j), x(2i, 2j+1),
    x(2i+1, 2j+1)] (zeros past the border), normed and reduced."""
    c = x.shape[-1]
    grid = x[0].reshape(H, W, c)

    def at(i, j):
        return grid[i, j] if i < H and j < W else torch.zeros(c)

    rows = [torch.cat([at(2 * i, 2 * j), at(2 * i + 1, 2 * j), at(2 * i, 2 * j + 1),
                       at(2 * i + 1, 2 * j + 1)])
            for i in range((H + 1) // 2) for j in range((W + 1) // 2)]
    return merge.reduction(merge.norm(torch.stack(rows)))[None]


@pytest.mark.parametrize("H,W,ws", [(5, 7, 3), (4, 4, 4), (6, 6, 3)])
def test_stage_matches_brute_force_windows(H, W, ws):
    # A plain then a shifted block; 5x7 needs padding (which Detectron2 applies before the
    # shift, unlike timm), 4x4 with ws=4 is one window as large as the image.
    torch.manual_seed(0)
    layer = BasicLayer(dim=4, depth=2, num_heads=2, window_size=ws, downsample=PatchMerging)
    _randomize(layer)
    layer.eval()
    x = torch.randn(1, H * W, 4)
    with torch.no_grad():
        out, oh, ow, down, dh, dw = layer(x, H, W)
        expected = x
        for block in layer.blocks:
            expected = _reference_block(block, expected, H, W)
        assert (oh, ow, dh, dw) == (H, W, (H + 1) // 2, (W + 1) // 2)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(down, _reference_merge(layer.downsample, out, H, W),
                                   atol=1e-5, rtol=1e-5)


def test_shift_mask_regions():
    layer = BasicLayer(dim=4, depth=2, num_heads=1, window_size=4)
    mask = layer.attention_mask(8, 8)  # shift 2: 4 windows of 16 tokens
    assert mask.shape == (4, 16, 16)
    assert mask[0].eq(0).all()  # the top-left window never wraps
    # Last window (bottom right): 4 regions of 2x2 tokens that must not see each other.
    last = mask[3].reshape(4, 4, 4, 4)
    assert last[0, 0, 1, 1] == 0 and last[0, 0, 0, 2] == -100 and last[0, 0, 2, 0] == -100
    assert last[3, 3, 2, 2] == 0 and last[3, 3, 1, 1] == -100
    assert BasicLayer(dim=4, depth=1, num_heads=1, window_size=1).attention_mask(3, 3) is None


# --------------------------------------------------------------------------- options
def test_absolute_position_embedding_is_resized_and_added():
    torch.manual_seed(0)
    kw = dict(embed_dim=8, depths=(1, 1), num_heads=(1, 1), window_size=2, out_indices=(1,))
    with_ape = SwinTransformer(pretrain_img_size=24, ape=True, **kw).eval()
    plain = SwinTransformer(**kw).eval()
    plain.load_state_dict(
        {k: v for k, v in with_ape.state_dict().items() if k != "absolute_pos_embed"})
    # A per-channel constant embedding survives bicubic resizing (6x6 -> 4x5 here) unchanged,
    # so it must act as an extra bias after the patch norm.
    shift = torch.randn(8)
    with torch.no_grad():
        with_ape.absolute_pos_embed.copy_(shift.reshape(1, 8, 1, 1).expand(1, 8, 6, 6))
        plain.patch_embed.norm.bias.add_(shift)
        image = torch.randn(1, 3, 16, 20)
        torch.testing.assert_close(with_ape(image)["p1"], plain(image)["p1"])
        # At the pretraining grid, the embedding is added position by position.
        with_ape.absolute_pos_embed.normal_()
        seen = {}
        with_ape.pos_drop.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
        image = torch.randn(1, 3, 24, 24)
        with_ape(image)
        tokens = with_ape.patch_embed(image) + with_ape.absolute_pos_embed
        torch.testing.assert_close(seen["x"], tokens.flatten(2).transpose(1, 2))


def test_frozen_stages_and_drop_path_rates():
    model = SwinTransformer(embed_dim=8, depths=(1, 2, 1, 1), num_heads=(1, 1, 1, 1),
                            window_size=2, ape=True, pretrain_img_size=16, frozen_stages=3,
                            drop_path_rate=0.4)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "absolute_pos_embed" in frozen and "patch_embed.proj.weight" in frozen
    assert any(n.startswith("layers.1.") for n in frozen)
    assert all(n.startswith(("patch_embed.", "layers.0.", "layers.1.", "absolute_pos"))
               for n in frozen)
    assert model.layers[2].blocks[0].attn.qkv.weight.requires_grad
    assert model.norm0.weight.requires_grad
    # Stochastic depth rises linearly from 0 over the 5 blocks to 0.4.
    blocks = [b for layer in model.layers for b in layer.blocks]
    assert isinstance(blocks[0].drop_path, nn.Identity)
    rates = [b.drop_path.drop_prob for b in blocks[1:]]
    assert rates == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_activation_checkpointing_gives_the_same_gradients():
    kw = dict(embed_dim=8, depths=(2, 2), num_heads=(1, 2), window_size=2, out_indices=(1,),
              drop_path_rate=0.0)
    torch.manual_seed(0)
    plain = SwinTransformer(**kw)
    ckpt = SwinTransformer(use_checkpoint=True, **kw)
    ckpt.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 20, 24)
    for model in (plain, ckpt):
        model(image)["p1"].square().sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_in_a_lazy_config_fpn_with_square_padding():
    # The wiring of Detectron2's projects/ViTDet/configs/COCO/cascade_mask_rcnn_swin_b_in21k_50ep
    # .py (Swin as FPN bottom_up, in_features p0..p3, square_pad, LN in the FPN), tiny widths.
    from segtron import model_zoo
    from segtron.config import LazyCall as L
    from segtron.config import instantiate

    model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    model.backbone.bottom_up = L(SwinTransformer)(
        depths=[1, 1, 2, 1], drop_path_rate=0.1, embed_dim=8, num_heads=[1, 1, 2, 2],
    )
    model.backbone.in_features = ("p0", "p1", "p2", "p3")
    model.backbone.square_pad = 64
    model.backbone.norm = "LN"
    model.backbone.out_channels = 16
    backbone = instantiate(model.backbone).eval()
    assert backbone.padding_constraints == {"square_size": 64}
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (1, 16, 16, 16), "p3": (1, 16, 8, 8), "p4": (1, 16, 4, 4), "p5": (1, 16, 2, 2),
        "p6": (1, 16, 1, 1),
    }


@pytest.mark.parametrize("size", ["b", "l"])
def test_vitdet_swin_config_instantiates_at_tiny_widths(size):
    import os

    from segtron.config import LazyConfig, instantiate
    from segtron.layers import LayerNorm

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "projects", "ViTDet", "configs", "COCO",
                        f"cascade_mask_rcnn_swin_{size}_in21k_50ep.py")
    cfg = LazyConfig.load(path)
    swin = cfg.model.backbone.bottom_up
    # Detectron2's values: Swin-B 128 wide (4-8-16-32 heads), Swin-L 192 (6-12-24-48).
    assert (swin.embed_dim, list(swin.num_heads)) == {
        "b": (128, [4, 8, 16, 32]), "l": (192, [6, 12, 24, 48])}[size]
    assert list(swin.depths) == [2, 2, 18, 2] and swin.drop_path_rate == 0.4
    assert cfg.train.max_iter == 92187
    assert list(cfg.lr_multiplier.scheduler.milestones) == [81944, 88773]
    assert cfg.train.init_checkpoint.endswith(
        {"b": "swin_base_patch4_window7_224_22k.pth",
         "l": "swin_large_patch4_window7_224_22k.pth"}[size])

    swin.embed_dim, swin.depths, swin.num_heads = 8, [1, 1, 2, 1], [1, 1, 2, 2]
    cfg.model.backbone.square_pad = 64
    cfg.model.proposal_generator.post_nms_topk = (20, 10)
    for predictor in cfg.model.roi_heads.box_predictors:
        predictor.test_topk_per_image = 3
        predictor.test_score_thresh = 0.0
    model = instantiate(cfg.model).eval()
    assert type(model.backbone.bottom_up).__name__ == "SwinTransformer"
    heads = model.roi_heads
    assert len(heads.box_head) == 3 and hasattr(heads.box_head[2], "conv4")
    assert isinstance(heads.box_head[0].conv1.norm, LayerNorm)  # segtron's channels-first LN
    assert isinstance(heads.mask_head.mask_fcn1.norm, LayerNorm)
    assert len(model.proposal_generator.rpn_head.conv) == 2
    with torch.no_grad():
        image = torch.randint(0, 256, (3, 50, 60), dtype=torch.uint8)
        (result,) = model([{"image": image}])
    instances = result["instances"]
    assert instances.image_size == (50, 60) and len(instances) <= 3
    assert instances.pred_masks.shape[1:] == (50, 60)
