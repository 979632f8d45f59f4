"""``segtron.projects.<name>``: the research plug-ins of the repository's ``projects/`` directory.

Detectron2 makes its in-repo projects importable as ``detectron2.projects.<name>`` (e.g.
``from detectron2.projects.deeplab import add_deeplab_config``); segtron does the same, and
through the Detectron2 alias (:mod:`segtron.compat`) those lines run unchanged.
``segtron.projects.<name>`` is the package ``projects/<Dir>`` whose directory name, lower-cased
with "-" read as "_", is ``<name>`` (``deeplab`` -> ``projects/DeepLab``,
``simple_mask_head`` -> ``projects/simple_mask_head``).

The module is the one ``train_net.py`` imports (``projects.<Dir>``), not a second copy: its
components register once whichever name imported it first. Projects live in the source tree,
next to the ``segtron`` package; an installation without them raises ModuleNotFoundError saying
where they were looked for.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType
from typing import Dict

from segtron.compat import ExistingModuleLoader

__all__ = ["PROJECTS_ROOT", "available_projects"]

# <repo>/projects, beside the segtron package directory.
PROJECTS_ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "projects"
)
_PREFIX = __name__ + "."


def available_projects() -> Dict[str, str]:
    """{import name: directory} of the project packages under :data:`PROJECTS_ROOT`."""
    if not os.path.isdir(PROJECTS_ROOT):
        return {}
    found = {}
    for entry in sorted(os.listdir(PROJECTS_ROOT)):
        if entry.startswith((".", "_")):
            continue
        if os.path.isfile(os.path.join(PROJECTS_ROOT, entry, "__init__.py")):
            found[entry.lower().replace("-", "_")] = entry
    return found


def _import_project(directory: str) -> ModuleType:
    """Import ``projects/<directory>`` as ``projects.<directory>`` (once) and return it."""
    canonical = f"projects.{directory}"
    if canonical in sys.modules:
        return sys.modules[canonical]
    path = os.path.join(PROJECTS_ROOT, directory)
    spec = importlib.util.spec_from_file_location(
        canonical, os.path.join(path, "__init__.py"), submodule_search_locations=[path]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[canonical] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[canonical]
        raise
    return module


class _ProjectFinder(importlib.abc.MetaPathFinder):
    """Resolves ``segtron.projects.<name>`` (top level only) to ``projects/<Dir>``."""

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith(_PREFIX) or "." in fullname[len(_PREFIX):]:
            return None
        name = fullname[len(_PREFIX):]
        projects = available_projects()
        if name not in projects:
            raise ModuleNotFoundError(
                f"No project '{name}' under {PROJECTS_ROOT}; available: {sorted(projects)}. "
                "Projects are importable from a source checkout (they are not installed with "
                "the segtron package).",
                name=fullname,
            )
        module = _import_project(projects[name])
        return importlib.machinery.ModuleSpec(
            fullname, ExistingModuleLoader(module), is_package=True
        )


if not any(isinstance(f, _ProjectFinder) for f in sys.meta_path):
    sys.meta_path.append(_ProjectFinder())
