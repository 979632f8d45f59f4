"""The config keys of the SimpleMaskHead project."""

from segtron.config import CfgNode


def add_config(cfg: CfgNode) -> None:
    """Add ``MODEL.SIMPLE_MASK_HEAD`` and its defaults to ``cfg`` (in place; call it before
    merging a config file that sets them). Calling it twice is harmless."""
    if "SIMPLE_MASK_HEAD" in cfg.MODEL:
        return
    cfg.MODEL.SIMPLE_MASK_HEAD = CfgNode()
    # True: each 3x3 conv is depthwise-separable (a 3x3 per-channel conv, then a 1x1 conv),
    # about 8x fewer multiply-adds than a full 3x3 conv at CONV_DIM 256. False: full 3x3 convs.
    cfg.MODEL.SIMPLE_MASK_HEAD.DEPTHWISE = True
