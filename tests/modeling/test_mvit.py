"""MViT (MViTv2) backbone: Detectron2's parameter names and shapes, the same numbers as timm's
independent MViTv2 where the two architectures agree, windowed attention against a slow loop,
the Backbone interface, and the projects/MViTv2 LazyConfig."""

import math
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segtron.config import LazyConfig, instantiate
from segtron.layers import ShapeSpec
from segtron.modeling.backbone.mvit import MViT, MultiScaleAttention

REPO = Path(__file__).resolve().parents[2]
MVIT_T_CONFIG = REPO / "projects" / "MViTv2" / "configs" / "mask_rcnn_mvitv2_t_3x.py"


def _tiny(**kwargs):
    """A 4-block MViT (one block per stage) at width 8 for 32 x 32 inputs."""
    args = dict(
        img_size=32, embed_dim=8, depth=4, num_heads=1, last_block_indexes=(0, 1, 2, 3),
        adaptive_window_size=8,
    )
    args.update(kwargs)
    return MViT(**args)


def _randomize(module, seed=0, scale=0.2):
    """Random values in every parameter (norm weights around 1), so no term is a no-op."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale
            is_norm_weight = p.dim() == 1 and name.endswith("weight") and "norm" in name
            p.copy_(1 + noise if is_norm_weight else noise)


# Detectron2's MViT state_dict for _tiny(use_abs_pos=True, pretrain_img_size=32), derived from
# detectron2/modeling/backbone/mvit.py (MViT.__init__, MultiScaleBlock, MultiScaleAttention):
# per block (dim, dim_out, rel_pos length); head_dim is 8 in every block (width and heads double
# together). rel_pos length = 2 * max(grid // stride_q, grid // stride_kv) - 1, with the grid
# 8, 8, 4, 2 (halved after each stage's first block) and stride_kv 4, 4 (doubled in stage 3's last
# block), 2 (doubled in stage 4's), 1.
_TINY_BLOCKS = [(8, 8, 15), (8, 16, 7), (16, 32, 3), (32, 64, 3)]


def _expected_tiny_state_dict():
    shapes = {
        "patch_embed.proj.weight": (8, 3, 7, 7),
        "patch_embed.proj.bias": (8,),
        "pos_embed": (1, 8 * 8 + 1, 8),  # 4x4 patches of a 32 px image + the class-token slot
    }
    for i, (dim, dim_out, rel) in enumerate(_TINY_BLOCKS):
        p = f"blocks.{i}."
        shapes.update({
            p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
            p + "attn.qkv.weight": (3 * dim_out, dim), p + "attn.qkv.bias": (3 * dim_out,),
            p + "attn.proj.weight": (dim_out, dim_out), p + "attn.proj.bias": (dim_out,),
            p + "attn.rel_pos_h": (rel, 8), p + "attn.rel_pos_w": (rel, 8),
            p + "norm2.weight": (dim_out,), p + "norm2.bias": (dim_out,),
            p + "mlp.fc1.weight": (4 * dim_out, dim_out), p + "mlp.fc1.bias": (4 * dim_out,),
            p + "mlp.fc2.weight": (dim_out, 4 * dim_out), p + "mlp.fc2.bias": (dim_out,),
        })
        for t in "qkv":
            shapes[p + f"attn.pool_{t}.weight"] = (8, 1, 3, 3)  # depthwise over head_dim
            shapes[p + f"attn.norm_{t}.weight"] = (8,)
            shapes[p + f"attn.norm_{t}.bias"] = (8,)
        if dim != dim_out:
            shapes[p + "proj.weight"] = (dim_out, dim)
            shapes[p + "proj.bias"] = (dim_out,)
    for k, c in zip((2, 3, 4, 5), (8, 16, 32, 64)):
        shapes[f"scale{k}_norm.weight"] = (c,)
        shapes[f"scale{k}_norm.bias"] = (c,)
    return shapes


def test_state_dict_names_and_shapes_are_detectron2s():
    model = _tiny(use_abs_pos=True, pretrain_img_size=32)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = _expected_tiny_state_dict()
    assert sorted(got) == sorted(expected)
    assert got == expected


def test_mvitv2_t_rel_pos_lengths():
    # MViTv2-T (projects/MViTv2 config) at Detectron2's img_size=224: a 56 x 56 token grid.
    model = MViT(embed_dim=96, depth=10, last_block_indexes=(0, 2, 7, 9))
    sd = model.state_dict()
    lengths = [tuple(sd[f"blocks.{i}.attn.rel_pos_h"].shape) for i in range(10)]
    # 2 * max(q, kv) - 1 with (q, kv) sides (56, 14), (28, 28), (28, 7), (14, 28), (14, 14) x 3,
    # (14, 7), (7, 14), (7, 7): the first block of a stage sees the previous stage's grid.
    assert lengths == [(111, 96)] + [(55, 96)] * 3 + [(27, 96)] * 5 + [(13, 96)]
    assert "pos_embed" not in sd  # use_abs_pos defaults to False
    assert {k: (v.channels, v.stride) for k, v in model.output_shape().items()} == {
        "scale2": (96, 4), "scale3": (192, 8), "scale4": (384, 16), "scale5": (768, 32)}


def _timm_name(name, first_block_of_stage):
    """timm MultiScaleVit parameter name -> Detectron2 MViT name (None: not in MViT)."""
    if name.startswith(("norm.", "head.")):
        return None
    if not name.startswith("stages."):
        return name  # patch_embed.proj.*, pos_embed
    _, stage, _, block, rest = name.split(".", 4)
    index = first_block_of_stage[int(stage)] + int(block)
    return f"blocks.{index}." + rest.replace("shortcut_proj_attn", "proj")


def test_matches_timm_mvitv2():
    timm_mvit = pytest.importorskip("timm.models.mvitv2")
    # timm keeps one key/value stride per stage and never uses windows; Detectron2 doubles the
    # stride in the last (global) block of stages 3 and 4 and windows the other blocks. Stages 3
    # and 4 of one block each, and windows as large as the token grid, make the two the same
    # network: strides (4, 4, 2, 1) per stage, windows 8 (stage 2) and 2 (stage 5's 1st block).
    cfg = timm_mvit.MultiScaleVitCfg(
        depths=(2, 1, 1, 2), embed_dim=8, num_heads=1, use_abs_pos=True, use_cls_token=False,
        stride_kv=((4, 4), (4, 4), (2, 2), (1, 1)),
    )
    ref = timm_mvit.MultiScaleVit(cfg, img_size=32, num_classes=0).double().eval()
    model = MViT(
        img_size=32, embed_dim=8, depth=6, num_heads=1, last_block_indexes=(1, 2, 3, 5),
        adaptive_kv_stride=4, adaptive_window_size=8, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_abs_pos=True, pretrain_img_size=32, pretrain_use_cls_token=False,
    ).double().eval()
    # Windowed blocks: both of stage 2 (8 x 8 tokens) and the first of stage 5 (2 -> 1 token).
    assert [b.attn.window_size for b in model.blocks] == [8, 8, 0, 0, 2, 0]
    _randomize(ref, seed=1)
    _randomize(model, seed=2)  # the scale<k>_norm layers keep these values

    ours = model.state_dict()
    copied = set()
    for name, value in ref.state_dict().items():
        target = _timm_name(name, first_block_of_stage=(0, 2, 3, 4))
        if target is None:
            continue
        assert ours[target].shape == value.shape, name
        ours[target] = value
        copied.add(target)
    assert set(ours) - copied == {f"scale{k}_norm.{p}" for k in (2, 3, 4, 5)
                                  for p in ("weight", "bias")}
    model.load_state_dict(ours)

    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        tokens, hw = ref.patch_embed(x)
        tokens = tokens + ref.pos_embed
        for k, stage in zip((2, 3, 4, 5), ref.stages):
            tokens, hw = stage(tokens, list(hw))
            grid = tokens.reshape(2, hw[0], hw[1], -1)
            expected = getattr(model, f"scale{k}_norm")(grid).permute(0, 3, 1, 2)
            assert out[f"scale{k}"].shape == expected.shape
            torch.testing.assert_close(out[f"scale{k}"], expected, rtol=0, atol=1e-10)


def _slow_windowed_attention(m, x, stride_q, stride_kv, window):
    """MultiScaleAttention's forward, one head, window and (query, key) pair at a time."""
    batch, height, width, _ = x.shape
    qkv = m.qkv(x).reshape(batch, height, width, 3, m.num_heads, -1)
    q_win, kv_win = window // stride_q, window // stride_kv
    heads = []
    for head in range(m.num_heads):
        pooled = []
        for j, (pool, norm, stride) in enumerate(
            [(m.pool_q, m.norm_q, stride_q), (m.pool_k, m.norm_k, stride_kv),
             (m.pool_v, m.norm_v, stride_kv)]
        ):
            t = qkv[:, :, :, j, head].permute(0, 3, 1, 2)
            t = F.conv2d(t, pool.weight, stride=stride, padding=1, groups=t.shape[1])
            t = t.permute(0, 2, 3, 1)
            pooled.append(F.layer_norm(t, t.shape[-1:], norm.weight, norm.bias, norm.eps))
        q, k, v = pooled
        rows, cols = math.ceil(q.shape[1] / q_win), math.ceil(q.shape[2] / q_win)

        def pad(t, win):  # zero tokens up to whole windows
            return F.pad(t, (0, 0, 0, cols * win - t.shape[2], 0, rows * win - t.shape[1]))

        qp, kp, vp = pad(q, q_win), pad(k, kv_win), pad(v, kv_win)
        out = torch.zeros_like(qp)
        rq, rk = max(kv_win / q_win, 1.0), max(q_win / kv_win, 1.0)  # coordinate scales
        for wy in range(rows):
            for wx in range(cols):
                qs = qp[:, wy * q_win:(wy + 1) * q_win, wx * q_win:(wx + 1) * q_win]
                ks = kp[:, wy * kv_win:(wy + 1) * kv_win, wx * kv_win:(wx + 1) * kv_win]
                vs = vp[:, wy * kv_win:(wy + 1) * kv_win, wx * kv_win:(wx + 1) * kv_win]
                logits = torch.zeros(batch, q_win * q_win, kv_win * kv_win, dtype=x.dtype)
                for qi in range(q_win * q_win):
                    qy, qx = divmod(qi, q_win)
                    qv = qs[:, qy, qx]
                    for ki in range(kv_win * kv_win):
                        ky, kx = divmod(ki, kv_win)
                        dy = int(qy * rq - ky * rk + (kv_win - 1) * rk)
                        dx = int(qx * rq - kx * rk + (kv_win - 1) * rk)
                        logits[:, qi, ki] = (
                            m.scale * (qv * ks[:, ky, kx]).sum(-1)
                            + (qv * m.rel_pos_h[dy]).sum(-1)
                            + (qv * m.rel_pos_w[dx]).sum(-1)
                        )
                attended = logits.softmax(-1) @ vs.reshape(batch, -1, vs.shape[-1])
                out[:, wy * q_win:(wy + 1) * q_win, wx * q_win:(wx + 1) * q_win] = (
                    attended.reshape(batch, q_win, q_win, -1))
        heads.append(out[:, :q.shape[1], :q.shape[2]] + q)  # residual pooling
    return m.proj(torch.cat(heads, dim=-1))


@pytest.mark.parametrize("stride_q,stride_kv", [(1, 2), (2, 1)])
def test_windowed_attention_matches_slow_loop(stride_q, stride_kv):
    # A 6 x 6 input with windows of 4 tokens: padded windows for both queries and keys.
    torch.manual_seed(0)
    m = MultiScaleAttention(
        8, 16, num_heads=2, stride_q=stride_q, stride_kv=stride_kv, window_size=4,
        use_rel_pos=True, rel_pos_zero_init=False, input_size=(4, 4),
    ).double()
    _randomize(m, seed=3)
    x = torch.randn(2, 6, 6, 8, dtype=torch.float64)
    with torch.no_grad():
        got = m(x)
        expected = _slow_windowed_attention(m, x, stride_q, stride_kv, window=4)
    assert got.shape == (2, 6 // stride_q, 6 // stride_q, 16)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_backbone_interface_and_any_input_size():
    model = _tiny(out_features=("scale3", "scale5")).eval()
    assert model.size_divisibility == 0 and model.padding_constraints == {}
    assert model.output_shape() == {
        "scale3": ShapeSpec(channels=16, stride=8), "scale5": ShapeSpec(channels=64, stride=32)}
    assert not any(k.startswith(("scale2_norm", "scale4_norm")) for k in model.state_dict())
    with torch.no_grad():
        out = model(torch.randn(1, 3, 40, 56))  # not a multiple of the windows nor of 32
    # 7x7/4 patches: 10 x 14 tokens; each stride-2 pooling (kernel 3, padding 1) rounds up.
    assert list(out) == ["scale3", "scale5"]
    assert out["scale3"].shape == (1, 16, 5, 7)
    assert out["scale5"].shape == (1, 64, 2, 2)
    with pytest.raises(ValueError, match="N, C, H, W"):
        model(torch.randn(3, 32, 32))


def test_activation_checkpointing_and_drop_path():
    torch.manual_seed(0)
    plain = _tiny(drop_path_rate=0.3)
    ckpt = _tiny(drop_path_rate=0.3, use_act_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    # Stochastic depth grows linearly from 0 (first block) to drop_path_rate (last block).
    assert isinstance(plain.blocks[0].drop_path, nn.Identity)
    assert plain.blocks[3].drop_path.drop_prob == pytest.approx(0.3)
    x = torch.randn(2, 3, 32, 32)
    for model in (plain, ckpt):
        model.train()
        torch.manual_seed(1)  # the same drop-path draws in both runs
        sum(o.square().sum() for o in model(x).values()).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    plain.eval()
    with torch.no_grad():  # no drop path at inference: deterministic
        torch.testing.assert_close(plain(x)["scale5"], plain(x)["scale5"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(last_block_indexes=(0, 1, 3)), "last_block_indexes"),
        (dict(last_block_indexes=(0, 1, 2, 2)), "last_block_indexes"),
        (dict(out_features=("res5",)), "res5"),
        (dict(embed_dim=6, num_heads=4), "num_heads"),
    ],
)
def test_invalid_arguments_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _tiny(**kwargs)


def test_project_config_builds_a_tiny_mask_rcnn():
    cfg = LazyConfig.load(str(MVIT_T_CONFIG))
    bottom_up = cfg.model.backbone.bottom_up
    assert (bottom_up.embed_dim, bottom_up.depth, tuple(bottom_up.last_block_indexes)) == (
        96, 10, (0, 2, 7, 9))
    assert cfg.model.input_format == "RGB"
    assert cfg.dataloader.train.mapper.image_format == "RGB"
    assert cfg.train.max_iter == 67500
    # Tiny widths: the same model, 4 blocks of width 8 to 64, for 64 x 64 images.
    bottom_up.update(embed_dim=8, depth=4, last_block_indexes=(0, 1, 2, 3), img_size=64)
    model = instantiate(cfg.model).eval()
    assert isinstance(model.backbone.bottom_up, MViT)
    assert {k: v.stride for k, v in model.backbone.output_shape().items()} == {
        "p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    assert "backbone.bottom_up.blocks.3.attn.rel_pos_w" in model.state_dict()
    with torch.no_grad():
        result = model([{"image": torch.randint(0, 255, (3, 64, 80), dtype=torch.uint8)}])
    assert result[0]["instances"].image_size == (64, 80)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    rel_pos = {id(p) for n, p in model.named_parameters() if n.endswith(("rel_pos_h", "rel_pos_w"))}
    decays = {g["weight_decay"] for g in optimizer.param_groups
              if any(id(p) in rel_pos for p in g["params"])}
    assert decays == {0.0}
    assert optimizer.defaults["lr"] == pytest.approx(1.6e-4)
