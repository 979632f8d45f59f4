"""Helpers shared by dataset mappers: image reading, annotation transforms, ``Instances``.

Same names and semantics as ``detectron2.data.detection_utils``. Dataset dicts follow
Detectron2's standard format: ``file_name``, ``height``, ``width``, ``image_id`` and
``annotations`` (a list of dicts with ``bbox``, ``bbox_mode``, ``category_id``, optional
``segmentation`` as polygons / COCO RLE / a HxW ndarray, optional ``keypoints`` as a flat
``[x1, y1, v1, x2, ...]`` list, optional ``iscrowd``).
"""

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import pycocotools.mask as mask_util
import torch

from segtron.structures import (
    BitMasks,
    Boxes,
    BoxMode,
    Instances,
    Keypoints,
    PolygonMasks,
    RotatedBoxes,
    polygons_to_bitmask,
)

from . import transforms as T
from .image_reading import (
    _INT_MODES,
    _open_image,
    _peek_mode,
    convert_image_to_rgb,
    convert_PIL_to_numpy,
    read_image,
)
from .catalog import MetadataCatalog

__all__ = [
    "SizeMismatchError",
    "convert_image_to_rgb",
    "convert_PIL_to_numpy",
    "read_image",
    "read_label_map",
    "check_image_size",
    "check_instance_annotations",
    "transform_proposals",
    "transform_instance_annotations",
    "transform_keypoint_annotations",
    "annotations_to_instances",
    "annotations_to_instances_rotated",
    "filter_empty_instances",
    "create_keypoint_hflip_indices",
    "get_fed_loss_cls_weights",
    "gen_crop_transform_with_instance",
    "check_metadata_consistency",
    "build_augmentation",
    "build_transform_gen",
]

logger = logging.getLogger(__name__)


class SizeMismatchError(ValueError):
    """The image read from disk does not have the height/width its dataset dict declares."""


def read_label_map(file_name: str) -> np.ndarray:
    """Read a semantic-segmentation label image (one class id per pixel) as an HxW uint8 array.

    8-bit files are read as Detectron2's mapper reads them, ``read_image(file_name, "L")``
    (so a replaced ``read_image`` serves labels too). A 16-bit file keeps its values, which
    must be 0..255: class ids are not scaled the way image intensities are, and the label
    values match what ``SemSegEvaluator`` reads from the same file. (segtron addition.)

    Raises:
        FileNotFoundError / ValueError: as :func:`read_image`; also ValueError naming the file
            when a 16-bit file holds values above 255.
    """
    if _peek_mode(file_name) not in _INT_MODES:
        return read_image(file_name, "L")[:, :, 0]
    image = _open_image(file_name)
    labels = np.asarray(image)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(
            f"Label map {file_name} (PIL mode '{image.mode}') holds values "
            f"{int(labels.min())}..{int(labels.max())}; semantic labels must be class ids "
            "0..255 (255 = ignore). Re-save it as an 8-bit PNG with ids in that range."
        )
    return labels.astype(np.uint8)


def check_image_size(dataset_dict: Dict[str, Any], image: np.ndarray) -> None:
    """Check that ``image`` (HxW[xC]) matches the ``height``/``width`` of ``dataset_dict``.

    Fills ``height``/``width`` in place from the image when they are missing.

    Raises:
        SizeMismatchError: the declared (width, height) differs from the image's.
    """
    actual_wh = (image.shape[1], image.shape[0])
    if "width" in dataset_dict or "height" in dataset_dict:
        expected_wh = (
            dataset_dict.get("width", actual_wh[0]),
            dataset_dict.get("height", actual_wh[1]),
        )
        if tuple(expected_wh) != actual_wh:
            where = f" for image {dataset_dict['file_name']}" if "file_name" in dataset_dict else ""
            raise SizeMismatchError(
                f"Mismatched image shape{where}: got (width, height) {actual_wh}, expected "
                f"{tuple(expected_wh)} from the dataset dict. Fix the width/height in the "
                "annotation file (or the image, if it was replaced)."
            )
    dataset_dict.setdefault("width", actual_wh[0])
    dataset_dict.setdefault("height", actual_wh[1])


def _bbox_is_finite(annotation: Dict[str, Any]) -> bool:
    return bool(np.isfinite(np.asarray(annotation["bbox"], dtype=np.float64)).all())


def _describe_annotation(annotation: Dict[str, Any], index: int) -> str:
    """``annotation #i (id 7, category_id 2, bbox [...])``: enough to find it in the data."""
    parts = [f"id {annotation['id']}"] if "id" in annotation else []
    parts += [f"{k} {annotation[k]}" for k in ("category_id", "bbox") if k in annotation]
    return f"annotation #{index} ({', '.join(parts)})"


def check_instance_annotations(
    annotations: List[Dict[str, Any]],
    file_name: str,
    *,
    need_masks: bool = False,
    need_keypoints: bool = False,
) -> None:
    """Check the non-crowd instance annotations of one image before they are transformed.

    Every box must be finite; with ``need_masks`` (``MODEL.MASK_ON``) every annotation needs a
    ``segmentation`` and with ``need_keypoints`` (``MODEL.KEYPOINT_ON``) a ``keypoints`` field.
    Without these checks a NaN box silently disappears (filtered as empty), an infinite one
    becomes a full-image box, and a box-only dataset fails deep inside the ROI heads.
    (segtron addition.)

    Raises:
        ValueError: naming ``file_name``, the annotation (position, id, category, box) and the
            fix.
    """
    for index, anno in enumerate(annotations):
        if anno.get("iscrowd", 0) != 0:
            continue
        where = f"Image {file_name}, {_describe_annotation(anno, index)}"
        if not _bbox_is_finite(anno):
            raise ValueError(
                f"{where}: the box has a NaN or infinite coordinate. Fix or remove this "
                "annotation in the dataset (load_coco_json drops such boxes with a warning; a "
                "dataset function returning its own dicts must do the same)."
            )
        for needed, key, flag in (
            (need_masks, "segmentation", "MODEL.MASK_ON"),
            (need_keypoints, "keypoints", "MODEL.KEYPOINT_ON"),
        ):
            if needed and key not in anno:
                raise ValueError(
                    f"{where}: has no '{key}', but {flag} is True and needs it for every "
                    f"instance. Set {flag} False, or add '{key}' to the dataset's annotations."
                )


def transform_proposals(
    dataset_dict: Dict[str, Any],
    image_shape: Tuple[int, int],
    transforms: "T.TransformList",
    *,
    proposal_topk: int,
    min_box_size: float = 0,
) -> None:
    """Move precomputed proposals of ``dataset_dict`` into ``dataset_dict["proposals"]``.

    Pops ``proposal_boxes`` (Nx4 in ``proposal_bbox_mode``), ``proposal_bbox_mode`` and
    ``proposal_objectness_logits`` (N,), transforms the boxes with ``transforms``, clips them to
    ``image_shape`` (h, w), drops boxes with a side not above ``min_box_size`` and keeps the
    first ``proposal_topk`` (proposal files are sorted by score). The result is an ``Instances``
    with ``proposal_boxes`` (Boxes) and ``objectness_logits`` (float32 tensor). Does nothing if
    the dict has no ``proposal_boxes``.
    """
    if "proposal_boxes" not in dataset_dict:
        return
    boxes = BoxMode.convert(
        np.asarray(dataset_dict.pop("proposal_boxes")),
        dataset_dict.pop("proposal_bbox_mode"),
        BoxMode.XYXY_ABS,
    )
    boxes = Boxes(transforms.apply_box(boxes))
    logits = torch.as_tensor(
        np.asarray(dataset_dict.pop("proposal_objectness_logits")).astype("float32")
    )
    boxes.clip(image_shape)
    keep = boxes.nonempty(threshold=min_box_size)
    proposals = Instances(image_shape)
    proposals.proposal_boxes = boxes[keep][:proposal_topk]
    proposals.objectness_logits = logits[keep][:proposal_topk]
    dataset_dict["proposals"] = proposals


def transform_instance_annotations(
    annotation: Dict[str, Any],
    transforms: Union["T.TransformList", Sequence["T.Transform"]],
    image_size: Tuple[int, int],
    *,
    keypoint_hflip_indices: Optional[np.ndarray] = None,
) -> Dict[str, Any]:
    """Apply ``transforms`` to the box, segmentation and keypoints of one instance annotation.

    Args:
        annotation: one instance dict in Detectron2's format; modified in place.
        transforms: a TransformList or a list of Transforms (the result of augmenting the image).
        image_size: (height, width) of the transformed image.
        keypoint_hflip_indices: for keypoints, the index each keypoint swaps with on a
            horizontal flip (see :func:`create_keypoint_hflip_indices`).

    Returns:
        The same dict, with ``bbox`` an XYXY_ABS float array clipped to the image and
        ``bbox_mode`` XYXY_ABS; polygon ``segmentation`` as a list of flat float arrays; an RLE
        ``segmentation`` decoded to an HxW uint8 mask; ``keypoints`` as a Kx3 array.

    Raises:
        ValueError: the box has a NaN or infinite coordinate.
    """
    if isinstance(transforms, (tuple, list)):
        transforms = T.TransformList(transforms)
    if not _bbox_is_finite(annotation):
        raise ValueError(
            f"Annotation bbox {annotation['bbox']} has a NaN or infinite coordinate; clipping "
            "would turn it into an empty or a full-image box. Fix or remove the annotation "
            "(see check_instance_annotations)."
        )
    height, width = image_size
    box = BoxMode.convert(annotation["bbox"], annotation["bbox_mode"], BoxMode.XYXY_ABS)
    box = transforms.apply_box(np.array([box], dtype=np.float64))[0]
    annotation["bbox"] = np.minimum(np.maximum(box, 0), [width, height, width, height])
    annotation["bbox_mode"] = BoxMode.XYXY_ABS

    if "segmentation" in annotation:
        segm = annotation["segmentation"]
        if isinstance(segm, list):
            polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm]
            annotation["segmentation"] = [
                np.asarray(p).reshape(-1) for p in transforms.apply_polygons(polygons)
            ]
        elif isinstance(segm, dict):
            mask = transforms.apply_segmentation(mask_util.decode(_rle_with_bytes(segm)))
            if tuple(mask.shape[:2]) != tuple(image_size):
                raise ValueError(
                    f"Transformed RLE mask has shape {mask.shape[:2]} but the image is "
                    f"{tuple(image_size)}; the RLE 'size' must be the original image's (h, w)."
                )
            annotation["segmentation"] = mask
        elif isinstance(segm, np.ndarray):
            annotation["segmentation"] = transforms.apply_segmentation(segm)
        else:
            raise ValueError(
                f"Cannot transform segmentation of type {type(segm).__name__}: expected polygons "
                "(list[list[float]]), a COCO RLE dict, or an HxW ndarray mask."
            )

    if "keypoints" in annotation:
        annotation["keypoints"] = transform_keypoint_annotations(
            annotation["keypoints"], transforms, image_size, keypoint_hflip_indices
        )
    return annotation


def transform_keypoint_annotations(
    keypoints: Union[List[float], np.ndarray],
    transforms: "T.TransformList",
    image_size: Tuple[int, int],
    keypoint_hflip_indices: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Transform the keypoints of one instance.

    Args:
        keypoints: flat ``[x1, y1, v1, ...]`` (or Kx3), visibility v in {0, 1, 2}.
        transforms: the transforms applied to the image.
        image_size: (height, width) of the transformed image.
        keypoint_hflip_indices: the permutation swapping left/right keypoints, required when the
            transforms contain an odd number of horizontal flips.

    Returns:
        Kx3 float64 array. Keypoints falling outside the image get visibility 0, and every
        keypoint with visibility 0 is zeroed entirely.
    """
    if isinstance(transforms, (tuple, list)):
        transforms = T.TransformList(transforms)
    kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    xy = transforms.apply_coords(kps[:, :2].copy())
    height, width = image_size
    inside = (xy[:, 0] >= 0) & (xy[:, 0] <= width) & (xy[:, 1] >= 0) & (xy[:, 1] <= height)
    kps[:, :2] = xy
    kps[~inside, 2] = 0

    n_hflips = sum(isinstance(t, T.HFlipTransform) for t in transforms.transforms)
    if n_hflips % 2 == 1:
        if keypoint_hflip_indices is None:
            raise ValueError(
                "Cannot flip keypoints without flip indices: pass keypoint_hflip_indices (from "
                "create_keypoint_hflip_indices, which needs 'keypoint_names' and "
                "'keypoint_flip_map' in the dataset metadata)."
            )
        if len(keypoint_hflip_indices) != len(kps):
            raise ValueError(
                f"Keypoint annotation has {len(kps)} keypoints but keypoint_hflip_indices has "
                f"{len(keypoint_hflip_indices)} entries; check the dataset's keypoint_names."
            )
        kps = kps[np.asarray(keypoint_hflip_indices, dtype=np.int64)]

    kps[kps[:, 2] == 0] = 0
    return kps


def _rle_with_bytes(rle: Dict[str, Any]) -> Dict[str, Any]:
    """pycocotools wants compressed RLE ``counts`` as bytes and uncompressed counts as a list."""
    counts = rle.get("counts")
    if isinstance(counts, list):  # uncompressed RLE (COCO iscrowd): compress first
        height, width = rle["size"]
        return mask_util.frPyObjects(rle, height, width)
    if isinstance(counts, str):
        return {**rle, "counts": counts.encode("ascii")}
    return rle


def _segm_to_bitmask(segm: Any, image_size: Tuple[int, int]) -> np.ndarray:
    height, width = image_size
    if isinstance(segm, list):
        return polygons_to_bitmask(segm, height, width)
    if isinstance(segm, dict):
        return mask_util.decode(_rle_with_bytes(segm))
    if isinstance(segm, np.ndarray):
        if segm.ndim != 2:
            raise ValueError(f"A mask 'segmentation' must be 2D (H, W), got shape {segm.shape}.")
        return segm
    raise ValueError(
        f"Cannot convert segmentation of type {type(segm).__name__} to a mask: expected polygons "
        "(list[list[float]]), a COCO RLE dict, or an HxW ndarray."
    )


def _field_of_every_annotation(annos: List[Dict[str, Any]], key: str) -> List[Any]:
    """``[a[key] for a in annos]``, or ValueError naming the annotations that lack ``key``."""
    lacking = [i for i, a in enumerate(annos) if key not in a]
    if lacking:
        raise ValueError(
            f"{len(lacking)} of {len(annos)} annotations have no '{key}' while others have "
            f"(annotations #{', #'.join(str(i) for i in lacking[:5])}). Give every instance a "
            f"'{key}', or drop the field from all of them."
        )
    return [a[key] for a in annos]


def annotations_to_instances(
    annos: List[Dict[str, Any]], image_size: Tuple[int, int], mask_format: str = "polygon"
) -> Instances:
    """Build the ground-truth ``Instances`` the models train on from (transformed) annotations.

    Args:
        annos: instance annotations, e.g. the output of :func:`transform_instance_annotations`.
        image_size: (height, width).
        mask_format: "polygon" (``PolygonMasks``, needs polygon segmentations) or "bitmask"
            (``BitMasks``, from polygons, RLE dicts or HxW arrays).

    Returns:
        ``Instances`` with ``gt_boxes`` (Boxes, XYXY_ABS), ``gt_classes`` (int64 tensor), and when
        the annotations have them ``gt_masks`` and ``gt_keypoints`` (Keypoints, N x K x 3; each
        annotation's keypoints flat or Kx3, all with the same K).
    """
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
    target = Instances(image_size)
    target.gt_boxes = Boxes(
        torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    )
    target.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)

    if annos and "segmentation" in annos[0]:
        segms = _field_of_every_annotation(annos, "segmentation")
        if mask_format == "polygon":
            try:
                target.gt_masks = PolygonMasks(segms)
            except (ValueError, TypeError, AssertionError) as e:
                raise ValueError(
                    "Failed to build PolygonMasks from the annotations (mask_format='polygon'); "
                    "RLE or array segmentations need INPUT.MASK_FORMAT='bitmask'."
                ) from e
        elif mask_format == "bitmask":
            # Stack and binarise in numpy: one copy, no torch intra-op threads in loader workers.
            masks = np.stack([_segm_to_bitmask(s, image_size) for s in segms]).astype(bool)
            target.gt_masks = BitMasks(torch.from_numpy(masks))
        else:
            raise ValueError(
                f"Unknown mask_format '{mask_format}' (INPUT.MASK_FORMAT); use 'polygon' or "
                "'bitmask'."
            )

    if annos and "keypoints" in annos[0]:
        kps = [
            np.asarray(k, dtype=np.float32).reshape(-1, 3)
            for k in _field_of_every_annotation(annos, "keypoints")
        ]
        if len({len(k) for k in kps}) > 1:
            raise ValueError(
                "Annotations of one image have different numbers of keypoints "
                f"({sorted({len(k) for k in kps})}); every instance needs all K keypoints "
                "(use visibility 0 for the ones not labelled)."
            )
        target.gt_keypoints = Keypoints(np.stack(kps))
    return target


def annotations_to_instances_rotated(
    annos: List[Dict[str, Any]], image_size: Tuple[int, int]
) -> Instances:
    """Like :func:`annotations_to_instances` for rotated boxes (``bbox`` is XYWHA_ABS).

    Returns ``Instances`` with ``gt_boxes`` (RotatedBoxes, clipped as ``RotatedBoxes.clip``
    does: only nearly horizontal boxes) and ``gt_classes``; segmentations and keypoints are not
    supported for rotated boxes.
    """
    boxes = np.asarray([a["bbox"] for a in annos], dtype=np.float32).reshape(-1, 5)
    target = Instances(image_size)
    target.gt_boxes = RotatedBoxes(torch.as_tensor(boxes))
    target.gt_boxes.clip(image_size)
    target.gt_classes = torch.tensor([int(a["category_id"]) for a in annos], dtype=torch.int64)
    return target


def filter_empty_instances(
    instances: Instances,
    by_box: bool = True,
    by_mask: bool = True,
    box_threshold: float = 1e-5,
    return_mask: bool = False,
):
    """Drop instances whose box is (nearly) empty and/or whose mask is empty.

    Args:
        instances: must have ``gt_boxes``; ``gt_masks`` is checked when present and ``by_mask``.
        by_box: drop boxes with a side not above ``box_threshold``.
        by_mask: drop instances with an empty mask.
        return_mask: also return the boolean keep mask.

    Returns:
        The kept ``Instances`` (the input object itself when nothing is dropped), and the (N,)
        bool keep tensor when ``return_mask``.
    """
    if not (by_box or by_mask):
        raise ValueError("filter_empty_instances needs by_box or by_mask (or both) to be True.")
    keep = None
    if by_box:
        keep = instances.gt_boxes.nonempty(threshold=box_threshold)
    if by_mask and instances.has("gt_masks"):
        nonempty = instances.gt_masks.nonempty()
        keep = nonempty if keep is None else keep & nonempty
    if keep is None:
        keep = torch.ones(len(instances), dtype=torch.bool)
    # Indexing copies every field (full-image bitmasks included): skip it when all are kept.
    filtered = instances if bool(keep.all()) else instances[keep]
    return (filtered, keep) if return_mask else filtered


def create_keypoint_hflip_indices(dataset_names: Union[str, List[str]]) -> List[int]:
    """Return, for each keypoint, the index of the keypoint it becomes after a horizontal flip.

    Reads ``keypoint_names`` and ``keypoint_flip_map`` (pairs of names) from the metadata of the
    datasets, which must agree. Keypoints not in the flip map map to themselves.
    """
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    check_metadata_consistency("keypoint_names", dataset_names)
    check_metadata_consistency("keypoint_flip_map", dataset_names)
    meta = MetadataCatalog.get(dataset_names[0])
    names = list(meta.keypoint_names)
    swap = {}
    for a, b in meta.keypoint_flip_map:
        swap[a] = b
        swap[b] = a
    return [names.index(swap.get(name, name)) for name in names]


def get_fed_loss_cls_weights(dataset_names: Union[str, List[str]], freq_weight_power: float = 1.0):
    """Per-class weights for federated loss: ``image_count ** freq_weight_power``.

    Reads ``class_image_count`` (a list of ``{"id", "image_count"}`` as in LVIS) from the
    datasets' metadata; returns a float tensor ordered by category id.
    """
    if isinstance(dataset_names, str):
        dataset_names = [dataset_names]
    check_metadata_consistency("class_image_count", dataset_names)
    counts = MetadataCatalog.get(dataset_names[0]).class_image_count
    freq = torch.tensor([c["image_count"] for c in sorted(counts, key=lambda c: c["id"])])
    return freq.float() ** freq_weight_power


def gen_crop_transform_with_instance(crop_size, image_size, instance: Dict[str, Any]):
    """Make a random crop of ``crop_size`` (h, w) inside ``image_size`` (h, w) that contains
    the centre of ``instance``'s box.

    Returns:
        a ``CropTransform``. Raises ValueError if the box centre is outside the image or the crop
        is larger than the image.
    """
    crop_hw = np.asarray(crop_size, dtype=np.int64)
    image_hw = np.asarray(image_size, dtype=np.int64)
    x0, y0, x1, y1 = BoxMode.convert(instance["bbox"], instance["bbox_mode"], BoxMode.XYXY_ABS)
    center = np.array([(y0 + y1) * 0.5, (x0 + x1) * 0.5])
    if np.any(center > image_hw):
        raise ValueError(
            f"The annotation box {instance['bbox']} has its centre outside the image of size "
            f"{tuple(image_size)}."
        )
    if np.any(crop_hw > image_hw):
        raise ValueError(f"Crop size {tuple(crop_size)} is larger than image size {image_size}.")
    lo = np.maximum(np.floor(center).astype(np.int64) - crop_hw, 0)
    hi = np.minimum(np.maximum(image_hw - crop_hw, 0), np.ceil(center).astype(np.int64))
    top = np.random.randint(lo[0], hi[0] + 1)
    left = np.random.randint(lo[1], hi[1] + 1)
    return T.CropTransform(int(left), int(top), int(crop_hw[1]), int(crop_hw[0]))


def check_metadata_consistency(key: str, dataset_names: List[str]) -> None:
    """Check that metadata field ``key`` is the same for all ``dataset_names``.

    Raises:
        AttributeError: a dataset lacks the field.
        ValueError: naming the field and the datasets that disagree.
    """
    if len(dataset_names) == 0:
        return
    values = [getattr(MetadataCatalog.get(name), key) for name in dataset_names]
    for name, value in zip(dataset_names[1:], values[1:]):
        if value != values[0]:
            logger.error("Metadata '%s' of dataset '%s' is %r", key, name, value)
            logger.error("Metadata '%s' of dataset '%s' is %r", key, dataset_names[0], values[0])
            raise ValueError(
                f"Datasets have different metadata '{key}': '{dataset_names[0]}' and '{name}' "
                "differ. Datasets trained together must share it (e.g. the same thing_classes)."
            )


def build_augmentation(cfg, is_train: bool) -> List["T.Augmentation"]:
    """The default augmentations from a config.

    Training: ``ResizeShortestEdge(INPUT.MIN_SIZE_TRAIN, INPUT.MAX_SIZE_TRAIN,
    INPUT.MIN_SIZE_TRAIN_SAMPLING)`` then ``RandomFlip`` per ``INPUT.RANDOM_FLIP``
    ("horizontal", "vertical" or "none"). Test: ``ResizeShortestEdge(INPUT.MIN_SIZE_TEST,
    INPUT.MAX_SIZE_TEST, "choice")``.

    Returns:
        list of Augmentation.
    """
    if is_train:
        augs = [
            T.ResizeShortestEdge(
                cfg.INPUT.MIN_SIZE_TRAIN,
                cfg.INPUT.MAX_SIZE_TRAIN,
                cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING,
            )
        ]
        flip = cfg.INPUT.RANDOM_FLIP
        if flip not in ("horizontal", "vertical", "none"):
            raise ValueError(
                f"INPUT.RANDOM_FLIP must be 'horizontal', 'vertical' or 'none', got {flip!r}."
            )
        if flip != "none":
            augs.append(T.RandomFlip(horizontal=flip == "horizontal", vertical=flip == "vertical"))
        return augs
    return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]


build_transform_gen = build_augmentation
"""Deprecated alias of :func:`build_augmentation`."""
