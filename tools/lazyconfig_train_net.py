#!/usr/bin/env python
"""Train or evaluate a model from a Python (LazyConfig) config: Detectron2's
``tools/lazyconfig_train_net.py``.

    python tools/lazyconfig_train_net.py --config-file configs/Shapes/mask_rcnn_R_18_FPN.py
    python tools/lazyconfig_train_net.py --config-file cfg.py train.max_iter=100 \\
        dataloader.train.total_batch_size=2                # key=value overrides
    python tools/lazyconfig_train_net.py --config-file cfg.py --resume    # continue
    python tools/lazyconfig_train_net.py --config-file cfg.py --eval-only \\
        train.init_checkpoint=output/model_final.pth
    python tools/lazyconfig_train_net.py --config-file cfg.py --num-gpus 8

The config is anything ``instantiate`` can build: ``model``, ``dataloader.train`` /
``dataloader.test`` / ``dataloader.evaluator``, ``optimizer`` (its ``params.model`` is set to
the model), ``lr_multiplier`` (an fvcore ``ParamScheduler``) and the options of ``train``
(``configs/common/train.py``): output_dir, init_checkpoint, max_iter, amp.enabled, ddp,
checkpointer, eval_period, log_period, device, compile (``torch.compile`` of submodules, as
MODEL.COMPILE), and optionally seed, cudnn_benchmark and float32_precision. Overrides come
after the flags as ``key=value`` (Python literals, or null / true / false); a key that the
config does not have, and that nothing would read, fails naming it (write ``+key=value`` to
add a new key anyway). For anything else, copy this file and edit it.
"""

import difflib
import inspect
import logging
import os
import sys
from datetime import timedelta
from typing import Any, Dict, List, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # runnable as `python tools/lazyconfig_train_net.py`
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

from segtron.checkpoint import DetectionCheckpointer  # noqa: E402
from segtron.modeling.compilation import compile_as_configured  # noqa: E402
from segtron.config import LazyConfig, instantiate  # noqa: E402
from segtron.engine import (  # noqa: E402
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from segtron.engine.defaults import create_ddp_model  # noqa: E402
from segtron.engine.launch import DEFAULT_TIMEOUT  # noqa: E402
from segtron.evaluation import inference_on_dataset, print_csv_format  # noqa: E402
from segtron.modeling.meta_arch.build import resolve_device  # noqa: E402
from segtron.utils import comm  # noqa: E402
from segtron.utils.registry import locate  # noqa: E402

logger = logging.getLogger("segtron.lazyconfig_train_net")

# The keys of `train` this script (and default_setup) reads, and what the dicts among them
# are passed to: a new key is accepted there only if its receiver takes it.
TRAIN_KEYS = ("output_dir", "init_checkpoint", "max_iter", "amp", "ddp", "checkpointer",
              "eval_period", "log_period", "device", "seed", "cudnn_benchmark",
              "float32_precision", "compile")
_TRAIN_DICT_RECEIVERS = {
    "train.amp": ("enabled",),
    "train.compile": ("enabled", "modules", "mode", "backend"),
    "train.checkpointer": ("period", "max_to_keep", "file_prefix"),
}
_MISSING = object()


# ----------------------------------------------------------------------------- config


def _accepted_names(target: Any) -> Optional[List[str]]:
    """The keyword arguments ``target`` (a callable or its dotted path) takes; None when it
    takes any or cannot be inspected. A class whose ``__init__`` has ``**kwargs`` also takes
    its bases' arguments (the usual ``super().__init__(**kwargs)``), up to ``nn.Module``."""
    try:
        target = locate(target) if isinstance(target, str) else target
        if not isinstance(target, type):
            return _parameter_names(inspect.signature(target))
        names: List[str] = []
        for cls in target.__mro__:
            if cls in (object, torch.nn.Module):
                return names
            if "__init__" not in vars(cls):
                continue
            own = _parameter_names(inspect.signature(cls.__init__))
            if own is not None:
                return names + own
            params = inspect.signature(cls.__init__).parameters.values()
            names += [p.name for p in params
                      if p.kind is not inspect.Parameter.VAR_KEYWORD and p.name != "self"]
        return None
    except (ImportError, TypeError, ValueError):
        return None


def _parameter_names(signature: inspect.Signature) -> Optional[List[str]]:
    """The named parameters of ``signature``; None when it has ``**kwargs``."""
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params
            if p.kind is not inspect.Parameter.VAR_POSITIONAL and p.name != "self"]


def _known_keys(cfg: DictConfig, parent_path: str) -> Optional[List[str]]:
    """The keys that may be added under ``parent_path`` (None: any): a LazyCall's target's
    arguments, the ``train`` keys this script reads, or DistributedDataParallel's arguments
    for ``train.ddp``. Elsewhere (plain dicts, the root) only keys that already exist."""
    node = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    existing = [str(k) for k in node.keys()] if OmegaConf.is_dict(node) else []
    if parent_path == "train":
        return existing + list(TRAIN_KEYS)
    if parent_path in _TRAIN_DICT_RECEIVERS:
        return existing + list(_TRAIN_DICT_RECEIVERS[parent_path])
    if parent_path == "train.ddp":
        names = _accepted_names(DistributedDataParallel.__init__)
        return None if names is None else existing + names + ["fp16_compression"]
    if OmegaConf.is_dict(node) and "_target_" in node:
        target = node._get_node("_target_")._value()
        names = None if OmegaConf.is_config(target) else _accepted_names(target)
        return None if names is None else existing + names
    return existing


def check_override_keys(cfg: DictConfig, overrides: Sequence[str]) -> List[str]:
    """Check that every ``key=value`` of ``overrides`` names a key that ``cfg`` has or that
    something reads (see :func:`_known_keys`); ``+key=value`` adds a key unchecked.

    Returns:
        the overrides with their "+" removed, for ``LazyConfig.apply_overrides``.

    Raises:
        KeyError: naming the first unknown key, the closest valid one and how to add it.
    """
    cleaned = []
    for override in overrides:
        forced = override.startswith("+")
        override = override[1:] if forced else override
        cleaned.append(override)
        key = override.partition("=")[0].strip()
        if forced or "=" not in override or not key:
            continue  # apply_overrides reports a malformed override
        if OmegaConf.select(cfg, key, default=_MISSING, throw_on_missing=False) is not _MISSING:
            continue
        parts = key.split(".")
        depth = 0  # parts[:depth] exists
        while depth < len(parts) - 1 and OmegaConf.select(
                cfg, ".".join(parts[: depth + 1]), default=_MISSING,
                throw_on_missing=False) is not _MISSING:
            depth += 1
        parent = ".".join(parts[:depth])
        if not OmegaConf.is_config(OmegaConf.select(cfg, parent) if parent else cfg):
            continue  # apply_overrides explains that `parent` is not a config
        known = _known_keys(cfg, parent)
        if known is None or parts[depth] in known:
            continue
        close = difflib.get_close_matches(parts[depth], known, n=1)
        hint = f" Did you mean '{'.'.join(parts[:depth] + close)}'?" if close else ""
        raise KeyError(
            f"Override '{override}' (command line): the config has no key '{key}', and "
            f"'{parts[depth]}' is not among the keys of '{parent or '<root>'}' "
            f"({', '.join(sorted(set(known)))}).{hint} Fix the key, or write '+{override}' "
            "to add it anyway."
        )
    return cleaned


def compile_model(cfg: DictConfig, model: torch.nn.Module) -> List[str]:
    """``train.compile`` (segtron's MODEL.COMPILE for Python configs): when ``enabled``,
    ``torch.compile`` the submodules named in ``modules`` (default ["backbone"]) in place, with
    ``mode`` ("default") and ``backend`` ("inductor"); parameter names stay the eager ones.

    Returns:
        the names compiled ([] when disabled or when the config has no ``train.compile``).
    """
    settings = OmegaConf.select(cfg, "train.compile", default=None)
    if settings is None:
        return []
    return compile_as_configured(
        model, settings.get("enabled", False), list(settings.get("modules", ["backbone"])),
        settings.get("mode", "default"), settings.get("backend", "inductor"),
        key="train.compile",
    )


def check_device(cfg: DictConfig) -> torch.device:
    """The device of ``cfg.train.device`` (Detectron2's default "cuda" when absent).

    Raises:
        RuntimeError: for an invalid name, or CUDA on a machine without it (suggesting
            ``train.device=cpu``), before anything is built or launched.
    """
    name = str(OmegaConf.select(cfg, "train.device", default="cuda"))
    device = resolve_device(
        name, key="train.device",
        cpu_override="the override train.device=cpu after the flags (or train.device = 'cpu' "
                     "in the config)")
    return device


def _check_sections(cfg: DictConfig, config_file: str, eval_only: bool) -> None:
    """Fail, naming them, when the sections this script instantiates are missing."""
    if "MODEL" in cfg or "_BASE_" in cfg:
        raise ValueError(
            f"{config_file} is a YAML (CfgNode) config with MODEL/_BASE_ keys; train it with "
            "train_net.py. This script takes Python (LazyConfig) configs."
        )
    needed = ["model", "dataloader.test", "dataloader.evaluator"] if eval_only else [
        "model", "dataloader.train", "optimizer", "lr_multiplier", "train"]
    missing = [k for k in needed if OmegaConf.select(cfg, k, default=_MISSING) is _MISSING]
    if missing:
        raise KeyError(
            f"Config {config_file} has no {', '.join(missing)}: a LazyConfig for "
            f"{'evaluation' if eval_only else 'training'} needs {', '.join(needed)} (see "
            "configs/common/ and configs/Shapes/mask_rcnn_R_18_FPN.py)."
        )


def load_config(args) -> DictConfig:
    """``args.config_file`` with the ``key=value`` overrides of ``args.opts`` applied,
    checked: the overrides' keys, the sections needed, and ``train.device``."""
    if not args.config_file:
        raise ValueError("--config-file is required: a Python (LazyConfig) config file.")
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, check_override_keys(cfg, list(args.opts or [])))
    _check_sections(cfg, args.config_file, bool(args.eval_only))
    check_device(cfg)
    return cfg


# ----------------------------------------------------------------------------- test / train


def do_test(cfg: DictConfig, model: torch.nn.Module) -> Optional[Dict[str, Any]]:
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator`` and log the
    results in csv form; None when the config has no evaluator (or it is null)."""
    if cfg.dataloader.get("evaluator") is None:
        return None
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(results)
    return results


def do_train(args, cfg: DictConfig) -> Optional[Dict[str, Any]]:
    """Build the model, optimizer and training loader from ``cfg``, then train from iteration
    0 (or, with ``--resume``, after the last checkpoint in ``train.output_dir``) to
    ``train.max_iter`` with Detectron2's hooks: IterationTimer, LRScheduler
    (``lr_multiplier``), PeriodicCheckpointer (``train.checkpointer``), EvalHook every
    ``train.eval_period`` and after training, PeriodicWriter (``default_writers``: progress
    and ETA, metrics.json, TensorBoard, every ``train.log_period``).

    Returns:
        the last evaluation results (None without an evaluator).
    """
    model = instantiate(cfg.model)
    logger.info("Model:\n%s", model)
    model.to(cfg.train.device)
    compile_model(cfg, model)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer_class = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_class(model, train_loader, optimizer)
    checkpointer = DetectionCheckpointer(
        model, cfg.train.output_dir, optimizer=optimizer, trainer=trainer
    )
    last_results: Dict[str, Any] = {}

    def test_and_keep() -> Optional[Dict[str, Any]]:
        last_results["results"] = do_test(cfg, model)
        return last_results["results"]

    main_process = comm.is_main_process()
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if main_process else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_keep),
        hooks.PeriodicWriter(
            default_writers(cfg.train.output_dir, cfg.train.max_iter),
            period=cfg.train.log_period,
        ) if main_process else None,
    ])

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint holds the iteration that had just finished: continue after it.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last_results.get("results")


def main(args) -> Optional[Dict[str, Any]]:
    """Evaluate (``--eval-only``: ``train.init_checkpoint``, or with ``--resume`` the last
    checkpoint of ``train.output_dir``) or train, in each process; returns the results."""
    cfg = load_config(args)
    default_setup(cfg, args)

    if not args.eval_only:
        return do_train(args, cfg)
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    compile_model(cfg, model)
    model = create_ddp_model(model)
    init_checkpoint = OmegaConf.select(cfg, "train.init_checkpoint", default="")
    output_dir = OmegaConf.select(cfg, "train.output_dir", default="")
    if not init_checkpoint and not args.resume:
        logger.warning("--eval-only without train.init_checkpoint: evaluating random weights.")
    DetectionCheckpointer(model, output_dir).resume_or_load(init_checkpoint, resume=args.resume)
    results = do_test(cfg, model)
    logger.info("Evaluation results: %s", results)
    return results


def argument_parser():
    """``default_argument_parser`` with this script's examples and ``key=value`` overrides."""
    prog = "tools/lazyconfig_train_net.py"
    parser = default_argument_parser(epilog=f"""
Examples:
    $ {prog} --config-file configs/Shapes/mask_rcnn_R_18_FPN.py
    $ {prog} --config-file cfg.py train.max_iter=100 'train.output_dir="out/run1"'
    $ {prog} --config-file cfg.py --resume
    $ {prog} --config-file cfg.py --eval-only train.init_checkpoint=out/model_final.pth
    $ {prog} --config-file cfg.py --num-gpus 2 train.device=cpu      # 2 CPU processes
""")
    for action in parser._actions:
        if action.dest == "opts":
            action.help = ("config overrides at the end of the command, as key=value (Python "
                           "literals or null/true/false), e.g. train.max_iter=100; "
                           "+key=value adds a key the config does not have")
        elif action.dest == "config_file":
            action.help = "path to the Python (LazyConfig) config file"
    return parser


def invoke_main(argv: Optional[List[str]] = None) -> None:
    """Parse the command line, check the config (overrides, device) before any process
    starts, and run ``main`` in every process of the job (gloo for CPU processes)."""
    args = argument_parser().parse_args(argv)
    cfg = load_config(args)
    backend = "gloo" if check_device(cfg).type == "cpu" else None
    timeout = timedelta(minutes=args.dist_timeout) if args.dist_timeout else DEFAULT_TIMEOUT
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=timeout,
        backend=backend,
    )


if __name__ == "__main__":
    invoke_main()
