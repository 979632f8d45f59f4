"""RegNet / AnyNet backbones (pycls design) with Detectron2's module layout and parameter names.

An :class:`AnyNet` is a stem (:class:`SimpleStem` or :class:`ResStem`) followed by stages ``s1``,
``s2``, ... whose blocks are named ``b1``, ``b2``, ... (:class:`ResBottleneckBlock`,
:class:`ResBasicBlock` or :class:`VanillaBlock`). :class:`RegNet` derives the per-stage widths and
depths of an AnyNet from the quantized-linear rule of "Designing Network Design Spaces"
(Radosavovic et al., 2020). Parameter names (``stem.conv.weight``, ``s1.b1.f.a_bn.running_var``,
``s2.b1.f.se.f_ex.0.bias``, ...) are those of Detectron2 and pycls, so the new-baseline model-zoo
checkpoints and pycls ImageNet weights load unchanged. The stems and blocks live in
``regnet_blocks.py`` and are re-exported here, at Detectron2's path.
"""

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...layers import ShapeSpec
from .backbone import Backbone
# The blocks are re-exported at Detectron2's path (``detectron2.modeling.backbone.regnet``).
from .regnet_blocks import (  # noqa: F401
    SE,
    AnyStage,
    BasicTransform,
    BottleneckTransform,
    ResBasicBlock,
    ResBottleneckBlock,
    ResStem,
    SimpleStem,
    VanillaBlock,
    conv2d,
    init_weights,
)

__all__ = [
    "AnyNet",
    "RegNet",
    "ResStem",
    "SimpleStem",
    "VanillaBlock",
    "ResBasicBlock",
    "ResBottleneckBlock",
]


class AnyNet(Backbone):
    """AnyNet backbone: a stem then one :class:`AnyStage` per entry of ``depths`` (``s1``, ...).

    Args (keyword only):
        stem_class: ``(w_in, w_out, norm, activation_class) -> CNNBlockBase`` (e.g.
            :class:`SimpleStem`).
        stem_width: channels the stem outputs.
        block_class: ``(w_in, w_out, stride, norm, activation_class, params) -> CNNBlockBase``
            (e.g. :class:`ResBottleneckBlock`).
        depths, widths, group_widths, strides, bottleneck_ratios: per stage, the number of
            blocks, output channels, channels per group, stride and bottleneck ratio.
        se_ratio: SE width as a fraction of each block's input width (0: no SE).
        activation_class: no-argument callable returning an activation module.
        freeze_at: see :meth:`freeze`.
        norm: normalisation of every conv (see :func:`get_norm`), e.g. "BN", "SyncBN".
        out_features: names among "stem", "s1", "s2", ... to return; None = the last stage.

    ``forward((N, 3, H, W)) -> dict`` name -> feature map; stage ``s{i}`` has stride
    ``stem stride * prod(stage strides up to i)`` (2, 4, 8, 16, 32 for RegNet).
    """

    def __init__(
        self,
        *,
        stem_class,
        stem_width: int,
        block_class,
        depths: Sequence[int],
        widths: Sequence[int],
        group_widths: Sequence[int],
        strides: Sequence[int],
        bottleneck_ratios: Sequence[float],
        se_ratio: float,
        activation_class: Callable[[], nn.Module],
        freeze_at: int = 0,
        norm="BN",
        out_features: Optional[List[str]] = None,
    ):
        super().__init__()
        per_stage = [len(depths), len(widths), len(group_widths), len(strides),
                     len(bottleneck_ratios)]
        if len(set(per_stage)) != 1:
            raise ValueError(
                "AnyNet: depths, widths, group_widths, strides and bottleneck_ratios must have "
                f"one entry per stage, got lengths {per_stage}."
            )
        self.stem = stem_class(3, stem_width, norm, activation_class)
        current_stride = self.stem.stride
        self._out_feature_strides = {"stem": current_stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}
        self.stages_and_names: List[Tuple[AnyStage, str]] = []
        prev_w = stem_width
        name = "stem"
        for i, (d, w, s, b, g) in enumerate(
            zip(depths, widths, strides, bottleneck_ratios, group_widths)
        ):
            params = {"bot_mul": b, "group_w": g, "se_r": se_ratio}
            stage = AnyStage(prev_w, w, s, d, block_class, norm, activation_class, params)
            name = f"s{i + 1}"
            self.add_module(name, stage)
            self.stages_and_names.append((stage, name))
            for block in stage.children():
                current_stride *= block.stride
            self._out_feature_strides[name] = int(current_stride)
            self._out_feature_channels[name] = list(stage.children())[-1].out_channels
            prev_w = w

        self.apply(init_weights)

        if out_features is None:
            out_features = [name]
        if not out_features:
            raise ValueError("AnyNet: out_features is empty; name at least one of "
                             f"{list(self._out_feature_strides)}.")
        unknown = [f for f in out_features if f not in self._out_feature_strides]
        if unknown:
            raise ValueError(
                f"AnyNet: out_features {unknown} are not outputs of this network; choose among "
                f"{list(self._out_feature_strides)}."
            )
        self._out_features = list(out_features)
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Map an (N, C, H, W) batch to ``{name: feature map}`` for each of ``out_features``."""
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__} takes an (N, C, H, W) input, got shape "
                             f"{tuple(x.shape)}.")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for stage, name in self.stages_and_names:
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Dict name -> ``ShapeSpec(channels, stride)`` for each of ``out_features``."""
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name],
                            stride=self._out_feature_strides[name])
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> "AnyNet":
        """Freeze the first ``freeze_at`` parts in place: 1 = the stem, 2 = the stem and ``s1``,
        and so on (0 freezes nothing). Frozen parts get ``requires_grad = False`` and their batch
        norms become ``FrozenBatchNorm2d``. Returns self."""
        if freeze_at >= 1:
            self.stem.freeze()
        for index, (stage, _) in enumerate(self.stages_and_names, start=2):
            if freeze_at >= index:
                for block in stage.children():
                    block.freeze()
        return self


def adjust_block_compatibility(ws: Sequence[int], bs: Sequence[float], gs: Sequence[int]):
    """Make widths, bottleneck ratios and group widths compatible, per stage.

    Clamps each group width to the bottleneck width, then rounds the bottleneck width to a
    multiple of the group width (of lcm(group width, ratio) for integer ratios > 1). Returns the
    adjusted ``(ws, bs, gs)`` lists; raises ValueError for non-positive or ragged inputs.
    """
    if not len(ws) == len(bs) == len(gs):
        raise ValueError(f"adjust_block_compatibility: ws, bs, gs must have equal lengths, got "
                         f"{len(ws)}, {len(bs)}, {len(gs)}.")
    if not all(w > 0 and b > 0 and g > 0 for w, b, g in zip(ws, bs, gs)):
        raise ValueError(f"adjust_block_compatibility: widths {list(ws)}, bottleneck ratios "
                         f"{list(bs)} and group widths {list(gs)} must all be positive.")
    vs = [int(max(1, w * b)) for w, b in zip(ws, bs)]
    gs = [int(min(g, v)) for g, v in zip(gs, vs)]
    ms = [int(np.lcm(g, int(b))) if b > 1 else g for g, b in zip(gs, bs)]
    vs = [max(m, int(round(v / m) * m)) for v, m in zip(vs, ms)]
    ws = [int(v / b) for v, b in zip(vs, bs)]
    return ws, list(bs), gs


def generate_regnet_parameters(w_a: float, w_0: int, w_m: float, d: int, q: int = 8):
    """Per-stage widths and depths from the RegNet parameters (paper Section 3.3).

    Block j gets the continuous width ``u_j = w_0 + w_a * j``, snapped to ``w_0 * w_m ** k``
    (k integer) and rounded to a multiple of ``q``; consecutive blocks of equal width form a
    stage. Returns ``(ws, ds, num_stages, total_stages, ws_all, ws_cont)``: stage widths, stage
    depths, number of stages, max k + 1, and the quantized and continuous per-block widths.
    """
    if not (w_a >= 0 and w_0 > 0 and w_m > 1 and w_0 % q == 0):
        raise ValueError(
            f"generate_regnet_parameters: need w_a >= 0, w_0 > 0, w_m > 1 and w_0 a multiple "
            f"of {q}; got w_a={w_a}, w_0={w_0}, w_m={w_m}."
        )
    ws_cont = np.arange(d) * w_a + w_0
    ks = np.round(np.log(ws_cont / w_0) / np.log(w_m))
    ws_all = (np.round(w_0 * np.power(w_m, ks) / q).astype(int) * q)
    ws, ds = np.unique(ws_all, return_counts=True)
    num_stages, total_stages = len(ws), ks.max() + 1
    return ws.tolist(), ds.tolist(), num_stages, total_stages, ws_all.tolist(), ws_cont.tolist()


def _default_activation() -> nn.Module:
    return nn.ReLU(inplace=True)


class RegNet(AnyNet):
    """RegNet backbone: an :class:`AnyNet` whose stages come from the RegNet parameters.

    Args (keyword only), besides those of :class:`AnyNet` other than the per-stage lists:
        depth: total number of blocks.
        w_a, w_0, w_m: slope, initial width and width multiplier of the quantized linear rule
            (see :func:`generate_regnet_parameters`).
        group_width: channels per group of the 3x3 convs.
        stride: stride of every stage (2).
        bottleneck_ratio: bottleneck width / block width (1.0 for RegNetX/Y).
        se_ratio: SE width / block input width (0 for RegNetX, 0.25 for RegNetY).
        activation_class: defaults to ``nn.ReLU(inplace=True)``.

    Example (Detectron2's RegNetX-4GF): ``RegNet(stem_class=SimpleStem, stem_width=32,
    block_class=ResBottleneckBlock, depth=23, w_a=38.65, w_0=96, w_m=2.43, group_width=40,
    out_features=["s1", "s2", "s3", "s4"])``.
    """

    def __init__(
        self,
        *,
        stem_class,
        stem_width: int,
        block_class,
        depth: int,
        w_a: float,
        w_0: int,
        w_m: float,
        group_width: int,
        stride: int = 2,
        bottleneck_ratio: float = 1.0,
        se_ratio: float = 0.0,
        activation_class: Optional[Callable[[], nn.Module]] = None,
        freeze_at: int = 0,
        norm="BN",
        out_features: Optional[List[str]] = None,
    ):
        ws, ds = generate_regnet_parameters(w_a, w_0, w_m, depth)[0:2]
        ws, bs, gs = adjust_block_compatibility(
            ws, [bottleneck_ratio] * len(ws), [group_width] * len(ws)
        )
        super().__init__(
            stem_class=stem_class,
            stem_width=stem_width,
            block_class=block_class,
            depths=ds,
            widths=ws,
            strides=[stride] * len(ws),
            group_widths=gs,
            bottleneck_ratios=bs,
            se_ratio=se_ratio,
            activation_class=_default_activation if activation_class is None
            else activation_class,
            freeze_at=freeze_at,
            norm=norm,
            out_features=out_features,
        )
