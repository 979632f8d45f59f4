"""Configuration: ``get_cfg()`` (all Detectron2 keys and defaults), ``CfgNode``,
``configurable``, and ``add_missing_keys`` (a project's keys from a table)."""

from .config import CfgNode, get_cfg, global_cfg, set_global_cfg
from .configurable import configurable
from .added_keys import add_missing_keys
from .compat import downgrade_config, upgrade_config

__all__ = ["CfgNode", "get_cfg", "global_cfg", "set_global_cfg", "configurable",
           "add_missing_keys", "upgrade_config", "downgrade_config"]
