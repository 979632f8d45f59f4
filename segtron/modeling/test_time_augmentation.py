"""Test-time augmentation (TTA) for R-CNN detectors: multi-scale and flipped copies of each image,
their detections merged.

Detectron2 path: ``detectron2.modeling.test_time_augmentation``.

:class:`DatasetMapperTTA` turns one model input into its augmented copies (each resized so its
shorter side is one of TEST.AUG.MIN_SIZES, and, with TEST.AUG.FLIP, also mirrored), each
carrying the transforms that map original-image coordinates onto it.
:class:`GeneralizedRCNNWithTTA` runs a :class:`GeneralizedRCNN` on every copy, maps the boxes
back to the original image, re-runs the per-class NMS on their union, and for Mask R-CNN
predicts masks for the merged boxes on every copy and averages the mask probabilities.
"""

import copy
import logging
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fvcore.transforms import HFlipTransform, NoOpTransform, TransformList
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import configurable
from ..data.detection_utils import read_image
from ..data.transforms import RandomFlip, ResizeShortestEdge, ResizeTransform, apply_augmentations
from ..structures import Boxes, Instances
from .meta_arch import GeneralizedRCNN, PanopticFPN
from .postprocessing import detector_postprocess
from .roi_heads.fast_rcnn import fast_rcnn_inference_single_image

__all__ = ["DatasetMapperTTA", "GeneralizedRCNNWithTTA"]

logger = logging.getLogger(__name__)

# Score threshold of the merging NMS: every detection of every copy takes part.
_MERGE_SCORE_THRESH = 1e-8


class DatasetMapperTTA:
    """Augment one model input into ``len(min_sizes) * (2 if flip else 1)`` copies.

    For each short-edge length in ``min_sizes`` (in order): the image resized so its shorter
    side has that length (longer side at most ``max_size``), then, with ``flip``, the same
    resized image mirrored left-right.
    """

    @configurable
    def __init__(self, min_sizes: Sequence[int], max_size: int, flip: bool = True):
        """Args:
            min_sizes: shorter-side lengths of the copies (TEST.AUG.MIN_SIZES).
            max_size: upper bound on the longer side of a copy (TEST.AUG.MAX_SIZE).
            flip: also add each resized copy mirrored horizontally (TEST.AUG.FLIP).
        """
        if len(min_sizes) == 0:
            raise ValueError(
                "DatasetMapperTTA: TEST.AUG.MIN_SIZES is empty; give at least one shorter-side "
                "length, e.g. TEST.AUG.MIN_SIZES (400, 500, 600)."
            )
        self.min_sizes = tuple(int(s) for s in min_sizes)
        self.max_size = int(max_size)
        self.flip = bool(flip)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        """TEST.AUG.MIN_SIZES, TEST.AUG.MAX_SIZE and TEST.AUG.FLIP."""
        return {
            "min_sizes": cfg.TEST.AUG.MIN_SIZES,
            "max_size": cfg.TEST.AUG.MAX_SIZE,
            "flip": cfg.TEST.AUG.FLIP,
        }

    def __call__(self, dataset_dict: Dict) -> List[Dict]:
        """Args:
            dataset_dict: one model input: "image" a (C, H, W) tensor (as the test loader's
                mapper gives it, possibly already resized) and "height", "width" the size of
                the original image, which the results refer to.

        Returns:
            one dict per copy: the input's other fields (deep-copied), "image" the augmented
            (C, H', W') tensor and "transforms" a ``TransformList`` mapping coordinates of the
            original ("height" x "width") image onto the copy.
        """
        image = dataset_dict["image"]
        numpy_image = image.permute(1, 2, 0).cpu().numpy()
        shape = tuple(numpy_image.shape[:2])
        orig_shape = (int(dataset_dict["height"]), int(dataset_dict["width"]))
        if shape != orig_shape:  # the original image -> the given (already resized) one
            pre_tfm = ResizeTransform(orig_shape[0], orig_shape[1], shape[0], shape[1])
        else:
            pre_tfm = NoOpTransform()

        rest = {k: v for k, v in dataset_dict.items() if k != "image"}
        copies = []
        for augs in self._augmentation_lists():
            new_image, tfms = apply_augmentations(augs, np.copy(numpy_image))
            copy_dict = copy.deepcopy(rest)
            chw = np.ascontiguousarray(new_image.transpose(2, 0, 1))
            copy_dict["image"] = torch.from_numpy(chw)
            copy_dict["transforms"] = TransformList([pre_tfm]) + tfms
            copies.append(copy_dict)
        return copies

    def _augmentation_lists(self) -> List[list]:
        """One list of augmentations per copy: resize, and resize + flip when ``flip``."""
        augs = []
        for min_size in self.min_sizes:
            resize = ResizeShortestEdge(min_size, self.max_size)
            augs.append([resize])
            if self.flip:
                augs.append([resize, RandomFlip(prob=1.0)])
        return augs


def _unwrap_and_check(cfg, model: nn.Module) -> GeneralizedRCNN:
    """The ``GeneralizedRCNN`` inside ``model`` (unwrapping DDP), or a clear error for models and
    configs the TTA does not cover."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if not isinstance(model, GeneralizedRCNN) or isinstance(model, PanopticFPN):
        raise ValueError(
            "GeneralizedRCNNWithTTA covers the instance outputs of GeneralizedRCNN models only "
            f"(MODEL.META_ARCHITECTURE 'GeneralizedRCNN'); got a {type(model).__name__}. "
            "Set TEST.AUG.ENABLED False for this model."
        )
    if cfg.MODEL.KEYPOINT_ON:
        raise NotImplementedError(
            "Test-time augmentation of keypoints is not supported (MODEL.KEYPOINT_ON is True); "
            "set TEST.AUG.ENABLED False."
        )
    if cfg.MODEL.LOAD_PROPOSALS or model.proposal_generator is None:
        raise NotImplementedError(
            "Test-time augmentation with precomputed proposals is not supported "
            "(MODEL.LOAD_PROPOSALS / MODEL.PROPOSAL_GENERATOR.NAME 'PrecomputedProposals'); "
            "set TEST.AUG.ENABLED False or use the RPN."
        )
    return model


class GeneralizedRCNNWithTTA(nn.Module):
    """A :class:`GeneralizedRCNN` evaluated with test-time augmentation.

    Called like ``GeneralizedRCNN`` in eval mode: a list of input dicts in, one
    ``{"instances": Instances}`` per input out, in the input's "height" x "width" (boxes,
    ``scores``, ``pred_classes``; (N, H, W) bool ``pred_masks`` for Mask R-CNN). An input
    without "image" is read from its "file_name" in the model's INPUT.FORMAT.

    The merge follows Detectron2: the union of every copy's detections (boxes mapped back to the
    original image) goes through the per-class NMS of MODEL.ROI_HEADS.NMS_THRESH_TEST, keeping
    at most TEST.DETECTIONS_PER_IMAGE (no further score threshold); masks are predicted for the
    merged boxes on every copy and their probabilities averaged.
    """

    def __init__(
        self,
        cfg,
        model: nn.Module,
        tta_mapper: Optional[Callable[[Dict], List[Dict]]] = None,
        batch_size: int = 3,
    ):
        """Args:
            cfg: the model's config (MODEL.MASK_ON, MODEL.ROI_HEADS.NUM_CLASSES and
                NMS_THRESH_TEST, TEST.DETECTIONS_PER_IMAGE, TEST.AUG.*).
            model: the ``GeneralizedRCNN`` (possibly wrapped in DistributedDataParallel).
            tta_mapper: input dict -> list of augmented dicts, each with a "transforms" entry;
                default ``DatasetMapperTTA(cfg)``.
            batch_size: how many augmented copies the model sees per forward pass.

        Raises:
            ValueError: ``model`` is not a GeneralizedRCNN (or is a PanopticFPN).
            NotImplementedError: MODEL.KEYPOINT_ON or precomputed proposals.
        """
        super().__init__()
        self.cfg = cfg.clone()
        self.model = _unwrap_and_check(self.cfg, model)
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        if int(batch_size) < 1:
            raise ValueError(f"GeneralizedRCNNWithTTA: batch_size must be >= 1, got {batch_size}.")
        self.batch_size = int(batch_size)

    @contextmanager
    def _turn_off_roi_heads(self, attrs: Sequence[str]) -> Iterator[None]:
        """Within the block, set each of ``attrs`` (e.g. "mask_on") that ``model.roi_heads``
        has to False; restore them afterwards."""
        roi_heads = self.model.roi_heads
        old = {a: getattr(roi_heads, a) for a in attrs if hasattr(roi_heads, a)}
        try:
            for attr in old:
                setattr(roi_heads, attr, False)
            yield
        finally:
            for attr, value in old.items():
                setattr(roi_heads, attr, value)

    def _batch_inference(
        self, inputs: List[Dict], detected_instances: Optional[List[Instances]] = None
    ) -> List[Instances]:
        """``model.inference(..., do_postprocess=False)`` on ``inputs`` in chunks of
        ``batch_size``; returns one ``Instances`` per input, in the input's network size."""
        outputs = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = inputs[start:start + self.batch_size]
            given = None
            if detected_instances is not None:
                given = detected_instances[start:start + self.batch_size]
            outputs.extend(self.model.inference(chunk, given, do_postprocess=False))
        return outputs

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Instances]]:
        """Args:
            batched_inputs: model input dicts (see the module docstring of ``rcnn``).

        Returns:
            one ``{"instances": Instances}`` per input, in its "height" x "width".
        """
        return [self._inference_one_image(self._with_image(x)) for x in batched_inputs]

    def _with_image(self, dataset_dict: Dict) -> Dict:
        """A shallow copy of the input with "image" (read from "file_name" if missing) and
        "height" / "width" (the image's size if missing)."""
        ret = copy.copy(dataset_dict)
        if "image" not in ret:
            if "file_name" not in ret:
                raise KeyError(
                    "GeneralizedRCNNWithTTA: an input has neither 'image' nor 'file_name'; give "
                    "the (C, H, W) image tensor or the file to read it from."
                )
            image = read_image(ret.pop("file_name"), self.model.input_format)
            ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if "height" not in ret or "width" not in ret:
            ret["height"], ret["width"] = ret["image"].shape[1:3]
        return ret

    def _inference_one_image(self, inputs: Dict) -> Dict[str, Instances]:
        """Detections of one input dict (with "image", "height", "width") under TTA."""
        orig_shape = (int(inputs["height"]), int(inputs["width"]))
        augmented_inputs = self.tta_mapper(inputs)
        tfms = [x.pop("transforms") for x in augmented_inputs]
        with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
            boxes, scores, classes = self._get_augmented_boxes(augmented_inputs, tfms)
        merged = self._merge_detections(boxes, scores, classes, orig_shape)
        if not self.cfg.MODEL.MASK_ON:
            return {"instances": merged}

        augmented_instances = self._rescale_detected_boxes(augmented_inputs, merged, tfms)
        outputs = self._batch_inference(augmented_inputs, augmented_instances)
        del augmented_inputs, augmented_instances
        merged.pred_masks = self._reduce_pred_masks(outputs, tfms)
        return {"instances": detector_postprocess(merged, *orig_shape)}

    def _get_augmented_boxes(
        self, augmented_inputs: List[Dict], tfms: List[TransformList]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detect on every copy; returns the union of the detections as (D, 4) XYXY boxes in
        the original image's coordinates, (D,) scores and (D,) int64 classes."""
        outputs = self._batch_inference(augmented_inputs)
        all_boxes, all_scores, all_classes = [], [], []
        for output, tfm in zip(outputs, tfms):
            boxes = output.pred_boxes.tensor
            if boxes.shape[-1] != 4:
                raise NotImplementedError(
                    "Test-time augmentation handles axis-aligned boxes only; this model "
                    f"predicts boxes of {boxes.shape[-1]} values (MODEL.ROI_HEADS.NAME "
                    f"'{self.cfg.MODEL.ROI_HEADS.NAME}'). Set TEST.AUG.ENABLED False."
                )
            original = tfm.inverse().apply_box(boxes.detach().cpu().numpy())
            all_boxes.append(torch.as_tensor(original, dtype=boxes.dtype, device=boxes.device))
            all_scores.append(output.scores)
            all_classes.append(output.pred_classes)
        return torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_classes)

    def _merge_detections(
        self,
        boxes: torch.Tensor,
        scores: torch.Tensor,
        classes: torch.Tensor,
        shape_hw: Tuple[int, int],
    ) -> Instances:
        """Per-class NMS over the union of the copies' detections (``boxes`` (D, 4), ``scores``
        (D,), ``classes`` (D,)); returns ``Instances`` of ``shape_hw`` by decreasing score."""
        num_classes = self.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        # One row per detection, its score in its class's column (+1: the background column
        # fast_rcnn_inference_single_image drops).
        score_matrix = torch.zeros(len(boxes), num_classes + 1, device=boxes.device)
        score_matrix[torch.arange(len(boxes), device=boxes.device), classes] = scores
        merged, _ = fast_rcnn_inference_single_image(
            boxes,
            score_matrix,
            shape_hw,
            _MERGE_SCORE_THRESH,
            self.cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            self.cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        return merged

    def _rescale_detected_boxes(
        self, augmented_inputs: List[Dict], merged: Instances, tfms: List[TransformList]
    ) -> List[Instances]:
        """The merged detections mapped onto each copy (boxes through its transforms)."""
        boxes = merged.pred_boxes.tensor
        augmented_instances = []
        for inputs, tfm in zip(augmented_inputs, tfms):
            moved = tfm.apply_box(boxes.detach().cpu().numpy())
            augmented_instances.append(
                Instances(
                    tuple(inputs["image"].shape[1:3]),
                    pred_boxes=Boxes(torch.as_tensor(moved, dtype=boxes.dtype)),
                    pred_classes=merged.pred_classes,
                    scores=merged.scores,
                )
            )
        return augmented_instances

    @staticmethod
    def _reduce_pred_masks(outputs: List[Instances], tfms: List[TransformList]) -> torch.Tensor:
        """Average the copies' (N, 1, M, M) mask probabilities. The masks are relative to their
        boxes, so resizing needs no undoing; a flipped copy's masks are mirrored back."""
        masks = []
        for output, tfm in zip(outputs, tfms):
            pred = output.pred_masks
            if any(isinstance(t, HFlipTransform) for t in tfm.transforms):
                pred = pred.flip(dims=[3])
            masks.append(pred)
        return torch.stack(masks, dim=0).mean(dim=0)
