"""ResNet / ResNeXt backbones with Detectron2's module layout and parameter names.

A :class:`ResNet` is a stem (:class:`BasicStem`) followed by stages ``res2`` ... ``res5``, each an
``nn.Sequential`` of blocks (:class:`BasicBlock` for R18/R34, :class:`BottleneckBlock` or
:class:`DeformBottleneckBlock` otherwise). Every conv that has a norm carries it as a ``norm``
sub-module, so parameter names are Detectron2's (``res2.0.conv1.norm.running_var``, ...) and
model-zoo checkpoints load unchanged. The blocks live in ``resnet_blocks.py`` and are re-exported
here, at Detectron2's path.
"""

import copy
import logging
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ...layers import CNNBlockBase, ShapeSpec
from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .resnet_blocks import BasicBlock, BasicStem, BottleneckBlock, DeformBottleneckBlock

__all__ = [
    "ResNetBlockBase",
    "BasicBlock",
    "BottleneckBlock",
    "DeformBottleneckBlock",
    "BasicStem",
    "ResNet",
    "make_stage",
    "build_resnet_backbone",
    "resnet_stages_from_config",
]

logger = logging.getLogger(__name__)

# Detectron2 keeps this older name for the block base class.
ResNetBlockBase = CNNBlockBase

# Blocks per stage (res2, res3, res4, res5) for each supported depth.
_BLOCKS_PER_STAGE = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
}
# Index (1-based) of the last stage needed to produce each stage output.
_STAGE_INDEX = {"res2": 1, "res3": 2, "res4": 3, "res5": 4}


class ResNet(Backbone):
    """A ResNet backbone: a stem, then stages ``res2``, ``res3``, ... (optionally a classifier).

    Args:
        stem: a :class:`CNNBlockBase` with ``out_channels`` and ``stride`` (e.g.
            :class:`BasicStem`).
        stages: one list of :class:`CNNBlockBase` blocks per stage (see :meth:`make_stage`);
            stage i becomes the ``nn.Sequential`` submodule ``res{i + 2}``.
        num_classes: when given, adds global average pooling and a ``linear`` classifier
            (output name ``"linear"``).
        out_features: names of the outputs, among ``"stem"``, ``"res2"`` ... and ``"linear"``;
            stages past the last one requested are not built. Default: the last layer.
        freeze_at: number of leading parts to freeze (see :meth:`freeze`).

    ``forward(x (N, C, H, W)) -> dict[name, Tensor]`` for the names in ``out_features``.
    """

    def __init__(
        self,
        stem: CNNBlockBase,
        stages: Sequence[Sequence[CNNBlockBase]],
        num_classes: Optional[int] = None,
        out_features: Optional[Sequence[str]] = None,
        freeze_at: int = 0,
    ):
        super().__init__()
        self.stem = stem
        self.num_classes = num_classes

        stride = self.stem.stride
        self._out_feature_strides = {"stem": stride}
        self._out_feature_channels = {"stem": self.stem.out_channels}

        if out_features is not None:
            needed = max([_STAGE_INDEX.get(name, 0) for name in out_features] + [0])
            if num_classes is None or "linear" not in out_features:
                stages = stages[:needed]

        self.stage_names: List[str] = []
        self.stages: List[nn.Sequential] = []
        channels = self.stem.out_channels
        for i, blocks in enumerate(stages):
            name = f"res{i + 2}"
            if len(blocks) == 0:
                raise ValueError(f"ResNet: stage {name} has no blocks.")
            for block in blocks:
                if not isinstance(block, CNNBlockBase):
                    raise TypeError(
                        f"ResNet: every block of stage {name} must be a CNNBlockBase (it needs "
                        f"in_channels/out_channels/stride), got {type(block).__name__}."
                    )
            stage = nn.Sequential(*blocks)
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stages.append(stage)
            for block in blocks:
                stride *= block.stride
            channels = blocks[-1].out_channels
            self._out_feature_strides[name] = int(stride)
            self._out_feature_channels[name] = channels
        self.stage_names = tuple(self.stage_names)

        last = self.stage_names[-1] if self.stage_names else "stem"
        if num_classes is not None:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.linear = nn.Linear(channels, num_classes)
            # Detectron2 initialises the classifier with std 0.01 (from the original ResNet).
            nn.init.normal_(self.linear.weight, std=0.01)
            last = "linear"

        if out_features is None:
            out_features = [last]
        self._out_features = list(out_features)
        children = {name for name, _ in self.named_children()}
        for name in self._out_features:
            if name not in children:
                raise ValueError(
                    f"ResNet: out_features contains {name!r}, which this model does not have; "
                    f"available: {sorted(children - {'avgpool'})}. Check MODEL.RESNETS."
                    "OUT_FEATURES (and num_classes for 'linear')."
                )
        self.freeze(freeze_at)

    def __prepare_scriptable__(self) -> "ResNet":
        """What ``torch.jit.script`` compiles: a copy whose stages are an ``nn.ModuleList``
        (TorchScript cannot iterate a plain list of modules); parameter names change from
        ``res2.*`` to ``stages.0.*`` in the scripted copy only."""
        scriptable = copy.deepcopy(self)
        scriptable.stages = nn.ModuleList(scriptable.stages)
        for name in self.stage_names:
            delattr(scriptable, name)
        return scriptable

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            if not torch.jit.is_scripting():
                raise ValueError(
                    f"ResNet takes an (N, C, H, W) batch, got a tensor of shape "
                    f"{tuple(x.shape)}."
                )
            raise ValueError("ResNet takes an (N, C, H, W) batch.")
        wanted = self._out_features
        outputs: Dict[str, torch.Tensor] = {}
        x = self.stem(x)
        if "stem" in wanted:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in wanted:
                outputs[name] = x
        if self.num_classes is not None:
            x = torch.flatten(self.avgpool(x), 1)
            x = self.linear(x)
            if "linear" in wanted:
                outputs["linear"] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Dict name -> ``ShapeSpec(channels, stride)`` for each feature map output.

        ``"linear"`` (logits, not a feature map) is left out.
        """
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
            if name != "linear"
        }

    def freeze(self, freeze_at: int = 0) -> "ResNet":
        """Freeze the first ``freeze_at`` parts, in place: 1 = the stem, 2 = stem and res2, ...

        Frozen parts get ``requires_grad = False`` and their batch norms become
        ``FrozenBatchNorm2d`` (see :meth:`CNNBlockBase.freeze`). 0 freezes nothing. Returns self.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for index, stage in enumerate(self.stages, start=2):
            if freeze_at >= index:
                for block in stage.children():
                    block.freeze()
        return self

    @classmethod
    def make_stage(
        cls, block_class, num_blocks: int, *, in_channels: int, out_channels: int, **kwargs
    ) -> List[CNNBlockBase]:
        """Build the ``num_blocks`` blocks of one stage.

        Args:
            block_class: a :class:`CNNBlockBase` subclass taking ``in_channels`` and
                ``out_channels`` (plus whatever keyword arguments it needs).
            num_blocks: number of blocks.
            in_channels: input channels of the first block; later blocks take
                ``out_channels``.
            out_channels: output channels of every block.
            kwargs: passed to every block. A key ``<name>_per_block`` must be a list of
                ``num_blocks`` values, the i-th going to block i as ``<name>`` (e.g.
                ``stride_per_block=[2, 1, 1]``). The legacy ``first_stride=s`` means
                ``stride_per_block=[s, 1, ...]``.

        Returns:
            the list of blocks, to be given to :class:`ResNet` as one stage.
        """
        if "first_stride" in kwargs:
            if "stride_per_block" in kwargs or "stride" in kwargs:
                raise ValueError("make_stage: give first_stride or stride(_per_block), not both.")
            first = kwargs.pop("first_stride")
            kwargs["stride_per_block"] = [first] + [1] * (num_blocks - 1)
        per_block = {}
        shared = {}
        for key, value in kwargs.items():
            if key.endswith("_per_block"):
                base = key[: -len("_per_block")]
                if len(value) != num_blocks:
                    raise ValueError(
                        f"make_stage: {key} has {len(value)} values for {num_blocks} blocks."
                    )
                if base in kwargs:
                    raise ValueError(f"make_stage: both {base} and {key} were given.")
                per_block[base] = value
            else:
                shared[key] = value
        blocks = []
        for i in range(num_blocks):
            block_kwargs = dict(shared)
            for base, values in per_block.items():
                block_kwargs[base] = values[i]
            blocks.append(
                block_class(in_channels=in_channels, out_channels=out_channels, **block_kwargs)
            )
            in_channels = out_channels
        return blocks

    @classmethod
    def make_default_stages(
        cls, depth: int, block_class=None, **kwargs
    ) -> List[List[CNNBlockBase]]:
        """The four stages (res2..res5) of a standard ResNet of the given depth.

        Args:
            depth: 18, 34, 50, 101 or 152.
            block_class: block type; default :class:`BasicBlock` below depth 50, else
                :class:`BottleneckBlock` (then ``bottleneck_channels`` = out_channels / 4).
            kwargs: passed to every block (e.g. ``norm``, ``stride_in_1x1``).

        Returns:
            a list of 4 lists of blocks, with the first block of res3..res5 having stride 2.
        """
        if depth not in _BLOCKS_PER_STAGE:
            raise ValueError(
                f"ResNet depth must be one of {sorted(_BLOCKS_PER_STAGE)}, got {depth}."
            )
        if block_class is None:
            block_class = BasicBlock if depth < 50 else BottleneckBlock
        if depth < 50:
            in_channels, out_channels = [64, 64, 128, 256], [64, 128, 256, 512]
        else:
            in_channels, out_channels = [64, 256, 512, 1024], [256, 512, 1024, 2048]
        stages = []
        for num, first_stride, cin, cout in zip(
            _BLOCKS_PER_STAGE[depth], [1, 2, 2, 2], in_channels, out_channels
        ):
            stage_kwargs = dict(kwargs)
            if depth >= 50:
                stage_kwargs["bottleneck_channels"] = cout // 4
            stages.append(
                cls.make_stage(
                    block_class, num, in_channels=cin, out_channels=cout,
                    stride_per_block=[first_stride] + [1] * (num - 1), **stage_kwargs,
                )
            )
        return stages


make_stage = ResNet.make_stage
"""Module-level alias of :meth:`ResNet.make_stage` (as in Detectron2)."""

# Allowed (RES4_DILATION, RES5_DILATION) -> output stride of res5. A dilated stage keeps the
# stride of its first block at 1 and dilates its 3x3 convs by the product of every stride removed
# up to it, so a dilated res4 forces res5 to 4.
_DILATIONS = {(1, 1): 32, (1, 2): 16, (2, 4): 8}


def _stage_dilations(resnets) -> Dict[str, int]:
    """``{"res4": d4, "res5": d5}`` from MODEL.RESNETS.RES4_DILATION / RES5_DILATION.

    Raises ValueError naming both keys and the allowed pairs when the pair is not one of
    (1, 1) (output stride 32), (1, 2) (16, "DC5") or (2, 4) (8, "DC8").
    """
    pair = (resnets.RES4_DILATION, resnets.RES5_DILATION)
    if pair not in _DILATIONS:
        allowed = ", ".join(f"{p} (output stride {s})" for p, s in _DILATIONS.items())
        raise ValueError(
            f"MODEL.RESNETS.RES4_DILATION={pair[0]} with MODEL.RESNETS.RES5_DILATION={pair[1]} "
            f"is not supported. Allowed (RES4_DILATION, RES5_DILATION): {allowed}. A dilated "
            "stage's dilation is the product of the strides removed up to it, so "
            "RES4_DILATION 2 needs RES5_DILATION 4 and RES5_DILATION 4 needs RES4_DILATION 2."
        )
    return {"res4": pair[0], "res5": pair[1]}


@BACKBONE_REGISTRY.register()
def build_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Build a ResNet/ResNeXt backbone from ``cfg.MODEL.RESNETS`` and ``MODEL.BACKBONE.FREEZE_AT``.

    Reads DEPTH, NUM_GROUPS, WIDTH_PER_GROUP (bottleneck width of res2 = their product, doubled
    at each later stage), STEM_OUT_CHANNELS, RES2_OUT_CHANNELS (doubled at each later stage),
    STRIDE_IN_1X1, RES4_DILATION and RES5_DILATION, DEFORM_ON_PER_STAGE, DEFORM_MODULATED,
    DEFORM_NUM_GROUPS, NORM and OUT_FEATURES.

    Dilation rule: a stage with dilation d > 1 has stride 1 in its first block (it keeps its
    input's resolution) and every 3x3 conv of the stage, in every block, has dilation and
    padding d. d is the product of the strides removed up to that stage, so the allowed
    (RES4_DILATION, RES5_DILATION) are (1, 1): res5 at stride 32; (1, 2): res5 at stride 16
    ("DC5"); (2, 4): res4 and res5 at stride 8 ("DC8", torchvision's
    ``replace_stride_with_dilation=[False, True, True]``). Others raise ValueError (Detectron2's
    DeepLab project also accepts (1, 4), whose res5 is dilated beyond the stride it removes).
    With the stride on the 1x1 conv (STRIDE_IN_1X1, MSRA weights) the dilated network is
    exactly the plain one evaluated on a finer grid; with it on the 3x3 conv (torchvision
    layout, basic blocks) the first block's formerly strided 3x3 conv is dilated too, as in
    Detectron2, where torchvision keeps the previous stage's dilation there. Parameter names
    and shapes do not depend on dilation.

    Depths 18 and 34 use basic blocks (no NUM_GROUPS or deformable convs; dilation applies to
    both 3x3 convs, which Detectron2 does not allow); unlike Detectron2, which requires 64,
    their RES2_OUT_CHANNELS may be any width but the bottleneck default 256 (refused as a likely
    leftover of a ResNet-50 config).

    Args:
        cfg: a config.
        input_shape: ``input_shape.channels`` is the stem's input channels.

    Returns:
        a :class:`ResNet` whose outputs are ``MODEL.RESNETS.OUT_FEATURES``.
    """
    r = cfg.MODEL.RESNETS
    stem = BasicStem(
        in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM
    )
    stages = resnet_stages_from_config(cfg, _stage_dilations(r))
    return ResNet(
        stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT
    )


def resnet_stages_from_config(
    cfg, dilations: Dict[str, int], res5_dilation_per_block: Optional[Sequence[int]] = None
) -> List[List[CNNBlockBase]]:
    """The four stages (res2..res5, lists of blocks) that :func:`build_resnet_backbone` puts
    after its stem, from ``cfg.MODEL.RESNETS`` (see there for the keys and checks); for
    backbones that change the stem or the dilations (e.g. the DeepLab project's).

    Args:
        cfg: a config.
        dilations: {"res4": d4, "res5": d5}; a stage with d > 1 keeps stride 1.
        res5_dilation_per_block: one dilation per res5 block, replacing ``d5`` block by block
            (DeepLab's multi-grid); must have as many entries as res5 has blocks.

    Raises:
        ValueError: for an unsupported DEPTH, DEFORM_ON_PER_STAGE of the wrong length, a
            basic-block depth with bottleneck-only settings, or a ``res5_dilation_per_block``
            of the wrong length.
    """
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH={depth} is not supported; use one of "
            f"{sorted(_BLOCKS_PER_STAGE)}."
        )
    norm = r.NORM
    num_groups = r.NUM_GROUPS
    bottleneck_channels = num_groups * r.WIDTH_PER_GROUP
    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    deform_on = list(r.DEFORM_ON_PER_STAGE)
    if len(deform_on) != 4:
        raise ValueError(
            "MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 booleans (res2..res5), got "
            f"{deform_on}."
        )
    if depth in (18, 34):
        problems = []
        if out_channels == 256:
            # The bottleneck default: left over from a ResNet-50 config, not a chosen width.
            problems.append(
                "MODEL.RESNETS.RES2_OUT_CHANNELS=256 is the bottleneck default; set 64 (the "
                "standard width, which ImageNet weights need) or the width you want")
        elif out_channels != 64:
            # Detectron2 accepts only 64; segtron builds thinner or wider basic-block ResNets
            # (a thin ResNet-18 trains from scratch on a CPU, see configs/Shapes).
            logger.info(
                "ResNet-%d with MODEL.RESNETS.RES2_OUT_CHANNELS=%d: stage widths %s instead of "
                "the standard 64, 128, 256, 512 (ImageNet weights will not fit).",
                depth, out_channels, [out_channels * 2 ** i for i in range(4)])
        if any(deform_on):
            problems.append("MODEL.RESNETS.DEFORM_ON_PER_STAGE must be all False")
        if num_groups != 1:
            problems.append(f"MODEL.RESNETS.NUM_GROUPS={num_groups} must be 1")
        if problems:
            raise ValueError(
                f"ResNet-{depth} uses basic blocks: " + "; ".join(problems) + "."
            )

    res5_blocks = _BLOCKS_PER_STAGE[depth][3]
    if res5_dilation_per_block is not None and len(res5_dilation_per_block) != res5_blocks:
        raise ValueError(
            f"ResNet-{depth}'s res5 has {res5_blocks} blocks but {len(res5_dilation_per_block)} "
            f"per-block dilations were given ({list(res5_dilation_per_block)}): give one per "
            "block (MODEL.RESNETS.RES5_MULTI_GRID in the DeepLab project)."
        )
    stages = []
    for index, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        dilation = dilations.get(f"res{index + 2}", 1)
        first_stride = 1 if index == 0 or dilation > 1 else 2
        stage_kwargs = {
            "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
            "in_channels": in_channels,
            "out_channels": out_channels,
            "norm": norm,
            "dilation": dilation,
        }
        if index == 3 and res5_dilation_per_block is not None:
            del stage_kwargs["dilation"]
            stage_kwargs["dilation_per_block"] = list(res5_dilation_per_block)
        if depth in (18, 34):
            block_class = BasicBlock
        else:
            stage_kwargs.update(
                bottleneck_channels=bottleneck_channels,
                stride_in_1x1=r.STRIDE_IN_1X1,
                num_groups=num_groups,
            )
            if deform_on[index]:
                block_class = DeformBottleneckBlock
                stage_kwargs.update(
                    deform_modulated=r.DEFORM_MODULATED, deform_num_groups=r.DEFORM_NUM_GROUPS
                )
            else:
                block_class = BottleneckBlock
        stages.append(ResNet.make_stage(block_class, num_blocks, **stage_kwargs))
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    return stages
