"""SSD's "zoom in" (:class:`SSDMinIoURandomCrop`): a random patch whose IoU with the ground
truth reaches a randomly chosen minimum; the boxes whose centre leaves it are dropped
(:class:`SSDCropTransform`, :func:`filter_boxes_outside_crop`).

Not Detectron2's ``MinIoURandomCrop`` (``segtron.data.transforms``), which keeps every box
that overlaps the crop and never crops when it gets no boxes: see the class docstring.
"""

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from segtron.data.transforms import Augmentation, CropTransform, NoOpTransform, Transform
from segtron.structures import pairwise_iou

__all__ = ["SSDCropTransform", "SSDMinIoURandomCrop", "filter_boxes_outside_crop"]


def _centres_inside(boxes: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """``(M, N)`` bool: is box n's centre strictly inside window m (both XYXY arrays)?"""
    cx = 0.5 * (boxes[:, 0] + boxes[:, 2])
    cy = 0.5 * (boxes[:, 1] + boxes[:, 3])
    return (
        (windows[:, 0:1] < cx) & (cx < windows[:, 2:3])
        & (windows[:, 1:2] < cy) & (cy < windows[:, 3:4])
    )


def filter_boxes_outside_crop(
    boxes: np.ndarray, crop: CropTransform
) -> Tuple[np.ndarray, np.ndarray]:
    """SSD's rule for the boxes of a cropped image: keep those whose centre is in the crop.

    Args:
        boxes: ``(N, 4)`` XYXY boxes in the coordinates of the image *before* ``crop``.
        crop: the crop (a ``CropTransform`` or anything with ``x0, y0, w, h``).

    Returns:
        ``(kept, keep)``: ``kept`` the ``(K, 4)`` float64 boxes whose centre lies strictly
        inside the crop window, shifted to the crop's coordinates and clipped to
        ``[0, w] x [0, h]``; ``keep`` the ``(N,)`` bool mask selecting them (use it on the
        classes, masks, ... of the same instances).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, w, h = crop.x0, crop.y0, crop.w, crop.h
    window = np.array([[x0, y0, x0 + w, y0 + h]], dtype=np.float64)
    keep = _centres_inside(boxes, window)[0]
    kept = boxes[keep] - np.array([x0, y0, x0, y0], dtype=np.float64)
    kept = np.clip(kept, 0.0, np.array([w, h, w, h], dtype=np.float64))
    return kept, keep


class SSDCropTransform(CropTransform):
    """``CropTransform`` that applies SSD's centre rule to boxes.

    Images, segmentations, polygons and keypoints are cropped as by ``CropTransform``. In
    ``apply_box``, a box whose centre is strictly inside the window is shifted and clipped to
    it; any other box becomes the empty box ``(0, 0, 0, 0)``, which the dataset mapper's
    ``filter_empty_instances`` then drops with its instance (see the module docstring and
    :func:`filter_boxes_outside_crop`).
    """

    def apply_box(self, box: np.ndarray) -> np.ndarray:
        box = np.asarray(box)
        dtype = box.dtype if box.dtype.kind == "f" else np.float64
        kept, keep = filter_boxes_outside_crop(box, self)
        out = np.zeros((len(keep), 4), dtype=dtype)
        out[keep] = kept
        return out


class SSDMinIoURandomCrop(Augmentation):
    """SSD's "zoom in" patch sampling (what the paper calls sampling a patch per image).

    A mode is drawn uniformly from ``min_ious``: None keeps the whole image; a number ``t``
    crops, trying up to ``crop_trials`` patches:

    - width and height are ``int(s * W)`` and ``int(s' * H)`` for independent
      ``s, s' ~ U(min_crop_size, 1)``, rejected unless ``height / width`` is in
      ``aspect_ratio_range``; the top-left corner is uniform among the integer positions that
      keep the patch inside the image;
    - the patch needs at least one ground-truth box centre strictly inside it, and its IoU
      with the boxes must reach ``t``: with ``iou_criterion="best"``, at least one box whose
      centre is inside has IoU >= ``t``; with ``"all"``, every box has IoU >= ``t``.

    The first patch that passes is used; if none does, a new mode is drawn (at most
    ``mode_trials`` times, then no crop). ``t = 0`` is the paper's "randomly sample a patch"
    (only the centre condition); ``t`` in 0.1..0.9 its "minimum jaccard overlap with the
    objects". The defaults hold the paper's options: whole image, random patch, and min IoU
    0.1, 0.3, 0.5, 0.7, 0.9, each with probability 1/7 (as torchvision and mmdetection draw
    them; the authors' Caffe code instead tries every option once and picks uniformly among
    those that succeeded). Sizes in [0.3, 1], aspect ratios in [0.5, 2] and 50 trials are the
    authors' Caffe configuration (``min_scale``, ``max_trials``); the paper's text gives
    [0.1, 1] for the size, ``min_crop_size=0.1`` reproduces that.

    Which boxes must reach ``t``: the paper's wording ("minimum jaccard overlap with the
    objects") is ambiguous. The authors' Caffe sampler (``SatisfySampleConstraint``) accepts a
    patch as soon as *one* box satisfies the overlap, and torchvision's ``RandomIoUCrop``
    requires the best IoU among the boxes whose centre is in the patch to reach it; that is
    ``"best"``, the default. ssd.pytorch, mmdetection and Detectron2's ``MinIoURandomCrop``
    require *every* box to reach it: ``"all"``, a stricter rule that rejects most patches in
    crowded images.

    Differences from ``segtron.data.transforms.MinIoURandomCrop`` (Detectron2's, kept as is for
    compatibility): that one draws the offset with ``np.random.uniform(W - w)``, i.e. between
    ``W - w`` and 1 (so the patch touches the left/top edge only when it is less than a pixel
    smaller than the image), only knows the "all" rule, returns a plain ``CropTransform`` that
    keeps every box overlapping the patch, and silently does nothing when the input has no
    boxes.

    Args:
        min_ious: the modes; None = no crop, a number in [0, 1] = minimum IoU.
        min_crop_size: smallest patch side, as a fraction of the image side.
        aspect_ratio_range: allowed ``(low, high)`` of the patch's height / width, in pixels.
        crop_trials: patches tried per mode.
        iou_criterion: ``"best"`` or ``"all"``, see above.
        mode_trials: how many modes to draw before giving up.

    ``get_transform(image, boxes)`` reads ``aug_input.boxes``, ``(N, 4)`` XYXY absolute boxes
    (boxes with no area are ignored). It returns an :class:`SSDCropTransform` (which also
    empties the boxes whose centre falls outside), or a ``NoOpTransform`` for the no-crop mode,
    for an image without boxes, or after ``mode_trials`` failed modes. It raises if ``boxes``
    is None (a mapper that passes no boxes; segtron's ``DatasetMapper`` passes them).
    """

    _CRITERIA = ("best", "all")

    def __init__(
        self,
        min_ious: Sequence[Optional[float]] = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
        min_crop_size: float = 0.3,
        aspect_ratio_range: Tuple[float, float] = (0.5, 2.0),
        crop_trials: int = 50,
        iou_criterion: str = "best",
        mode_trials: int = 1000,
    ):
        super().__init__()
        if len(min_ious) == 0:
            raise ValueError("SSDMinIoURandomCrop: min_ious must hold at least one mode.")
        for t in min_ious:
            if t is not None and not 0.0 <= t <= 1.0:
                raise ValueError(
                    f"SSDMinIoURandomCrop: each of min_ious must be None (no crop) or in [0, 1], "
                    f"got {t!r}."
                )
        if not 0.0 < min_crop_size <= 1.0:
            raise ValueError(
                f"SSDMinIoURandomCrop: min_crop_size must be in (0, 1], got {min_crop_size}."
            )
        if not 0.0 < aspect_ratio_range[0] <= aspect_ratio_range[1]:
            raise ValueError(
                "SSDMinIoURandomCrop: aspect_ratio_range must be (low, high) with 0 < low <= high, "
                f"got {aspect_ratio_range!r}."
            )
        if iou_criterion not in self._CRITERIA:
            raise ValueError(
                f"SSDMinIoURandomCrop: iou_criterion must be one of {list(self._CRITERIA)}, got "
                f"{iou_criterion!r}."
            )
        if crop_trials < 1 or mode_trials < 1:
            raise ValueError("SSDMinIoURandomCrop: crop_trials and mode_trials must be >= 1.")
        self._init(locals())

    def _sample_patch(self, h: int, w: int, boxes: np.ndarray, min_iou: float):
        """Draw ``crop_trials`` patches at once; return the first acceptable ``(x0, y0, cw, ch)``
        or None."""
        n = self.crop_trials
        scales = np.random.uniform(self.min_crop_size, 1.0, size=(n, 2))
        crop_w = (scales[:, 0] * w).astype(np.int64)
        crop_h = (scales[:, 1] * h).astype(np.int64)
        left = np.random.randint(0, w - crop_w + 1)
        top = np.random.randint(0, h - crop_h + 1)
        low, high = self.aspect_ratio_range
        ok = (crop_w > 0) & (crop_h > 0)
        ratio = crop_h / np.maximum(crop_w, 1)
        ok &= (ratio >= low) & (ratio <= high)

        windows = np.stack([left, top, left + crop_w, top + crop_h], axis=1).astype(np.float64)
        inside = _centres_inside(boxes, windows)  # (n, N)
        ious = pairwise_iou(torch.from_numpy(windows), torch.from_numpy(boxes)).numpy()
        ok &= inside.any(axis=1)
        if self.iou_criterion == "best":
            ok &= np.where(inside, ious, -1.0).max(axis=1) >= min_iou
        else:
            ok &= ious.min(axis=1) >= min_iou
        accepted = np.flatnonzero(ok)
        if len(accepted) == 0:
            return None
        i = accepted[0]
        return int(left[i]), int(top[i]), int(crop_w[i]), int(crop_h[i])

    def get_transform(self, image: np.ndarray, boxes: Optional[np.ndarray]) -> Transform:
        if boxes is None:
            raise ValueError(
                "SSDMinIoURandomCrop needs the ground-truth boxes (aug_input.boxes), but got None: "
                "the dataset dict has no 'annotations', or a custom mapper built AugInput "
                "without boxes. segtron's DatasetMapper passes boxes=<the (N, 4) XYXY_ABS boxes "
                "of the non-crowd annotations>; do the same (see projects/SSD/augmentations.py)."
            )
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
        if len(boxes) == 0:
            return NoOpTransform()
        h, w = image.shape[:2]
        for _ in range(self.mode_trials):
            min_iou = self.min_ious[np.random.randint(len(self.min_ious))]
            if min_iou is None:
                return NoOpTransform()
            patch = self._sample_patch(h, w, boxes, float(min_iou))
            if patch is not None:
                x0, y0, crop_w, crop_h = patch
                return SSDCropTransform(x0, y0, crop_w, crop_h, orig_w=w, orig_h=h)
        return NoOpTransform()
