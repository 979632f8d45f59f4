"""``SimpleMaskHead``: the Mask R-CNN head made cheaper.

Same inputs, outputs and loss as ``MaskRCNNConvUpsampleHead`` (it subclasses
``BaseMaskRCNNHead``), so it drops into ``StandardROIHeads`` unchanged; only its layers differ:

* ``MODEL.ROI_MASK_HEAD.NUM_CONV`` convs of ``CONV_DIM`` channels, depthwise-separable when
  ``MODEL.SIMPLE_MASK_HEAD.DEPTHWISE`` (else full 3x3 convs), each followed by ReLU;
* a 2x bilinear upsampling (no parameters, unlike the usual 2x2 transposed conv);
* a 1x1 predictor to one mask per class (one in all with CLS_AGNOSTIC_MASK).
"""

from typing import List

from fvcore.nn import weight_init
from torch import nn
from torch.nn import functional as F

from segtron.config import configurable
from segtron.layers import Conv2d, DepthwiseSeparableConv2d, ShapeSpec, get_norm
from segtron.modeling import ROI_MASK_HEAD_REGISTRY, BaseMaskRCNNHead


@ROI_MASK_HEAD_REGISTRY.register()
class SimpleMaskHead(BaseMaskRCNNHead):
    """A light mask head: convs (optionally depthwise-separable), bilinear 2x upsampling and a
    1x1 predictor. ``layers(x (R, C, S, S)) -> (R, K, 2S, 2S)`` mask logits."""

    @configurable
    def __init__(self, input_shape: ShapeSpec, *, num_classes: int, conv_dims: List[int],
                 depthwise: bool = True, conv_norm: str = "", **kwargs):
        """Args:
            input_shape: shape of the pooled per-region features.
            num_classes: masks predicted per region (1 = class-agnostic).
            conv_dims: output channels of each conv (may be empty: predictor only).
            depthwise: use depthwise-separable convs.
            conv_norm: norm after each conv ("" for none), as for ``get_norm``.
            kwargs: ``loss_weight`` and ``vis_period`` of ``BaseMaskRCNNHead``.
        """
        super().__init__(**kwargs)
        convs = []
        channels = input_shape.channels
        for dim in conv_dims:
            if depthwise:
                conv = DepthwiseSeparableConv2d(channels, dim, norm2=conv_norm,
                                                activation2=nn.ReLU())
            else:
                conv = Conv2d(channels, dim, kernel_size=3, padding=1, bias=not conv_norm,
                              norm=get_norm(conv_norm, dim), activation=nn.ReLU())
                weight_init.c2_msra_fill(conv)
            convs.append(conv)
            channels = dim
        self.convs = nn.Sequential(*convs)
        self.predictor = Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        head = cfg.MODEL.ROI_MASK_HEAD
        if "SIMPLE_MASK_HEAD" not in cfg.MODEL:
            raise KeyError(
                "SimpleMaskHead needs MODEL.SIMPLE_MASK_HEAD in the config: call "
                "projects.simple_mask_head.add_config(cfg) before merging the config file "
                "(train_net.py does it for every project)."
            )
        ret.update(
            input_shape=input_shape,
            num_classes=1 if head.CLS_AGNOSTIC_MASK else cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            conv_dims=[head.CONV_DIM] * head.NUM_CONV,
            depthwise=cfg.MODEL.SIMPLE_MASK_HEAD.DEPTHWISE,
            conv_norm=head.NORM,
        )
        return ret

    def layers(self, x):
        x = self.convs(x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.predictor(x)
