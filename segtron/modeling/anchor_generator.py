"""Anchor generators (Detectron2 path: ``detectron2.modeling.anchor_generator``).

An anchor generator places a fixed set of reference boxes ("cell anchors") at every location of
every feature map. Dense heads (RPN, RetinaNet) predict one objectness score and one box delta
per anchor, so the anchor order below is part of the model's output format:

- cell anchors of one level: for each size, for each aspect ratio (size-major); the cell anchor
  for size ``s`` and ratio ``a`` (= height / width) has ``w = sqrt(s * s / a)``, ``h = a * w``
  and is the box ``(-w/2, -h/2, w/2, h/2)`` centred at 0;
- anchors of one level: location-major. For each location (row-major: y outer, x inner) all
  cell anchors in the order above, shifted to ``(x * stride + offset * stride,
  y * stride + offset * stride)``.

``RotatedAnchorGenerator`` does the same with rotated cell anchors ``(0, 0, w, h, angle)``,
ordered for each size, for each aspect ratio, for each angle (angle innermost), shifted by
``(x, y, 0, 0, 0)``.
"""

import collections
import collections.abc
import copy
import math
from typing import Iterator, List, Sequence, Tuple

import torch
from torch import nn

from ..config import configurable
from ..layers import ShapeSpec
from ..structures import Boxes, RotatedBoxes
from .registries import ANCHOR_GENERATOR_REGISTRY

__all__ = [
    "ANCHOR_GENERATOR_REGISTRY",
    "BufferList",
    "DefaultAnchorGenerator",
    "RotatedAnchorGenerator",
    "build_anchor_generator",
]

_CFG_KEYS = {
    "sizes": "MODEL.ANCHOR_GENERATOR.SIZES",
    "aspect_ratios": "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS",
    "angles": "MODEL.ANCHOR_GENERATOR.ANGLES",
}


class _AnchorCache:
    """The anchors of the last few grid sizes (8), so that a generator called again on maps of
    the same sizes (every image of a fixed-size benchmark, most training batches) reuses them
    instead of launching its ~15 small ops per level again. Keyed by the grid sizes, devices,
    inference mode and the cell anchors' identity and version (so ``.to()`` and in-place edits
    are seen). Empty after copying or pickling."""

    _MAX_ENTRIES = 8

    def __init__(self):
        self._entries: "collections.OrderedDict[Tuple, List[torch.Tensor]]" = (
            collections.OrderedDict()
        )

    def __getstate__(self):
        return {"_entries": collections.OrderedDict()}

    def __deepcopy__(self, memo):
        return _AnchorCache()

    def get(self, key: Tuple, compute) -> List[torch.Tensor]:
        """The entry for ``key``, made with ``compute()`` on a miss."""
        anchors = self._entries.get(key)
        if anchors is None:
            anchors = compute()
            self._entries[key] = anchors
            if len(self._entries) > self._MAX_ENTRIES:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return anchors


class BufferList(nn.Module):
    """A list of tensors held as non-persistent buffers of a module.

    ``.to(device)`` / ``.cuda()`` / ``.half()`` move them with the parent module, but they are
    left out of ``state_dict()`` (they are derived from the config, not learned), so checkpoints
    keep Detectron2's keys. Iterating yields the tensors in the order given.
    """

    def __init__(self, buffers: Sequence[torch.Tensor]):
        """Args:
            buffers: the tensors to hold, registered under the names "0", "1", ...
        """
        super().__init__()
        for i, tensor in enumerate(buffers):
            self.register_buffer(str(i), tensor, persistent=False)

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self._buffers.values())


def _is_sequence(value) -> bool:
    return isinstance(value, collections.abc.Sequence) and not isinstance(value, str)


def _broadcast_params(params, num_features: int, name: str) -> List[List[float]]:
    """Expand ``sizes`` / ``aspect_ratios`` / ``angles`` to one list per feature map.

    ``params`` is either a flat list of numbers (used for every feature map), a list holding one
    list (used for every feature map) or one list per feature map.
    """
    key = _CFG_KEYS.get(name, name)
    if not _is_sequence(params) or len(params) == 0:
        raise ValueError(
            f"Anchor generator: {name} ({key}) must be a non-empty list, got {params!r}."
        )
    if not _is_sequence(params[0]):
        return [list(params)] * num_features
    if len(params) == 1:
        return [list(params[0])] * num_features
    if len(params) != num_features:
        raise ValueError(
            f"Anchor generator: {name} ({key}) has {len(params)} lists but there are "
            f"{num_features} feature maps (one per stride). Give either one list, used for "
            f"every feature map, or exactly {num_features} lists, e.g. "
            f"{key}: [[32], [64], ...] for an FPN."
        )
    return [list(p) for p in params]


@ANCHOR_GENERATOR_REGISTRY.register()
class DefaultAnchorGenerator(nn.Module):
    """Axis-aligned anchors for every location of several feature maps (Faster R-CNN style).

    ``forward(features)`` takes the list of feature maps (N, C, Hi, Wi) and returns one
    ``Boxes`` of (Hi * Wi * Ai, 4) float32 XYXY anchors in input-image pixels per feature map,
    in the location-major order described in the module docstring, on the features' device.
    """

    box_dim: torch.jit.Final[int] = 4
    """Numbers per anchor box: 4 for XYXY."""
    _box_class = Boxes
    __jit_unused_properties__ = ["num_cell_anchors", "num_anchors"]  # Python only

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence,
        aspect_ratios: Sequence,
        strides: Sequence[int],
        offset: float = 0.0,
    ):
        """Args:
            sizes: anchor sizes in input-image pixels (the square root of the anchor area);
                a flat list or one list is used for every feature map, else one list per
                feature map (``[[32], [64], ...]`` for an FPN).
            aspect_ratios: height / width ratios, broadcast the same way as ``sizes``.
            strides: stride of each feature map relative to the input image (e.g. 4 for p2);
                their number is the number of feature maps.
            offset: where inside each stride x stride cell the anchors are centred, as a
                fraction of the stride in [0, 1): 0 is the cell's top-left corner, 0.5 its
                centre.
        """
        super().__init__()
        self.strides = [int(s) for s in strides]
        self.num_features = len(self.strides)
        if self.num_features == 0:
            raise ValueError("DefaultAnchorGenerator: strides is empty; give one per feature map.")
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        self.cell_anchors = self._calculate_anchors(sizes, aspect_ratios)
        if not 0.0 <= offset < 1.0:
            raise ValueError(
                f"DefaultAnchorGenerator: offset (MODEL.ANCHOR_GENERATOR.OFFSET) must be in "
                f"[0, 1) as a fraction of the stride, got {offset}."
            )
        self.offset = float(offset)
        self._anchor_cache = _AnchorCache()

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        """Arguments from MODEL.ANCHOR_GENERATOR.{SIZES, ASPECT_RATIOS, OFFSET} and the strides
        of ``input_shape`` (one ``ShapeSpec`` per feature map, in level order)."""
        return {
            "sizes": cfg.MODEL.ANCHOR_GENERATOR.SIZES,
            "aspect_ratios": cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS,
            "strides": [shape.stride for shape in input_shape],
            "offset": cfg.MODEL.ANCHOR_GENERATOR.OFFSET,
        }

    def __prepare_scriptable__(self) -> "DefaultAnchorGenerator":
        """What ``torch.jit.script`` compiles: a copy holding the cell anchors as a list of
        tensors (TorchScript cannot iterate a ``BufferList``)."""
        scriptable = copy.deepcopy(self)
        del scriptable._anchor_cache  # Python only
        cells = list(scriptable.cell_anchors)
        del scriptable.cell_anchors
        scriptable.cell_anchors = cells
        return scriptable

    def _calculate_anchors(self, sizes, aspect_ratios) -> BufferList:
        cells = [self.generate_cell_anchors(s, a).float() for s, a in zip(sizes, aspect_ratios)]
        return BufferList(cells)

    @property
    def num_cell_anchors(self) -> List[int]:
        """Alias of ``num_anchors`` (kept for Detectron2 compatibility)."""
        return self.num_anchors

    @property
    def num_anchors(self) -> List[int]:
        """Number of anchors per location for each feature map, e.g. [3, 3, 3, 3, 3] for an
        FPN with 3 aspect ratios and one size per level."""
        return [len(cells) for cells in self.cell_anchors]

    def generate_cell_anchors(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1, 2),
    ) -> torch.Tensor:
        """Anchors of one location, centred at (0, 0).

        Args:
            sizes: anchor sizes in pixels (square root of the area).
            aspect_ratios: height / width ratios.

        Returns:
            (len(sizes) * len(aspect_ratios), 4) float32 XYXY boxes, size-major: row
            ``i * len(aspect_ratios) + j`` is size ``i`` with ratio ``j``. Computed in Python
            double precision, then stored as float32.
        """
        rows = []
        for size in sizes:
            area = float(size) ** 2
            for ratio in aspect_ratios:
                if ratio <= 0 or size <= 0:
                    raise ValueError(
                        f"Anchor sizes and aspect ratios must be positive, got size {size} and "
                        f"aspect ratio {ratio} (MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS)."
                    )
                w = math.sqrt(area / ratio)
                h = ratio * w
                rows.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)

    def _grid_anchors(
        self, grid_sizes: List[List[int]], devices: List[torch.device]
    ) -> List[torch.Tensor]:
        """(Hi * Wi * Ai, 4) anchors per feature map, location-major, on ``devices[i]``."""
        out = []
        for size, stride, cells, device in zip(
            grid_sizes, self.strides, self.cell_anchors, devices
        ):
            height, width = size[0], size[1]
            start = self.offset * stride
            xs = torch.arange(
                start, width * stride, step=stride, dtype=torch.float32, device=device)
            ys = torch.arange(
                start, height * stride, step=stride, dtype=torch.float32, device=device)
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            shifts = self._shifts(grid_x.reshape(-1), grid_y.reshape(-1))  # (H*W, box_dim)
            cells = cells.to(device=device)
            out.append((shifts[:, None, :] + cells[None, :, :]).reshape(-1, self.box_dim))
        return out

    @staticmethod
    def _shifts(grid_x: torch.Tensor, grid_y: torch.Tensor) -> torch.Tensor:
        """(L, 4) offsets (x, y, x, y) moving cell anchors to the L locations."""
        return torch.stack((grid_x, grid_y, grid_x, grid_y), dim=1)

    def forward(self, features: List[torch.Tensor]) -> List[Boxes]:
        """Args:
            features: one (N, C, Hi, Wi) feature map per level, in the order of ``strides``
                (only their spatial sizes and device are used).

        Returns:
            one ``Boxes`` per level with Hi * Wi * Ai float32 XYXY anchors in input pixels,
            location-major, on that level's device.
        """
        if len(features) != self.num_features:
            if not torch.jit.is_scripting():
                raise ValueError(
                    f"{type(self).__name__} was built for {self.num_features} feature maps "
                    f"(strides {self.strides}) but got {len(features)}; the in-features of "
                    "the head and the strides of its input_shape must agree."
                )
            raise ValueError("The anchor generator got another number of feature maps.")
        grid_sizes = [list(f.shape[-2:]) for f in features]
        devices = [f.device for f in features]
        if not torch.jit.is_scripting():
            if torch.jit.is_tracing():  # a traced graph computes anchors from the map sizes
                anchors = self._grid_anchors(grid_sizes, devices)
            else:
                anchors = self._cached_grid_anchors(grid_sizes, devices)
            return [self._box_class(a) for a in anchors]
        return [Boxes(a) for a in self._grid_anchors(grid_sizes, devices)]

    @torch.jit.unused
    def _cached_grid_anchors(
        self, grid_sizes: List[List[int]], devices: List[torch.device]
    ) -> List[torch.Tensor]:
        """``_grid_anchors``, reused while the sizes, devices, mode and cell anchors stay.

        Not while a CUDA graph is being captured: the graph then makes its own anchors, in its
        own memory pool (a cached entry could be evicted and freed while the graph still
        reads it)."""
        if any(d.type == "cuda" for d in devices) and torch.cuda.is_current_stream_capturing():
            return self._grid_anchors(grid_sizes, devices)
        # A move (.to(), .half()) gives the cell anchors new addresses; an in-place edit, a
        # new version.
        key = (
            tuple(tuple(int(v) for v in size) for size in grid_sizes),
            tuple(devices),
            torch.is_inference_mode_enabled(),
            tuple((c.data_ptr(), c._version) for c in self.cell_anchors),
        )
        return self._anchor_cache.get(key, lambda: self._grid_anchors(grid_sizes, devices))


@ANCHOR_GENERATOR_REGISTRY.register()
class RotatedAnchorGenerator(DefaultAnchorGenerator):
    """Rotated anchors for every location of several feature maps (RRPN style).

    ``forward(features)`` returns one ``RotatedBoxes`` of (Hi * Wi * Ai, 5) float32 anchors
    (cx, cy, w, h, angle_degrees) in input-image pixels per feature map: location-major
    (row-major over the grid), and at each location the cell anchors for each size, for each
    aspect ratio, for each angle.
    """

    box_dim: torch.jit.Final[int] = 5
    """Numbers per anchor box: 5 for (cx, cy, w, h, angle)."""
    _box_class = RotatedBoxes

    @configurable
    def __init__(
        self,
        *,
        sizes: Sequence,
        aspect_ratios: Sequence,
        strides: Sequence[int],
        angles: Sequence,
        offset: float = 0.0,
    ):
        """Args:
            sizes, aspect_ratios, strides, offset: as in :class:`DefaultAnchorGenerator`.
            angles: anchor angles in degrees (counter-clockwise), broadcast like ``sizes``:
                a flat list or one list for every feature map, else one list per map.
        """
        super().__init__(sizes=sizes, aspect_ratios=aspect_ratios, strides=strides,
                         offset=offset)
        sizes = _broadcast_params(sizes, self.num_features, "sizes")
        aspect_ratios = _broadcast_params(aspect_ratios, self.num_features, "aspect_ratios")
        angles = _broadcast_params(angles, self.num_features, "angles")
        self.cell_anchors = BufferList(
            [self.generate_cell_anchors(s, a, t) for s, a, t in zip(sizes, aspect_ratios, angles)]
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        """Arguments from MODEL.ANCHOR_GENERATOR.{SIZES, ASPECT_RATIOS, ANGLES, OFFSET} and
        the strides of ``input_shape``."""
        ret = super().from_config(cfg, input_shape)
        ret["angles"] = cfg.MODEL.ANCHOR_GENERATOR.ANGLES
        return ret

    def generate_cell_anchors(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1, 2),
        angles: Sequence[float] = (-90, -60, -30, 0, 30, 60, 90),
    ) -> torch.Tensor:
        """Rotated anchors of one location, centred at (0, 0).

        Args:
            sizes: anchor sizes in pixels (square root of the area).
            aspect_ratios: height / width ratios.
            angles: angles in degrees.

        Returns:
            (len(sizes) * len(aspect_ratios) * len(angles), 5) float32 rows (0, 0, w, h,
            angle): for each size, for each aspect ratio, for each angle, with
            ``w = sqrt(size**2 / ratio)`` and ``h = ratio * w`` (Python double precision).
        """
        super().generate_cell_anchors(sizes, aspect_ratios)  # raises on non-positive values
        rows = []
        for size in sizes:
            for ratio in aspect_ratios:
                w = math.sqrt(float(size) ** 2 / ratio)
                rows.extend([0.0, 0.0, w, ratio * w, float(a)] for a in angles)
        return torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)

    @staticmethod
    def _shifts(grid_x: torch.Tensor, grid_y: torch.Tensor) -> torch.Tensor:
        """(L, 5) offsets (x, y, 0, 0, 0) moving cell anchors to the L locations."""
        zeros = torch.zeros_like(grid_x)
        return torch.stack((grid_x, grid_y, zeros, zeros, zeros), dim=1)


def build_anchor_generator(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """Build the anchor generator named by MODEL.ANCHOR_GENERATOR.NAME.

    Args:
        cfg: the config.
        input_shape: one ``ShapeSpec`` per feature map the anchors are for (strides are used).

    Returns:
        the module, called as ``obj(cfg, input_shape)`` from ``ANCHOR_GENERATOR_REGISTRY``.
    """
    return ANCHOR_GENERATOR_REGISTRY.get(cfg.MODEL.ANCHOR_GENERATOR.NAME)(cfg, input_shape)
