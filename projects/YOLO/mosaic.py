"""YOLOX's mosaic and mix-up (Ge et al. 2021, Sec. 2.2 "Strong data augmentation") as a dataset
wrapper, :class:`MosaicDataset`, plus :class:`MosaicDatasetMapper`, the ``DatasetMapper`` that
accepts its output. They need several images per sample, so they cannot be per-image
``Augmentation``\\ s.

**Data contract.** The wrapped dataset is map-style (e.g. ``DatasetFromList``) and returns
segtron dataset dicts: ``file_name``, ``height``, ``width``, ``annotations`` whose ``bbox`` is in
an absolute ``bbox_mode`` (``XYXY_ABS``, ``XYWH_ABS``, ...) with a ``category_id``.
``MosaicDataset[i]`` is then one of two things:

- **the dataset's own dict, untouched**, when mosaic is switched off (:meth:`MosaicDataset.enable`)
  or not drawn (``mosaic_prob``); the mapper reads the file as usual;
- **a new dict** holding the combined image in memory:

  - ``"image"``: ``H x W x C`` uint8 numpy array in ``image_format`` channel order (the mapper's
    format, ``cfg.INPUT.FORMAT``); not yet a tensor, so the mapper's augmentations (flip,
    colour jitter, resize) still apply;
  - ``"height"``, ``"width"``: ``output_size``, the size of that image;
  - ``"annotations"``: one dict per kept box: ``bbox`` (4 floats, clipped to the image),
    ``bbox_mode = BoxMode.XYXY_ABS``, and the source annotation's other keys (``category_id``,
    ``iscrowd``, ...) except ``segmentation`` and ``keypoints``, which are not transformed
    (mosaic produces box-only samples);
  - ``"mosaic_file_names"``: the source images, for debugging.

  It has no ``file_name``, so a mapper that would read a file instead of taking ``"image"``
  fails (``KeyError: 'file_name'``) instead of pairing an unrelated image with these boxes.

:class:`MosaicDatasetMapper` is ``DatasetMapper`` (same arguments, same ``from_config``) taking
``"image"`` from the dict when it is there, so both kinds of dict map the same way::

    dataset = MosaicDataset(DatasetFromList(dicts, copy=False), (640, 640), image_format="BGR")
    loader = build_detection_train_loader(cfg, dataset=dataset,
                                          mapper=MosaicDatasetMapper(cfg, is_train=True))
    ...  # a hook at iteration N:  dataset.enable(False)   (last epochs without mosaic)

**One mosaic sample** (index ``i``, ``output_size = (H, W)``):

1. Images ``i`` and three random indices are each resized to fit in ``H x W`` (ratio
   ``min(H / h, W / w)``, kept) and put on a ``2H x 2W`` canvas filled with ``fill``, around a
   centre ``(xc, yc)`` drawn in ``center_range x (W, H)``: the first image's bottom-right
   corner, the second's bottom-left, the third's top-right and the fourth's top-left corner
   at the centre. What falls off the canvas is cut; boxes are shifted, clipped to the visible
   part of their image and dropped when a side is below ``min_box_size`` (or empty).
2. Random scale and shift: the canvas is scaled by ``s ~ U(scale_range)`` about its centre,
   moved by ``U(-translate, translate) x (W, H)`` pixels, and the ``H x W`` window centred on
   the canvas centre is kept (bilinear, ``fill`` outside). Boxes follow, are clipped to the
   window and filtered again. (YOLOX also rotates and shears; not done here, which keeps
   boxes exact.)
3. Mix-up, with probability ``mixup_prob``: another image (random index) is fitted to
   ``H x W``, scaled by ``U(mixup_scale)``, pasted at a random offset on a ``fill`` canvas
   (cropped when larger), and blended: ``round((1 - mixup_weight) * mosaic + mixup_weight *
   other)``. Its boxes (shifted, clipped, filtered) are appended.

**Randomness** comes from ``np.random`` (the global generator), like segtron's augmentations:
``np.random.seed`` makes a run repeatable and segtron's loaders reseed it in each worker.
"""

import copy
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.utils.data as torchdata

from segtron.data import detection_utils as utils
from segtron.data import transforms as T
from segtron.data.dataset_mapper import DatasetMapper
from segtron.structures import BoxMode

__all__ = [
    "MosaicDataset",
    "MosaicDatasetMapper",
    "blend",
    "box_keep_mask",
    "combine_mosaic",
    "mosaic_offsets",
    "paste",
    "scale_shift_crop",
    "shift_and_clip_boxes",
]

_DROPPED_KEYS = ("bbox", "bbox_mode", "segmentation", "keypoints")


# --- pure array functions -------------------------------------------------------------------


def paste(canvas: np.ndarray, image: np.ndarray, x0: int, y0: int) -> Tuple[int, int, int, int]:
    """Copy ``image`` onto ``canvas`` (in place) with its top-left corner at ``(x0, y0)``, which
    may be off the canvas; the part outside is cut.

    Returns:
        the visible rectangle ``(x0, y0, x1, y1)`` in canvas pixels (empty: ``x1 == x0`` or
        ``y1 == y0``).
    """
    ch, cw = canvas.shape[:2]
    h, w = image.shape[:2]
    vx0, vy0 = min(max(x0, 0), cw), min(max(y0, 0), ch)
    vx1, vy1 = max(min(x0 + w, cw), vx0), max(min(y0 + h, ch), vy0)
    if vx1 > vx0 and vy1 > vy0:
        canvas[vy0:vy1, vx0:vx1] = image[vy0 - y0 : vy1 - y0, vx0 - x0 : vx1 - x0]
    return vx0, vy0, vx1, vy1


def shift_and_clip_boxes(
    boxes: np.ndarray, dx: float, dy: float, rect: Sequence[float]
) -> np.ndarray:
    """(N, 4) XYXY ``boxes`` moved by ``(dx, dy)`` and clipped to ``rect = (x0, y0, x1, y1)``;
    returns a new float64 array."""
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + [dx, dy, dx, dy]
    out[:, 0::2] = out[:, 0::2].clip(rect[0], rect[2])
    out[:, 1::2] = out[:, 1::2].clip(rect[1], rect[3])
    return out


def box_keep_mask(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """(N,) bool: True where both sides of the (N, 4) XYXY box are > 0 and >= ``min_size``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return (w > 0) & (h > 0) & (w >= min_size) & (h >= min_size)


def mosaic_offsets(
    center: Tuple[int, int], tile_sizes: Sequence[Tuple[int, int]]
) -> List[Tuple[int, int]]:
    """Top-left corners ``(x0, y0)`` of the four tiles around ``center = (xc, yc)``.

    ``tile_sizes`` are the four ``(h, w)``; the tiles touch the centre with, in order, their
    bottom-right, bottom-left, top-right and top-left corner.
    """
    xc, yc = center
    (h0, w0), (h1, _), (_, w2), _ = tile_sizes
    return [(xc - w0, yc - h0), (xc, yc - h1), (xc - w2, yc), (xc, yc)]


def combine_mosaic(
    images: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    center: Tuple[int, int],
    output_size: Tuple[int, int],
    fill: int = 114,
) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Step 1 of the module docstring, without the filtering.

    Args:
        images: four ``h x w x C`` uint8 images (already resized).
        boxes: their (N_i, 4) XYXY boxes, in pixels of each image.
        center: ``(xc, yc)``, integer pixel of the ``2H x 2W`` canvas.
        output_size: ``(H, W)``.
        fill: canvas value where no image lands.

    Returns:
        ``(canvas, placed)``: the ``2H x 2W x C`` canvas and, per image, its boxes in canvas
        pixels clipped to that image's visible part (an off-canvas box becomes empty, not
        removed: filter with :func:`box_keep_mask`).
    """
    if len(images) != 4 or len(boxes) != 4:
        raise ValueError(
            f"combine_mosaic takes exactly 4 images and 4 box arrays, got {len(images)} and "
            f"{len(boxes)}."
        )
    height, width = output_size
    channels = images[0].shape[2:]
    canvas = np.full((2 * height, 2 * width) + channels, fill, dtype=np.uint8)
    offsets = mosaic_offsets(center, [img.shape[:2] for img in images])
    placed = []
    for image, image_boxes, (x0, y0) in zip(images, boxes, offsets):
        rect = paste(canvas, image, x0, y0)
        placed.append(shift_and_clip_boxes(image_boxes, x0, y0, rect))
    return canvas, placed


def scale_shift_crop(
    canvas: np.ndarray,
    boxes: np.ndarray,
    scale: float,
    shift: Tuple[float, float],
    output_size: Tuple[int, int],
    fill: int = 114,
) -> Tuple[np.ndarray, np.ndarray]:
    """Step 2 of the module docstring: scale ``canvas`` by ``scale`` about its centre, move it
    by ``shift = (dx, dy)`` pixels and keep the ``output_size = (H, W)`` window centred on the
    canvas centre.

    A point ``x`` (continuous pixel coordinates) goes to ``scale * (x - cw / 2) + W / 2 + dx``
    (same for y). Returns the ``H x W x C`` image (bilinear, ``fill`` outside the canvas) and
    the (N, 4) XYXY boxes mapped the same way and clipped to the window (not filtered).
    """
    ch, cw = canvas.shape[:2]
    height, width = output_size
    ox = width / 2 + shift[0] - scale * cw / 2
    oy = height / 2 + shift[1] - scale * ch / 2
    # cv2 maps pixel indices (centres at integers); continuous coordinates have centres at +0.5.
    matrix = np.array(
        [[scale, 0.0, ox + 0.5 * scale - 0.5], [0.0, scale, oy + 0.5 * scale - 0.5]]
    )
    channels = canvas.shape[2] if canvas.ndim == 3 else 1
    image = cv2.warpAffine(
        np.ascontiguousarray(canvas),
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(fill,) * min(channels, 4),
    ).reshape((height, width) + canvas.shape[2:])
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * scale + [ox, oy, ox, oy]
    return image, shift_and_clip_boxes(out, 0, 0, (0, 0, width, height))


def blend(image: np.ndarray, other: np.ndarray, weight: float) -> np.ndarray:
    """``round((1 - weight) * image + weight * other)`` as uint8 (same shapes)."""
    mixed = (1.0 - weight) * image.astype(np.float64) + weight * other.astype(np.float64)
    return np.rint(mixed).clip(0, 255).astype(np.uint8)


# --- the dataset wrapper --------------------------------------------------------------------


class _Sample(NamedTuple):
    """One source image fitted to the output size, with its boxes (XYXY, its pixels)."""

    image: np.ndarray
    boxes: np.ndarray
    annotations: List[Dict[str, Any]]
    file_name: Optional[str]


def _resize(image: np.ndarray, boxes: np.ndarray, ratio: float) -> Tuple[np.ndarray, np.ndarray]:
    """Resize by ``ratio`` (rounded size, at least 1 pixel), boxes by the exact size ratios."""
    h, w = image.shape[:2]
    new_h, new_w = max(1, int(round(h * ratio))), max(1, int(round(w * ratio)))
    if (new_h, new_w) == (h, w):
        return image, boxes
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    resized = resized.reshape((new_h, new_w) + image.shape[2:])
    return resized, boxes * [new_w / w, new_h / h, new_w / w, new_h / h]


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(
            f"MosaicDataset: {name} must be a pair (lo, hi) with {low} <= lo <= hi <= {high}, "
            f"got {value!r}."
        )


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"MosaicDataset: {name} must be in [0, 1], got {value}.")


class MosaicDataset(torchdata.Dataset):
    """YOLOX's mosaic + mix-up over a map-style dataset of segtron dataset dicts.

    See the module docstring for the output (the data contract) and the steps.

    Args:
        dataset: map-style dataset returning a fresh dataset dict per read.
        output_size: ``(H, W)`` of the mosaic images, e.g. ``(640, 640)``.
        image_format: channel order the default loader reads (``utils.read_image``); the
            mapper's ``image_format``.
        image_loader: ``dataset dict -> H x W x C uint8 array`` replacing the default
            ``read_image(d["file_name"], image_format)`` (e.g. for in-memory images). Must be
            picklable when the loader has worker processes.
        mosaic_prob: probability that a sample is a mosaic (else the plain dataset dict).
        mixup_prob: probability that a mosaic sample is also mixed up.
        scale_range: range of the random scale of step 2.
        translate: largest shift of step 2, as a fraction of ``W`` and ``H``.
        center_range: range of the mosaic centre, as fractions of ``W`` and ``H`` (canvas
            ``2W x 2H``); ``(1, 1)`` is the canvas centre.
        mixup_scale: range of the extra scale of the mix-up image.
        mixup_weight: weight of the mix-up image in the blend.
        min_box_size: boxes with a side (pixels) below this after clipping are dropped; empty
            boxes are always dropped.
        fill: value (0..255) of the canvas where no image lands.
    """

    def __init__(
        self,
        dataset: torchdata.Dataset,
        output_size: Tuple[int, int],
        *,
        image_format: str = "BGR",
        image_loader: Optional[Callable[[Dict[str, Any]], np.ndarray]] = None,
        mosaic_prob: float = 1.0,
        mixup_prob: float = 1.0,
        scale_range: Tuple[float, float] = (0.1, 2.0),
        translate: float = 0.1,
        center_range: Tuple[float, float] = (0.5, 1.5),
        mixup_scale: Tuple[float, float] = (0.5, 1.5),
        mixup_weight: float = 0.5,
        min_box_size: float = 2.0,
        fill: int = 114,
    ):
        if isinstance(dataset, torchdata.IterableDataset) or not hasattr(dataset, "__getitem__"):
            raise ValueError(
                "MosaicDataset needs a map-style dataset (random access to other images); wrap "
                "the list of dataset dicts in DatasetFromList, not an iterable dataset."
            )
        if len(output_size) != 2 or min(output_size) < 1:
            raise ValueError(
                f"MosaicDataset: output_size must be (H, W) positive integers, got "
                f"{output_size!r}."
            )
        _check_prob("mosaic_prob", mosaic_prob)
        _check_prob("mixup_prob", mixup_prob)
        _check_prob("mixup_weight", mixup_weight)
        _check_range("scale_range", scale_range, 1e-6, float("inf"))
        _check_range("center_range", center_range, 0.0, 2.0)
        _check_range("mixup_scale", mixup_scale, 1e-6, float("inf"))
        if not 0.0 <= translate <= 1.0:
            raise ValueError(f"MosaicDataset: translate must be in [0, 1], got {translate}.")
        if min_box_size < 0:
            raise ValueError(f"MosaicDataset: min_box_size must be >= 0, got {min_box_size}.")
        if not 0 <= fill <= 255:
            raise ValueError(f"MosaicDataset: fill must be a uint8 value 0..255, got {fill}.")
        self.dataset = dataset
        self.output_size = (int(output_size[0]), int(output_size[1]))
        self.image_format = image_format
        self.image_loader = image_loader
        self.mosaic_prob = mosaic_prob
        self.mixup_prob = mixup_prob
        self.scale_range = tuple(scale_range)
        self.translate = translate
        self.center_range = tuple(center_range)
        self.mixup_scale = tuple(mixup_scale)
        self.mixup_weight = mixup_weight
        self.min_box_size = min_box_size
        self.fill = int(fill)
        # In shared memory, so that enable() from the main process (a hook) also reaches the
        # DataLoader workers, which are forked once and keep their own copy of the dataset.
        self._enabled = torch.ones((), dtype=torch.bool).share_memory_()

    def enable(self, on: bool = True) -> None:
        """Switch mosaic (and with it mix-up) on or off, e.g. ``enable(False)`` from a hook for
        the last iterations. Workers see it from their next sample (batches already
        prefetched keep their mosaic)."""
        self._enabled.fill_(bool(on))

    @property
    def enabled(self) -> bool:
        """Whether mosaic / mix-up are on (see :meth:`enable`)."""
        return bool(self._enabled)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        if not self.enabled or not np.random.uniform() < self.mosaic_prob:
            return self.dataset[index]
        height, width = self.output_size
        lo, hi = self.center_range
        center = (int(np.random.uniform(lo * width, hi * width)),
                  int(np.random.uniform(lo * height, hi * height)))
        indices = [int(index)] + [int(np.random.randint(len(self))) for _ in range(3)]
        samples = [self._load(i) for i in indices]

        canvas, placed = combine_mosaic(
            [s.image for s in samples], [s.boxes for s in samples], center, self.output_size,
            self.fill,
        )
        annotations = [a for s in samples for a in s.annotations]
        boxes = np.concatenate(placed, axis=0)
        boxes, annotations = self._filter(boxes, annotations)

        scale = np.random.uniform(*self.scale_range)
        shift = (np.random.uniform(-self.translate, self.translate) * width,
                 np.random.uniform(-self.translate, self.translate) * height)
        image, boxes = scale_shift_crop(canvas, boxes, scale, shift, self.output_size, self.fill)
        boxes, annotations = self._filter(boxes, annotations)

        file_names = [s.file_name for s in samples]
        if np.random.uniform() < self.mixup_prob:
            image, boxes, annotations, other_name = self._mixup(image, boxes, annotations)
            file_names.append(other_name)
        return {
            "image": image,
            "height": height,
            "width": width,
            "annotations": [_xyxy_annotation(a, b) for a, b in zip(annotations, boxes)],
            "mosaic_file_names": file_names,
        }

    def _read(self, dataset_dict: Dict[str, Any]) -> np.ndarray:
        if self.image_loader is not None:
            image = self.image_loader(dataset_dict)
        else:
            image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise ValueError(
                "MosaicDataset: images must be H x W x C uint8 numpy arrays; got "
                f"{getattr(image, 'dtype', type(image).__name__)} of shape "
                f"{getattr(image, 'shape', '?')}. Make image_loader return that."
            )
        utils.check_image_size(dataset_dict, image)
        return image

    def _load(self, index: int) -> _Sample:
        """Read dataset[index], resized to fit in output_size, boxes converted to XYXY_ABS."""
        dataset_dict = self.dataset[index]
        image = self._read(dataset_dict)
        annotations = dataset_dict.get("annotations", [])
        boxes = np.zeros((len(annotations), 4), dtype=np.float64)
        for i, anno in enumerate(annotations):
            if "bbox_mode" not in anno:
                raise ValueError(
                    f"An annotation of {dataset_dict.get('file_name', f'element {index}')} has no "
                    "'bbox_mode'; set it in the dataset dicts (BoxMode.XYWH_ABS for COCO boxes)."
                )
            boxes[i] = BoxMode.convert(
                np.asarray(anno["bbox"], dtype=np.float64), anno["bbox_mode"], BoxMode.XYXY_ABS
            )
        h, w = image.shape[:2]
        ratio = min(self.output_size[0] / h, self.output_size[1] / w)
        image, boxes = _resize(image, boxes, ratio)
        return _Sample(image, boxes, list(annotations), dataset_dict.get("file_name"))

    def _filter(self, boxes: np.ndarray, annotations: List[Dict[str, Any]]):
        keep = box_keep_mask(boxes, self.min_box_size)
        return boxes[keep], [a for a, k in zip(annotations, keep) if k]

    def _mixup(self, image: np.ndarray, boxes: np.ndarray, annotations: List[Dict[str, Any]]):
        """Step 3 of the module docstring."""
        height, width = self.output_size
        other = self._load(int(np.random.randint(len(self))))
        other_image, other_boxes = _resize(
            other.image, other.boxes, np.random.uniform(*self.mixup_scale)
        )
        h, w = other_image.shape[:2]
        x0 = int(np.random.randint(min(0, width - w), max(0, width - w) + 1))
        y0 = int(np.random.randint(min(0, height - h), max(0, height - h) + 1))
        other_canvas = np.full_like(image, self.fill)
        rect = paste(other_canvas, other_image, x0, y0)
        other_boxes = shift_and_clip_boxes(other_boxes, x0, y0, rect)
        other_boxes, other_annotations = self._filter(other_boxes, other.annotations)
        return (
            blend(image, other_canvas, self.mixup_weight),
            np.concatenate([boxes, other_boxes], axis=0),
            annotations + other_annotations,
            other.file_name,
        )


def _xyxy_annotation(annotation: Dict[str, Any], box: np.ndarray) -> Dict[str, Any]:
    """The output annotation: ``annotation``'s other keys, ``bbox`` = ``box`` in XYXY_ABS."""
    out = {k: v for k, v in annotation.items() if k not in _DROPPED_KEYS}
    out["bbox"] = [float(v) for v in box]
    out["bbox_mode"] = BoxMode.XYXY_ABS
    return out


# --- the mapper -----------------------------------------------------------------------------


class MosaicDatasetMapper(DatasetMapper):
    """``DatasetMapper`` that also maps :class:`MosaicDataset`'s in-memory samples.

    A dict with an ``"image"`` numpy array (``H x W x C`` uint8 in ``image_format``) is mapped
    from that array: size checked against ``height``/``width``, augmentations applied, image to
    a uint8 CHW tensor, annotations (box-only, non-crowd) transformed into ``instances``. Any
    other dict (the plain samples) goes through ``DatasetMapper`` unchanged. Same arguments and
    ``from_config`` as ``DatasetMapper``; the input dict is not modified.
    """

    def __call__(self, dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
        image = dataset_dict.get("image")
        if not isinstance(image, np.ndarray):
            return super().__call__(dataset_dict)
        dataset_dict = copy.deepcopy({k: v for k, v in dataset_dict.items() if k != "image"})
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict
