"""Data augmentation: transforms and augmentations (``detectron2.data.transforms``).

Exports fvcore's deterministic transforms (``Transform``, ``TransformList``, ``HFlipTransform``,
``CropTransform``, ...), segtron's own (``ResizeTransform``, ``RotationTransform``, ...), the
augmentation framework (``Augmentation``, ``AugInput``, ``AugmentationList``, ...) and the
built-in augmentations (``ResizeShortestEdge``, ``RandomFlip``, ``RandomCrop``, ...).
See :mod:`segtron.data.transforms.transform` for the data conventions.
"""

from fvcore.transforms.transform import Transform, TransformList  # noqa: F401  (listed first)
from fvcore.transforms import transform as _fvcore_transform
from fvcore.transforms.transform import *  # noqa: F401,F403

from . import augmentation as _augmentation
from . import augmentation_impl as _augmentation_impl
from . import transform as _transform
from .augmentation import *  # noqa: F401,F403
from .augmentation_impl import *  # noqa: F401,F403
from .transform import *  # noqa: F401,F403

__all__ = [
    *_fvcore_transform.__all__,
    *_transform.__all__,
    *_augmentation.__all__,
    *_augmentation_impl.__all__,
]
