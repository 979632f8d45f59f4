"""``ShapeSpec``: the shape of a feature map passed between modules (Detectron2's ``ShapeSpec``)."""

from dataclasses import dataclass
from typing import Optional

__all__ = ["ShapeSpec"]


@dataclass(frozen=True)
class ShapeSpec:
    """Shape of a feature map, used to wire backbones, necks and heads together.

    Every field is an ``int`` or ``None`` when unknown/irrelevant:

    - ``channels``: number of channels C.
    - ``height``, ``width``: spatial size in pixels of the feature map (usually ``None``,
      as they depend on the input image).
    - ``stride``: ratio input-image-size / feature-map-size (e.g. 4 for ``p2``).

    Immutable and hashable, so it can be shared between modules safely.
    """

    channels: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    stride: Optional[int] = None
