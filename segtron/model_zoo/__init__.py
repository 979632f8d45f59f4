"""Model zoo: the configs shipped with segtron and Detectron2's weights trained with them.

``get_config_file``, ``get_config``, ``get_checkpoint_url`` and ``get`` take config paths
relative to ``configs/``, exactly as ``detectron2.model_zoo`` does.
"""

from .model_zoo import get, get_checkpoint_url, get_config, get_config_file, list_configs

__all__ = ["get_checkpoint_url", "get_config_file", "get_config", "get", "list_configs"]
