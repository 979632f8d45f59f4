"""YOLOX's decoupled head (``YOLOXHead``): per level, a 1x1 stem, then separate
classification and regression branches of two 3x3 convs each; the classification branch
predicts K class logits, the regression branch 4 box values and 1 objectness logit (all 1x1
convs with bias). One prediction per grid cell (anchor-free). :func:`~.decode.decode` turns
the outputs into boxes and scores.
"""

import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

from segtron.config import configurable
from segtron.layers import ShapeSpec
from segtron.modeling.meta_arch.dense_detector import check_num_classes

from .conv_block import ConvBNAct, make_conv

__all__ = ["YOLOXHead", "prior_bias"]


def prior_bias(prior_prob: float) -> float:
    """The logit of ``prior_prob``, ``-log((1 - p) / p)``: the initial bias of the class and
    objectness predictions, so that every sigmoid starts at ``prior_prob`` (about -4.595 for
    0.01). ValueError naming MODEL.YOLOX.PRIOR_PROB unless 0 < p < 1."""
    if not 0 < prior_prob < 1:
        raise ValueError(
            f"MODEL.YOLOX.PRIOR_PROB = {prior_prob!r}: the initial probability must be in "
            "(0, 1) (YOLOX: 0.01)."
        )
    return -math.log((1 - prior_prob) / prior_prob)


class YOLOXHead(nn.Module):
    """The decoupled head, one set of weights per level (no sharing across levels).

    ``forward(features: list of L (N, C_l, H_l, W_l)) -> (cls_logits, box_preds, obj_logits)``,
    each a list of L tensors: (N, K, H_l, W_l) class logits, (N, 4, H_l, W_l) box values
    (dx, dy, log w, log h in units of the level's stride, see :func:`~.decode.decode`) and
    (N, 1, H_l, W_l) objectness logits.

    Sub-modules (YOLOX's names), each a ``ModuleList`` over levels: ``stems`` (1x1 ConvBNAct to
    ``feat_channels``), ``cls_convs`` / ``reg_convs`` (two 3x3 convs each), ``cls_preds``,
    ``reg_preds``, ``obj_preds`` (1x1 ``nn.Conv2d`` with bias).
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        num_classes: int,
        feat_channels: int = 128,
        depthwise: bool = False,
        act: str = "silu",
        prior_prob: float = 0.01,
    ):
        """Args:
            in_channels: channels of each input level, finest first.
            num_classes: K.
            feat_channels: channels of the stems and branches (YOLOX: int(256 x width)).
            depthwise: depthwise-separable 3x3 convs in the branches (YOLOX-nano).
            act: activation name.
            prior_prob: initial probability of the class and objectness sigmoids.
        """
        super().__init__()
        self.num_classes = check_num_classes(num_classes, "MODEL.YOLOX.NUM_CLASSES")
        bias = prior_bias(prior_prob)
        self.stems = nn.ModuleList()
        self.cls_convs = nn.ModuleList()
        self.reg_convs = nn.ModuleList()
        self.cls_preds = nn.ModuleList()
        self.reg_preds = nn.ModuleList()
        self.obj_preds = nn.ModuleList()
        for channels in in_channels:
            self.stems.append(ConvBNAct(channels, feat_channels, 1, act=act))
            for branch in (self.cls_convs, self.reg_convs):
                branch.append(
                    nn.Sequential(
                        make_conv(feat_channels, feat_channels, 3, depthwise=depthwise, act=act),
                        make_conv(feat_channels, feat_channels, 3, depthwise=depthwise, act=act),
                    )
                )
            self.cls_preds.append(nn.Conv2d(feat_channels, self.num_classes, 1))
            self.reg_preds.append(nn.Conv2d(feat_channels, 4, 1))
            self.obj_preds.append(nn.Conv2d(feat_channels, 1, 1))
        for pred in list(self.cls_preds) + list(self.obj_preds):
            nn.init.constant_(pred.bias, bias)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        """``input_shape``: the ShapeSpecs of MODEL.YOLOX.HEAD_IN_FEATURES, finest first;
        NUM_CLASSES, DEPTHWISE, ACT, PRIOR_PROB and int(256 x WIDTH) channels from
        MODEL.YOLOX."""
        yolox = cfg.MODEL.YOLOX
        return {
            "in_channels": [s.channels for s in input_shape],
            "num_classes": yolox.NUM_CLASSES,
            "feat_channels": int(256 * yolox.WIDTH),
            "depthwise": yolox.DEPTHWISE,
            "act": yolox.ACT,
            "prior_prob": yolox.PRIOR_PROB,
        }

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        if len(features) != len(self.stems):
            raise ValueError(
                f"YOLOXHead was built for {len(self.stems)} levels but got {len(features)} "
                "feature maps; MODEL.YOLOX.HEAD_IN_FEATURES and the backbone disagree."
            )
        cls_logits, box_preds, obj_logits = [], [], []
        for level, x in enumerate(features):
            x = self.stems[level](x)
            cls_feat = self.cls_convs[level](x)
            reg_feat = self.reg_convs[level](x)
            cls_logits.append(self.cls_preds[level](cls_feat))
            box_preds.append(self.reg_preds[level](reg_feat))
            obj_logits.append(self.obj_preds[level](reg_feat))
        return cls_logits, box_preds, obj_logits
