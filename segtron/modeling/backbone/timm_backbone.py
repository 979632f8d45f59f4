"""Any ``timm`` model built with ``features_only=True`` as a segtron backbone (segtron addition).

``timm`` is imported when a :class:`TimmBackbone` is built, not when segtron is imported.
"""

import math
import re
from typing import Dict, List, Sequence

import torch
from torch import nn

from ...layers import FrozenBatchNorm2d, ShapeSpec
from .backbone import Backbone
from .build import BACKBONE_REGISTRY
from .fpn import FPN, LastLevelMaxPool, _fpn_from_config, retinanet_fpn_from_config

__all__ = [
    "TimmBackbone",
    "build_timm_backbone",
    "build_timm_fpn_backbone",
    "build_timm_retinanet_fpn_backbone",
]

TIMM_NORMS = ("FrozenBN", "")


def stride_name(stride: int) -> str:
    """The output name of a feature of ``stride``: ``res{log2(stride)}`` for strides 4..32
    (Detectron2's ResNet names: 4 -> ``res2`` ... 32 -> ``res5``), else ``stride{stride}``."""
    if stride in (4, 8, 16, 32):
        return f"res{int(math.log2(stride))}"
    return f"stride{stride}"


class TimmBackbone(Backbone):
    """A ``timm.create_model(name, features_only=True, out_indices=...)`` model as a Backbone.

    Outputs are named from their stride (``feature_info.reduction()``): 4 -> ``res2``, 8 ->
    ``res3``, 16 -> ``res4``, 32 -> ``res5``, others ``stride{k}``; two levels of the same
    stride (ViT-style models) get ``_{timm level}`` appended. Channels come from
    ``feature_info.channels()``. ``forward(x (N, C, H, W)) -> {"res2": (N, C2, H/4, W/4), ...}``.

    Input normalisation: timm's ImageNet weights expect RGB images normalised by the ImageNet
    mean and std; in segtron's 0-255 pixel terms set ``INPUT.FORMAT: "RGB"``,
    ``MODEL.PIXEL_MEAN: [123.675, 116.28, 103.53]`` and ``MODEL.PIXEL_STD: [58.395, 57.12,
    57.375]`` (configs/Shapes/faster_rcnn_timm_convnext_FPN.yaml does).

    Args:
        name: a timm model name (``timm.list_models('convnext*')`` lists candidates).
        out_indices: timm feature levels (0-based, the model's ``feature_info``); empty: the
            model's default levels, minus those of stride < 4 (``res2..res5`` for CNNs).
        pretrained: load timm's pretrained weights (must already be in the local cache).
        norm: ``"FrozenBN"`` turns every BatchNorm into a frozen one (statistics and affine
            fixed; timm's ``BatchNormAct2d`` keeps its activation); ``""`` keeps the model's.
        freeze_at: as ``MODEL.BACKBONE.FREEZE_AT`` for ResNet: 0 freezes nothing, 1 the stem
            (all parameters before the first stride-4 level), k >= 2 the stem and every module
            up to the level of stride 2**k (``res{k}``). Frozen BatchNorms become frozen ones.
        in_chans: input channels.
        drop_path_rate: stochastic depth rate passed to timm (when > 0).
    """

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int] = (),
        pretrained: bool = False,
        norm: str = "FrozenBN",
        freeze_at: int = 0,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if norm not in TIMM_NORMS:
            raise ValueError(
                f"TimmBackbone: norm {norm!r} (MODEL.TIMM.NORM) is not one of {TIMM_NORMS}."
            )
        self.model = _create_features_model(
            name, tuple(out_indices), pretrained, in_chans, drop_path_rate
        )
        info = self.model.feature_info
        levels = list(info.out_indices)
        strides = [int(s) for s in info.reduction()]
        channels = [int(c) for c in info.channels()]
        # Empty out_indices: the model's default levels, without the stride-2 ones.
        keep = [i for i, s in enumerate(strides) if out_indices or s >= 4]
        if not keep:
            raise ValueError(
                f"TimmBackbone: {name!r} has no feature level of stride >= 4 among its default "
                f"levels {levels} (strides {strides}); set MODEL.TIMM.OUT_INDICES."
            )
        self._keep = keep
        names = [stride_name(strides[i]) for i in keep]
        names = [
            f"{n}_{levels[i]}" if names.count(n) > 1 else n for n, i in zip(names, keep)
        ]
        self._out_features = names
        self._out_feature_strides = {n: strides[i] for n, i in zip(names, keep)}
        self._out_feature_channels = {n: channels[i] for n, i in zip(names, keep)}
        self.model_name = name
        if norm == "FrozenBN":
            self.model = _convert_frozen_bn(self.model)
        self.freeze(freeze_at)

    @property
    def size_divisibility(self) -> int:
        """The largest output stride: input sizes must be multiples of it."""
        return max(self._out_feature_strides.values())

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = self.model(x)
        return {n: feats[i] for n, i in zip(self._out_features, self._keep)}

    def freeze(self, freeze_at: int = 0) -> "TimmBackbone":
        """Freeze the stem (1) or the stem and everything up to ``res{freeze_at}`` (k >= 2):
        ``requires_grad=False`` and frozen BatchNorms. 0 freezes nothing. Returns self."""
        if freeze_at <= 0:
            return self
        params = [n for n, _ in self.model.named_parameters()]
        end = _freeze_end(self.model, params, freeze_at, self.model_name)
        frozen = set(params[:end])
        for n, p in self.model.named_parameters():
            if n in frozen:
                p.requires_grad_(False)
        self.model = _convert_frozen_bn(self.model, only_frozen=True)
        return self


def _create_features_model(name, out_indices, pretrained, in_chans, drop_path_rate) -> nn.Module:
    """``timm.create_model(name, features_only=True, ...)`` with errors naming MODEL.TIMM.*."""
    import timm

    if not timm.is_model(name):
        stem = re.match(r"[A-Za-z]*", name).group(0) or name
        raise ValueError(
            f"TimmBackbone: timm has no model {name!r} (MODEL.TIMM.NAME); list candidates "
            f"with timm.list_models('{stem}*')."
        )
    kwargs = {"pretrained": pretrained, "features_only": True, "in_chans": in_chans}
    if out_indices:
        kwargs["out_indices"] = out_indices
    if drop_path_rate > 0:
        kwargs["drop_path_rate"] = drop_path_rate
    try:
        model = timm.create_model(name, **kwargs)
    except Exception as e:
        if pretrained:
            raise RuntimeError(
                f"TimmBackbone: could not load timm's pretrained weights of {name!r} "
                f"(MODEL.TIMM.PRETRAINED=True): {e}. Nothing is downloaded here: put the "
                "weights in the Hugging Face cache first, or set MODEL.TIMM.PRETRAINED False "
                "and load a checkpoint with MODEL.WEIGHTS."
            ) from e
        raise ValueError(
            f"TimmBackbone: timm could not build {name!r} with features_only=True and "
            f"out_indices={out_indices or 'default'}: {type(e).__name__}: {e}. Check that "
            "the model supports features_only (MODEL.TIMM.NAME) and that MODEL.TIMM.OUT_INDICES "
            "are among its feature levels (0-based; () for the model's default)."
        ) from e
    if not hasattr(model, "feature_info"):
        raise ValueError(f"TimmBackbone: {name!r} (MODEL.TIMM.NAME) has no feature_info.")
    return model


def _module_prefix(model: nn.Module, module: str) -> str:
    """The parameter-name prefix of timm feature module ``module`` (e.g. ``stages.0``) in
    ``model``: feature wrappers flatten ``.`` to ``_`` or nest the model under ``model.``."""
    names = dict(model.named_modules())
    for candidate in (module, module.replace(".", "_"), f"model.{module}"):
        if candidate in names:
            return candidate + "."
    raise ValueError(f"TimmBackbone: cannot find feature module {module!r} in the model.")


def _freeze_end(model: nn.Module, params: List[str], freeze_at: int, name: str) -> int:
    """Number of leading parameters (in registration order) that ``freeze_at`` freezes."""
    info = model.feature_info.info  # every level of the model, not only the selected ones
    target = 4 if freeze_at == 1 else 2 ** freeze_at
    levels = [d["module"] for d in info if d["reduction"] == target]
    if not levels:
        raise ValueError(
            f"TimmBackbone: MODEL.BACKBONE.FREEZE_AT={freeze_at} needs a level of stride "
            f"{target} in {name!r}, whose strides are {[d['reduction'] for d in info]}; "
            "set MODEL.BACKBONE.FREEZE_AT to 0."
        )
    if freeze_at == 1:  # the stem: everything before the first stride-4 module
        prefix = _module_prefix(model, levels[0])
        return next(i for i, p in enumerate(params) if p.startswith(prefix))
    prefix = _module_prefix(model, levels[-1])
    return max(i for i, p in enumerate(params) if p.startswith(prefix)) + 1


def _convert_frozen_bn(module: nn.Module, only_frozen: bool = False) -> nn.Module:
    """Replace BatchNorms in ``module`` by frozen ones (only those whose parameters have
    ``requires_grad=False`` when ``only_frozen``). timm's ``BatchNormAct2d`` becomes timm's
    ``FrozenBatchNormAct2d`` (keeping its activation), others segtron's FrozenBatchNorm2d."""
    from timm.layers import BatchNormAct2d, freeze_batch_norm_2d

    if isinstance(module, nn.BatchNorm2d):
        if only_frozen and any(p.requires_grad for p in module.parameters()):
            return module
        if isinstance(module, BatchNormAct2d):
            return freeze_batch_norm_2d(module)
        return FrozenBatchNorm2d.convert_frozen_batchnorm(module)
    for child_name, child in module.named_children():
        new_child = _convert_frozen_bn(child, only_frozen)
        if new_child is not child:
            module.add_module(child_name, new_child)
    return module


def _timm_from_config(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    t = cfg.MODEL.TIMM
    return TimmBackbone(
        t.NAME,
        out_indices=tuple(t.OUT_INDICES),
        pretrained=t.PRETRAINED,
        norm=t.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        in_chans=input_shape.channels,
        drop_path_rate=t.DROP_PATH_RATE,
    )


@BACKBONE_REGISTRY.register()
def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """A :class:`TimmBackbone` from MODEL.TIMM.{NAME, OUT_INDICES, PRETRAINED, NORM,
    DROP_PATH_RATE} and MODEL.BACKBONE.FREEZE_AT; outputs ``res2..res5`` for CNNs."""
    return _timm_from_config(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """:func:`build_timm_backbone` + FPN (MODEL.FPN.*) with a :class:`LastLevelMaxPool` top
    block: outputs p2..p6 (strides 4..64) for ``res2..res5`` in_features."""
    return _fpn_from_config(cfg, _timm_from_config(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_timm_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """:func:`build_timm_backbone` + FPN with a :class:`LastLevelP6P7` top block fed by
    ``res5`` (RetinaNet): outputs p3..p7 for ``res3..res5`` in_features."""
    return retinanet_fpn_from_config(
        cfg, _timm_from_config(cfg, input_shape),
        f"{cfg.MODEL.TIMM.NAME!r} with MODEL.TIMM.OUT_INDICES={list(cfg.MODEL.TIMM.OUT_INDICES)}",
    )
