"""SSD's prediction head: one 3x3 classification conv and one 3x3 box conv per feature map
(Liu et al., Sec. 2.1, "Convolutional predictors for detection"): :class:`SSDHead`."""

from typing import List, Sequence, Tuple

import torch
from torch import nn

from segtron.config import configurable
from segtron.layers import Conv2d, ShapeSpec
from segtron.modeling.meta_arch.dense_detector import check_num_classes

from .prior_boxes import PriorBoxGenerator

__all__ = ["SSDHead"]


class SSDHead(nn.Module):
    """Per feature map k (not shared between maps): ``cls_score[k]``, a 3x3 conv to
    A_k * (K + 1) logits (background first, then the K classes, for each of the A_k default
    boxes of a location), and ``bbox_pred[k]``, a 3x3 conv to A_k * 4 box deltas. Weights are
    Xavier-uniform, biases zero.

    ``forward(features: m maps (N, C_k, H_k, W_k)) -> (logits: m tensors
    (N, A_k * (K + 1), H_k, W_k), deltas: m tensors (N, A_k * 4, H_k, W_k))``; channel
    ``a * D + d`` is value d of box a, as ``permute_to_N_HWA_K`` expects.
    """

    @configurable
    def __init__(self, *, input_shape: Sequence[ShapeSpec], num_classes: int,
                 num_anchors: Sequence[int]):
        """Args:
            input_shape: one ``ShapeSpec`` per feature map (its channels are read).
            num_classes: K, object classes without background.
            num_anchors: A_k, default boxes per location of each map.
        """
        super().__init__()
        if len(input_shape) != len(num_anchors) or not input_shape:
            raise ValueError(
                f"SSDHead: {len(input_shape)} feature maps (MODEL.SSD.IN_FEATURES) but "
                f"{len(num_anchors)} default-box layouts (MODEL.SSD.ASPECT_RATIOS); give one "
                "per map."
            )
        self.num_classes = check_num_classes(num_classes, "MODEL.SSD.NUM_CLASSES")
        scores = self.num_classes + 1
        self.cls_score = nn.ModuleList(
            Conv2d(s.channels, a * scores, 3, padding=1) for s, a in zip(input_shape, num_anchors)
        )
        self.bbox_pred = nn.ModuleList(
            Conv2d(s.channels, a * 4, 3, padding=1) for s, a in zip(input_shape, num_anchors)
        )
        for conv in [*self.cls_score, *self.bbox_pred]:
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        """MODEL.SSD.NUM_CLASSES; the boxes per location of the default-box layout the config
        builds (:class:`PriorBoxGenerator`)."""
        return {
            "input_shape": input_shape,
            "num_classes": cfg.MODEL.SSD.NUM_CLASSES,
            "num_anchors": PriorBoxGenerator(cfg).num_cell_anchors,
        }

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        if len(features) != len(self.cls_score):
            raise ValueError(
                f"SSDHead was built for {len(self.cls_score)} feature maps, got {len(features)}."
            )
        logits = [conv(x) for conv, x in zip(self.cls_score, features)]
        deltas = [conv(x) for conv, x in zip(self.bbox_pred, features)]
        return logits, deltas
