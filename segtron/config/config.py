"""``CfgNode``: Detectron2's YAML config object, plus ``get_cfg`` and the global config."""

import logging
import os
from typing import Any, Dict, List, Optional

import yaml
from fvcore.common.config import CfgNode as _FvcoreCfgNode

from .merge import merge_dict_into_node

BASE_KEY = "_BASE_"
_LATEST_VERSION = 2
_URL_PREFIXES = ("/", "https://", "http://", "detectron2://", "segtron://")


class CfgNode(_FvcoreCfgNode):
    """A tree of config keys (attribute access, YAML I/O), compatible with Detectron2's CfgNode.

    Differences from the yacs/fvcore base, all stricter or clearer, never incompatible:

    * ``merge_from_file`` follows ``_BASE_`` chains (a path or a list of paths, relative to the
      file that names them), detects cycles, and says which file a bad key came from.
    * An unknown key fails with a ``KeyError`` naming the closest valid keys.
    * A value of the wrong type fails with a ``ValueError`` naming the expected type; an int is
      accepted (as float) where a float is expected.
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False,
                            _chain: Optional[List[str]] = None) -> Dict[str, Any]:
        """Read a YAML file as a dict, with the contents of its ``_BASE_`` file(s) underneath.

        Keys of the file override those of its bases; nested dicts merge, lists are replaced.
        Several bases (a list) merge left to right. Raises FileNotFoundError naming the file
        that referenced a missing base, and ValueError on a ``_BASE_`` cycle.
        """
        chain = list(_chain or [])
        if filename in chain:
            raise ValueError("Cycle in _BASE_ configs: " + " -> ".join(chain + [filename]))
        chain.append(filename)
        try:
            loaded = _read_yaml(cls, filename, allow_unsafe)
        except FileNotFoundError as e:
            referrer = f" (named as _BASE_ in {chain[-2]})" if len(chain) > 1 else ""
            raise FileNotFoundError(f"Config file not found: {filename}{referrer}") from e
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            raise ValueError(f"Config file {filename} must hold a mapping of keys, got {type(loaded).__name__}.")
        bases = loaded.pop(BASE_KEY, None)
        if bases is None:
            return loaded
        merged: Dict[str, Any] = {}
        for base in [bases] if isinstance(bases, str) else bases:
            base_path = os.path.expanduser(base)
            if not base_path.startswith(_URL_PREFIXES):
                base_path = os.path.join(os.path.dirname(filename), base_path)
            _merge_plain_dicts(cls.load_yaml_with_base(base_path, allow_unsafe, chain), merged)
        _merge_plain_dicts(loaded, merged)
        return merged

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        """Merge a YAML file (and its ``_BASE_`` chain) into this config, checking every key.

        Files are read with ``yaml.safe_load``: a Python tag (``!!python/...``, which runs
        code while loading) fails with a ValueError naming the file, line and tag, unless
        ``allow_unsafe=True`` (Detectron2's default; an explicit opt-in here).
        """
        loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=allow_unsafe)
        version = loaded.get("VERSION", _LATEST_VERSION)
        if "VERSION" in self and version != self.VERSION:
            raise ValueError(
                f"Config file {cfg_filename} has VERSION {version}; segtron reads version "
                f"{self.VERSION} (Detectron2's current format). Update its keys to the current "
                "names and set VERSION: 2."
            )
        self._merge_dict(loaded, source=f"file {cfg_filename}")

    def merge_from_other_cfg(self, cfg_other: "CfgNode") -> None:
        """Merge another CfgNode (or dict) into this one, checking every key."""
        if BASE_KEY in cfg_other:
            raise KeyError(f"The key '{BASE_KEY}' may only appear in config files.")
        self._merge_dict(_to_plain_dict(cfg_other), source="another config")

    def merge_from_list(self, cfg_list: List[Any]) -> None:
        """Merge ``[KEY1, VALUE1, KEY2, VALUE2, ...]`` (command-line overrides) into this config.

        Values given as strings are parsed as Python literals where possible ("0.1" -> 0.1,
        "[1, 2]" -> [1, 2], "True" -> True), else kept as strings.
        """
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                f"Config overrides must come in KEY VALUE pairs; got {len(cfg_list)} items: "
                f"{cfg_list}. Check for a missing value after '{cfg_list[-1]}'."
            )
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            if full_key == BASE_KEY:
                raise KeyError(f"The key '{BASE_KEY}' may only appear in config files.")
            nested: Dict[str, Any] = {}
            cursor = nested
            parts = str(full_key).split(".")
            for part in parts[:-1]:
                cursor = cursor.setdefault(part, {})
            cursor[parts[-1]] = self._decode_cfg_value(raw)
            self._merge_dict(nested, source="the command line")

    def _merge_dict(self, values: Dict[str, Any], source: str) -> None:
        if self.is_frozen():
            raise AttributeError(
                "This config is frozen; call cfg.defrost() before merging, or merge into cfg.clone()."
            )
        merge_dict_into_node(self, self, values, source)

    def dump(self, **kwargs) -> str:
        """Return the config as a YAML string that ``merge_from_file`` reads back to an equal config."""
        return super().dump(**kwargs)


def _read_yaml(cls, filename: str, allow_unsafe: bool):
    """The YAML document of ``filename``: ``yaml.safe_load``; a tag that needs Python objects
    (``!!python/...``) fails naming the file, line and tag unless ``allow_unsafe``."""
    with cls._open_cfg(filename) as f:
        try:
            return yaml.safe_load(f)
        except yaml.constructor.ConstructorError as e:
            if not allow_unsafe:
                raise ValueError(_unsafe_tag_message(filename, e)) from None
    logging.getLogger(__name__).warning(
        "Loading config %s with yaml.unsafe_load (allow_unsafe=True): its Python tags run "
        "code; only do this for files you trust.", filename
    )
    with cls._open_cfg(filename) as f:
        return yaml.unsafe_load(f)


def _unsafe_tag_message(filename: str, error: "yaml.constructor.ConstructorError") -> str:
    mark = error.problem_mark
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return (
        f"Config file {filename}{where}: {error.problem}. segtron reads configs with "
        "yaml.safe_load, and Detectron2 configs never need Python tags such as "
        "'!!python/object/apply:...', which run code when the file is loaded. Remove the tag; "
        "if you trust the file, load it with cfg.merge_from_file(path, allow_unsafe=True) "
        "(train_net.py: --allow-unsafe-yaml)."
    )


def _merge_plain_dicts(src: Dict[str, Any], dst: Dict[str, Any]) -> None:
    """Merge dict ``src`` into ``dst`` in place: nested dicts merge, everything else replaces."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge_plain_dicts(value, dst[key])
        else:
            dst[key] = value


def _to_plain_dict(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _to_plain_dict(v) for k, v in node.items()}
    return node


_GLOBAL_CFG = CfgNode()


def get_cfg() -> CfgNode:
    """Return a fresh copy of the default config (every Detectron2 key at its default)."""
    from .defaults import _C

    return _C.clone()


def set_global_cfg(cfg: CfgNode) -> None:
    """Make ``cfg``'s contents readable anywhere as ``segtron.config.global_cfg`` (for hacks)."""
    _GLOBAL_CFG.clear()
    _GLOBAL_CFG.update(cfg)


global_cfg = _GLOBAL_CFG
