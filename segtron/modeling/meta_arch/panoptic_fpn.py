"""Panoptic FPN (Kirillov et al., 2019): Mask R-CNN plus a semantic segmentation head on the
same FPN, and the heuristic that merges their outputs into one panoptic segmentation.

Detectron2 path: ``detectron2.modeling.meta_arch.panoptic_fpn``.

Training inputs carry ``"instances"`` (things) and ``"sem_seg"`` (the "separated" labelling:
stuff classes 1..S, every thing pixel 0); the losses are the R-CNN's plus ``loss_sem_seg``.
Inference returns, per image, ``"instances"``, ``"sem_seg"`` (S + 1, H, W) logits and
``"panoptic_seg"`` = ``(segment ids (H, W) int32, segments_info)`` from
:func:`combine_semantic_and_instance_outputs`.
"""

import logging
from typing import Dict, List, Tuple

import torch
from torch import nn

from ...config import configurable
from ...structures import Instances
from ..postprocessing import detector_postprocess, sem_seg_postprocess
from ..registries import META_ARCH_REGISTRY
from .model_inputs import output_size
from .rcnn import GeneralizedRCNN
from .semantic_seg import batch_sem_seg_targets, build_sem_seg_head

__all__ = ["PanopticFPN", "combine_semantic_and_instance_outputs"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PanopticFPN(GeneralizedRCNN):
    """:class:`GeneralizedRCNN` plus a semantic segmentation head; see the module docstring.

    Training: ``forward -> dict`` of the RPN, ROI-head and ``loss_sem_seg`` losses.
    Inference: ``[{"instances", "sem_seg", "panoptic_seg"}, ...]`` in each input's "height" x
    "width".
    """

    @configurable
    def __init__(
        self,
        *,
        sem_seg_head: nn.Module,
        combine_overlap_thresh: float = 0.5,
        combine_stuff_area_thresh: float = 4096,
        combine_instances_score_thresh: float = 0.5,
        **kwargs,
    ):
        """Args:
            sem_seg_head: the semantic segmentation head, e.g. ``SemSegFPNHead``.
            combine_overlap_thresh: an instance whose mask is covered by more than this
                fraction by higher-scoring instances already placed is dropped.
            combine_stuff_area_thresh: stuff regions smaller than this (pixels, at the output
                size) are dropped.
            combine_instances_score_thresh: instances scoring below this are not used.
            kwargs: the arguments of :class:`GeneralizedRCNN`.
        """
        super().__init__(**kwargs)
        self.sem_seg_head = sem_seg_head
        self.combine_overlap_thresh = combine_overlap_thresh
        self.combine_stuff_area_thresh = combine_stuff_area_thresh
        self.combine_instances_score_thresh = combine_instances_score_thresh

    @classmethod
    def from_config(cls, cfg):
        """GeneralizedRCNN's arguments, the head of MODEL.SEM_SEG_HEAD and
        MODEL.PANOPTIC_FPN.COMBINE.*; MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT scales the box
        and mask losses (Detectron2's legacy key)."""
        ret = super().from_config(cfg)
        combine = cfg.MODEL.PANOPTIC_FPN.COMBINE
        ret.update({
            "combine_overlap_thresh": combine.OVERLAP_THRESH,
            "combine_stuff_area_thresh": combine.STUFF_AREA_LIMIT,
            "combine_instances_score_thresh": combine.INSTANCES_CONFIDENCE_THRESH,
            "sem_seg_head": build_sem_seg_head(cfg, ret["backbone"].output_shape()),
        })
        if not combine.ENABLED:
            logger.warning(
                "MODEL.PANOPTIC_FPN.COMBINE.ENABLED is not used (as in Detectron2): call "
                "model.inference(inputs, do_postprocess=False) for the raw outputs instead."
            )
        weight = cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT
        if weight != 1.0:
            logger.warning(
                "MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = %s scales the box and mask losses; "
                "prefer the ROI heads' own loss weights.", weight,
            )
            roi_heads = ret["roi_heads"]
            predictor = roi_heads.box_predictor
            predictor.loss_weight = {
                name: weight * predictor.loss_weight.get(name, 1.0)
                for name in ("loss_cls", "loss_box_reg")
            }
            if getattr(roi_heads, "mask_on", False):
                roi_heads.mask_head.loss_weight *= weight
        return ret

    def forward(self, batched_inputs: List[Dict]):
        """Args:
            batched_inputs: one dict per image with "image", and in training "instances"
                and "sem_seg"; see ``GeneralizedRCNN``.

        Returns:
            in training, the loss dict; in eval, what :meth:`inference` returns.
        """
        if not self.training:
            return self.inference(batched_inputs)
        for key in ("instances", "sem_seg"):
            if key not in batched_inputs[0]:
                raise ValueError(
                    f"PanopticFPN needs '{key}' in every training input (instances from the "
                    "annotations, 'sem_seg' from 'sem_seg_file_name'; the '_separated' "
                    "panoptic datasets give both); call model.eval() for inference."
                )
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        targets = batch_sem_seg_targets(
            batched_inputs, images, self.backbone, self.sem_seg_head, self.device
        )
        _, losses = self.sem_seg_head(features, targets)
        gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        _, detector_losses = self.roi_heads(
            images, self._features_for_roi_heads(features), proposals, gt_instances
        )
        losses.update(proposal_losses)
        losses.update(detector_losses)
        return losses

    def inference(self, batched_inputs: List[Dict], do_postprocess: bool = True):
        """Args:
            batched_inputs: one dict per image, as in :meth:`forward`.
            do_postprocess: scale to each input's output size and combine.

        Returns:
            with ``do_postprocess``, ``[{"sem_seg": (K, h, w), "instances": Instances,
            "panoptic_seg": (ids (h, w), segments_info)}, ...]``; else (list of raw
            ``Instances``, (N, K, H, W) semantic logits) at the network input's size.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        sem_seg_results, _ = self.sem_seg_head(features, None)
        proposals, _ = self.proposal_generator(images, features, None)
        detector_results, _ = self.roi_heads(
            images, self._features_for_roi_heads(features), proposals, None
        )
        if not do_postprocess:
            return detector_results, sem_seg_results
        processed = []
        for sem_seg, detections, item, image_size in zip(
            sem_seg_results, detector_results, batched_inputs, images.image_sizes
        ):
            height, width = output_size(item, image_size)
            sem_seg = sem_seg_postprocess(sem_seg, image_size, height, width)
            detections = detector_postprocess(detections, height, width)
            panoptic = combine_semantic_and_instance_outputs(
                detections,
                sem_seg.argmax(dim=0),
                self.combine_overlap_thresh,
                self.combine_stuff_area_thresh,
                self.combine_instances_score_thresh,
            )
            processed.append({"sem_seg": sem_seg, "instances": detections, "panoptic_seg": panoptic})
        return processed


def combine_semantic_and_instance_outputs(
    instance_results: Instances,
    semantic_results: torch.Tensor,
    overlap_threshold: float,
    stuff_area_thresh: float,
    instances_score_thresh: float,
) -> Tuple[torch.Tensor, List[Dict]]:
    """Merge instance and semantic predictions into one panoptic segmentation (the heuristic of
    panopticapi's ``combine_semantic_and_instance_predictions.py``).

    Instances, by decreasing score while the score is >= ``instances_score_thresh``: skipped
    when empty, or when more than ``overlap_threshold`` of the mask is already taken; else they
    take the mask's still-free pixels as a new segment. Then each semantic class except 0 (the
    "things" class of the separated labelling), in increasing class order, takes its free
    pixels as one segment if there are at least ``stuff_area_thresh`` of them.

    Args:
        instance_results: ``detector_postprocess`` output with ``scores``, ``pred_classes``
            and ``pred_masks`` (N, H, W).
        semantic_results: (H, W) int class per pixel (0 = things).
        overlap_threshold, stuff_area_thresh, instances_score_thresh: see above.

    Returns:
        panoptic_seg: (H, W) int32 segment ids, 0 where no segment.
        segments_info: per segment, in id order (ids 1, 2, ...): ``{"id", "isthing": True,
            "score", "category_id", "instance_id"}`` for things, ``{"id", "isthing": False,
            "category_id" (the semantic class), "area"}`` for stuff.
    """
    panoptic_seg = torch.zeros_like(semantic_results, dtype=torch.int32)
    segments_info: List[Dict] = []
    masks = instance_results.pred_masks.to(dtype=torch.bool, device=panoptic_seg.device)
    for index in torch.argsort(-instance_results.scores).tolist():
        score = instance_results.scores[index].item()
        if score < instances_score_thresh:
            break
        mask = masks[index]
        area = int(mask.sum().item())
        if area == 0:
            continue
        taken = int((mask & (panoptic_seg > 0)).sum().item())
        if taken / area > overlap_threshold:
            continue
        if taken:
            mask = mask & (panoptic_seg == 0)
        segment_id = len(segments_info) + 1
        panoptic_seg[mask] = segment_id
        segments_info.append({
            "id": segment_id,
            "isthing": True,
            "score": score,
            "category_id": int(instance_results.pred_classes[index].item()),
            "instance_id": index,
        })

    for label in torch.unique(semantic_results).tolist():
        if label == 0:  # the "things" class of the separated labelling
            continue
        region = (semantic_results == label) & (panoptic_seg == 0)
        area = int(region.sum().item())
        if area < stuff_area_thresh:
            continue
        segment_id = len(segments_info) + 1
        panoptic_seg[region] = segment_id
        segments_info.append({
            "id": segment_id, "isthing": False, "category_id": int(label), "area": area,
        })
    return panoptic_seg, segments_info
