"""``DetectionCheckpointer``: fvcore's ``Checkpointer`` with Detectron2's loading rules.

What it loads (``load(path)`` / ``resume_or_load(path, resume=...)``), from local files or any
``PathManager`` URL (``https://``, ``detectron2://``, ``catalog://``):

* ``.pth`` files: ``{"model": state_dict, ...}`` (segtron / Detectron2 training checkpoints) or a
  bare state dict, loaded by exact names. ``<url>?matching_heuristics=True`` loads by suffix
  matching instead (``align_and_update_state_dicts``).
* torchvision ResNet ImageNet state dicts, recognised by their key names, renamed to
  Detectron2 names and suffix-matched (with a warning on the config keys to change).
* ``.pkl`` files of the Detectron2 model zoo (``{"model": {name: ndarray}, "__author__": ...}``)
  and of Caffe2 Detectron / MSRA (bare blob dicts, or ``{"blobs": ...}``), whose names are
  converted by ``convert_c2_detectron_names`` and suffix-matched.
* ``.pyth`` files of pycls (``{"model_state": ...}``), suffix-matched.

Keys the model has but the checkpoint lacks, and the reverse, are logged as tables grouped by
module; weights whose shape differs from the model's are skipped with a warning naming the key
and both shapes. Saving is atomic: a crash mid-write never leaves a truncated checkpoint that
``last_checkpoint`` points to.
"""

import logging
import os
import shutil
from collections import defaultdict
from typing import Any, Callable, Dict, IO, List, Optional, Sequence
from urllib.parse import parse_qs, urlparse

import torch
import torch.distributed as dist
from fvcore.common.checkpoint import Checkpointer
from tabulate import tabulate
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import segtron.utils.comm as comm
from segtron.utils.file_io import PathManager
from segtron.utils.safe_unpickling import UnreadableFileError, load_pickle, torch_load

from .c2_model_loading import align_and_update_state_dicts
from .torchvision_model_loading import (
    TORCHVISION_CONFIG_HINT,
    convert_torchvision_resnet_names,
    is_torchvision_resnet_state_dict,
    rename_torchvision_resnet_key,
)

# Private checkpoint entry: converted key -> key in the file, for the matching table.
_ORIGINAL_NAMES = "__segtron_original_names__"

__all__ = [
    "DetectionCheckpointer",
    "get_missing_parameters_message",
    "get_unexpected_parameters_message",
]


class DetectionCheckpointer(Checkpointer):
    """Save and load a model plus other checkpointables, reading Detectron2 / Caffe2 formats.

    Same constructor and methods as ``fvcore.common.checkpoint.Checkpointer``
    (``save(name, **extra)``, ``load(path, checkpointables=None)``,
    ``resume_or_load(path, resume=True)``, ``has_checkpoint()``, ``get_checkpoint_file()``);
    see the module docstring for the formats ``load`` reads.

    Args:
        model: the model; a DistributedDataParallel / DataParallel wrapper is unwrapped.
        save_dir: directory where ``save`` writes ``<name>.pth`` and ``last_checkpoint``.
        save_to_disk: write files at all; defaults to ``comm.is_main_process()``, so only
            rank 0 writes in distributed training.
        allow_unsafe_unpickling: load files whose pickle names globals other than tensors,
            numpy arrays and plain containers (which can run arbitrary code). Default None:
            refused unless ``SEGTRON_ALLOW_UNSAFE_UNPICKLING=1`` is set; see
            ``segtron.utils.safe_unpickling``.
        **checkpointables: other objects with ``state_dict()``/``load_state_dict()`` saved
            along (``optimizer=..., scheduler=...``).
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        allow_unsafe_unpickling: Optional[bool] = None,
        **checkpointables: Any,
    ) -> None:
        self._allow_unsafe_unpickling = allow_unsafe_unpickling
        self._wrapped_in_ddp = isinstance(model, DistributedDataParallel)
        super().__init__(
            model,
            save_dir,
            save_to_disk=comm.is_main_process() if save_to_disk is None else save_to_disk,
            **checkpointables,
        )
        self.path_manager = PathManager
        self.logger = logging.getLogger(__name__)
        self._parsed_url_during_load = None

    # ------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------
    def load(self, path: str, *args: Any, **kwargs: Any) -> Dict[str, Any]:
        """Load ``path`` (a file or URL; "" loads nothing) into the model and checkpointables.

        Takes the arguments of ``fvcore``'s ``Checkpointer.load``. A URL may end in
        ``?matching_heuristics=True`` to load a ``.pth`` by suffix matching. Returns the
        checkpoint's remaining entries (e.g. ``iteration``).

        Raises:
            FileNotFoundError: if ``path`` names no readable file.
            ValueError: on an unsupported URL query.
        """
        parsed = urlparse(os.fspath(path)) if path else None
        if parsed is not None:
            path = parsed._replace(query="").geturl()
            if not os.path.isfile(path):
                path = self.path_manager.get_local_path(path)

        need_sync = False
        if path and self._wrapped_in_ddp and comm.get_world_size() > 1:
            has_file = os.path.isfile(path)
            everyone = comm.all_gather(has_file)
            if not everyone[0]:
                raise FileNotFoundError(f"Checkpoint {path} does not exist on the main process.")
            if not all(everyone):
                self.logger.warning(
                    "Checkpoint %s is not readable on every process; the others get the weights "
                    "of the main process by broadcast. Other checkpointables (optimizer, ...) "
                    "are not resumed on them.", path,
                )
                need_sync = True
            if not has_file:
                path = ""

        if path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"Checkpoint {path} not found. Check MODEL.WEIGHTS (or the path given to "
                "load / resume_or_load)."
            )
        self._parsed_url_during_load = parsed
        try:
            result = super().load(path, *args, **kwargs)
        finally:
            self._parsed_url_during_load = None

        if need_sync:
            self.logger.info("Broadcasting the model's weights from the main process ...")
            _broadcast_module_state(self.model)
        return result

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the newest checkpoint of ``save_dir`` (``resume`` and one exists), else
        load only the model from ``path``. Returns what ``load`` returns.

        Unlike fvcore, a checkpoint named by ``last_checkpoint`` that is missing, truncated or
        corrupt does not end the run: the other ``.pth`` files of ``save_dir`` are tried,
        newest first, and the one resumed from is logged with the reason. Raises
        ``FileNotFoundError`` when none of them can be read, listing each and why.
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        failures: List[str] = []
        for candidate in self._resume_candidates():
            try:
                if not self.path_manager.exists(candidate):
                    raise FileNotFoundError(
                        "named by last_checkpoint, but the file does not exist (deleted or "
                        "moved?)"
                    )
                result = self.load(candidate)
            except (UnreadableFileError, FileNotFoundError) as e:
                failures.append(f"  {candidate}: {e}")
                self.logger.warning("Cannot resume from %s: %s", candidate, e)
                continue
            if failures:
                self.logger.warning(
                    "Resumed from %s, the newest readable checkpoint of %s, instead of the one "
                    "named by last_checkpoint; iterations after it are trained again.",
                    candidate, self.save_dir,
                )
            return result
        raise FileNotFoundError(
            f"Cannot resume: no checkpoint in {self.save_dir} can be read:\n"
            + "\n".join(failures)
            + f"\nTo start from MODEL.WEIGHTS instead, delete "
            f"{os.path.join(self.save_dir, 'last_checkpoint')} or run without --resume."
        )

    def _resume_candidates(self) -> List[str]:
        """The file named by ``last_checkpoint``, then the other ``.pth`` files of
        ``save_dir``, newest (modification time) first."""
        named = self.get_checkpoint_file()
        others = [f for f in self.get_all_checkpoint_files() if f != named]
        others.sort(key=_modification_time, reverse=True)
        return ([named] if named else []) + others

    def _load_file(self, filename: str) -> Dict[str, Any]:
        """Read ``filename`` into ``{"model": weights, ...}`` plus loading hints.

        Hints: ``"__author__"`` (where the file comes from; ``Caffe2`` means Caffe2 names) and
        ``"matching_heuristics"`` (load by suffix matching).
        """
        if filename.endswith(".pkl"):
            return self._load_pkl(filename)
        if filename.endswith(".pyth"):
            return self._load_pycls(filename)

        loaded = self._torch_load(filename)
        if not isinstance(loaded, dict):
            raise ValueError(
                f"Checkpoint {filename} holds a {type(loaded).__name__}, not a state dict or a "
                "dict with a 'model' entry. Save model.state_dict() rather than the model."
            )
        if "model" not in loaded:
            loaded = {"model": loaded}
        if is_torchvision_resnet_state_dict(loaded["model"]):
            loaded = self._from_torchvision(loaded, filename)

        queries = parse_qs(self._parsed_url_during_load.query) if self._parsed_url_during_load else {}
        if queries.pop("matching_heuristics", ["False"]) == ["True"]:
            loaded["matching_heuristics"] = True
        if queries:
            raise ValueError(
                f"Unsupported query {sorted(queries)} in checkpoint URL "
                f"{self._parsed_url_during_load.geturl()}; only '?matching_heuristics=True' is "
                "understood."
            )
        return loaded

    def _load_pkl(self, filename: str) -> Dict[str, Any]:
        with self.path_manager.open(filename, "rb") as f:
            data = load_pickle(f, filename, allow_unsafe=self._allow_unsafe_unpickling,
                               what="checkpoint")
        if not isinstance(data, dict):
            raise ValueError(f"{filename} holds a {type(data).__name__}, not a dict of weights.")
        if "model" in data and "__author__" in data:
            self.logger.info("Reading a file from '%s'", data["__author__"])
            if "caffe2" in str(data["__author__"]).lower():
                data["matching_heuristics"] = True  # Caffe2 names never load by exact name
            return data
        if "blobs" in data:  # Detectron detection models; ImageNet models are bare blob dicts.
            data = data["blobs"]
        if is_torchvision_resnet_state_dict(data):
            return self._from_torchvision({"model": data}, filename)
        weights = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}

    def _load_pycls(self, filename: str) -> Dict[str, Any]:
        with self.path_manager.open(filename, "rb") as f:
            data = torch_load(f, filename, allow_unsafe=self._allow_unsafe_unpickling)
        if not isinstance(data, dict) or "model_state" not in data:
            raise ValueError(f"Cannot load {filename}: a pycls .pyth file must hold 'model_state'.")
        weights = {
            k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")
        }
        return {"model": weights, "__author__": "pycls", "matching_heuristics": True}

    def _torch_load(self, filename: str) -> Any:
        """``torch.load`` a local file to CPU."""
        with open(filename, "rb") as f:
            return torch_load(f, filename, allow_unsafe=self._allow_unsafe_unpickling)

    def _from_torchvision(self, loaded: Dict[str, Any], filename: str) -> Dict[str, Any]:
        model_has_counters = any(
            k.endswith("num_batches_tracked") for k in self.model.state_dict()
        )
        file_keys = list(loaded["model"])
        loaded["model"] = convert_torchvision_resnet_names(
            loaded["model"], keep_num_batches_tracked=model_has_counters
        )
        loaded[_ORIGINAL_NAMES] = {rename_torchvision_resnet_key(k): k for k in file_keys}
        loaded["__author__"] = "torchvision"
        loaded["matching_heuristics"] = True
        self.logger.info(
            "Recognised a torchvision ResNet checkpoint in %s; renamed its keys to Detectron2 "
            "names (the fc classifier is dropped).", filename,
        )
        self.logger.warning(TORCHVISION_CONFIG_HINT)
        return loaded

    def _load_model(self, checkpoint: Dict[str, Any]):
        """Load ``checkpoint["model"]`` into the model; returns fvcore's incompatible-keys tuple.

        Suffix matching is applied when the checkpoint asks for it. Missing ``pixel_mean`` /
        ``pixel_std`` (set from the config anyway) and unexpected ``anchor_generator.cell_anchors``
        (old checkpoints) are not reported.
        """
        original_names = checkpoint.pop(_ORIGINAL_NAMES, None)
        if checkpoint.get("matching_heuristics", False):
            self._convert_ndarray_to_tensor(checkpoint["model"])
            author = str(checkpoint.get("__author__", ""))
            checkpoint["model"] = align_and_update_state_dicts(
                self.model.state_dict(),
                checkpoint["model"],
                c2_conversion="caffe2" in author.lower(),
                original_names=original_names,
            )
        incompatible = super()._load_model(checkpoint)

        own_buffers = dict(self.model.named_buffers(recurse=False))
        for key in ("pixel_mean", "pixel_std"):
            if key in own_buffers and key in incompatible.missing_keys:
                incompatible.missing_keys.remove(key)
        for key in list(incompatible.unexpected_keys):
            if "anchor_generator.cell_anchors" in key:
                incompatible.unexpected_keys.remove(key)
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        """Warn about shape mismatches, then log missing / unexpected keys as tables."""
        for key, shape_ckpt, shape_model in incompatible.incorrect_shapes:
            self.logger.warning(
                "Skip loading parameter '%s': its shape is %s in the checkpoint but %s in the "
                "model. Check the config (e.g. NUM_CLASSES) if this is unexpected.",
                key, tuple(shape_ckpt), tuple(shape_model),
            )
        missing = _drop_aliased_missing_keys(self.model, incompatible.missing_keys)
        if missing:
            self.logger.warning(get_missing_parameters_message(missing))
        if incompatible.unexpected_keys:
            self.logger.warning(get_unexpected_parameters_message(incompatible.unexpected_keys))

    # ------------------------------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------------------------------
    def save(self, name: str, **kwargs: Any) -> None:
        """Write the model and checkpointables (plus ``kwargs``) to ``<save_dir>/<name>.pth``.

        The file is written to ``<name>.pth.tmp`` and renamed into place once complete; only
        then does ``last_checkpoint`` name it. Does nothing without ``save_dir`` or when
        ``save_to_disk`` is False.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        if os.path.basename(basename) != basename:
            raise ValueError(f"Checkpoint name '{name}' must be a file name, not a path.")
        data: Dict[str, Any] = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        try:
            self._atomic_write(save_file, "wb", lambda f: torch.save(data, f))
        except (OSError, RuntimeError) as e:
            raise OSError(_write_failure_message(save_file, e)) from e
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Atomically make ``last_checkpoint`` name ``last_filename_basename``."""
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        self._atomic_write(save_file, "w", lambda f: f.write(last_filename_basename))

    def _atomic_write(self, path: str, mode: str, write: Callable[[IO], Any]) -> None:
        """Write ``path`` through ``<path>.tmp`` and a rename, removing the temp file on error.

        Local paths are flushed to disk and renamed with ``os.replace`` (atomic on POSIX);
        other ``PathManager`` paths are moved with ``PathManager.mv``.
        """
        tmp = path + ".tmp"
        local = self.path_manager.get_local_path(tmp) if "://" not in tmp else None
        try:
            if local is not None:
                with open(local, mode) as f:
                    write(f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(local, self.path_manager.get_local_path(path))
            else:
                with self.path_manager.open(tmp, mode) as f:
                    write(f)
                self.path_manager.mv(tmp, path)
        except BaseException:
            try:
                if self.path_manager.exists(tmp):
                    self.path_manager.rm(tmp)
            except Exception:  # keep the original error
                self.logger.warning("Could not remove the partial file %s.", tmp)
            raise


def _modification_time(path: str) -> float:
    try:
        return os.path.getmtime(path)
    except OSError:
        return float("-inf")


def _write_failure_message(save_file: str, error: BaseException) -> str:
    """Why writing ``save_file`` failed and what to do, with the free space of its disk."""
    directory = os.path.dirname(save_file) or "."
    try:
        free = f"{shutil.disk_usage(directory).free / 2**20:.0f} MiB free"
    except OSError:
        free = "free space unknown"
    first_line = (str(error).strip().splitlines() or ["no details"])[0]
    return (
        f"Could not write checkpoint {save_file} ({type(error).__name__}: {first_line}); "
        f"{directory} has {free}. Free some space (e.g. delete old model_*.pth files) or set "
        "OUTPUT_DIR to a disk with room, then rerun with --resume: the checkpoints written "
        "before are intact and last_checkpoint still names the newest of them."
    )


def _broadcast_module_state(model: nn.Module) -> None:
    """Copy every parameter and buffer of ``model`` from rank 0 to all processes."""
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def _drop_aliased_missing_keys(model: nn.Module, keys: Sequence[str]) -> List[str]:
    """Remove missing keys whose tensor was loaded under another name (shared parameters)."""
    missing = set(keys)
    names_of: Dict[int, List[str]] = defaultdict(list)
    named = list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    )
    for name, tensor in named:
        names_of[id(tensor)].append(name)
    for names in names_of.values():
        if len(names) > 1 and any(n not in missing for n in names):
            missing.difference_update(names)
    return [k for k in keys if k in missing]


def _group_by_module(keys: Sequence[str]) -> List[List[str]]:
    """Rows of (module, its keys' last parts), modules sorted by name."""
    groups: Dict[str, List[str]] = defaultdict(list)
    for key in keys:
        module, _, leaf = key.rpartition(".")
        groups[module].append(leaf)
    return [[module or "(top level)", ", ".join(sorted(leaves))] for module, leaves in sorted(groups.items())]


def get_missing_parameters_message(keys: Sequence[str]) -> str:
    """A table, grouped by module, of model keys that the checkpoint does not have."""
    table = tabulate(_group_by_module(keys), headers=["Module", "Missing keys"], tablefmt="pipe")
    return (
        f"Some model parameters or buffers are not found in the checkpoint "
        f"({len(keys)} keys); they keep their initial values:\n{table}"
    )


def get_unexpected_parameters_message(keys: Sequence[str]) -> str:
    """A table, grouped by module, of checkpoint keys that the model does not use."""
    table = tabulate(_group_by_module(keys), headers=["Module", "Unexpected keys"], tablefmt="pipe")
    return (
        f"The checkpoint state_dict contains keys that are not used by the model "
        f"({len(keys)} keys):\n{table}"
    )
