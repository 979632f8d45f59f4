"""Draw predictions on consecutive video frames with stable colours
(``detectron2.utils.video_visualizer``).

``VideoVisualizer`` remembers the instances of the last frames: an instance that overlaps
(IoU > 0.5, masks if present else boxes) one of them, with the same class, keeps its colour, so
objects do not flicker from colour to colour. An instance not seen for ``ttl`` frames is
forgotten.
"""

import logging
from dataclasses import dataclass
from typing import Any, List, Optional

import numpy as np
import pycocotools.mask as mask_util

from ..data.catalog import Metadata
from .colormap import random_color
from .visualizer import ColorMode, VisImage, Visualizer, _create_text_labels

__all__ = ["VideoVisualizer"]

logger = logging.getLogger(__name__)


@dataclass
class _TrackedInstance:
    """An instance of an earlier frame: its class, box or mask RLE, colour and frames to live."""

    label: Optional[int]
    bbox: Optional[np.ndarray]  # XYXY
    mask_rle: Optional[dict]
    color: Any
    ttl: int


class VideoVisualizer:
    """Per-frame drawing with instance colours kept across frames."""

    def __init__(self, metadata: Optional[Metadata] = None,
                 instance_mode: ColorMode = ColorMode.IMAGE):
        """Args:
            metadata: dataset metadata (class names, colours), as for ``Visualizer``.
            instance_mode: ``ColorMode.IMAGE`` or ``ColorMode.IMAGE_BW`` (SEGMENTATION colours
                come from the class, not from tracking, and is not supported here).
        """
        if instance_mode not in (ColorMode.IMAGE, ColorMode.IMAGE_BW):
            raise ValueError(
                f"VideoVisualizer supports ColorMode.IMAGE and ColorMode.IMAGE_BW, got "
                f"{instance_mode}; use Visualizer per frame for class colours."
            )
        self.metadata = metadata if metadata is not None else Metadata(name="__nonexist__")
        self._instance_mode = instance_mode
        self._old_instances: List[_TrackedInstance] = []
        self._max_num_instances = self.metadata.get("max_num_instances", 74)
        self._ttl = 8

    def draw_instance_predictions(self, frame: np.ndarray, predictions) -> VisImage:
        """Draw ``predictions`` (Instances, as for ``Visualizer.draw_instance_predictions``) on
        ``frame`` (HxWx3 **RGB**); returns the ``VisImage``."""
        vis = Visualizer(frame, self.metadata, instance_mode=self._instance_mode)
        n = len(predictions) if predictions.get_fields() else 0
        if n == 0:
            return vis.get_output()

        def field(name):
            return predictions.get(name) if predictions.has(name) else None

        boxes = field("pred_boxes")
        boxes_np = vis._convert_boxes(boxes) if boxes is not None else None
        scores = field("scores")
        classes = field("pred_classes")
        classes = np.asarray(classes.tolist() if hasattr(classes, "tolist") else classes) \
            if classes is not None else None
        masks = field("pred_masks")
        generic = vis._convert_masks(masks) if masks is not None else None
        rles = ([mask_util.encode(np.asfortranarray(m.mask)) for m in generic]
                if generic is not None else None)

        detected = [
            _TrackedInstance(
                label=int(classes[i]) if classes is not None else None,
                bbox=boxes_np[i] if boxes_np is not None else None,
                mask_rle=rles[i] if rles is not None else None,
                color=None, ttl=self._ttl,
            )
            for i in range(n)
        ]
        colors = self._assign_colors(detected)
        labels = _create_text_labels(
            classes.tolist() if classes is not None else None,
            np.asarray(scores.tolist() if hasattr(scores, "tolist") else scores)
            if scores is not None else None,
            self.metadata.get("thing_classes"),
        )
        alpha = 0.5
        if self._instance_mode == ColorMode.IMAGE_BW:
            keep = np.any(np.stack([m.mask for m in generic]), axis=0) if generic else None
            vis.output.reset_image(vis._create_grayscale_image(keep))
            alpha = 0.3
        return vis.overlay_instances(boxes=boxes_np, masks=generic, labels=labels,
                                     keypoints=field("pred_keypoints"), assigned_colors=colors,
                                     alpha=alpha)

    def draw_sem_seg(self, frame: np.ndarray, sem_seg, area_threshold: Optional[float] = None):
        """Draw a semantic segmentation on ``frame`` (RGB); see ``Visualizer.draw_sem_seg``."""
        return Visualizer(frame, self.metadata).draw_sem_seg(sem_seg, area_threshold=area_threshold)

    def draw_panoptic_seg(self, frame: np.ndarray, panoptic_seg, segments_info,
                          area_threshold: Optional[float] = None, alpha: float = 0.5):
        """Draw a panoptic segmentation on ``frame`` (RGB); see ``Visualizer.draw_panoptic_seg``."""
        vis = Visualizer(frame, self.metadata, instance_mode=self._instance_mode)
        return vis.draw_panoptic_seg(panoptic_seg, segments_info, area_threshold=area_threshold,
                                     alpha=alpha)

    def _iou(self, new: List[_TrackedInstance], old: List[_TrackedInstance]) -> np.ndarray:
        """len(new) x len(old) IoU, from masks when both frames have them, else boxes."""
        if all(d.mask_rle is not None for d in new + old):
            return np.asarray(mask_util.iou([d.mask_rle for d in new], [d.mask_rle for d in old],
                                            [0] * len(old)), dtype=np.float64).reshape(len(new), -1)
        if all(d.bbox is not None for d in new + old):
            def xywh(items):
                b = np.stack([d.bbox for d in items]).astype(np.float64)
                b[:, 2:] -= b[:, :2]
                return b
            return np.asarray(mask_util.iou(xywh(new), xywh(old), [0] * len(old)),
                              dtype=np.float64).reshape(len(new), -1)
        return np.zeros((len(new), len(old)))

    def _assign_colors(self, detected: List[_TrackedInstance]) -> List[Any]:
        """Give each detection the colour of the best-overlapping remembered instance of its
        class (one-to-one, IoU > 0.5), or a new random colour; update the memory."""
        matched_old = set()
        if self._old_instances:
            ious = self._iou(detected, self._old_instances)
            for flat in np.argsort(-ious, axis=None, kind="stable"):
                i, j = divmod(int(flat), ious.shape[1])
                if ious[i, j] <= 0.5:
                    break
                old = self._old_instances[j]
                taken = detected[i].color is not None or j in matched_old
                if taken or old.label != detected[i].label:
                    continue
                detected[i].color = old.color
                matched_old.add(j)
        for d in detected:
            if d.color is None:
                d.color = random_color(rgb=True, maximum=1)
        survivors = []
        for j, old in enumerate(self._old_instances):
            if j not in matched_old and old.ttl > 1:
                old.ttl -= 1
                survivors.append(old)
        self._old_instances = (detected + survivors)[: self._max_num_instances]
        return [d.color for d in detected]
