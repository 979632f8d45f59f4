"""Feature Pyramid Network on top of a backbone (Detectron2 path: ``modeling.backbone.fpn``).

Parameter names are Detectron2's: ``fpn_lateral{k}`` / ``fpn_output{k}`` where k = log2 of the
input feature's stride (``fpn_lateral2`` for ``res2``), ``top_block.*`` and ``bottom_up.*``.
"""

import copy
import math
from typing import Dict, List, Optional, Sequence

import torch
from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from ...layers import Conv2d, ShapeSpec, get_norm
from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .resnet import build_resnet_backbone

__all__ = [
    "FPN",
    "LastLevelMaxPool",
    "LastLevelP6P7",
    "build_resnet_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone",
    "build_fcos_resnet_fpn_backbone",
]


class FPN(Backbone):
    """Feature Pyramid Network: a top-down path with lateral connections over a backbone.

    For each input feature ``f`` (stride 2**k) there is a 1x1 lateral conv ``fpn_lateral{k}``
    and a 3x3 output conv ``fpn_output{k}``, both to ``out_channels``, with a bias only when
    ``norm`` is empty, initialised with ``c2_xavier_fill``. Starting from the coarsest level,
    each level's merged map is ``lateral(f) + upsample2x_nearest(coarser merged map)`` (halved
    when ``fuse_type="avg"``), and its output is ``fpn_output(merged)``, named ``p{k}``. An
    optional ``top_block`` then adds coarser levels (e.g. ``p6``).

    Args:
        bottom_up: the :class:`Backbone` giving the input features.
        in_features: names of the ``bottom_up`` outputs to use, finest first; their strides
            must be consecutive powers of 2 (e.g. ``["res2", "res3", "res4", "res5"]``).
        out_channels: channels of every output.
        norm: norm of the lateral and output convs (``""`` for none).
        top_block: None, or a module with attributes ``num_levels`` (number of extra outputs)
            and ``in_feature`` (a ``bottom_up`` output name, or one of this FPN's output names),
            mapping that feature to a list of ``num_levels`` maps, each at half the previous
            resolution.
        fuse_type: ``"sum"`` or ``"avg"``, how lateral and top-down maps are merged.
        square_pad: when > 0, inputs are padded to this square size (padding constraint).

    ``forward(x (N, C, H, W)) -> {"p2": ..., ..., "p6": ...}`` in increasing-stride order; the
    input height and width must be multiples of :attr:`size_divisibility` (the largest input
    stride) so that the top-down upsampling lines up.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
    ):
        super().__init__()
        if not isinstance(bottom_up, Backbone):
            raise TypeError(
                f"FPN: bottom_up must be a Backbone, got {type(bottom_up).__name__}."
            )
        if not in_features:
            raise ValueError("FPN: in_features is empty; set MODEL.FPN.IN_FEATURES.")
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"FPN: fuse_type must be 'sum' or 'avg', got {fuse_type!r}.")
        input_shapes = bottom_up.output_shape()
        missing = [f for f in in_features if f not in input_shapes]
        if missing:
            raise ValueError(
                f"FPN: in_features {missing} are not outputs of the bottom-up backbone, which "
                f"gives {list(input_shapes)}. Add them to the backbone's out features (e.g. "
                "MODEL.RESNETS.OUT_FEATURES) or fix MODEL.FPN.IN_FEATURES."
            )
        strides = [input_shapes[f].stride for f in in_features]
        _check_strides(in_features, strides)

        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for name, stride in zip(in_features, strides):
            level = int(math.log2(stride))
            lateral = Conv2d(
                input_shapes[name].channels, out_channels, kernel_size=1, bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            output = Conv2d(
                out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=use_bias,
                norm=get_norm(norm, out_channels),
            )
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"fpn_lateral{level}", lateral)
            self.add_module(f"fpn_output{level}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Plain lists (the modules are registered above), coarsest level first.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

        self.top_block = top_block
        self.in_features = tuple(in_features)
        self.bottom_up = bottom_up

        self._out_feature_strides = {f"p{int(math.log2(s))}": s for s in strides}
        if top_block is not None:
            last = int(math.log2(strides[-1]))
            for level in range(last + 1, last + 1 + top_block.num_levels):
                self._out_feature_strides[f"p{level}"] = 2 ** level
        self._out_features = list(self._out_feature_strides)
        self._out_feature_channels = {k: out_channels for k in self._out_features}
        self._size_divisibility = strides[-1]
        self._square_pad = square_pad
        self._fuse_type = fuse_type

        if top_block is not None:
            source = top_block.in_feature
            if source not in input_shapes and source not in self._out_features:
                raise ValueError(
                    f"FPN: top_block.in_feature={source!r} is neither a bottom-up output "
                    f"{list(input_shapes)} nor an FPN output {self._out_features}."
                )

    @property
    def size_divisibility(self) -> int:
        """The largest input stride: input sizes must be multiples of it."""
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """``{"square_size": square_pad}`` (0: no square padding)."""
        return {"square_size": self._square_pad}

    def __prepare_scriptable__(self) -> "FPN":
        """What ``torch.jit.script`` compiles: a copy whose per-level convs are
        ``nn.ModuleList``s and ``in_features`` a list (TorchScript indexes neither a plain list
        of modules nor a tuple with a variable); its parameters are named ``lateral_convs.*`` /
        ``output_convs.*`` instead of ``fpn_lateral*`` / ``fpn_output*``."""
        scriptable = copy.deepcopy(self)
        scriptable.lateral_convs = nn.ModuleList(scriptable.lateral_convs)
        scriptable.output_convs = nn.ModuleList(scriptable.output_convs)
        for name, _ in self.named_children():
            if name.startswith("fpn_"):
                delattr(scriptable, name)
        scriptable.in_features = list(self.in_features)
        return scriptable

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        in_features = self.in_features
        num = len(in_features)
        prev = self.lateral_convs[0](features[in_features[-1]])
        results = [self.output_convs[0](prev)]  # finest level first
        for i, (lateral_conv, output_conv) in enumerate(
            zip(self.lateral_convs, self.output_convs)
        ):
            if i > 0:  # (a loop TorchScript can unroll over ModuleLists)
                lateral = lateral_conv(features[in_features[num - 1 - i]])
                prev = _add_upsampled(lateral, prev)
                if self._fuse_type == "avg":
                    prev = prev * 0.5
                results.insert(0, output_conv(prev))
        if self.top_block is not None:
            source = self.top_block.in_feature
            if source in features:
                top_input = features[source]
            else:
                top_input = results[self._out_features.index(source)]
            results.extend(self.top_block(top_input))
        outputs: Dict[str, torch.Tensor] = {}
        for name, result in zip(self._out_features, results):
            outputs[name] = result
        return outputs


def _add_upsampled(fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """``fine + interpolate(coarse, scale_factor=2, mode="nearest")``.

    fine: (N, C, 2h, 2w); coarse: (N, C, h, w). Without autograd the sum is written into
    ``fine`` (a lateral conv's fresh output) by broadcasting ``coarse`` over 2x2 blocks, which
    reads each map once and allocates nothing; nearest x2 upsampling copies pixel (y // 2,
    x // 2), so the result is the same. While tracing (fvcore's counting, export) the
    interpolate path is kept, so traced graphs hold Detectron2's op sequence.
    """
    n, c, h, w = coarse.shape[0], coarse.shape[1], coarse.shape[2], coarse.shape[3]
    tracing = torch.jit.is_tracing()
    if torch.is_grad_enabled() or tracing or list(fine.shape) != [n, c, 2 * h, 2 * w]:
        return fine + F.interpolate(coarse, scale_factor=2.0, mode="nearest")
    fine.view(n, c, h, 2, w, 2).add_(coarse.view(n, c, h, 1, w, 1))
    return fine


def _check_strides(names: Sequence[str], strides: Sequence[int]) -> None:
    """Raise unless the strides are powers of 2, each twice the previous one."""
    for i, stride in enumerate(strides):
        if stride is None or stride <= 0 or stride & (stride - 1):
            raise ValueError(f"FPN: stride {stride} of {names[i]!r} is not a power of 2.")
        if i > 0 and stride != 2 * strides[i - 1]:
            raise ValueError(
                f"FPN: strides of in_features {list(names)} are {list(strides)}; each must be "
                "twice the previous one (consecutive pyramid levels, finest first)."
            )


class LastLevelMaxPool(nn.Module):
    """FPN top block giving P6 = max-pool (kernel 1, stride 2) of P5 (Faster/Mask R-CNN).

    Attributes ``num_levels = 1``, ``in_feature = "p5"``. ``forward(p5) -> [p6]``.
    """

    def __init__(self):
        super().__init__()
        self.num_levels = 1
        self.in_feature = "p5"

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [F.max_pool2d(x, kernel_size=1, stride=2, padding=0)]


class LastLevelP6P7(nn.Module):
    """FPN top block giving P6 and P7 from C5 (or P5), as in RetinaNet.

    ``p6 = conv3x3_stride2(x)``, ``p7 = conv3x3_stride2(relu(p6))``; both convs have a bias and
    are initialised with ``c2_xavier_fill``.

    Args:
        in_channels: channels of the input feature.
        out_channels: channels of P6 and P7.
        in_feature: the input's name: ``"res5"`` (a bottom-up output) or ``"p5"``.

    ``forward(x) -> [p6, p7]``.
    """

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        super().__init__()
        self.num_levels = 2
        self.in_feature = in_feature
        self.p6 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
        weight_init.c2_xavier_fill(self.p6)
        weight_init.c2_xavier_fill(self.p7)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        p6 = self.p6(x)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


def _fpn_from_config(cfg, bottom_up: Backbone, top_block: nn.Module) -> FPN:
    """An FPN over ``bottom_up`` with MODEL.FPN.{IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE}."""
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def retinanet_fpn_from_config(cfg, bottom_up: Backbone, source: str) -> FPN:
    """An FPN over ``bottom_up`` (see ``_fpn_from_config``) with RetinaNet's
    :class:`LastLevelP6P7` top block fed by ``res5``.

    Args:
        source: the setting that decides ``bottom_up``'s outputs, named in the error.
    Raises:
        ValueError: when ``bottom_up`` has no ``res5`` output.
    """
    shapes = bottom_up.output_shape()
    if "res5" not in shapes:
        raise ValueError(
            f"RetinaNet's FPN feeds P6/P7 from res5 (stride 32), but {source} gives "
            f"{list(shapes)}; add the stride-32 level (res5) to the backbone's outputs."
        )
    top_block = LastLevelP6P7(shapes["res5"].channels, cfg.MODEL.FPN.OUT_CHANNELS)
    return _fpn_from_config(cfg, bottom_up, top_block)


@BACKBONE_REGISTRY.register()
def build_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet (``build_resnet_backbone``) + FPN with a :class:`LastLevelMaxPool` top block.

    Reads MODEL.FPN.IN_FEATURES, OUT_CHANNELS, NORM, FUSE_TYPE (plus every key the ResNet
    reads; MODEL.RESNETS.OUT_FEATURES must include the FPN's in_features).

    Returns:
        an :class:`FPN` with outputs p2..p6 for the usual ``res2..res5`` in_features.
    """
    return _fpn_from_config(cfg, build_resnet_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with a :class:`LastLevelP6P7` top block fed by ``res5`` (RetinaNet).

    As in Detectron2, P6 is computed from the ResNet's ``res5`` output (its channel count is
    the top block's input channels), so MODEL.RESNETS.OUT_FEATURES must include ``res5``.
    Reads the same keys as :func:`build_resnet_fpn_backbone`.

    Returns:
        an :class:`FPN` with outputs p3..p7 for RetinaNet's ``res3..res5`` in_features.
    """
    return retinanet_fpn_from_config(
        cfg, build_resnet_backbone(cfg, input_shape),
        f"MODEL.RESNETS.OUT_FEATURES={list(cfg.MODEL.RESNETS.OUT_FEATURES)}",
    )


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """ResNet + FPN with a :class:`LastLevelP6P7` top block fed by ``p5`` (FCOS).

    FCOS computes P6 from the FPN's P5 rather than from C5 (Sec. 2.2 of
    https://arxiv.org/abs/2006.09214; Detectron2's FCOS config does the same, and so does
    torchvision's RetinaNet), so the top block's input has MODEL.FPN.OUT_CHANNELS channels.
    Reads the same keys as :func:`build_resnet_fpn_backbone`.

    Returns:
        an :class:`FPN` with outputs p3..p7 for ``res3..res5`` in_features.
    """
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_block = LastLevelP6P7(out_channels, out_channels, in_feature="p5")
    return _fpn_from_config(cfg, build_resnet_backbone(cfg, input_shape), top_block)
