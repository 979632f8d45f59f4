"""Helpers of :mod:`segtron.utils.visualizer`: mask formats, panoptic segments, labels, colours.

``GenericMask`` (also importable from ``segtron.utils.visualizer``, as in Detectron2) holds one
instance mask given in any of the dataset / model formats and converts lazily between a binary
mask and polygons. The colour helpers work on matplotlib colours (RGB floats in ``[0, 1]``).
"""

import colorsys
import logging
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import matplotlib.colors as mplc
import numpy as np
import pycocotools.mask as mask_util
import torch

__all__ = ["GenericMask", "jitter_color", "change_color_brightness"]

logger = logging.getLogger(__name__)


def _decode_rle(rle: Dict[str, Any], height: int, width: int) -> np.ndarray:
    """Decode a COCO RLE (compressed bytes/str counts, or uncompressed list counts) to HxW uint8."""
    if "counts" not in rle or "size" not in rle:
        raise ValueError(
            f"An RLE mask needs the keys 'counts' and 'size', got keys {sorted(rle)}. Encode "
            "masks with pycocotools.mask.encode(np.asfortranarray(mask))."
        )
    size = [int(v) for v in rle["size"]]
    if size != [height, width]:
        raise ValueError(
            f"RLE mask of size {size} does not match the image being drawn ({height}, {width}). "
            "Draw on the image the annotation or prediction was made for."
        )
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        rle = mask_util.frPyObjects(rle, height, width)
    elif isinstance(counts, str):  # compressed counts read back from JSON
        rle = {"size": size, "counts": counts.encode("ascii")}
    return mask_util.decode(rle).astype(np.uint8)


class GenericMask:
    """One instance mask, convertible between a binary mask and polygons.

    Attributes:
        mask (ndarray): HxW uint8 binary mask (computed from the polygons on first use).
        polygons (list[ndarray]): polygons ``[x0, y0, x1, y1, ...]`` (float, pixel-edge
            coordinates: a pixel ``(i, j)`` spans ``[j, j + 1) x [i, i + 1)``); computed from the
            mask on first use by contour tracing.
        has_holes (bool): whether the mask has holes (its polygons then cannot represent it).
        height, width (int): size of the image the mask belongs to.
    """

    def __init__(self, mask_or_polygons: Any, height: int, width: int):
        """Args:
            mask_or_polygons: one of
                * a COCO RLE dict (``counts`` as bytes, str or an uncompressed list) whose
                  ``size`` is ``[height, width]``;
                * a list of polygons, each a flat sequence ``[x0, y0, x1, y1, ...]`` (>= 3 points);
                * an HxW binary mask (numpy array or tensor, any dtype; non-zero = inside).
            height, width: size of the image.
        """
        self.height = int(height)
        self.width = int(width)
        self._mask: Optional[np.ndarray] = None
        self._polygons: Optional[List[np.ndarray]] = None
        self._has_holes: Optional[bool] = None

        m = mask_or_polygons
        if isinstance(m, GenericMask):
            self._mask, self._polygons, self._has_holes = m._mask, m._polygons, m._has_holes
            return
        if isinstance(m, torch.Tensor):
            m = m.detach().cpu().numpy()
        if isinstance(m, dict):
            self._mask = _decode_rle(m, self.height, self.width)
        elif isinstance(m, (list, tuple)):
            polygons = []
            for p in m:
                p = np.asarray(p, dtype=np.float64).reshape(-1)
                if p.size % 2 != 0:
                    raise ValueError(
                        f"A polygon must be a flat [x0, y0, x1, y1, ...] list of even length; got "
                        f"{p.size} numbers."
                    )
                polygons.append(p)
            self._polygons = polygons
        elif isinstance(m, np.ndarray):
            if m.shape != (self.height, self.width):
                raise ValueError(
                    f"Binary mask of shape {m.shape} does not match the image being drawn "
                    f"({self.height}, {self.width}). Pass one HxW mask per instance at the image's "
                    "resolution (e.g. paste ROI masks into the image first)."
                )
            self._mask = (m != 0).astype(np.uint8) if m.dtype != np.uint8 else m
        else:
            raise TypeError(
                f"GenericMask cannot read a mask of type {type(m).__name__}; use an RLE dict, a "
                "list of polygons or an HxW binary array."
            )

    @property
    def mask(self) -> np.ndarray:
        if self._mask is None:
            self._mask = self.polygons_to_mask(self._polygons)
        return self._mask

    @property
    def polygons(self) -> List[np.ndarray]:
        if self._polygons is None:
            self._polygons, self._has_holes = self.mask_to_polygons(self._mask)
        return self._polygons

    @property
    def has_holes(self) -> bool:
        if self._has_holes is None:
            if self._mask is None:
                self._has_holes = False  # given as polygons: drawn as they are
            else:
                self._polygons, self._has_holes = self.mask_to_polygons(self._mask)
        return self._has_holes

    def mask_to_polygons(self, mask: np.ndarray) -> Tuple[List[np.ndarray], bool]:
        """Trace the outer and inner contours of ``mask``.

        Returns:
            (polygons, has_holes): flat float arrays shifted by +0.5 to pixel centres (contours
            with fewer than 3 points are dropped) and whether any contour is a hole.
        """
        mask = np.ascontiguousarray(mask, dtype=np.uint8)
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)[-2:]
        if hierarchy is None:  # empty mask
            return [], False
        has_holes = bool((hierarchy.reshape(-1, 4)[:, 3] >= 0).any())
        polygons = [c.reshape(-1).astype(np.float64) + 0.5 for c in contours if c.size >= 6]
        return polygons, has_holes

    def _rle(self, polygons: Sequence[np.ndarray]) -> Optional[Dict[str, Any]]:
        # pycocotools reads a 4-number list as a box: only real polygons (>= 3 points) go in.
        usable = [p.tolist() for p in polygons if p.size >= 6]
        if not usable:
            return None
        return mask_util.merge(mask_util.frPyObjects(usable, self.height, self.width))

    def polygons_to_mask(self, polygons: Sequence[np.ndarray]) -> np.ndarray:
        """Rasterise ``polygons`` (pycocotools) into an HxW uint8 mask."""
        rle = self._rle(polygons)
        if rle is None:
            return np.zeros((self.height, self.width), dtype=np.uint8)
        return mask_util.decode(rle).astype(np.uint8)

    def area(self) -> int:
        """Number of pixels inside the mask."""
        return int(self.mask.sum())

    def bbox(self) -> np.ndarray:
        """Tight box ``[x0, y0, x1, y1]`` (float, XYXY_ABS) of the polygons; zeros if empty."""
        rle = self._rle(self.polygons)
        if rle is None:
            return np.zeros(4, dtype=np.float64)
        x, y, w, h = mask_util.toBbox(rle)
        return np.array([x, y, x + w, y + h], dtype=np.float64)


class _PanopticPrediction:
    """Unifies panoptic annotations and predictions: segment masks, largest first.

    ``panoptic_seg`` is an HxW tensor of segment ids. ``segments_info`` lists dicts with ``id``,
    ``category_id``, ``isthing`` (and optionally ``score``, ``iscrowd``); when None, each id is
    read as ``category_id * metadata.label_divisor + instance``, -1 meaning void.
    """

    def __init__(self, panoptic_seg: torch.Tensor, segments_info: Optional[List[Dict]], metadata):
        panoptic_seg = torch.as_tensor(panoptic_seg).cpu()
        if segments_info is None:
            divisor = metadata.get("label_divisor")
            id_map = metadata.get("thing_dataset_id_to_contiguous_id")
            if divisor is None or id_map is None:
                raise ValueError(
                    "draw_panoptic_seg(segments_info=None) needs metadata.label_divisor and "
                    "metadata.thing_dataset_id_to_contiguous_id; pass segments_info instead."
                )
            segments_info = []
            for value in torch.unique(panoptic_seg).tolist():
                if value == -1:
                    continue
                category = int(value) // int(divisor)
                segments_info.append({"id": int(value), "category_id": category,
                                      "isthing": category in id_map.values()})
        self._seg = panoptic_seg
        self._info = {s["id"]: dict(s) for s in segments_info}
        ids, areas = torch.unique(panoptic_seg, sorted=True, return_counts=True)
        order = torch.argsort(-areas, stable=True)
        self._ids = ids[order].tolist()
        for sid, area in zip(self._ids, areas[order].tolist()):
            if sid in self._info:
                self._info[sid]["area"] = float(area)

    def non_empty_mask(self) -> np.ndarray:
        """HxW bool mask of pixels covered by a segment listed in segments_info."""
        unknown = [sid for sid in self._ids if sid not in self._info]
        if not unknown:
            return np.ones(tuple(self._seg.shape), dtype=bool)
        return ~np.isin(self._seg.numpy(), unknown)

    def semantic_masks(self) -> Iterator[Tuple[np.ndarray, Dict]]:
        """(mask, info) of each stuff segment, largest first."""
        for sid in self._ids:
            info = self._info.get(sid)
            if info is not None and not info.get("isthing", False):
                yield (self._seg == sid).numpy(), info

    def instance_masks(self) -> Iterator[Tuple[np.ndarray, Dict]]:
        """(mask, info) of each non-empty thing segment, largest first."""
        for sid in self._ids:
            info = self._info.get(sid)
            if info is not None and info.get("isthing", False):
                mask = (self._seg == sid).numpy()
                if mask.any():
                    yield mask, info


def _create_text_labels(classes: Optional[Sequence[int]], scores: Optional[Sequence[float]],
                        class_names: Optional[Sequence[str]],
                        is_crowd: Optional[Sequence[bool]] = None) -> Optional[List[str]]:
    """Label strings such as ``"circle 97%"`` (``"circle|crowd"`` for crowd annotations).

    Class ids index ``class_names`` (or are printed as numbers without names); scores in
    ``[0, 1]`` become whole percentages. Returns None when neither classes nor scores are given.
    """
    labels = None
    if classes is not None:
        classes = [int(c) for c in classes]
        if class_names:
            bad = [c for c in classes if not 0 <= c < len(class_names)]
            if bad:
                raise IndexError(
                    f"Class id(s) {sorted(set(bad))} out of range for the {len(class_names)} "
                    "metadata.thing_classes; map dataset category ids to contiguous ids 0..N-1 "
                    "(metadata.thing_dataset_id_to_contiguous_id) before drawing."
                )
            labels = [class_names[c] for c in classes]
        else:
            labels = [str(c) for c in classes]
    if scores is not None:
        percents = [f"{float(s) * 100:.0f}%" for s in scores]
        labels = percents if labels is None else [f"{l} {p}" for l, p in zip(labels, percents)]
    if labels is not None and is_crowd is not None:
        labels = [l + ("|crowd" if crowd else "") for l, crowd in zip(labels, is_crowd)]
    return labels


def jitter_color(color: Any) -> Tuple[float, float, float]:
    """Return ``color`` moved by a random RGB offset of length 0.5, clipped to ``[0, 1]``.

    Gives instances of one class visibly different but related colours (Detectron2's jitter).
    Uses NumPy's global random state.
    """
    rgb = np.asarray(mplc.to_rgb(color))
    offset = np.random.rand(3)
    offset *= 0.5 / max(np.linalg.norm(offset), 1e-12)
    return tuple(float(v) for v in np.clip(rgb + offset, 0.0, 1.0))


def change_color_brightness(color: Any, brightness_factor: float) -> Tuple[float, float, float]:
    """Scale the HLS lightness of ``color`` by ``1 + brightness_factor`` (clipped to [0, 1]).

    Args:
        color: any matplotlib colour.
        brightness_factor: in ``[-1, 1]``; negative darkens, positive lightens.

    Returns:
        RGB tuple in ``[0, 1]``.
    """
    if not -1.0 <= brightness_factor <= 1.0:
        raise ValueError(f"brightness_factor must be in [-1, 1], got {brightness_factor}.")
    hue, lightness, saturation = colorsys.rgb_to_hls(*mplc.to_rgb(color))
    lightness = min(max(lightness * (1.0 + brightness_factor), 0.0), 1.0)
    return colorsys.hls_to_rgb(hue, lightness, saturation)
