"""Run cityscapesScripts' official evaluations (the ``cityscapesscripts`` package) from segtron.

Both scripts keep their settings in a module-level ``args`` object and are written as command
line tools: they print progress, write JSON files and end the process (``sys.exit``) on any
error. ``run_cityscapes_eval`` calls one of them on explicit lists of prediction and
ground-truth files with a private copy of its settings (JSON output and console output off,
caches in a scratch directory) and turns its exit into a ``RuntimeError`` carrying the script's
message. Nothing global is changed: no environment variable is needed (``CITYSCAPES_DATASET``
and ``CITYSCAPES_RESULTS`` only set defaults that are overridden here).

The instance script's ``evaluateImgLists`` also dumps its matches to ``matches.json`` in the
current directory, which fails under numpy 2 (``np.count_nonzero`` now returns numpy integers,
which its JSON writer cannot encode); its steps are therefore called one by one, without that
dump (``_evaluate_instances``).
"""

import contextlib
import copy
import functools
import importlib
import io
import logging
import os
import tempfile
import warnings
from typing import Any, Callable, Dict, List, Tuple

__all__ = ["cityscapes_core_name", "ground_truth_file", "import_cityscapes", "run_cityscapes_eval"]

logger = logging.getLogger(__name__)

_INSTALL_HINT = "pip install cityscapesscripts (listed in segtron's requirements/runtime.txt)"


def import_cityscapes(module: str) -> Any:
    """Import ``cityscapesscripts.<module>`` (e.g. ``"helpers.labels"``).

    Raises:
        ImportError: naming the package and how to install it, when it is missing.
    """
    try:
        return importlib.import_module(f"cityscapesscripts.{module}")
    except ImportError as err:
        raise ImportError(
            f"The Cityscapes evaluators need the cityscapesscripts package ({err}); "
            f"install it with `{_INSTALL_HINT}`."
        ) from err


def cityscapes_core_name(file_name: str) -> Tuple[str, str]:
    """``(city, "<city>_<sequence>_<frame>")`` of a Cityscapes file name, e.g.
    ``.../frankfurt_000000_000294_leftImg8bit.png`` -> ``("frankfurt",
    "frankfurt_000000_000294")``.

    Raises:
        ValueError: when the base name does not start with ``<city>_<sequence>_<frame>_``.
    """
    parts = os.path.basename(file_name).split("_")
    if len(parts) < 4 or not all(parts[:3]):
        raise ValueError(
            f"'{file_name}' is not a Cityscapes file name: expected "
            "<city>_<sequence>_<frame>_<type>.png (e.g. frankfurt_000000_000294_leftImg8bit.png). "
            "The Cityscapes evaluators find each image's ground truth from that name; use "
            "SemSegEvaluator / COCOEvaluator for datasets named otherwise."
        )
    return parts[0], "_".join(parts[:3])


def ground_truth_file(gt_dir: str, file_name: str, suffix: str) -> str:
    """``<gt_dir>/<city>/<city>_<seq>_<frame>_gtFine_<suffix>`` for image ``file_name``.

    Raises:
        ValueError: see ``cityscapes_core_name``.
        FileNotFoundError: naming the missing file and ``gt_dir``.
    """
    city, core = cityscapes_core_name(file_name)
    path = os.path.join(gt_dir, city, f"{core}_gtFine_{suffix}")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Cityscapes ground truth {path} (for image {file_name}) does not exist. The "
            f"dataset's metadata gt_dir is {gt_dir}; it must hold <city>/*_gtFine_{suffix} as "
            "in the gtFine download (see datasets/README.md#cityscapes)."
        )
    return path


def _evaluate_instances(script: Any, predictions: List[str], ground_truths: List[str],
                        args: Any) -> Dict[str, Any]:
    """The instance script's ``evaluateImgLists`` without its ``matches.json`` dump."""
    script.setInstanceLabels(args)
    gt_instances = script.getGtInstances(ground_truths, args)
    matches = script.matchGtWithPreds(predictions, ground_truths, gt_instances, args)
    aps = script.evaluateMatches(matches, args)
    averages = script.computeAverages(aps, args)
    return script.prepareJSONDataForResults(averages, aps, args)


def run_cityscapes_eval(
    module_name: str,
    predictions: List[str],
    ground_truths: List[str],
    settings: Dict[str, Any],
) -> Dict[str, Any]:
    """Run ``cityscapesscripts.evaluation.<module_name>.evaluateImgLists`` (for instances: its
    steps, see the module docstring) quietly.

    Args:
        module_name: ``"evalInstanceLevelSemanticLabeling"`` or
            ``"evalPixelLevelSemanticLabeling"``.
        predictions: one prediction file per ground-truth file (same order): the instance
            script's ``*.txt`` lists, the pixel script's label-id pngs; absolute paths.
        ground_truths: the ``*_gtFine_instanceIds.png`` / ``*_gtFine_labelIds.png`` files.
        settings: attributes set on the private copy of the script's ``args`` (e.g.
            ``predictionPath``). ``JSONOutput``, ``quiet`` and ``colorized`` are turned off/on
            here, and ``gtInstancesFile`` (the instance script's cache) points into the scratch
            directory unless given.

    Returns:
        The script's result dict.

    Raises:
        RuntimeError: when the script gives up (it calls ``sys.exit``), with its message.
    """
    script = import_cityscapes(f"evaluation.{module_name}")
    args = copy.deepcopy(script.args)
    with tempfile.TemporaryDirectory(prefix="cityscapes_scratch_") as scratch:
        args.JSONOutput = False
        args.quiet = True
        args.colorized = False
        args.predictionWalk = None
        args.gtInstancesFile = os.path.join(scratch, "gtInstances.json")
        for key, value in settings.items():
            setattr(args, key, value)
        if module_name == "evalInstanceLevelSemanticLabeling":
            evaluate = functools.partial(_evaluate_instances, script)
        else:
            evaluate = script.evaluateImgLists
        return _call_quietly(module_name, evaluate, list(predictions), list(ground_truths), args)


def _call_quietly(name: str, function: Callable, *call_args: Any) -> Any:
    console = io.StringIO()
    try:
        with contextlib.redirect_stdout(console), warnings.catch_warnings():
            # The scripts still call np.in1d, deprecated in numpy 2.
            warnings.filterwarnings("ignore", message=".*in1d.*", category=DeprecationWarning)
            return function(*call_args)
    except SystemExit as exit_:
        lines = [line for line in console.getvalue().splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")]
        message = (errors or lines or [f"exit status {exit_.code}"])[-1]
        raise RuntimeError(f"cityscapesscripts' {name} stopped: {message}") from None
    finally:
        if console.getvalue().strip():
            logger.debug("%s printed:\n%s", name, console.getvalue().rstrip())
