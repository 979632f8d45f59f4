"""The standard training/evaluation workflow of Detectron2, with its defaults.

* ``default_argument_parser``: the command-line flags every ``train_net.py``-style script has.
* ``default_setup``: output directory, loggers, environment and config logging, seeding.
* ``default_writers``: console printer, ``metrics.json`` and TensorBoard writers.
* ``DefaultPredictor``: one model, one image in, its predictions out.
* ``DefaultTrainer``: model, optimizer, scheduler, data, checkpointing, hooks and evaluation
  built from a config, each step overridable by a subclass.

These are conveniences for the common case; write your own loop (or subclass) for anything
they do not cover.
"""

import argparse
import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segtron.checkpoint import DetectionCheckpointer
from segtron.config import CfgNode
from segtron.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
)
from segtron.data.detection_utils import build_augmentation
from segtron.evaluation import (
    DatasetEvaluator,
    inference_on_dataset,
    print_csv_format,
    verify_results,
)
from segtron.modeling import build_model
from segtron.solver import build_lr_scheduler, build_optimizer
from segtron.utils import comm
from segtron.utils.collect_env import collect_env_info
from segtron.utils.env import seed_all_rng
from segtron.utils.file_io import PathManager
from segtron.utils.logger import setup_logger

from . import hooks
from .argument_parser import default_argument_parser
from .model_ema import ModelEMAHook, build_model_ema
from .predictor import DefaultPredictor
from .train_loop import AMPTrainer, SimpleTrainer, TrainerBase
from .training_plugins import build_registered_hooks, build_registered_train_loader

__all__ = [
    "create_ddp_model",
    "default_argument_parser",
    "default_setup",
    "default_writers",
    "DefaultPredictor",
    "DefaultTrainer",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- set-up


def _set_float32_precision(precision: str) -> None:
    """Apply FLOAT32_PRECISION ("highest", "high" or "medium") to float32 matmuls and cuDNN
    convolutions (TF32 allowed unless "highest"). Only on CUDA machines, as Detectron2."""
    if precision not in ("highest", "high", "medium"):
        raise ValueError(
            f"FLOAT32_PRECISION = {precision!r}: use 'highest', 'high', 'medium', or '' to leave "
            "torch's setting alone."
        )
    if not torch.cuda.is_available():
        logger.info("FLOAT32_PRECISION=%s ignored: it only concerns CUDA devices.", precision)
        return
    torch.set_float32_matmul_precision(precision)
    allow_tf32 = precision != "highest"
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    logger.info("Float32 precision set to '%s' (TF32 %s for matmuls and cuDNN).", precision,
                "allowed" if allow_tf32 else "disabled")


def _try_get_key(cfg: Any, *keys: str, default: Any = None) -> Any:
    """The value of the first of ``keys`` (dotted paths, e.g. "SEED" or "train.seed") that
    ``cfg`` has, else ``default``: how ``default_setup`` reads a YAML config (``CfgNode``) and a
    LazyConfig (omegaconf ``DictConfig``) alike."""
    for key in keys:
        node = cfg
        for part in key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            return node
    return default


def _save_config(cfg: Any, path: str) -> None:
    """Write ``cfg`` to ``path``: ``CfgNode.dump()`` for a YAML config, ``LazyConfig.save``
    (YAML that ``LazyConfig.load`` reads back) for a LazyConfig."""
    if isinstance(cfg, CfgNode):
        with PathManager.open(path, "w") as f:
            f.write(cfg.dump())
    else:
        from segtron.config import LazyConfig

        LazyConfig.save(cfg, path)


def default_setup(cfg: Any, args: Optional[argparse.Namespace]) -> None:
    """Prepare a process for training or evaluation from ``cfg`` and the parsed ``args``.

    ``cfg`` is a YAML config (``CfgNode``: OUTPUT_DIR, SEED, CUDNN_BENCHMARK,
    FLOAT32_PRECISION) or a LazyConfig (omegaconf ``DictConfig``: ``train.output_dir``,
    ``train.seed``, ``train.cudnn_benchmark``, ``train.float32_precision``; each optional, as
    in Detectron2, defaulting to no output directory, a random seed, False and "").

    1. Create the output directory (main process).
    2. Set up the ``segtron``, ``fvcore`` and ``projects`` loggers: console on rank 0,
       ``log.txt`` (rank 0) or ``log.txt.rank<r>`` in the output directory.
    3. Log the rank and world size, the environment (``collect_env_info``), the command-line
       arguments and the contents of the config file.
    4. Write the full config to ``<output dir>/config.yaml`` (main process; a LazyConfig with
       ``LazyConfig.save``).
    5. Seed every RNG with ``seed + rank`` (a random seed when the seed is < 0).
    6. Set ``torch.backends.cudnn.benchmark`` from the cudnn-benchmark key (not for
       ``--eval-only``) and the float32 matmul precision from the float32-precision key (when
       not empty).

    Args:
        cfg: the full config (may be frozen).
        args: the namespace from ``default_argument_parser().parse_args()``, or None.
    """
    output_dir = _try_get_key(cfg, "OUTPUT_DIR", "output_dir", "train.output_dir", default="")
    if comm.is_main_process() and output_dir:
        PathManager.mkdirs(output_dir)

    rank = comm.get_rank()
    setup_logger(output_dir or None, distributed_rank=rank, name="fvcore")
    # The research projects log under "projects.<Name>" (train_net.py imports them so).
    setup_logger(output_dir or None, distributed_rank=rank, name="projects")
    log = setup_logger(output_dir or None, distributed_rank=rank)

    log.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    log.info("Environment info:\n%s", collect_env_info())
    log.info("Command line arguments: %s", args)
    config_file = getattr(args, "config_file", "") if args is not None else ""
    if config_file:
        with PathManager.open(config_file, "r") as f:
            log.info("Contents of args.config_file=%s:\n%s", config_file, f.read())

    if comm.is_main_process() and output_dir:
        path = os.path.join(output_dir, "config.yaml")
        _save_config(cfg, path)
        log.info("Full config saved to %s", path)

    seed = _try_get_key(cfg, "SEED", "train.seed", default=-1)
    seed_all_rng(None if seed is None or seed < 0 else seed + rank)

    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = bool(
            _try_get_key(cfg, "CUDNN_BENCHMARK", "train.cudnn_benchmark", default=False)
        )
    precision = _try_get_key(cfg, "FLOAT32_PRECISION", "train.float32_precision", default="")
    if precision:
        _set_float32_precision(precision)


def default_writers(output_dir: str, max_iter: Optional[int] = None) -> List[Any]:
    """The standard event writers: a console ``CommonMetricPrinter``, a ``JSONWriter`` appending
    to ``<output_dir>/metrics.json`` and a ``TensorboardXWriter`` logging to ``output_dir``.

    Args:
        output_dir: directory of metrics.json and the TensorBoard event files.
        max_iter: total number of iterations, for the printer's ETA.

    Returns:
        a list of ``EventWriter``.
    """
    from segtron.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

    PathManager.mkdirs(output_dir)
    return [
        CommonMetricPrinter(max_iter),
        JSONWriter(os.path.join(output_dir, "metrics.json")),
        TensorboardXWriter(output_dir),
    ]


def create_ddp_model(model: nn.Module, *, fp16_compression: bool = False,
                     **kwargs: Any) -> nn.Module:
    """Wrap ``model`` in ``DistributedDataParallel`` when the world has several processes.

    On GPUs each process drives the device ``comm.get_local_rank()`` (``device_ids``); a model on
    the CPU (gloo backend) is wrapped without ``device_ids``. Single process: ``model`` itself.

    Args:
        model: the model, already on its device.
        fp16_compression: compress gradients to fp16 for the all-reduce (GPUs only).
        kwargs: more ``DistributedDataParallel`` arguments (e.g. ``broadcast_buffers``).
    """
    if comm.get_world_size() == 1:
        return model
    on_gpu = next(model.parameters()).device.type == "cuda"
    if on_gpu and "device_ids" not in kwargs:
        kwargs["device_ids"] = [comm.get_local_rank()]
    ddp = DistributedDataParallel(model, **kwargs)
    if fp16_compression and on_gpu:
        from torch.distributed.algorithms.ddp_comm_hooks import default as comm_hooks

        ddp.register_comm_hook(state=None, hook=comm_hooks.fp16_compress_hook)
    return ddp


# ----------------------------------------------------------------------------- trainer


class DefaultTrainer(TrainerBase):
    """A trainer with Detectron2's default training logic, built from a config.

    It builds (through classmethods a subclass may override) the model, optimizer, LR
    scheduler, training data loader and, for evaluation, test loaders and evaluators; wraps the
    model in ``DistributedDataParallel`` when there are several processes; runs a
    ``SimpleTrainer`` (``AMPTrainer`` with SOLVER.AMP.ENABLED) inside; checkpoints the model,
    optimizer, scheduler and iteration to OUTPUT_DIR; and registers the hooks of
    ``build_hooks()`` and the writers of ``build_writers()``.

    Example::

        trainer = DefaultTrainer(cfg)
        trainer.resume_or_load(resume=False)   # load MODEL.WEIGHTS (or resume: last checkpoint)
        trainer.train()

    Attributes:
        scheduler: the LR scheduler.
        checkpointer (DetectionCheckpointer): saves and loads the training state.
        cfg (CfgNode): the config (after ``auto_scale_workers``).
    """

    def __init__(self, cfg: CfgNode):
        super().__init__()
        if not logging.getLogger("segtron").isEnabledFor(logging.INFO):
            setup_logger()  # default_setup was not called: at least show the progress
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)  # fails early, with the fix, on MODEL.DEVICE cuda w/o CUDA
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        trainer_class = AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer
        self._trainer = trainer_class(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # The trainer's state holds the iteration, the optimizer, the gradient scaler (AMP) and
        # the hooks' states (the LR scheduler's among them): Detectron2's checkpoint layout.
        self.checkpointer = DetectionCheckpointer(
            model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        # MODEL_EMA: the weight average, saved in every checkpoint as "model_ema".
        self.model_ema = build_model_ema(cfg, model)
        if self.model_ema is not None:
            self.checkpointer.add_checkpointable("model_ema", self.model_ema)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg

        self.register_hooks(self.build_hooks())

    # The SimpleTrainer inside owns these; expose them as Detectron2 does.
    @property
    def model(self) -> nn.Module:
        """The (possibly DDP-wrapped) model being trained."""
        return self._trainer.model

    @model.setter
    def model(self, value: nn.Module) -> None:
        self._trainer.model = value

    @property
    def data_loader(self):
        """The training data loader."""
        return self._trainer.data_loader

    @data_loader.setter
    def data_loader(self, value) -> None:
        self._trainer.data_loader = value

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The optimizer."""
        return self._trainer.optimizer

    @optimizer.setter
    def optimizer(self, value: torch.optim.Optimizer) -> None:
        self._trainer.optimizer = value

    def resume_or_load(self, resume: bool = True) -> None:
        """Load the starting state.

        With ``resume=True`` and a checkpoint in OUTPUT_DIR (named by its ``last_checkpoint``
        file), load it whole (model, optimizer, scheduler, iteration) and continue from the
        iteration after the saved one. Otherwise load only the model weights of
        ``cfg.MODEL.WEIGHTS`` (nothing when empty) and start from iteration 0.
        """
        self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint of iteration i is written after step i: continue at i + 1.
            self.start_iter = self.iter + 1
        if self.model_ema is not None and self.model_ema.updates == 0:
            self.model_ema.reset(self.model)  # start the average from the loaded weights

    def build_hooks(self) -> List[Any]:
        """The default hooks, in order: IterationTimer, LRScheduler, ModelEMAHook (when
        MODEL_EMA.ENABLED), the hooks of SOLVER.HOOKS (``HOOK_REGISTRY``), PreciseBN (when
        TEST.PRECISE_BN.ENABLED and the model has BatchNorm), PeriodicCheckpointer (main
        process), ValidationLoss (when TEST.VAL_LOSS_PERIOD > 0), EvalHook (every
        TEST.EVAL_PERIOD and after training; with the EMA weights when MODEL_EMA.ENABLED) and
        PeriodicWriter (main process, every 20 iterations; last, so it writes what the other
        hooks recorded)."""
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # PreciseBN / validation loaders: no worker processes

        ret: List[Any] = [hooks.IterationTimer(), hooks.LRScheduler()]
        if self.model_ema is not None:
            ret.append(ModelEMAHook(self.model_ema))
        ret.extend(build_registered_hooks(self.cfg, self))
        if cfg.TEST.PRECISE_BN.ENABLED and hooks.get_bn_modules(self.model):
            ret.append(hooks.PreciseBN(cfg.TEST.EVAL_PERIOD, self.model,
                                       self.build_train_loader(cfg), cfg.TEST.PRECISE_BN.NUM_ITER))
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        if cfg.TEST.VAL_LOSS_PERIOD > 0:
            ret.append(hooks.ValidationLoss(cfg.TEST.VAL_LOSS_PERIOD, self.model,
                                            self.build_validation_loss_loader(cfg)))

        def test_and_save_results():
            if self.model_ema is None:
                self._last_eval_results = self.test(self.cfg, self.model)
            else:
                with self.model_ema.applied(self.model):
                    self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results

        # Evaluation runs on every process (inference is distributed), before the writer so the
        # results reach metrics.json.
        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        return ret

    def build_writers(self) -> List[Any]:
        """The event writers of the PeriodicWriter hook: ``default_writers(OUTPUT_DIR,
        max_iter)``. Override to write elsewhere or more often."""
        return default_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def train(self) -> Optional[Dict[str, Any]]:
        """Train from ``start_iter`` to SOLVER.MAX_ITER with the hooks.

        Returns:
            the last evaluation results on the main process, checked against
            TEST.EXPECTED_RESULTS with ``verify_results`` when that is set (RuntimeError when
            they do not match); else None.
        """
        super().train(self.start_iter, self.max_iter)
        if len(self.cfg.TEST.EXPECTED_RESULTS) and comm.is_main_process():
            if not hasattr(self, "_last_eval_results"):
                raise RuntimeError(
                    "TEST.EXPECTED_RESULTS is set but training produced no evaluation results: "
                    "set DATASETS.TEST, or clear TEST.EXPECTED_RESULTS."
                )
            if not verify_results(self.cfg, self._last_eval_results):
                raise RuntimeError(
                    "The evaluation results do not match TEST.EXPECTED_RESULTS (the mismatches "
                    "are logged above)."
                )
            return self._last_eval_results
        return None

    def run_step(self) -> None:
        """One step of the inner ``SimpleTrainer`` / ``AMPTrainer`` at this iteration."""
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def state_dict(self) -> Dict[str, Any]:
        """The iteration, the hooks' states and the inner trainer's (optimizer, scaler)."""
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore what ``state_dict()`` returned."""
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])

    # ------------------------------------------------------------------ builders (overridable)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """``segtron.modeling.build_model(cfg)``, logged."""
        model = build_model(cfg)
        logging.getLogger(__name__).info("Model:\n%s", model)
        return model

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        """``segtron.solver.build_optimizer(cfg, model)``."""
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        """``segtron.solver.build_lr_scheduler(cfg, optimizer)``."""
        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """``build_detection_train_loader(cfg)``: an infinite loader of DATASETS.TRAIN; the
        registered loader DATALOADER.TRAIN_LOADER names instead, when it is set."""
        if cfg.DATALOADER.TRAIN_LOADER:
            return build_registered_train_loader(cfg)
        return build_detection_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """``build_detection_test_loader(cfg, dataset_name)``."""
        return build_detection_test_loader(cfg, dataset_name)

    @classmethod
    def build_validation_loss_loader(cls, cfg: CfgNode):
        """Loader of the ValidationLoss hook: the datasets of DATASETS.TEST, once over, with
        their annotations (so the model returns losses) and the test-time resizing (no random
        augmentation)."""
        mapper = DatasetMapper(cfg, is_train=True,
                               augmentations=build_augmentation(cfg, is_train=False))
        return build_detection_test_loader(cfg, list(cfg.DATASETS.TEST), mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str):
        """The evaluator of ``dataset_name``; implement it in a subclass (train_net.py's
        ``Trainer`` does), or pass ``evaluators`` to :meth:`test`."""
        raise NotImplementedError(
            f"{cls.__name__}.build_evaluator is not implemented, so dataset '{dataset_name}' "
            "cannot be evaluated. Subclass DefaultTrainer and implement build_evaluator (see "
            "train_net.py), or pass evaluators to DefaultTrainer.test."
        )

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators=None) -> Dict[str, Any]:
        """Evaluate ``model`` on every dataset of DATASETS.TEST.

        Args:
            cfg: the config.
            model: the model (evaluated in eval mode, then put back in its mode).
            evaluators: None (``build_evaluator`` per dataset), one evaluator, or a list with
                one per dataset of DATASETS.TEST.

        Returns:
            ``{dataset name: results}``, or the results themselves when there is one dataset.
            A dataset without an evaluator gets ``{}`` (with a warning).
        """
        log = logging.getLogger(__name__)
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(cfg.DATASETS.TEST) != len(evaluators):
            raise ValueError(
                f"DefaultTrainer.test got {len(evaluators)} evaluator(s) for "
                f"{len(cfg.DATASETS.TEST)} dataset(s) in DATASETS.TEST; give one per dataset."
            )
        results: Dict[str, Any] = OrderedDict()
        for idx, dataset_name in enumerate(cfg.DATASETS.TEST):
            data_loader = cls.build_test_loader(cfg, dataset_name)
            if evaluators is not None:
                evaluator = evaluators[idx]
            else:
                try:
                    evaluator = cls.build_evaluator(cfg, dataset_name)
                except NotImplementedError as err:
                    log.warning("No evaluator for dataset '%s' (%s); skipping it.",
                                dataset_name, err)
                    results[dataset_name] = {}
                    continue
            results_i = inference_on_dataset(model, data_loader, evaluator)
            results[dataset_name] = results_i
            if comm.is_main_process():
                if not isinstance(results_i, dict):
                    raise TypeError(
                        f"The evaluator of '{dataset_name}' returned {type(results_i).__name__}; "
                        "DatasetEvaluator.evaluate() must return a dict on the main process."
                    )
                log.info("Evaluation results for %s in csv format:", dataset_name)
                print_csv_format(results_i)
        if len(results) == 1:
            results = list(results.values())[0]
        return results

    @staticmethod
    def auto_scale_workers(cfg: CfgNode, num_workers: int) -> CfgNode:
        """Scale the batch size, learning rate and schedule from SOLVER.REFERENCE_WORLD_SIZE
        to ``num_workers`` processes, following the linear scaling rule.

        With reference world size R (0: disabled) and scale ``s = num_workers / R``:
        IMS_PER_BATCH and BASE_LR are multiplied by ``s``; MAX_ITER, WARMUP_ITERS, STEPS,
        TEST.EVAL_PERIOD and CHECKPOINT_PERIOD are divided by ``s`` (rounded); REFERENCE_WORLD_SIZE
        becomes ``num_workers``. So the per-process batch stays the same, and so do the number
        of epochs and the schedule in epochs.

        Returns:
            ``cfg`` itself when R is 0 or already ``num_workers``; else a scaled copy (frozen if
            ``cfg`` was).
        """
        old_world_size = cfg.SOLVER.REFERENCE_WORLD_SIZE
        if old_world_size == 0 or old_world_size == num_workers:
            return cfg
        if cfg.SOLVER.IMS_PER_BATCH % old_world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by "
                f"SOLVER.REFERENCE_WORLD_SIZE ({old_world_size}): it is the total batch of that "
                "many processes."
            )
        cfg = cfg.clone()
        frozen = cfg.is_frozen()
        cfg.defrost()
        scale = num_workers / old_world_size
        solver = cfg.SOLVER
        solver.IMS_PER_BATCH = int(round(solver.IMS_PER_BATCH * scale))
        solver.BASE_LR = solver.BASE_LR * scale
        solver.MAX_ITER = int(round(solver.MAX_ITER / scale))
        solver.WARMUP_ITERS = int(round(solver.WARMUP_ITERS / scale))
        solver.STEPS = tuple(int(round(s / scale)) for s in solver.STEPS)
        solver.CHECKPOINT_PERIOD = int(round(solver.CHECKPOINT_PERIOD / scale))
        cfg.TEST.EVAL_PERIOD = int(round(cfg.TEST.EVAL_PERIOD / scale))
        solver.REFERENCE_WORLD_SIZE = num_workers  # the scaled config describes this world
        logging.getLogger(__name__).info(
            "Auto-scaling the config to %d processes (reference %d): IMS_PER_BATCH=%d, "
            "BASE_LR=%g, MAX_ITER=%d, WARMUP_ITERS=%d, STEPS=%s.", num_workers, old_world_size,
            solver.IMS_PER_BATCH, solver.BASE_LR, solver.MAX_ITER, solver.WARMUP_ITERS,
            solver.STEPS)
        if frozen:
            cfg.freeze()
        return cfg
