"""``Backbone``: the interface of every backbone (Detectron2: ``modeling.backbone.backbone``)."""

from abc import ABCMeta, abstractmethod
from typing import Dict

import torch
from torch import nn

from ...layers import ShapeSpec

__all__ = ["Backbone"]


class Backbone(nn.Module, metaclass=ABCMeta):
    """Abstract base class of backbones: image batch in, named feature maps out.

    Subclasses implement ``forward(x (N, C, H, W)) -> dict[str, Tensor]`` and set, in
    ``__init__``:

    - ``_out_features``: list of the names of the returned features, in order;
    - ``_out_feature_channels``: dict name -> channels;
    - ``_out_feature_strides``: dict name -> stride relative to the input image.

    :meth:`output_shape` is derived from those. Override :attr:`size_divisibility` and
    :attr:`padding_constraints` when the input must be padded in a particular way.
    """

    def __init__(self):
        super().__init__()

    @abstractmethod
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Map an (N, C, H, W) image batch to a dict of feature maps named as ``_out_features``."""

    @property
    def size_divisibility(self) -> int:
        """Input height and width must be padded to a multiple of this (0: no constraint)."""
        return 0

    @property
    def padding_constraints(self) -> Dict[str, int]:
        """Extra padding constraints on the input, as a dict; ``{}`` means none.

        Known key: ``"square_size"`` (pad every image to this square size; 0 = disabled). A
        ``"size_divisibility"`` key, when present, overrides :attr:`size_divisibility`.
        """
        return {}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Dict name -> ``ShapeSpec(channels, stride)`` for each name in ``_out_features``."""
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }
