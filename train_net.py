#!/usr/bin/env python
"""Train or evaluate any segtron model from a config: segtron's ``tools/train_net.py``.

    python train_net.py --config-file configs/Shapes/tiny_mask_rcnn_R_50_FPN.yaml
    python train_net.py --config-file cfg.yaml --num-gpus 8
    python train_net.py --config-file cfg.yaml --num-gpus 2 MODEL.DEVICE cpu    # 2 CPU processes
    python train_net.py --config-file cfg.yaml --resume                         # continue
    python train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python train_net.py --config-file cfg.yaml --eval-only MODEL.WEIGHTS m.pth TEST.AUG.ENABLED True

Every package under ``projects/`` (a directory with an ``__init__.py``) is imported first, in
every process: a project registers its components on import, and may define
``add_config(cfg)``, which is called on the default config before the config file is merged,
so the project's keys exist. See ``projects/README.md``.

Detectron2-style scripts subclass ``Trainer`` (or ``DefaultTrainer``) to change what is built;
this file is meant to be copied and edited as much as to be run.
"""

import logging
import os
import sys
from collections import OrderedDict
from datetime import timedelta
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
if REPO_ROOT not in sys.path:  # runnable as `python train_net.py` without installing segtron
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from segtron.checkpoint import DetectionCheckpointer  # noqa: E402
from segtron.config import CfgNode  # noqa: E402
from segtron.data import (  # noqa: E402
    DatasetMapper,
    MetadataCatalog,
    build_detection_train_loader,
)
from segtron.data.sem_seg_augmentation import build_sem_seg_train_augmentation  # noqa: E402
from segtron.engine.defaults import (  # noqa: E402
    DefaultTrainer,
    default_argument_parser,
    default_setup,
)
from segtron.engine import hooks  # noqa: E402
from segtron.engine.launch import launch  # noqa: E402
from segtron.engine.projects import get_cfg_with_projects, load_projects  # noqa: E402
from segtron.engine.model_ema import load_model_ema_for_eval  # noqa: E402
from segtron.evaluation import (  # noqa: E402
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
    verify_results,
)
from segtron.modeling import GeneralizedRCNNWithTTA  # noqa: E402
from segtron.utils import comm  # noqa: E402

logger = logging.getLogger("segtron.train_net")

PROJECTS_DIR = os.path.join(REPO_ROOT, "projects")


# Imported at module level, so that the processes started by `launch` (which import this file
# anew, with the "spawn" method) register the projects' components too.
PROJECTS = load_projects(PROJECTS_DIR)


def evaluator_classes(dataset_name: str) -> List[type]:
    """The evaluators that score ``dataset_name``, from its metadata's ``evaluator_type``:

    - "coco": ``COCOEvaluator`` (boxes, masks, keypoints);
    - "sem_seg": ``SemSegEvaluator`` (mIoU, fwIoU, mACC, pACC);
    - "cityscapes_sem_seg": ``CityscapesSemSegEvaluator`` (IoU, iIoU, IoU_sup, iIoU_sup through
      cityscapesScripts, as Detectron2);
    - "cityscapes_instance": ``CityscapesInstanceEvaluator`` (mask AP, AP50 through
      cityscapesScripts);
    - "coco_panoptic_seg": ``COCOPanopticEvaluator`` (PQ), plus ``SemSegEvaluator`` when the
      dataset has semantic labels (metadata ``sem_seg_root``, the "_separated" registrations)
      and ``COCOEvaluator`` when it has an instances json (metadata ``json_file``);
    - "pascal_voc": ``PascalVOCDetectionEvaluator`` (VOC07 11-point / VOC12 area AP at IoU
      0.50:0.95);
    - "lvis": ``LVISEvaluator`` (LVIS's federated box / mask AP with APr / APc / APf; segtron's
      own implementation of the LVIS evaluation).

    Raises:
        NotImplementedError: for any other type, naming the dataset, its type and the
            supported ones (so a run fails at start-up, not after training).
    """
    metadata = MetadataCatalog.get(dataset_name)
    evaluator_type = metadata.get("evaluator_type")
    if evaluator_type == "coco":
        return [COCOEvaluator]
    if evaluator_type == "sem_seg":
        return [SemSegEvaluator]
    if evaluator_type == "cityscapes_sem_seg":
        return [CityscapesSemSegEvaluator]
    if evaluator_type == "cityscapes_instance":
        return [CityscapesInstanceEvaluator]
    if evaluator_type == "coco_panoptic_seg":
        classes = [SemSegEvaluator] if metadata.get("sem_seg_root") else []
        classes += [COCOEvaluator] if metadata.get("json_file") else []
        return classes + [COCOPanopticEvaluator]
    if evaluator_type == "pascal_voc":
        return [PascalVOCDetectionEvaluator]
    if evaluator_type == "lvis":
        return [LVISEvaluator]
    raise NotImplementedError(
        f"No evaluator for dataset '{dataset_name}' with evaluator_type {evaluator_type!r}; "
        "train_net.py evaluates 'coco', 'sem_seg', 'cityscapes_sem_seg', 'cityscapes_instance', "
        "'coco_panoptic_seg', 'pascal_voc' and 'lvis'. "
        "Set the dataset's metadata (e.g. "
        f"MetadataCatalog.get('{dataset_name}').evaluator_type = 'coco' for COCO-style "
        "annotations), drop it from DATASETS.TEST, or add a branch for your type to "
        "evaluator_classes in train_net.py."
    )


def train_mapper(cfg: CfgNode) -> DatasetMapper:
    """The mapper of the training loader: ``DatasetMapper(cfg, is_train=True)``; for
    MODEL.META_ARCHITECTURE "SemanticSegmentor", with ``build_sem_seg_train_augmentation``'s
    augmentations (resize, then crop per INPUT.CROP, then flip, as Detectron2's DeepLab training
    script does), so a crop has a fixed network size."""
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        return DatasetMapper(
            cfg, is_train=True, augmentations=build_sem_seg_train_augmentation(cfg)
        )
    return DatasetMapper(cfg, is_train=True)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with evaluators chosen by each test dataset's ``evaluator_type``, and
    the training mapper of :func:`train_mapper`."""

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """The default training loader with :func:`train_mapper`'s mapper, or the registered
        loader DATALOADER.TRAIN_LOADER names (a project's)."""
        if cfg.DATALOADER.TRAIN_LOADER:
            return super().build_train_loader(cfg)
        return build_detection_train_loader(cfg, mapper=train_mapper(cfg))

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str,
                        output_folder: Optional[str] = None):
        """The evaluator(s) of ``dataset_name`` (see :func:`evaluator_classes`), writing to
        ``output_folder`` (default ``<OUTPUT_DIR>/inference``): one evaluator, or a
        ``DatasetEvaluators`` of several."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        evaluators = [
            evaluator_class(dataset_name, output_dir=output_folder)
            for evaluator_class in evaluator_classes(dataset_name)
        ]
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def test_with_TTA(cls, cfg: CfgNode, model: torch.nn.Module) -> Dict[str, Any]:
        """Evaluate ``model`` (a GeneralizedRCNN, possibly in DDP) with test-time augmentation
        (``GeneralizedRCNNWithTTA``: TEST.AUG.MIN_SIZES, MAX_SIZE, FLIP) on DATASETS.TEST, the
        evaluators writing to ``<OUTPUT_DIR>/inference_TTA``.

        Returns:
            :meth:`test`'s results with every top-level key suffixed "_TTA" (``bbox`` ->
            ``bbox_TTA``, or ``<dataset>`` -> ``<dataset>_TTA`` with several test datasets).
        """
        logger.info("Running inference with test-time augmentation ...")
        tta_model = GeneralizedRCNNWithTTA(cfg, model)
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA")
        evaluators = [
            cls.build_evaluator(cfg, name, output_folder=output_folder)
            for name in cfg.DATASETS.TEST
        ]
        results = cls.test(cfg, tta_model, evaluators)
        return OrderedDict((f"{key}_TTA", value) for key, value in results.items())

    def build_hooks(self) -> List[Any]:
        """The default hooks; with TEST.AUG.ENABLED also an ``EvalHook`` that evaluates with
        TTA after training (placed before the PeriodicWriter, so ``bbox_TTA/AP`` etc. reach
        metrics.json) and logs the AP change against the plain evaluation."""
        ret = super().build_hooks()
        if self.cfg.TEST.AUG.ENABLED:
            writer_at = next(
                (i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicWriter)), len(ret)
            )
            ret.insert(writer_at, hooks.EvalHook(0, self._test_with_TTA_after_training))
        return ret

    def _test_with_TTA_after_training(self) -> Dict[str, Any]:
        """:meth:`test_with_TTA` of the trained model (its EMA weights with MODEL_EMA, as the
        plain evaluation uses), logging the change from the last plain evaluation."""
        if self.model_ema is None:
            tta_results = self.test_with_TTA(self.cfg, self.model)
        else:
            with self.model_ema.applied(self.model):
                tta_results = self.test_with_TTA(self.cfg, self.model)
        plain_results = getattr(self, "_last_eval_results", None)
        if comm.is_main_process() and plain_results:
            log_tta_change(plain_results, tta_results)
        return tta_results


def _ap_pairs(
    results: Mapping, tta_results: Mapping
) -> Iterator[Tuple[str, float, float]]:
    """(name, plain AP, TTA AP) for every task with an "AP" in both results: top-level tasks
    (``bbox`` / ``bbox_TTA``), or tasks one level down with several test datasets
    (``<dataset>`` / ``<dataset>_TTA``, named "<dataset> <task>")."""
    for key, plain in results.items():
        tta = tta_results.get(f"{key}_TTA")
        if not isinstance(plain, Mapping) or not isinstance(tta, Mapping):
            continue
        if "AP" in plain and "AP" in tta:
            yield key, plain["AP"], tta["AP"]
            continue
        for task, task_plain in plain.items():
            task_tta = tta.get(task)
            if isinstance(task_plain, Mapping) and isinstance(task_tta, Mapping) \
                    and "AP" in task_plain and "AP" in task_tta:
                yield f"{key} {task}", task_plain["AP"], task_tta["AP"]


def log_tta_change(results: Mapping, tta_results: Mapping) -> None:
    """Log "TTA changes <task> AP from X to Y (+Z)" for each task evaluated both plainly
    (``results``) and with TTA (``tta_results``, keys suffixed "_TTA")."""
    for name, plain_ap, tta_ap in _ap_pairs(results, tta_results):
        logger.info(
            "TTA changes %s AP from %.2f to %.2f (%+.2f)", name, plain_ap, tta_ap, tta_ap - plain_ap
        )


def build_config(args) -> CfgNode:
    """The config of ``args`` (not frozen): defaults, every project's ``add_config``, then
    ``--config-file``, then the ``KEY VALUE`` overrides."""
    cfg = get_cfg_with_projects(PROJECTS)
    if args.config_file:
        cfg.merge_from_file(args.config_file,
                            allow_unsafe=bool(getattr(args, "allow_unsafe_yaml", False)))
    cfg.merge_from_list(list(args.opts or []))
    return cfg


def setup(args) -> CfgNode:
    """Build and freeze the config, then ``default_setup`` (logging, output dir, seeds)."""
    cfg = build_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args) -> Optional[Dict[str, Any]]:
    """Evaluate (``--eval-only``) or train, in each process. With TEST.AUG.ENABLED the model is
    also evaluated with test-time augmentation (after training, or after the plain evaluation
    with ``--eval-only``; results under ``bbox_TTA`` etc.) and the AP change is logged."""
    cfg = setup(args)
    for dataset_name in cfg.DATASETS.TEST:  # fail now rather than after training
        evaluator_classes(dataset_name)

    if args.eval_only:
        model = Trainer.build_model(cfg)
        if cfg.TEST.AUG.ENABLED:
            GeneralizedRCNNWithTTA(cfg, model)  # an unsupported model fails before evaluating
        remaining = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        load_model_ema_for_eval(cfg, model, remaining or {})  # MODEL_EMA: its average
        results = Trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            tta_results = Trainer.test_with_TTA(cfg, model)
            if comm.is_main_process():
                log_tta_change(results, tta_results)
            results.update(tta_results)
        if comm.is_main_process() and not verify_results(cfg, results):
            raise RuntimeError(
                "The evaluation results do not match TEST.EXPECTED_RESULTS (the mismatches are "
                "logged above)."
            )
        return results

    trainer = Trainer(cfg)
    if cfg.TEST.AUG.ENABLED:
        GeneralizedRCNNWithTTA(cfg, trainer.model)  # fail now rather than after training
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_backend(cfg: CfgNode) -> Optional[str]:
    """The process-group backend for ``cfg``: "gloo" when MODEL.DEVICE is the CPU, else None
    (NCCL when CUDA is available). Fails before any process starts when MODEL.DEVICE names
    CUDA on a machine without it."""
    device = torch.device(str(cfg.MODEL.DEVICE))
    if device.type == "cuda" and not torch.cuda.is_available():
        # build_model has the message (and the suggestion to use MODEL.DEVICE cpu).
        from segtron.modeling.meta_arch.build import resolve_device

        resolve_device(str(cfg.MODEL.DEVICE))
    return "gloo" if device.type == "cpu" else None


def collective_timeout(cfg: CfgNode, args) -> timedelta:
    """How long a process waits at a collective: ``--dist-timeout`` if given, else the config's
    ``DIST.TIMEOUT_MINUTES``. Raises ValueError for a value that is not above 0."""
    minutes = args.dist_timeout if args.dist_timeout is not None else cfg.DIST.TIMEOUT_MINUTES
    if not float(minutes) > 0:
        raise ValueError(
            f"DIST.TIMEOUT_MINUTES is {minutes}; set it to the minutes (above 0) a process waits "
            "for the others at a collective before the job fails, e.g. DIST.TIMEOUT_MINUTES 10."
        )
    return timedelta(minutes=float(minutes))


def invoke_main(argv: Optional[List[str]] = None) -> None:
    """Parse the command line and run ``main`` in every process of the job."""
    args = default_argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    cfg = build_config(args)
    backend = launch_backend(cfg)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
        timeout=collective_timeout(cfg, args),
        backend=backend,
    )


if __name__ == "__main__":
    invoke_main()
