"""``upgrade_config`` / ``downgrade_config``: move a config between config-format versions.

Detectron2's config format has had two versions: 1 (before its public release, 2019) and 2
(every released config, and ``get_cfg()``'s ``VERSION``). segtron knows version 2 only, so
both functions return a copy when the config already has the requested version and refuse
any real conversion with a ValueError that says how to update the config by hand.
"""

from typing import Optional

from .config import _LATEST_VERSION, CfgNode

__all__ = ["upgrade_config", "downgrade_config"]


def _converted(cfg: CfgNode, to_version: int, direction: str) -> CfgNode:
    """Return a copy of ``cfg`` when it is already at ``to_version``; otherwise ValueError."""
    version = cfg.get("VERSION", _LATEST_VERSION)
    if (direction == "upgrade" and version > to_version) or (
        direction == "downgrade" and version < to_version
    ):
        raise ValueError(
            f"{direction}_config: cannot {direction} a VERSION {version} config to version "
            f"{to_version}; use {'downgrade' if direction == 'upgrade' else 'upgrade'}_config."
        )
    if version != to_version:
        raise ValueError(
            f"{direction}_config: converting config VERSION {version} to {to_version} is not "
            f"supported; segtron only knows VERSION {_LATEST_VERSION} (every released "
            "Detectron2 config). Rename the old keys by hand and set VERSION: 2."
        )
    return cfg.clone()


def upgrade_config(cfg: CfgNode, to_version: Optional[int] = None) -> CfgNode:
    """Return ``cfg`` converted to config version ``to_version`` (default: the latest, 2).

    Only the identity conversion exists (see the module docstring): a VERSION 2 config comes
    back as a copy; anything else raises ValueError naming the versions.
    """
    return _converted(cfg, _LATEST_VERSION if to_version is None else to_version, "upgrade")


def downgrade_config(cfg: CfgNode, to_version: int) -> CfgNode:
    """Return ``cfg`` converted down to config version ``to_version``; as ``upgrade_config``,
    only a copy at the same version is possible, any other request raises ValueError."""
    return _converted(cfg, to_version, "downgrade")
