"""Detectron2's colour palette for visualisations (``detectron2.utils.colormap``).

The palette is Detectron's "awesome colormap": a fixed list of well separated colours, stored
here as RGB in ``[0, 1]``. ``colormap`` returns all of it, ``random_color`` / ``random_colors``
draw from it using NumPy's global random state (seed it with ``np.random.seed`` for
reproducible pictures). Every function returns BGR unless ``rgb=True`` (OpenCV order is the
default, as in Detectron2); matplotlib and :class:`~segtron.utils.visualizer.Visualizer` want
RGB in ``[0, 1]``, i.e. ``rgb=True, maximum=1``.
"""

from typing import List

import numpy as np

__all__ = ["colormap", "random_color", "random_colors"]

# RGB rows in [0, 1], in Detectron2's order (the same index gives the same colour).
_PALETTE_RGB = (
    (0.000, 0.447, 0.741), (0.850, 0.325, 0.098), (0.929, 0.694, 0.125),
    (0.494, 0.184, 0.556), (0.466, 0.674, 0.188), (0.301, 0.745, 0.933),
    (0.635, 0.078, 0.184), (0.300, 0.300, 0.300), (0.600, 0.600, 0.600),
    (1.000, 0.000, 0.000), (1.000, 0.500, 0.000), (0.749, 0.749, 0.000),
    (0.000, 1.000, 0.000), (0.000, 0.000, 1.000), (0.667, 0.000, 1.000),
    (0.333, 0.333, 0.000), (0.333, 0.667, 0.000), (0.333, 1.000, 0.000),
    (0.667, 0.333, 0.000), (0.667, 0.667, 0.000), (0.667, 1.000, 0.000),
    (1.000, 0.333, 0.000), (1.000, 0.667, 0.000), (1.000, 1.000, 0.000),
    (0.000, 0.333, 0.500), (0.000, 0.667, 0.500), (0.000, 1.000, 0.500),
    (0.333, 0.000, 0.500), (0.333, 0.333, 0.500), (0.333, 0.667, 0.500),
    (0.333, 1.000, 0.500), (0.667, 0.000, 0.500), (0.667, 0.333, 0.500),
    (0.667, 0.667, 0.500), (0.667, 1.000, 0.500), (1.000, 0.000, 0.500),
    (1.000, 0.333, 0.500), (1.000, 0.667, 0.500), (1.000, 1.000, 0.500),
    (0.000, 0.333, 1.000), (0.000, 0.667, 1.000), (0.000, 1.000, 1.000),
    (0.333, 0.000, 1.000), (0.333, 0.333, 1.000), (0.333, 0.667, 1.000),
    (0.333, 1.000, 1.000), (0.667, 0.000, 1.000), (0.667, 0.333, 1.000),
    (0.667, 0.667, 1.000), (0.667, 1.000, 1.000), (1.000, 0.000, 1.000),
    (1.000, 0.333, 1.000), (1.000, 0.667, 1.000), (0.333, 0.000, 0.000),
    (0.500, 0.000, 0.000), (0.667, 0.000, 0.000), (0.833, 0.000, 0.000),
    (1.000, 0.000, 0.000), (0.000, 0.167, 0.000), (0.000, 0.333, 0.000),
    (0.000, 0.500, 0.000), (0.000, 0.667, 0.000), (0.000, 0.833, 0.000),
    (0.000, 1.000, 0.000), (0.000, 0.000, 0.167), (0.000, 0.000, 0.333),
    (0.000, 0.000, 0.500), (0.000, 0.000, 0.667), (0.000, 0.000, 0.833),
    (0.000, 0.000, 1.000), (0.000, 0.000, 0.000), (0.143, 0.143, 0.143),
    (0.857, 0.857, 0.857), (1.000, 1.000, 1.000),
)
_COLORS = np.array(_PALETTE_RGB, dtype=np.float32)


def _check_maximum(maximum: float) -> None:
    if maximum not in (1, 255):
        raise ValueError(
            f"maximum must be 255 (8-bit colours) or 1 (matplotlib colours), got {maximum!r}."
        )


def colormap(rgb: bool = False, maximum: int = 255) -> np.ndarray:
    """Return the whole palette.

    Args:
        rgb: True for RGB channel order, False (default) for BGR (OpenCV order).
        maximum: 255 for values in ``[0, 255]`` or 1 for values in ``[0, 1]``.

    Returns:
        float32 array of shape (N, 3), one colour per row.
    """
    _check_maximum(maximum)
    colors = _COLORS * maximum
    return colors if rgb else colors[:, ::-1]


def random_color(rgb: bool = False, maximum: int = 255) -> np.ndarray:
    """Return one colour of the palette picked uniformly at random.

    Args:
        rgb: True for RGB order, False (default) for BGR.
        maximum: 255 or 1 (the scale of the values).

    Returns:
        float32 array of 3 values.
    """
    _check_maximum(maximum)
    color = _COLORS[np.random.randint(len(_COLORS))] * maximum
    return color if rgb else color[::-1]


def random_colors(N: int, rgb: bool = False, maximum: int = 255) -> List[np.ndarray]:
    """Return ``N`` palette colours in random order, all different while ``N`` <= palette size.

    When ``N`` exceeds the palette size the palette is reshuffled and reused for the rest.

    Args:
        N: how many colours (>= 0).
        rgb: True for RGB order, False (default) for BGR.
        maximum: 255 or 1 (the scale of the values).

    Returns:
        list of ``N`` float32 arrays of 3 values.
    """
    _check_maximum(maximum)
    if N < 0:
        raise ValueError(f"random_colors needs N >= 0, got {N}.")
    order: List[int] = []
    while len(order) < N:
        order.extend(np.random.permutation(len(_COLORS)).tolist())
    colors = [_COLORS[i] * maximum for i in order[:N]]
    return colors if rgb else [c[::-1] for c in colors]
