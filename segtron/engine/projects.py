"""The research plug-ins under ``projects/``: import them all, and add their config keys.

Every package directly under the repository's ``projects/`` directory registers its components
when imported and may define ``add_config(cfg)``, which adds its keys to a config.
``train_net.py``, the tools and ``segtron.utils.model_cost`` load them through this module, so a
config naming a project's component builds the same way everywhere.
"""

import importlib
import os
import sys
from types import ModuleType
from typing import List, Optional, Sequence

from segtron.config import CfgNode, get_cfg
from segtron.projects import PROJECTS_ROOT

__all__ = ["load_projects", "add_project_configs", "get_cfg_with_projects"]


def load_projects(projects_dir: str = PROJECTS_ROOT) -> List[ModuleType]:
    """Import every package directly under ``projects_dir`` (sorted by name) and return them.

    A package is a subdirectory holding an ``__init__.py``; it is imported as
    ``<basename of projects_dir>.<name>`` (``projects.DeepLab``), which runs its registrations.
    Importing twice is harmless (Python caches modules). A project that fails to import raises
    ImportError naming it and how to disable it.
    """
    modules: List[ModuleType] = []
    if not os.path.isdir(projects_dir):
        return modules
    parent = os.path.dirname(os.path.abspath(projects_dir))
    if parent not in sys.path:
        sys.path.insert(0, parent)
    package = os.path.basename(os.path.normpath(projects_dir))
    for name in sorted(os.listdir(projects_dir)):
        if name.startswith((".", "_")):
            continue
        if not os.path.isfile(os.path.join(projects_dir, name, "__init__.py")):
            continue
        try:
            modules.append(importlib.import_module(f"{package}.{name}"))
        except Exception as err:
            raise ImportError(
                f"Importing project '{name}' ({os.path.join(projects_dir, name)}) failed: "
                f"{err!r}. Fix the project, or move it out of {projects_dir} to disable it."
            ) from err
    return modules


def add_project_configs(cfg: CfgNode, projects: Sequence[ModuleType]) -> CfgNode:
    """Call each project's ``add_config(cfg)`` (those that define one), in order; return cfg."""
    for project in projects:
        add_config = getattr(project, "add_config", None)
        if callable(add_config):
            add_config(cfg)
    return cfg


def get_cfg_with_projects(projects: Optional[Sequence[ModuleType]] = None) -> CfgNode:
    """Detectron2's defaults plus every project's keys: what a config file is merged into.

    Args:
        projects: the project modules; by default all of ``projects/`` (imported here).
    """
    return add_project_configs(get_cfg(), load_projects() if projects is None else projects)
