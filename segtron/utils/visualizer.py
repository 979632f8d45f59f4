"""Draw detections, masks, keypoints and segmentations on images (``detectron2.utils.visualizer``).

``Visualizer(img_rgb, metadata)`` renders with matplotlib on an off-screen Agg canvas (no display
needed, safe in worker processes). High-level methods (``draw_instance_predictions``,
``draw_dataset_dict``, ``draw_sem_seg``, ``draw_panoptic_seg``) build on primitives
(``overlay_instances``, ``draw_box``, ``draw_text``, ``draw_polygon``, ``draw_binary_mask``,
``draw_line``, ``draw_circle``, ...). All of them draw onto the same :class:`VisImage` and return
it; ``vis.get_output().get_image()`` gives the picture as an RGB uint8 array.

Images go in as **RGB** (the model's BGR input must be converted first, e.g. with
``segtron.data.detection_utils.convert_image_to_rgb``); colours are matplotlib colours (names,
hex, or RGB floats in ``[0, 1]``). The exact style (colours, opacity, label placement) is meant
for people to look at and may change; draw with the primitives for a fixed style.

Example::

    img = read_image(path, format="RGB")
    vis = Visualizer(img, MetadataCatalog.get("shapes_val"))
    vis.draw_instance_predictions(outputs["instances"].to("cpu")).save("out.png")
"""

import logging
import os
from enum import Enum, unique
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..data.catalog import Metadata
from ..structures import BitMasks, Boxes, BoxMode, Keypoints, PolygonMasks
from .colormap import random_color, random_colors
from .file_io import PathManager
from .visualizer_primitives import (  # noqa: F401  (constants re-exported as in Detectron2)
    _BLACK,
    _KEYPOINT_THRESHOLD,
    _LARGE_MASK_AREA_THRESH,
    _OFF_WHITE,
    _RED,
    _SMALL_OBJECT_AREA_THRESH,
    _DrawingPrimitives,
)
from .visualizer_utils import GenericMask, _create_text_labels, _PanopticPrediction

__all__ = ["ColorMode", "VisImage", "Visualizer", "GenericMask"]

logger = logging.getLogger(__name__)


@unique
class ColorMode(Enum):
    """How ``Visualizer`` colours instances."""

    IMAGE = 0
    """A random palette colour per instance; masks drawn with low opacity."""
    SEGMENTATION = 1
    """Colours from ``metadata.thing_colors`` (jittered, so instances of one class are similar
    but distinguishable), drawn with high opacity to show mask quality. Falls back to IMAGE
    when the metadata has no ``thing_colors``."""
    IMAGE_BW = 2
    """As IMAGE, with everything outside the predicted masks turned grey (instance predictions
    and panoptic segmentation only)."""


class VisImage:
    """An RGB image on a matplotlib figure that drawing calls add to.

    Attributes:
        img (ndarray): the HxWx3 RGB image drawn on.
        scale (float): output pixels per input pixel.
        width, height (int): size of ``img`` (drawing coordinates are input-image pixels).
        fig, ax, canvas: the matplotlib figure, its full-size axes and the Agg canvas.
    """

    def __init__(self, img: np.ndarray, scale: float = 1.0):
        """Args:
            img: HxWx3 RGB image, values in ``[0, 255]``.
            scale: size of the output relative to ``img`` (2.0 doubles width and height).
        """
        if scale <= 0:
            raise ValueError(f"VisImage scale must be > 0, got {scale}.")
        self.img = img
        self.scale = scale
        self.height, self.width = int(img.shape[0]), int(img.shape[1])
        self._setup_figure(img)

    def _setup_figure(self, img: np.ndarray) -> None:
        fig = Figure(frameon=False)
        self.dpi = fig.get_dpi()
        # A tiny extra margin: Agg truncates width * dpi, which could lose a pixel to rounding.
        fig.set_size_inches((self.width * self.scale + 1e-2) / self.dpi,
                            (self.height * self.scale + 1e-2) / self.dpi)
        self.canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
        ax.axis("off")
        self.fig, self.ax = fig, ax
        self.reset_image(img)

    def reset_image(self, img: np.ndarray) -> None:
        """Replace the background picture by ``img`` (HxWx3 RGB, same size); drawings stay."""
        img = np.asarray(img).astype(np.uint8)
        self.ax.imshow(img, extent=(0, self.width, self.height, 0), interpolation="nearest")
        self.ax.set_xlim(0, self.width)
        self.ax.set_ylim(self.height, 0)

    def save(self, filepath: str) -> None:
        """Write the picture to ``filepath`` (format from the extension: .png, .jpg, ...)."""
        fmt = Image.registered_extensions().get(os.path.splitext(filepath)[1].lower())
        if fmt is None:
            raise ValueError(
                f"Cannot tell which image format to write from the name '{filepath}'; end it with "
                ".png or .jpg."
            )
        with PathManager.open(filepath, "wb") as f:
            Image.fromarray(self.get_image()).save(f, format=fmt)

    def get_image(self) -> np.ndarray:
        """Render and return the picture: RGB uint8 of shape (H * scale, W * scale, 3)."""
        self.canvas.draw()
        rgba = np.asarray(self.canvas.buffer_rgba())
        return np.ascontiguousarray(rgba[:, :, :3])


class Visualizer(_DrawingPrimitives):
    """Draws detection and segmentation data on an image.

    High-level: ``draw_instance_predictions``, ``draw_dataset_dict``, ``draw_sem_seg``,
    ``draw_panoptic_seg``. Primitives (from the base class): ``overlay_instances``,
    ``draw_box``, ``draw_text``, ``draw_polygon``, ``draw_binary_mask``, ``draw_soft_mask``,
    ``draw_line``, ``draw_circle``, ``draw_rotated_box_with_label``,
    ``draw_and_connect_keypoints``. Meant for quality pictures, not real-time speed.
    """

    def __init__(self, img_rgb: Union[np.ndarray, torch.Tensor],
                 metadata: Optional[Metadata] = None, scale: float = 1.0,
                 instance_mode: ColorMode = ColorMode.IMAGE):
        """Args:
            img_rgb: HxWx3 **RGB** image (numpy or tensor, values in ``[0, 255]``; clipped and
                cast to uint8). An HxW or HxWx1 grey image is repeated to 3 channels.
            metadata: dataset ``Metadata`` (``thing_classes``, ``thing_colors``,
                ``stuff_classes``, ``stuff_colors``, ``keypoint_names``, ...); None for none.
            scale: output size relative to the image.
            instance_mode: a :class:`ColorMode`.
        """
        if isinstance(img_rgb, torch.Tensor):
            img_rgb = img_rgb.detach().cpu().numpy()
        img = np.asarray(img_rgb)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise ValueError(
                f"Visualizer needs an HxWx3 RGB image, got shape {img.shape}. A model input "
                "tensor is CxHxW in INPUT.FORMAT: use image.permute(1, 2, 0) and "
                "convert_image_to_rgb(image, cfg.INPUT.FORMAT)."
            )
        self.img = np.clip(img[:, :, :3], 0, 255).astype(np.uint8)
        self.metadata = metadata if metadata is not None else Metadata(name="__nonexist__")
        self.output = VisImage(self.img, scale=scale)
        self.cpu_device = torch.device("cpu")
        # Font size in points before scaling: grows with the image, never below 10 / scale.
        self._default_font_size = max(
            np.sqrt(self.output.height * self.output.width) // 90, 10 // scale
        )
        self._instance_mode = instance_mode
        self.keypoint_threshold = _KEYPOINT_THRESHOLD

    # ------------------------------------------------------------------ high-level drawing

    def _class_colors(self, classes: Optional[Sequence[int]]) -> Optional[List[Tuple]]:
        """Jittered ``thing_colors`` per class in SEGMENTATION mode, else None (random)."""
        thing_colors = self.metadata.get("thing_colors")
        if self._instance_mode != ColorMode.SEGMENTATION or not thing_colors or classes is None:
            return None
        return [self._jitter([v / 255 for v in thing_colors[int(c)]]) for c in classes]

    def draw_instance_predictions(self, predictions) -> VisImage:
        """Draw a model's instance predictions.

        Args:
            predictions (Instances): uses the fields present among ``pred_boxes`` (Boxes or Nx4
                XYXY), ``pred_classes``, ``scores``, ``pred_masks`` (N masks at image size:
                bool/uint8 tensor or array, BitMasks, PolygonMasks, or a list of RLE dicts) and
                ``pred_keypoints`` (N, K, 3). Tensors may be on any device.

        Returns:
            the output :class:`VisImage`.
        """
        def field(name):
            return predictions.get(name) if predictions.has(name) else None

        boxes, scores, classes = field("pred_boxes"), field("scores"), field("pred_classes")
        if classes is not None:
            classes = torch.as_tensor(classes).tolist()
        if scores is not None:
            scores = torch.as_tensor(scores).detach().cpu().tolist()
        labels = _create_text_labels(classes, scores, self.metadata.get("thing_classes"))
        keypoints = field("pred_keypoints")
        masks = field("pred_masks")
        if masks is not None:
            masks = self._convert_masks(masks)

        colors = self._class_colors(classes)
        alpha = 0.8 if colors is not None else 0.5
        if self._instance_mode == ColorMode.IMAGE_BW:
            keep = None
            if masks:
                keep = np.any(np.stack([m.mask for m in masks]), axis=0)
            self.output.reset_image(self._create_grayscale_image(keep))
            alpha = 0.3
        return self.overlay_instances(masks=masks, boxes=boxes, labels=labels,
                                      keypoints=keypoints, assigned_colors=colors, alpha=alpha)

    def draw_sem_seg(self, sem_seg: Union[np.ndarray, torch.Tensor],
                     area_threshold: Optional[float] = None, alpha: float = 0.8) -> VisImage:
        """Draw a semantic segmentation (labels or a model's argmax).

        Args:
            sem_seg: HxW integer class ids. Ids without a name in ``metadata.stuff_classes``
                (e.g. the ignore value 255) are not drawn; without ``stuff_classes`` every id
                except ``metadata.ignore_label`` (default 255) is drawn, named by its number.
            area_threshold: connected parts smaller than this many pixels are not drawn.
            alpha: opacity of the fills.

        Returns:
            the output :class:`VisImage`.
        """
        if isinstance(sem_seg, torch.Tensor):
            sem_seg = sem_seg.detach().cpu().numpy()
        sem_seg = np.asarray(sem_seg)
        if sem_seg.shape != (self.output.height, self.output.width):
            raise ValueError(
                f"sem_seg of shape {sem_seg.shape} does not match the image "
                f"({self.output.height}, {self.output.width}); resize it (nearest) first."
            )
        names = self.metadata.get("stuff_classes")
        stuff_colors = self.metadata.get("stuff_colors")
        if names is None:
            logger.warning("Metadata '%s' has no stuff_classes: labelling segments by class id.",
                           self.metadata.name)
        ignore = self.metadata.get("ignore_label", 255)
        values, areas = np.unique(sem_seg, return_counts=True)
        for label in values[np.argsort(-areas, kind="stable")].tolist():
            if names is not None:
                if not 0 <= label < len(names):
                    continue
                text = names[label]
            else:
                if label == ignore:
                    continue
                text = str(label)
            color = None
            if stuff_colors is not None and 0 <= label < len(stuff_colors):
                color = [v / 255 for v in stuff_colors[label]]
            self.draw_binary_mask((sem_seg == label).astype(np.uint8), color=color,
                                  edge_color=_OFF_WHITE, text=text, alpha=alpha,
                                  area_threshold=area_threshold)
        return self.output

    def draw_panoptic_seg(self, panoptic_seg: torch.Tensor, segments_info: Optional[List[Dict]],
                          area_threshold: Optional[float] = None, alpha: float = 0.7) -> VisImage:
        """Draw a panoptic segmentation (annotation or prediction).

        Args:
            panoptic_seg: HxW tensor of segment ids.
            segments_info: one dict per segment with ``id``, ``category_id`` (contiguous: an
                index of ``thing_classes`` or ``stuff_classes``), ``isthing`` and optionally
                ``score`` / ``iscrowd``. None: ids encode ``category * metadata.label_divisor``.
            area_threshold: stuff parts smaller than this are not drawn.
            alpha: opacity of the fills.

        Returns:
            the output :class:`VisImage`.
        """
        pred = _PanopticPrediction(panoptic_seg, segments_info, self.metadata)
        if self._instance_mode == ColorMode.IMAGE_BW:
            self.output.reset_image(self._create_grayscale_image(pred.non_empty_mask()))
        stuff_colors = self.metadata.get("stuff_colors")
        stuff_names = self.metadata.get("stuff_classes")
        for mask, info in pred.semantic_masks():
            cat = info["category_id"]
            color = [v / 255 for v in stuff_colors[cat]] if stuff_colors else None
            text = stuff_names[cat] if stuff_names else str(cat)
            self.draw_binary_mask(mask, color=color, edge_color=_OFF_WHITE, text=text,
                                  alpha=alpha, area_threshold=area_threshold)
        things = list(pred.instance_masks())
        if not things:
            return self.output
        masks, infos = zip(*things)
        cats = [info["category_id"] for info in infos]
        scores = [info["score"] for info in infos] if all("score" in i for i in infos) else None
        labels = _create_text_labels(cats, scores, self.metadata.get("thing_classes"),
                                     [info.get("iscrowd", 0) for info in infos])
        thing_colors = self.metadata.get("thing_colors")
        colors = ([self._jitter([v / 255 for v in thing_colors[c]]) for c in cats]
                  if thing_colors else None)
        return self.overlay_instances(masks=list(masks), labels=labels, assigned_colors=colors,
                                      alpha=alpha)

    draw_panoptic_seg_predictions = draw_panoptic_seg  # Detectron2's older name

    def draw_dataset_dict(self, dic: Dict[str, Any]) -> VisImage:
        """Draw one image's annotations in Detectron2's dataset-dict format.

        Args:
            dic: a dataset dict. Uses ``annotations`` (``bbox`` + ``bbox_mode``, ``category_id``
                (contiguous), ``segmentation`` as polygons or RLE, ``keypoints``, ``iscrowd``),
                ``sem_seg`` or ``sem_seg_file_name`` (drawn with ``draw_sem_seg``), and
                ``pan_seg`` or ``pan_seg_file_name`` + ``segments_info``.

        Returns:
            the output :class:`VisImage`.
        """
        annos = dic.get("annotations")
        if annos:
            masks = None
            if any("segmentation" in a for a in annos):
                masks = [a.get("segmentation", []) for a in annos]
            keypoints = None
            if any("keypoints" in a for a in annos):
                keypoints = np.array([a["keypoints"] for a in annos],
                                     dtype=np.float32).reshape(len(annos), -1, 3)
            boxes = None
            if all("bbox" in a for a in annos):
                boxes = np.array([
                    BoxMode.convert(list(a["bbox"]), BoxMode(a.get("bbox_mode", BoxMode.XYWH_ABS)),
                                    BoxMode.XYXY_ABS) if len(a["bbox"]) == 4 else list(a["bbox"])
                    for a in annos
                ], dtype=np.float64)
            classes = [a["category_id"] for a in annos]
            labels = _create_text_labels(classes, None, self.metadata.get("thing_classes"),
                                         [a.get("iscrowd", 0) for a in annos])
            self.overlay_instances(labels=labels, boxes=boxes, masks=masks, keypoints=keypoints,
                                   assigned_colors=self._class_colors(classes))

        sem_seg = dic.get("sem_seg")
        if sem_seg is None and "sem_seg_file_name" in dic:
            with PathManager.open(dic["sem_seg_file_name"], "rb") as f:
                sem_seg = np.asarray(Image.open(f), dtype=np.uint8)
        if sem_seg is not None:
            self.draw_sem_seg(sem_seg, area_threshold=0, alpha=0.5)

        pan_seg = dic.get("pan_seg")
        if pan_seg is None and "pan_seg_file_name" in dic:
            with PathManager.open(dic["pan_seg_file_name"], "rb") as f:
                rgb = np.asarray(Image.open(f).convert("RGB"), dtype=np.int64)
            # COCO panoptic PNGs store id = R + 256 * G + 256^2 * B.
            pan_seg = rgb[:, :, 0] + 256 * rgb[:, :, 1] + 256 * 256 * rgb[:, :, 2]
        if pan_seg is not None:
            self.draw_panoptic_seg(torch.as_tensor(np.asarray(pan_seg)), dic["segments_info"],
                                   area_threshold=0, alpha=0.5)
        return self.output

    # ------------------------------------------------------------------ conversions

    def _convert_boxes(self, boxes: Any) -> np.ndarray:
        """Boxes / tensor / array / list -> float (N, 4) XYXY or (N, 5) rotated array."""
        if isinstance(boxes, Boxes) or hasattr(boxes, "tensor"):
            boxes = boxes.tensor
        if isinstance(boxes, torch.Tensor):
            boxes = boxes.detach().cpu().numpy()
        boxes = np.asarray(boxes, dtype=np.float64)
        if boxes.size == 0:
            return boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] not in (4, 5):
            raise ValueError(
                f"Boxes must be Nx4 (XYXY_ABS) or Nx5 (rotated: cx, cy, w, h, angle), got shape "
                f"{boxes.shape}. Convert XYWH boxes with BoxMode.convert first."
            )
        return boxes

    def _convert_masks(self, masks: Any) -> List[GenericMask]:
        """Any supported mask collection -> list of GenericMask at the image size."""
        if isinstance(masks, PolygonMasks):
            masks = masks.polygons
        elif isinstance(masks, BitMasks):
            masks = masks.tensor
        if isinstance(masks, torch.Tensor):
            masks = masks.detach().cpu().numpy()
        h, w = self.output.height, self.output.width
        return [m if isinstance(m, GenericMask) else GenericMask(m, h, w) for m in masks]

    def _convert_keypoints(self, keypoints: Any) -> np.ndarray:
        """Keypoints / tensor / array -> float (N, K, 3) array."""
        if isinstance(keypoints, Keypoints):
            keypoints = keypoints.tensor
        if isinstance(keypoints, torch.Tensor):
            keypoints = keypoints.detach().cpu().numpy()
        return np.asarray(keypoints, dtype=np.float64)

    def _default_colors(self, n: int) -> List[np.ndarray]:
        """``n`` random palette colours (RGB in [0, 1]), all different while n <= 74."""
        return random_colors(n, rgb=True, maximum=1)

    def _random_color(self) -> np.ndarray:
        return random_color(rgb=True, maximum=1)

    def _create_grayscale_image(self, mask: Optional[np.ndarray] = None) -> np.ndarray:
        """The image in grey, keeping the original colours where ``mask`` (HxW bool) is set."""
        grey = np.repeat(self.img.astype(np.float32).mean(axis=2, keepdims=True), 3, axis=2)
        if mask is not None:
            grey[mask] = self.img[mask]
        return grey

    def get_output(self) -> VisImage:
        """The :class:`VisImage` holding everything drawn so far."""
        return self.output
