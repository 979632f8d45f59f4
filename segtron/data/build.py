"""Build dataset dicts and data loaders for training and inference (``detectron2.data.build``)."""

import itertools
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.utils.data as torchdata
from tabulate import tabulate

from segtron.config import configurable
from segtron.structures import BoxMode
from segtron.utils import comm
from segtron.utils.env import seed_all_rng
from segtron.utils.file_io import PathManager
from segtron.utils.safe_unpickling import load_pickle

from .catalog import DatasetCatalog, MetadataCatalog
from .common import AspectRatioGroupedDataset, DatasetFromList, MapDataset, ToIterableDataset
from .dataset_mapper import DatasetMapper
from .detection_utils import check_metadata_consistency
from .samplers import (
    InferenceSampler,
    RandomSubsetTrainingSampler,
    RepeatFactorTrainingSampler,
    TrainingSampler,
)
from .train_data_checks import check_annotation_fields, check_num_classes

__all__ = [
    "build_batch_data_loader",
    "build_detection_train_loader",
    "build_detection_test_loader",
    "get_detection_dataset_dicts",
    "load_proposals_into_dataset",
    "print_instances_class_histogram",
    "trivial_batch_collator",
    "worker_init_reset_seed",
]

logger = logging.getLogger(__name__)


def filter_images_with_only_crowd_annotations(
    dataset_dicts: List[Dict], dataset_names: Sequence[str] = ()
) -> List[Dict]:
    """Keep the images that have at least one non-crowd annotation; log how many were removed."""
    kept = [
        d for d in dataset_dicts if any(a.get("iscrowd", 0) == 0 for a in d["annotations"])
    ]
    logger.info(
        "Removed %d images with no usable annotations%s. %d images left.",
        len(dataset_dicts) - len(kept),
        f" from {', '.join(dataset_names)}" if dataset_names else "",
        len(kept),
    )
    return kept


def filter_images_with_few_keypoints(dataset_dicts: List[Dict], min_keypoints_per_image: int):
    """Keep the images with at least ``min_keypoints_per_image`` visible (v > 0) keypoints."""

    def visible(d: Dict) -> int:
        return sum(
            int((np.asarray(a["keypoints"])[2::3] > 0).sum())
            for a in d["annotations"]
            if "keypoints" in a
        )

    kept = [d for d in dataset_dicts if visible(d) >= min_keypoints_per_image]
    logger.info(
        "Removed %d images with fewer than %d keypoints.",
        len(dataset_dicts) - len(kept),
        min_keypoints_per_image,
    )
    return kept


def load_proposals_into_dataset(dataset_dicts: List[Dict], proposal_file: str) -> List[Dict]:
    """Attach precomputed proposals from a pickle file to the dataset dicts, in place.

    The file holds a dict with "ids" (image ids), "boxes" (list of Nx4 arrays),
    "objectness_logits" (list of (N,) arrays) and optionally "bbox_mode" (default XYXY_ABS);
    the legacy keys "indexes" and "scores" are accepted for "ids" and "objectness_logits".
    Each dict gets ``proposal_boxes``, ``proposal_objectness_logits`` and ``proposal_bbox_mode``.

    Raises:
        KeyError: naming the file and an image id that has no proposals in it.
    """
    logger.info("Loading proposals from: %s", proposal_file)
    with PathManager.open(proposal_file, "rb") as f:
        proposals = load_pickle(f, proposal_file, what="proposal file")
    for old, new in (("indexes", "ids"), ("scores", "objectness_logits")):
        if old in proposals and new not in proposals:
            proposals[new] = proposals.pop(old)
    wanted = {str(d["image_id"]) for d in dataset_dicts}
    row_of = {str(i): row for row, i in enumerate(proposals["ids"]) if str(i) in wanted}
    mode = BoxMode(proposals["bbox_mode"]) if "bbox_mode" in proposals else BoxMode.XYXY_ABS
    for d in dataset_dicts:
        key = str(d["image_id"])
        if key not in row_of:
            raise KeyError(
                f"Proposal file {proposal_file} has no proposals for image_id {d['image_id']}; "
                "was it computed on another dataset or split?"
            )
        row = row_of[key]
        d["proposal_boxes"] = proposals["boxes"][row]
        d["proposal_objectness_logits"] = proposals["objectness_logits"][row]
        d["proposal_bbox_mode"] = mode
    return dataset_dicts


def print_instances_class_histogram(dataset_dicts: List[Dict], class_names: Sequence[str]) -> None:
    """Log a table of the number of non-crowd instances per class.

    Raises:
        ValueError: an annotation's ``category_id`` is not a valid contiguous id in
            ``[0, len(class_names))``.
    """
    num_classes = len(class_names)
    classes = np.asarray(
        [
            a["category_id"]
            for d in dataset_dicts
            for a in d["annotations"]
            if not a.get("iscrowd", 0)
        ],
        dtype=np.int64,
    )
    if classes.size:
        bad = classes[(classes < 0) | (classes >= num_classes)]
        if bad.size:
            raise ValueError(
                f"Got an invalid category_id={int(bad[0])} for a dataset of {num_classes} "
                "classes; category ids must be contiguous in [0, num_classes). Map the dataset's "
                "ids through thing_dataset_id_to_contiguous_id."
            )
    counts = np.bincount(classes, minlength=num_classes) if num_classes else np.zeros(0, int)

    def short(name: str) -> str:
        return name if len(name) <= 13 else name[:11] + ".."

    cells = list(
        itertools.chain.from_iterable((short(n), int(c)) for n, c in zip(class_names, counts))
    )
    n_cols = min(6, len(cells)) or 2
    total = int(counts.sum())
    cells += [None] * ((n_cols - len(cells) % n_cols) % n_cols)
    if num_classes > 1:
        cells += ["total", total] + [None] * (n_cols - 2)
    rows = [cells[i : i + n_cols] for i in range(0, len(cells), n_cols)]
    table = tabulate(
        rows,
        headers=["category", "#instances"] * (n_cols // 2),
        tablefmt="pipe",
        numalign="left",
        stralign="center",
    )
    logger.info("Distribution of instances among all %d categories:\n%s", num_classes, table)


def get_detection_dataset_dicts(
    names: Union[str, Sequence[str]],
    filter_empty: bool = True,
    min_keypoints: int = 0,
    proposal_files: Optional[Sequence[str]] = None,
    check_consistency: bool = True,
):
    """Load and concatenate the dataset dicts of registered datasets.

    Args:
        names: one dataset name or a list of names.
        filter_empty: drop images without non-crowd annotations (only when the dicts have
            "annotations").
        min_keypoints: drop images with fewer visible keypoints (0 disables).
        proposal_files: one precomputed-proposal file per dataset, or None.
        check_consistency: check that the datasets share ``thing_classes`` and log the class
            histogram.

    Returns:
        list[dict] (or a torch Dataset when the catalog returns Dataset objects).

    Raises:
        ValueError: a dataset is empty, or nothing is left after filtering (naming them).
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("get_detection_dataset_dicts needs at least one dataset name.")
    per_dataset = [DatasetCatalog.get(name) for name in names]

    if isinstance(per_dataset[0], torchdata.Dataset):
        return per_dataset[0] if len(per_dataset) == 1 else torchdata.ConcatDataset(per_dataset)

    for name, dicts in zip(names, per_dataset):
        if len(dicts) == 0:
            raise ValueError(
                f"Dataset '{name}' is empty! Check its registration and the annotation file it "
                "reads."
            )
    if proposal_files is not None:
        if len(proposal_files) != len(names):
            raise ValueError(
                f"Got {len(proposal_files)} proposal files for {len(names)} datasets "
                f"({', '.join(names)}); give one per dataset."
            )
        per_dataset = [
            load_proposals_into_dataset(dicts, f) for dicts, f in zip(per_dataset, proposal_files)
        ]

    dataset_dicts = list(itertools.chain.from_iterable(per_dataset))
    has_instances = "annotations" in dataset_dicts[0]
    if filter_empty and has_instances:
        dataset_dicts = filter_images_with_only_crowd_annotations(dataset_dicts, names)
    if min_keypoints > 0 and has_instances:
        dataset_dicts = filter_images_with_few_keypoints(dataset_dicts, min_keypoints)

    if check_consistency and has_instances:
        try:
            class_names = MetadataCatalog.get(names[0]).thing_classes
            check_metadata_consistency("thing_classes", names)
        except AttributeError:  # a dataset without class names: nothing to check or print
            class_names = None
        if class_names is not None:
            print_instances_class_histogram(dataset_dicts, class_names)

    if not dataset_dicts:
        raise ValueError(
            f"No valid data found in {', '.join(names)}: every image was filtered out (images "
            "without annotations or with too few keypoints)."
        )
    return dataset_dicts


def trivial_batch_collator(batch: List[Any]) -> List[Any]:
    """Collate function that returns the batch (a list of dicts) unchanged."""
    return batch


def worker_init_reset_seed(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, torch and ``random`` per worker.

    The seed is derived from torch's per-worker initial seed (which differs across workers and
    across epochs), so forked workers do not all replay the same numpy random augmentations.
    """
    initial_seed = torch.initial_seed() % 2**31
    seed_all_rng(initial_seed + worker_id)


def build_batch_data_loader(
    dataset,
    sampler,
    total_batch_size: int,
    *,
    aspect_ratio_grouping: bool = False,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    drop_last: bool = True,
    single_gpu_batch_size: Optional[int] = None,
    seed: Optional[int] = None,
    **kwargs,
):
    """Build a loader yielding per-process batches of ``total_batch_size / world_size``.

    Args:
        dataset: map-style dataset (read through ``sampler``) or an IterableDataset (then
            ``sampler`` must be None and the dataset must shard itself).
        sampler: index sampler, already sharded by rank.
        total_batch_size: batch size summed over all processes (or None with
            ``single_gpu_batch_size``).
        aspect_ratio_grouping: batch landscape and portrait images separately.
        num_workers: DataLoader worker processes.
        collate_fn: applied to each batch (a list); default returns the list unchanged.
        drop_last: drop an incomplete last batch (without aspect-ratio grouping).
        single_gpu_batch_size: per-process batch size, instead of ``total_batch_size``.
        seed: seed of the DataLoader's generator (worker base seeds), for reproducibility.
        kwargs: passed to ``torch.utils.data.DataLoader``.

    Returns:
        an iterable of batches (lists of mapped dicts by default).

    Raises:
        ValueError: ``total_batch_size`` not divisible by the number of processes.
    """
    if single_gpu_batch_size is not None:
        if total_batch_size:
            raise ValueError(
                "Give either total_batch_size or single_gpu_batch_size to "
                "build_batch_data_loader, not both."
            )
        batch_size = single_gpu_batch_size
    else:
        world_size = comm.get_world_size()
        if total_batch_size <= 0 or total_batch_size % world_size != 0:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be divisible by the number of "
                f"processes ({world_size}); set it to a multiple of {world_size}."
            )
        batch_size = total_batch_size // world_size

    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("A sampler cannot be used with an IterableDataset; pass sampler=None.")
    else:
        dataset = ToIterableDataset(dataset, sampler, shard_chunk_size=batch_size)

    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)

    if aspect_ratio_grouping:
        # Load single elements (batch_size=None: no automatic batching; the identity collate
        # keeps numpy arrays as they are), then group them into batches here.
        loader = torchdata.DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=trivial_batch_collator,
            worker_init_fn=worker_init_reset_seed,
            generator=generator,
            **kwargs,
        )
        grouped = AspectRatioGroupedDataset(loader, batch_size)
        return grouped if collate_fn is None else MapDataset(grouped, collate_fn)
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
        worker_init_fn=worker_init_reset_seed,
        generator=generator,
        **kwargs,
    )


def _train_loader_from_config(cfg, mapper=None, *, dataset=None, sampler=None) -> Dict[str, Any]:
    if dataset is None:
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=(
                cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0
            ),
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        if isinstance(dataset, list):
            check_annotation_fields(cfg, cfg.DATASETS.TRAIN, dataset)
    check_num_classes(cfg, cfg.DATASETS.TRAIN)
    if mapper is None:
        mapper = DatasetMapper(cfg, True)

    if sampler is None:
        name = cfg.DATALOADER.SAMPLER_TRAIN
        logger.info("Using training sampler %s", name)
        if isinstance(dataset, torchdata.IterableDataset):
            logger.info("Not using any sampler since the dataset is an IterableDataset.")
        elif name == "TrainingSampler":
            sampler = TrainingSampler(len(dataset))
        elif name == "RepeatFactorTrainingSampler":
            factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
                dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT
            )
            sampler = RepeatFactorTrainingSampler(factors)
        elif name == "RandomSubsetTrainingSampler":
            ratio = cfg.DATALOADER.get("RANDOM_SUBSET_RATIO")
            if ratio is None:
                raise KeyError(
                    "DATALOADER.SAMPLER_TRAIN='RandomSubsetTrainingSampler' needs "
                    "DATALOADER.RANDOM_SUBSET_RATIO (fraction of the dataset, in (0, 1]) in the "
                    "config."
                )
            sampler = RandomSubsetTrainingSampler(len(dataset), ratio)
        else:
            raise ValueError(
                f"Unknown DATALOADER.SAMPLER_TRAIN '{name}'; use TrainingSampler, "
                "RepeatFactorTrainingSampler or RandomSubsetTrainingSampler."
            )
    return {
        "dataset": dataset,
        "sampler": sampler,
        "mapper": mapper,
        "total_batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "aspect_ratio_grouping": cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
    }


@configurable(from_config=_train_loader_from_config)
def build_detection_train_loader(
    dataset,
    *,
    mapper,
    sampler=None,
    total_batch_size: int,
    aspect_ratio_grouping: bool = True,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
    **kwargs,
):
    """Build the (infinite) training loader.

    From a config: ``build_detection_train_loader(cfg, mapper=None)`` loads
    ``DATASETS.TRAIN`` (filtered per ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), maps with
    ``DatasetMapper(cfg, True)``, samples with ``DATALOADER.SAMPLER_TRAIN`` and batches
    ``SOLVER.IMS_PER_BATCH`` images over all processes. It first checks the data against the
    model (segtron addition, ``train_data_checks``): each dataset's class count against the
    model's ``NUM_CLASSES`` (a dataset with more classes is a ValueError, with fewer a
    warning) and, for the dicts it loads, a ``segmentation`` / ``keypoints`` on every instance
    with ``MODEL.MASK_ON`` / ``MODEL.KEYPOINT_ON``.

    Args:
        dataset: list of dataset dicts or a torch Dataset (map-style or iterable).
        mapper: callable dataset dict -> model input dict; None to use the dicts as they are.
        sampler: index sampler; default ``TrainingSampler(len(dataset))``.
        total_batch_size: images per iteration summed over all processes.
        aspect_ratio_grouping: batch landscape and portrait images separately.
        num_workers: DataLoader worker processes.
        collate_fn: batch (a list of dicts) -> model input; default keeps the list.

    Returns:
        an infinite iterable of batches (``list[dict]`` by default) of
        ``total_batch_size / world_size`` elements.
    """
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None when the dataset is an IterableDataset.")
    else:
        if sampler is None:
            sampler = TrainingSampler(len(dataset))
        if not isinstance(sampler, torchdata.Sampler):
            raise TypeError(f"Expected a torch Sampler, got {type(sampler).__name__}.")
    return build_batch_data_loader(
        dataset,
        sampler,
        total_batch_size,
        aspect_ratio_grouping=aspect_ratio_grouping,
        num_workers=num_workers,
        collate_fn=collate_fn,
        **kwargs,
    )


def _test_loader_from_config(cfg, dataset_name, mapper=None) -> Dict[str, Any]:
    names = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name)
    proposal_files = None
    if cfg.MODEL.LOAD_PROPOSALS:
        test_names = list(cfg.DATASETS.TEST)
        missing = [n for n in names if n not in test_names]
        if missing:
            raise ValueError(
                f"MODEL.LOAD_PROPOSALS needs {', '.join(missing)} in DATASETS.TEST to find its "
                "entry in DATASETS.PROPOSAL_FILES_TEST."
            )
        proposal_files = [cfg.DATASETS.PROPOSAL_FILES_TEST[test_names.index(n)] for n in names]
    dataset = get_detection_dataset_dicts(names, filter_empty=False, proposal_files=proposal_files)
    if mapper is None:
        mapper = DatasetMapper(cfg, False)
    return {
        "dataset": dataset,
        "mapper": mapper,
        "num_workers": cfg.DATALOADER.NUM_WORKERS,
        "sampler": (
            None
            if isinstance(dataset, torchdata.IterableDataset)
            else InferenceSampler(len(dataset))
        ),
    }


@configurable(from_config=_test_loader_from_config)
def build_detection_test_loader(
    dataset,
    *,
    mapper,
    sampler=None,
    batch_size: int = 1,
    num_workers: int = 0,
    collate_fn: Optional[Callable] = None,
):
    """Build the (finite) inference loader.

    From a config: ``build_detection_test_loader(cfg, dataset_name, mapper=None)`` loads the
    named dataset(s) without filtering and maps with ``DatasetMapper(cfg, False)``.

    Args:
        dataset: list of dataset dicts or a torch Dataset.
        mapper: callable dataset dict -> model input dict, or None.
        sampler: default ``InferenceSampler`` (each rank a contiguous shard, every image once).
        batch_size: images per batch on this process (1 keeps the reported per-image
            inference time meaningful).
        num_workers: DataLoader worker processes.
        collate_fn: default returns the list unchanged.

    Returns:
        a ``torch.utils.data.DataLoader`` yielding ``list[dict]``.
    """
    if isinstance(dataset, list):
        dataset = DatasetFromList(dataset, copy=False)
    if mapper is not None:
        dataset = MapDataset(dataset, mapper)
    if isinstance(dataset, torchdata.IterableDataset):
        if sampler is not None:
            raise ValueError("sampler must be None when the dataset is an IterableDataset.")
    elif sampler is None:
        sampler = InferenceSampler(len(dataset))
    return torchdata.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=trivial_batch_collator if collate_fn is None else collate_fn,
    )
