"""Box heads: per-region pooled features -> per-region box features for the box predictor.

Detectron2 path: ``detectron2.modeling.roi_heads.box_head``.
"""

from typing import List

import numpy as np
import torch
from fvcore.nn import weight_init
from torch import nn

from ...config import configurable
from ...layers import Conv2d, ShapeSpec, get_norm
from ...layers.execution import LinearOnMap
from ..registries import ROI_BOX_HEAD_REGISTRY

__all__ = ["FastRCNNConvFCHead", "build_box_head", "ROI_BOX_HEAD_REGISTRY"]


@ROI_BOX_HEAD_REGISTRY.register()
class FastRCNNConvFCHead(nn.Sequential):
    """Stacked 3x3 convs (``conv1``, ``conv2``, ..., each with optional norm and a ReLU) then
    fully connected layers (``fc1``, ``fc2``, ..., each followed by ``fc_relu<i>``), with a
    ``flatten`` before the first fc. The FPN default ("2fc") is NUM_CONV 0, NUM_FC 2.

    ``forward(x (R, C, H, W)) -> (R, fc_dims[-1])`` (or (R, conv_dims[-1], H, W) without fcs).
    Convs use MSRA (He) fill and fcs Xavier fill, as Caffe2/Detectron2 do.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        conv_dims: List[int],
        fc_dims: List[int],
        conv_norm: str = "",
    ):
        """Args:
            input_shape: channels, height and width of the pooled region features.
            conv_dims: output channels of each conv (may be empty).
            fc_dims: output size of each fc (may be empty).
            conv_norm: norm of the convs (see ``get_norm``); convs have a bias only without it.
        """
        super().__init__()
        if len(conv_dims) + len(fc_dims) == 0:
            raise ValueError(
                "FastRCNNConvFCHead needs at least one conv or fc layer; set "
                "MODEL.ROI_BOX_HEAD.NUM_CONV and/or MODEL.ROI_BOX_HEAD.NUM_FC above 0."
            )
        out_shape = (input_shape.channels, input_shape.height, input_shape.width)

        self.conv_norm_relus = []
        for k, conv_dim in enumerate(conv_dims):
            conv = Conv2d(
                out_shape[0], conv_dim, kernel_size=3, padding=1, bias=not conv_norm,
                norm=get_norm(conv_norm, conv_dim), activation=nn.ReLU(),
            )
            self.add_module(f"conv{k + 1}", conv)
            self.conv_norm_relus.append(conv)
            out_shape = (conv_dim, out_shape[1], out_shape[2])

        self.fcs = []
        for k, fc_dim in enumerate(fc_dims):
            if k == 0:
                if out_shape[1] is None or out_shape[2] is None:
                    raise ValueError(
                        "FastRCNNConvFCHead: fc layers need the input height and width "
                        f"(input_shape={input_shape}); give a ShapeSpec with height and width "
                        "(MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION)."
                    )
                self.add_module("flatten", nn.Flatten())
            fc = nn.Linear(int(np.prod(out_shape)), fc_dim)
            self.add_module(f"fc{k + 1}", fc)
            self.add_module(f"fc_relu{k + 1}", nn.ReLU())
            self.fcs.append(fc)
            out_shape = fc_dim

        for layer in self.conv_norm_relus:
            weight_init.c2_msra_fill(layer)
        for layer in self.fcs:
            weight_init.c2_xavier_fill(layer)
        self._output_size = out_shape
        self._fc1_on_map = LinearOnMap()  # fc1 on the pooled (R, C, H, W) map

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.ROI_BOX_HEAD
        return {
            "input_shape": input_shape,
            "conv_dims": [head.CONV_DIM] * head.NUM_CONV,
            "fc_dims": [head.FC_DIM] * head.NUM_FC,
            "conv_norm": head.NORM,
        }

    __jit_unused_properties__ = ["output_shape"]  # Python only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            return self._forward_eager(x)
        for layer in self:  # TorchScript (inference export): the layers in order
            x = layer(x)
        return x

    def _forward_eager(self, x: torch.Tensor) -> torch.Tensor:
        """The forward outside TorchScript: fc1 flattens the map itself (``LinearOnMap``:
        NHWC maps are read without a copy in inference)."""
        for layer in self:
            if isinstance(layer, nn.Flatten):
                continue  # done by fc1, below
            if self.fcs and layer is self.fcs[0]:
                x = self._fc1_on_map(layer, x)
            else:
                x = layer(x)
        return x

    def train(self, mode: bool = True):
        """``nn.Module.train``, dropping fc1's NHWC kernel kept for inference (the weights
        may change in training)."""
        self._fc1_on_map.clear()  # the kept NHWC kernel of fc1
        return super().train(mode)

    @property
    def output_shape(self) -> ShapeSpec:
        """Shape of the output: ``ShapeSpec(channels=fc_dims[-1])`` after fcs, else
        ``ShapeSpec(channels, height, width)`` of the last conv."""
        out = self._output_size
        if isinstance(out, int):
            return ShapeSpec(channels=out)
        return ShapeSpec(channels=out[0], height=out[1], width=out[2])


def build_box_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """Build the box head named by ``cfg.MODEL.ROI_BOX_HEAD.NAME`` from the registry.

    Args:
        cfg: a config.
        input_shape: shape of the pooled region features.
    """
    name = cfg.MODEL.ROI_BOX_HEAD.NAME
    if not name:
        raise ValueError(
            "MODEL.ROI_BOX_HEAD.NAME is empty; set it to a registered box head, e.g. "
            f"'FastRCNNConvFCHead' (registered: {sorted(k for k, _ in ROI_BOX_HEAD_REGISTRY)})."
        )
    return ROI_BOX_HEAD_REGISTRY.get(name)(cfg, input_shape)
