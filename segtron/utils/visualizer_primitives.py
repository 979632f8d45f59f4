"""Drawing primitives of :class:`segtron.utils.visualizer.Visualizer` (its base class).

Everything draws in input-image pixel coordinates (x right, y down) onto ``self.output``
(a ``VisImage``); line widths and font sizes are multiplied by the output scale. Colours are
matplotlib colours (names, hex, RGB floats in ``[0, 1]``).
"""

import logging
import math
from typing import Any, List, Optional, Sequence, Tuple

import cv2
import matplotlib.colors as mplc
import numpy as np
import pycocotools.mask as mask_util
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, Polygon, Rectangle

from .visualizer_utils import GenericMask, change_color_brightness, jitter_color

logger = logging.getLogger(__name__)

# Boxes smaller than this (pixels, times the output scale) get their label outside the box.
_SMALL_OBJECT_AREA_THRESH = 1000
# Mask components larger than this (pixels) get their own label.
_LARGE_MASK_AREA_THRESH = 120000
_OFF_WHITE = (1.0, 1.0, 240.0 / 255)
_BLACK = (0, 0, 0)
_RED = (1.0, 0, 0)
# Keypoints with a score / visibility at or below this are not drawn.
_KEYPOINT_THRESHOLD = 0.05


class _DrawingPrimitives:
    """Primitive and instance-overlay drawing; needs ``output``, ``metadata``,
    ``_default_font_size``, ``keypoint_threshold`` and the ``_convert_*`` methods."""

    # ------------------------------------------------------------------ instances

    def overlay_instances(self, *, boxes=None, labels: Optional[Sequence[str]] = None,
                          masks=None, keypoints=None, assigned_colors=None, alpha: float = 0.5):
        """Draw N instances: boxes, translucent masks with edges, text labels, keypoints.

        Args:
            boxes: ``Boxes``, or an Nx4 XYXY_ABS array/tensor, or an Nx5 rotated array
                (cx, cy, w, h, angle in degrees CCW).
            labels: N strings, placed at the box's top-left corner (below or beside boxes that
                are small) or, without boxes, at the mask's median pixel.
            masks: ``BitMasks``, ``PolygonMasks``, an NxHxW array/tensor, or a list of per-
                instance masks (list of polygons ``[x0, y0, ...]``, HxW array, or RLE dict).
            keypoints: ``Keypoints`` or an (N, K, 3) array of (x, y, score or visibility).
            assigned_colors: N matplotlib colours; default random palette colours.
            alpha: opacity of the mask fills.

        Returns:
            the output ``VisImage``. Instances are drawn largest first so small ones stay visible.
        """
        num = None

        def check(count: int, what: str) -> None:
            if num is not None and count != num:
                raise ValueError(
                    f"overlay_instances got {count} {what} but {num} instances from the other "
                    "arguments; pass one entry per instance."
                )

        if boxes is not None:
            boxes = self._convert_boxes(boxes)
            num = len(boxes)
        if masks is not None:
            masks = self._convert_masks(masks)
            check(len(masks), "masks")
            num = len(masks)
        if keypoints is not None:
            keypoints = self._convert_keypoints(keypoints)
            check(len(keypoints), "keypoint sets")
            num = len(keypoints)
        num = num or 0
        if labels is not None:
            check(len(labels), "labels")
        if assigned_colors is None:
            assigned_colors = self._default_colors(num)
        check(len(assigned_colors), "colours")
        if num == 0:
            return self.output
        if boxes is not None and boxes.shape[1] == 5:
            return self.overlay_rotated_instances(boxes=boxes, labels=labels,
                                                  assigned_colors=assigned_colors)

        if boxes is not None:
            areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        elif masks is not None:
            areas = np.array([m.area() for m in masks], dtype=np.float64)
        else:
            areas = np.zeros(num)
        order = np.argsort(-areas, kind="stable").tolist()

        scale = self.output.scale
        for i in order:
            color = assigned_colors[i]
            if boxes is not None:
                self.draw_box(boxes[i], edge_color=color)
            if masks is not None:
                if masks[i].has_holes:
                    # Filled polygons would paint the holes too: blend the mask, outline it.
                    self._imshow_overlay(masks[i].mask.astype(np.float32) * alpha,
                                         mplc.to_rgb(color))
                    for segment in masks[i].polygons:
                        self.draw_polygon(segment.reshape(-1, 2), color, alpha=0.0,
                                          edge_color=color)
                else:
                    for segment in masks[i].polygons:
                        self.draw_polygon(segment.reshape(-1, 2), color, alpha=alpha)
            if labels is None:
                continue
            if boxes is not None:
                x0, y0, x1, y1 = boxes[i]
                text_pos, align = (x0, y0), "left"
            elif masks is not None and masks[i].polygons:
                x0, y0, x1, y1 = masks[i].bbox()
                ys, xs = masks[i].mask.nonzero()
                # Median rather than centroid: robust to thin protrusions.
                text_pos, align = (np.median(xs), np.median(ys)), "center"
            else:
                continue  # keypoints only, or an empty mask: no sensible place for a label
            if (x1 - x0) * (y1 - y0) < _SMALL_OBJECT_AREA_THRESH * scale or y1 - y0 < 40 * scale:
                # Small object: put the label outside it, below (or right, at the image bottom).
                text_pos = (x1, y0) if y1 >= self.output.height - 5 else (x0, y1)
            height_ratio = (y1 - y0) / np.sqrt(self.output.height * self.output.width)
            font_size = (np.clip((height_ratio - 0.02) / 0.08 + 1, 1.2, 2)
                         * 0.5 * self._default_font_size)
            self.draw_text(labels[i], text_pos, font_size=font_size, horizontal_alignment=align,
                           color=self._change_color_brightness(color, brightness_factor=0.7))

        if keypoints is not None:
            for per_instance in keypoints:
                self.draw_and_connect_keypoints(per_instance)
        return self.output

    def overlay_rotated_instances(self, boxes=None, labels=None, assigned_colors=None):
        """Draw rotated boxes (Nx5: cx, cy, w, h, angle in degrees CCW) with their labels,
        largest first."""
        num = len(boxes)
        if assigned_colors is None:
            assigned_colors = self._default_colors(num)
        if num == 0:
            return self.output
        for i in np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable").tolist():
            self.draw_rotated_box_with_label(boxes[i], edge_color=assigned_colors[i],
                                             label=labels[i] if labels is not None else None)
        return self.output

    def draw_and_connect_keypoints(self, keypoints):
        """Draw one instance's keypoints (K, 3: x, y, score) and the skeleton between them.

        Points above ``self.keypoint_threshold`` are red dots. Lines follow
        ``metadata.keypoint_connection_rules`` ((name0, name1, (R, G, B) 0..255) triples over
        ``metadata.keypoint_names``); for person keypoints, nose -> mid-shoulder -> mid-hip too.
        """
        names = self.metadata.get("keypoint_names")
        visible = {}
        for idx, (x, y, score) in enumerate(np.asarray(keypoints, dtype=np.float64)):
            if score > self.keypoint_threshold:
                self.draw_circle((x, y), color=_RED)
                if names:
                    visible[names[idx]] = (x, y)

        for name0, name1, color in self.metadata.get("keypoint_connection_rules") or []:
            if name0 in visible and name1 in visible:
                (x0, y0), (x1, y1) = visible[name0], visible[name1]
                self.draw_line([x0, x1], [y0, y1], color=tuple(c / 255.0 for c in color))

        def midpoint(a: str, b: str) -> Optional[Tuple[float, float]]:
            if a in visible and b in visible:
                return ((visible[a][0] + visible[b][0]) / 2, (visible[a][1] + visible[b][1]) / 2)
            return None

        shoulders = midpoint("left_shoulder", "right_shoulder")
        if shoulders is not None:
            if "nose" in visible:
                nose = visible["nose"]
                self.draw_line([nose[0], shoulders[0]], [nose[1], shoulders[1]], color=_RED)
            hips = midpoint("left_hip", "right_hip")
            if hips is not None:
                self.draw_line([hips[0], shoulders[0]], [hips[1], shoulders[1]], color=_RED)
        return self.output

    # ------------------------------------------------------------------ primitives

    def draw_text(self, text: str, position: Tuple[float, float], *,
                  font_size: Optional[float] = None, color: Any = "g",
                  horizontal_alignment: str = "center", rotation: float = 0):
        """Write ``text`` with its top edge at ``position`` (x, y), on a dark background box.

        Args:
            font_size: in points before scaling; default grows with the image size.
            color: text colour; made light enough to read on the dark background.
            horizontal_alignment: "left", "center" or "right" (relative to x).
            rotation: degrees counter-clockwise.
        """
        if not font_size:
            font_size = self._default_font_size
        rgb = np.maximum(np.array(mplc.to_rgb(color)), 0.2)
        rgb[np.argmax(rgb)] = max(0.8, float(np.max(rgb)))
        x, y = position
        self.output.ax.text(
            x, y, text, size=font_size * self.output.scale, family="sans-serif",
            bbox={"facecolor": "black", "alpha": 0.8, "pad": 0.7, "edgecolor": "none"},
            verticalalignment="top", horizontalalignment=horizontal_alignment,
            color=tuple(rgb), zorder=10, rotation=rotation,
        )
        return self.output

    def draw_box(self, box_coord, alpha: float = 0.5, edge_color: Any = "g",
                 line_style: str = "-"):
        """Outline the box ``(x0, y0, x1, y1)`` (XYXY_ABS) in ``edge_color``, opacity ``alpha``."""
        x0, y0, x1, y1 = (float(v) for v in box_coord)
        width = max(self._default_font_size / 4, 1) * self.output.scale
        self.output.ax.add_patch(Rectangle(
            (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=edge_color, linewidth=width,
            alpha=alpha, linestyle=line_style,
        ))
        return self.output

    def draw_rotated_box_with_label(self, rotated_box, alpha: float = 0.5, edge_color: Any = "g",
                                    line_style: str = "-", label: Optional[str] = None):
        """Outline a rotated box ``(cx, cy, w, h, angle)`` (degrees CCW); its top edge is dashed
        to show the orientation. ``label`` is written at the top-left corner, rotated too."""
        cx, cy, w, h, angle = (float(v) for v in rotated_box)
        small = w * h < _SMALL_OBJECT_AREA_THRESH * self.output.scale
        width = self._default_font_size / (6 if small else 3)
        theta = math.radians(angle)
        c, s = math.cos(theta), math.sin(theta)
        # Corners relative to the centre, then rotated CCW on screen (y points down).
        local = [(-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2)]
        corners = [(cx + c * dx + s * dy, cy - s * dx + c * dy) for dx, dy in local]
        for k in range(4):
            (xa, ya), (xb, yb) = corners[k], corners[(k + 1) % 4]
            self.draw_line([xa, xb], [ya, yb], color=edge_color,
                           linestyle="--" if k == 1 else line_style, linewidth=width)
        if label is not None:
            height_ratio = h / np.sqrt(self.output.height * self.output.width)
            font_size = (np.clip((height_ratio - 0.02) / 0.08 + 1, 1.2, 2)
                         * 0.5 * self._default_font_size)
            self.draw_text(label, corners[1], font_size=font_size, rotation=angle,
                           color=self._change_color_brightness(edge_color, 0.7))
        return self.output

    def draw_circle(self, circle_coord, color: Any, radius: float = 3):
        """Fill a circle of ``radius`` (input pixels) centred at ``circle_coord`` (x, y)."""
        self.output.ax.add_patch(Circle(
            tuple(float(v) for v in circle_coord), radius=radius, fill=True, color=color))
        return self.output

    def draw_line(self, x_data: Sequence[float], y_data: Sequence[float], color: Any,
                  linestyle: str = "-", linewidth: Optional[float] = None):
        """Draw a polyline through ``zip(x_data, y_data)``; default width grows with the image."""
        if len(x_data) != len(y_data):
            raise ValueError(f"draw_line got {len(x_data)} x values and {len(y_data)} y values.")
        if linewidth is None:
            linewidth = self._default_font_size / 3
        linewidth = max(linewidth, 1)
        self.output.ax.add_line(Line2D(
            x_data, y_data, linewidth=linewidth * self.output.scale, color=color,
            linestyle=linestyle))
        return self.output

    def draw_binary_mask(self, binary_mask: np.ndarray, color: Any = None, *,
                         edge_color: Any = None, text: Optional[str] = None, alpha: float = 0.5,
                         area_threshold: Optional[float] = 10):
        """Fill the HxW mask ``binary_mask`` (non-zero = inside) with ``color``.

        Args:
            color: fill colour; default a random palette colour.
            edge_color: outline colour (default: ``color``, darker when opaque).
            text: written on the largest connected part (and on any very large part).
            alpha: opacity of the fill.
            area_threshold: outline parts smaller than this many pixels are skipped (None/0: all).
        """
        color = mplc.to_rgb(self._random_color() if color is None else color)
        binary_mask = np.asarray(binary_mask).astype(np.uint8)
        mask = GenericMask(binary_mask, self.output.height, self.output.width)
        drawn = False
        if not mask.has_holes:
            h, w = binary_mask.shape
            for segment in mask.polygons:
                area = mask_util.area(mask_util.frPyObjects([segment.tolist()], h, w))[0]
                if area < (area_threshold or 0):
                    continue
                drawn = True
                self.draw_polygon(segment.reshape(-1, 2), color=color, edge_color=edge_color,
                                  alpha=alpha)
        else:  # polygons cannot express holes: blend a coloured overlay instead
            self._imshow_overlay(mask.mask.astype(np.float32) * alpha, color)
            drawn = True
        if text is not None and drawn:
            self._draw_text_in_mask(binary_mask, text,
                                    self._change_color_brightness(color, brightness_factor=0.7))
        return self.output

    def draw_soft_mask(self, soft_mask: np.ndarray, color: Any = None, *,
                       text: Optional[str] = None, alpha: float = 0.5):
        """Blend ``color`` with per-pixel opacity ``soft_mask * alpha`` (HxW floats in [0, 1]);
        ``text`` goes on the largest part of ``soft_mask > 0.5``."""
        color = mplc.to_rgb(self._random_color() if color is None else color)
        soft_mask = np.asarray(soft_mask, dtype=np.float32)
        self._imshow_overlay(soft_mask * alpha, color)
        if text is not None:
            self._draw_text_in_mask((soft_mask > 0.5).astype(np.uint8), text,
                                    self._change_color_brightness(color, brightness_factor=0.7))
        return self.output

    def draw_polygon(self, segment: np.ndarray, color: Any, edge_color: Any = None,
                     alpha: float = 0.5):
        """Fill the polygon ``segment`` (Kx2 array of x, y) with ``color`` at opacity ``alpha``
        and outline it (``edge_color``; default the fill colour, darker when ``alpha > 0.8``)."""
        if edge_color is None:
            edge_color = (self._change_color_brightness(color, brightness_factor=-0.7)
                          if alpha > 0.8 else color)
        self.output.ax.add_patch(Polygon(
            np.asarray(segment, dtype=np.float64).reshape(-1, 2), fill=True,
            facecolor=mplc.to_rgb(color) + (alpha,), edgecolor=mplc.to_rgb(edge_color) + (1,),
            linewidth=max(self._default_font_size // 15 * self.output.scale, 1),
        ))
        return self.output

    # ------------------------------------------------------------------ helpers

    def _imshow_overlay(self, opacity: np.ndarray, color: Tuple[float, float, float]) -> None:
        rgba = np.zeros(opacity.shape + (4,), dtype=np.float32)
        rgba[:, :, :3] = color
        rgba[:, :, 3] = opacity
        self.output.ax.imshow(rgba, extent=(0, self.output.width, self.output.height, 0),
                              interpolation="nearest")

    def _draw_text_in_mask(self, binary_mask: np.ndarray, text: str, color: Any) -> None:
        """Write ``text`` at the median pixel of the largest (and any very large) component."""
        count, components, stats, _ = cv2.connectedComponentsWithStats(binary_mask, 8)
        if count <= 1:
            return
        areas = stats[1:, cv2.CC_STAT_AREA]
        largest = int(np.argmax(areas)) + 1
        for cid in range(1, count):
            if cid == largest or areas[cid - 1] > _LARGE_MASK_AREA_THRESH:
                ys, xs = (components == cid).nonzero()
                self.draw_text(text, (np.median(xs), np.median(ys)), color=color)

    def _jitter(self, color: Any) -> Tuple[float, float, float]:
        """A random nearby colour (see ``visualizer_utils.jitter_color``)."""
        return jitter_color(color)

    def _change_color_brightness(self, color: Any, brightness_factor: float):
        """Lighter (factor > 0) or darker (< 0) ``color``; factor in [-1, 1]."""
        return change_color_brightness(color, brightness_factor)

    def _default_colors(self, n: int) -> List[Any]:  # overridden by Visualizer
        raise NotImplementedError

    def _random_color(self) -> Any:  # overridden by Visualizer
        raise NotImplementedError
