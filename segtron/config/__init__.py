"""Configuration: ``get_cfg()`` (all Detectron2 keys and defaults), ``CfgNode``,
``configurable``, ``add_missing_keys`` (a project's keys from a table), and Detectron2's Python
configs: ``LazyCall``, ``LazyConfig``, ``instantiate``."""

from .config import CfgNode, get_cfg, global_cfg, set_global_cfg
from .configurable import configurable
from .added_keys import add_missing_keys
from .compat import downgrade_config, upgrade_config
from .instantiate import instantiate
from .lazy import LazyCall, LazyConfig

__all__ = ["CfgNode", "get_cfg", "global_cfg", "set_global_cfg", "configurable",
           "add_missing_keys", "upgrade_config", "downgrade_config", "LazyCall", "LazyConfig",
           "instantiate"]
