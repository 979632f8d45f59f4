"""SimpleMaskHead: a lighter Mask R-CNN mask head, as an example segtron project.

Importing this package registers ``SimpleMaskHead`` in ``ROI_MASK_HEAD_REGISTRY``;
``add_config(cfg)`` adds its key ``MODEL.SIMPLE_MASK_HEAD.DEPTHWISE``. ``train_net.py`` does
both, so selecting the head is a config change::

    python train_net.py --config-file configs/Shapes/tiny_mask_rcnn_R_50_FPN.yaml \\
        MODEL.ROI_MASK_HEAD.NAME SimpleMaskHead MODEL.SIMPLE_MASK_HEAD.DEPTHWISE True
"""

from .config import add_config
from .mask_head import SimpleMaskHead

__all__ = ["add_config", "SimpleMaskHead"]
