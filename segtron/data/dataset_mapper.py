"""``DatasetMapper``: one dataset dict -> the dict a model consumes (``detectron2.data``)."""

import copy
import logging
from typing import Any, Dict, List, Optional, Union

import numpy as np
import torch

from segtron.config import configurable
from segtron.structures import BoxMode

from . import detection_utils as utils
from . import transforms as T

__all__ = ["DatasetMapper"]

logger = logging.getLogger(__name__)


class DatasetMapper:
    """Map a dataset dict (Detectron2's standard format) to model input.

    Steps: in training, check the annotations (finite boxes; a ``segmentation`` / ``keypoints``
    on every instance when masks / keypoints are used: ``check_instance_annotations``, a
    segtron addition that fails with the file name where Detectron2 fails deep in the model);
    read ``file_name`` in ``image_format`` and check its size against the dict; read
    ``sem_seg_file_name`` (if any) as a single-channel label map; apply the augmentations to
    both (with the non-crowd annotations' boxes, XYXY_ABS, as ``AugInput.boxes``, so
    box-aware augmentations such as ``MinIoURandomCrop`` work; segtron addition: Detectron2's
    mapper passes no boxes); convert the image to a uint8 CHW tensor; transform precomputed
    proposals (if ``precomputed_proposal_topk``); in training, transform the non-crowd
    annotations and turn them into ``Instances``, dropping empty ones. In test mode annotations
    are removed.

    Output dict: the input's fields (``file_name``, ``image_id``, ``height``, ``width`` are the
    ORIGINAL size, used to rescale predictions) plus ``image`` (uint8 tensor, C x H' x W'),
    ``instances`` (``gt_boxes``, ``gt_classes``, optionally ``gt_masks`` / ``gt_keypoints``),
    ``sem_seg`` (int64 H' x W') and ``proposals`` when present. The input dict is not modified.

    Build from a config, ``DatasetMapper(cfg, is_train=True)``, or from arguments below.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union["T.Augmentation", "T.Transform"]],
        image_format: str,
        use_instance_mask: bool = False,
        use_keypoint: bool = False,
        instance_mask_format: str = "polygon",
        keypoint_hflip_indices: Optional[np.ndarray] = None,
        precomputed_proposal_topk: Optional[int] = None,
        recompute_boxes: bool = False,
    ):
        """
        Args:
            is_train: training mode (keep and transform annotations) or inference mode.
            augmentations: Augmentations or deterministic Transforms applied in order.
            image_format: format for ``read_image`` ("BGR", "RGB", ...).
            use_instance_mask: keep segmentations and produce ``gt_masks``.
            use_keypoint: keep keypoints and produce ``gt_keypoints``.
            instance_mask_format: "polygon" or "bitmask".
            keypoint_hflip_indices: see ``detection_utils.create_keypoint_hflip_indices``.
            precomputed_proposal_topk: if set, load this many precomputed proposals per image.
            recompute_boxes: replace ``gt_boxes`` by the tight boxes of the transformed masks
                (after a crop, the transformed box can be looser than the cropped mask).
        """
        if recompute_boxes and not use_instance_mask:
            raise ValueError(
                "DatasetMapper: recompute_boxes=True needs use_instance_mask=True (boxes are "
                "recomputed from the masks)."
            )
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.use_instance_mask = use_instance_mask
        self.instance_mask_format = instance_mask_format
        self.use_keypoint = use_keypoint
        self.keypoint_hflip_indices = keypoint_hflip_indices
        self.proposal_topk = precomputed_proposal_topk
        self.recompute_boxes = recompute_boxes
        mode = "training" if is_train else "inference"
        logger.info("[DatasetMapper] Augmentations used in %s: %s", mode, augmentations)

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict[str, Any]:
        """Arguments from a config: ``build_augmentation(cfg, is_train)``, with a
        ``RandomCrop(INPUT.CROP.TYPE, INPUT.CROP.SIZE)`` first when ``INPUT.CROP.ENABLED`` in
        training (and then ``recompute_boxes = MODEL.MASK_ON``); ``INPUT.FORMAT``,
        ``MODEL.MASK_ON``, ``INPUT.MASK_FORMAT``, ``MODEL.KEYPOINT_ON`` (flip indices from
        ``DATASETS.TRAIN``), and the proposal top-k when ``MODEL.LOAD_PROPOSALS``."""
        augs = utils.build_augmentation(cfg, is_train)
        recompute_boxes = False
        if is_train and cfg.INPUT.CROP.ENABLED:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
            recompute_boxes = bool(cfg.MODEL.MASK_ON)
        args = {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "use_instance_mask": cfg.MODEL.MASK_ON,
            "instance_mask_format": cfg.INPUT.MASK_FORMAT,
            "use_keypoint": cfg.MODEL.KEYPOINT_ON,
            "recompute_boxes": recompute_boxes,
        }
        if cfg.MODEL.KEYPOINT_ON:
            args["keypoint_hflip_indices"] = utils.create_keypoint_hflip_indices(cfg.DATASETS.TRAIN)
        if cfg.MODEL.LOAD_PROPOSALS:
            args["precomputed_proposal_topk"] = (
                cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN
                if is_train
                else cfg.DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST
            )
        return args

    def _transform_annotations(self, dataset_dict: Dict[str, Any], transforms, image_shape) -> None:
        annos = []
        for obj in dataset_dict.pop("annotations"):
            if obj.get("iscrowd", 0) != 0:
                continue
            if not self.use_instance_mask:
                obj.pop("segmentation", None)
            if not self.use_keypoint:
                obj.pop("keypoints", None)
            annos.append(
                utils.transform_instance_annotations(
                    obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
                )
            )
        try:
            instances = utils.annotations_to_instances(
                annos, image_shape, mask_format=self.instance_mask_format
            )
        except ValueError as e:
            raise ValueError(f"{e} (image: {dataset_dict.get('file_name', '?')})") from e
        if self.recompute_boxes and instances.has("gt_masks"):
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Map one dataset dict as described in the class docstring; returns a new dict."""
        dataset_dict = copy.deepcopy(dataset_dict)
        if self.is_train and "annotations" in dataset_dict:
            utils.check_instance_annotations(
                dataset_dict["annotations"],
                dataset_dict.get("file_name", "?"),
                need_masks=self.use_instance_mask,
                need_keypoints=self.use_keypoint,
            )
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        utils.check_image_size(dataset_dict, image)

        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_file = dataset_dict.pop("sem_seg_file_name")
            sem_seg = utils.read_label_map(sem_seg_file)
            if sem_seg.shape != image.shape[:2]:
                raise ValueError(
                    f"Label map {sem_seg_file} is {sem_seg.shape[1]}x{sem_seg.shape[0]} (WxH) "
                    f"but its image {dataset_dict['file_name']} is {image.shape[1]}x"
                    f"{image.shape[0]}; a semantic label PNG must have its image's size."
                )

        aug_input = T.AugInput(image, boxes=_annotation_boxes(dataset_dict), sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]  # (h, w) after augmentation

        # HWC -> CHW; ascontiguousarray so the tensor owns a normal, shareable buffer.
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))

        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


def _annotation_boxes(dataset_dict: Dict[str, Any]) -> Optional[np.ndarray]:
    """(N, 4) float32 XYXY_ABS boxes of the dict's non-crowd annotations, for the
    augmentations that read ``AugInput.boxes``; None when it has no "annotations"."""
    annotations = dataset_dict.get("annotations")
    if annotations is None:
        return None
    boxes = [
        BoxMode.convert(obj["bbox"], obj["bbox_mode"], BoxMode.XYXY_ABS)
        for obj in annotations
        if obj.get("iscrowd", 0) == 0
    ]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
