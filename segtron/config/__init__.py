"""Configuration: ``get_cfg()`` (all Detectron2 keys and defaults), ``CfgNode``, ``configurable``."""

from .config import CfgNode, get_cfg, global_cfg, set_global_cfg
from .configurable import configurable

__all__ = ["CfgNode", "get_cfg", "global_cfg", "set_global_cfg", "configurable"]
