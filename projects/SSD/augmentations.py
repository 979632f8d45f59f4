"""The training-time data augmentation of SSD (Liu et al., "SSD: Single Shot MultiBox Detector",
ECCV 2016, section 2.2 and 3.6), as segtron augmentations.

Three augmentations, usually applied in this order before the resize to the network's input
size and the horizontal flip:

- :class:`SSDPhotometricDistortion`: random brightness, contrast, saturation and hue (the
  "photo-metric distortions" the paper borrows from Howard, 2013); boxes and masks untouched.
- :class:`SSDExpand`: "zoom out": the image is placed at a random position on a canvas up to
  ``max_ratio`` times its size, filled with the pixel mean, so small objects become more
  frequent.
- :class:`SSDMinIoURandomCrop`: "zoom in": keep the image, or crop a patch whose IoU with the
  ground-truth boxes reaches a randomly chosen minimum; only the boxes whose centre lies in the
  patch are kept.

Each is an :class:`~segtron.data.transforms.Augmentation`: it makes its random choices in
``get_transform`` (with numpy's global generator, like segtron's built-in augmentations, so
``np.random.seed`` makes a run repeatable) and returns a deterministic transform built from
segtron's existing ones (``ColorTransform``, ``PadTransform``, ``CropTransform``), which then
applies to the image, the boxes, polygons, masks, keypoints and the semantic label map alike.

A typical SSD300 training pipeline (``cfg.INPUT.FORMAT`` and ``cfg.MODEL.PIXEL_MEAN`` give the
channel order and the mean in that order)::

    augs = [
        SSDPhotometricDistortion(image_format=cfg.INPUT.FORMAT),
        SSDExpand(pixel_mean=cfg.MODEL.PIXEL_MEAN),
        SSDMinIoURandomCrop(),
        T.Resize((300, 300)),
        T.RandomFlip(),
    ]

**Boxes and the dataset mapper.** :class:`SSDMinIoURandomCrop` must see the ground-truth boxes,
so it declares ``get_transform(self, image, boxes)`` and reads ``aug_input.boxes``. segtron's
``DatasetMapper`` fills ``AugInput.boxes`` with the non-crowd annotations' ``XYXY_ABS`` boxes
(Detectron2's passes none); a custom mapper must do the same, or the crop raises a
``ValueError`` saying so (rather than silently never cropping). The other two augmentations
need nothing beyond the image.

**Dropping the boxes whose centre leaves the crop.** A ``Transform`` maps N boxes to N boxes;
it cannot remove one. The crop therefore returns an :class:`SSDCropTransform`, a
``CropTransform`` whose ``apply_box`` clips the boxes whose centre is inside the crop to it and
collapses every other box to the empty box ``(0, 0, 0, 0)``. Empty boxes stay empty under the
later resize/flip/pad/crop (not under a rotation), and the mapper's
``utils.filter_empty_instances`` (which every segtron and Detectron2 mapper already calls to
drop instances with an empty box) removes them together with their class, mask and
keypoints: no extra step, and no index bookkeeping across the list of transforms. Code that handles box arrays itself can call :func:`filter_boxes_outside_crop`
to get the kept boxes and the boolean mask to index the other per-instance fields with.
Caveat: a mapper that replaces the boxes by the masks' tight boxes (``recompute_boxes=True``)
would lose the mark; SSD is a box-only detector and does not do that.
"""

from .expand import MeanPadTransform, SSDExpand
from .min_iou_crop import SSDCropTransform, SSDMinIoURandomCrop, filter_boxes_outside_crop
from .photometric_distortion import SSDPhotometricDistortion

__all__ = [
    "SSDPhotometricDistortion",
    "SSDExpand",
    "SSDMinIoURandomCrop",
    "MeanPadTransform",
    "SSDCropTransform",
    "filter_boxes_outside_crop",
]
