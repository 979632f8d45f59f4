"""Augmentations: random policies that produce deterministic transforms (Detectron2 API).

An :class:`Augmentation` looks at its inputs (the image, and whatever else it declares in
``get_transform``'s signature, e.g. ``boxes`` or ``sem_seg``), makes its random choices and
returns a :class:`~fvcore.transforms.transform.Transform`. Calling it on an :class:`AugInput`
also applies that transform to the input in place, so one ``AugInput`` can be passed through
a list of augmentations and the returned :class:`TransformList` replayed on other data
(instance polygons, keypoints, ...).
"""

import inspect
import pprint
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
from fvcore.transforms.transform import Transform, TransformList

__all__ = [
    "Augmentation",
    "AugmentationList",
    "AugInput",
    "TransformGen",
    "apply_transform_gens",
    "StandardAugInput",
    "apply_augmentations",
]


def _check_img_dtype(img) -> None:
    """Raise if ``img`` is not a 2-d or 3-d numpy array."""
    if not isinstance(img, np.ndarray):
        raise TypeError(f"[Augmentation] needs a numpy array image, got {type(img).__name__}.")
    if img.ndim not in (2, 3):
        raise ValueError(
            f"[Augmentation] image must be HxW or HxWxC, got an array of shape {img.shape}."
        )


def _get_aug_input_args(aug: "Augmentation", aug_input) -> List[Any]:
    """The attributes of ``aug_input`` to pass to ``aug.get_transform``.

    They are ``aug.input_args`` when set. Otherwise they are worked out once from the
    signature of ``get_transform`` and cached on ``aug``: one parameter means ``("image",)``
    whatever its name; several mean their names.
    """
    if aug.input_args is None:
        params = list(inspect.signature(aug.get_transform).parameters.items())
        if len(params) == 1:
            names: Tuple[str, ...] = ("image",)
        else:
            for name, param in params:
                if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    raise TypeError(
                        f"{type(aug).__name__}.get_transform takes *args/**kwargs, so the "
                        "default __call__ cannot tell which inputs it needs. Set the class "
                        "attribute `input_args` (e.g. ('image', 'sem_seg')) or override "
                        "__call__."
                    )
            names = tuple(name for name, _ in params)
        aug.input_args = names
    args = []
    for name in aug.input_args:
        try:
            args.append(getattr(aug_input, name))
        except AttributeError as e:
            raise AttributeError(
                f"{type(aug).__name__}.get_transform needs the input '{name}', which "
                f"{type(aug_input).__name__} does not have."
            ) from e
    return args


class Augmentation:
    """Base class of augmentations: random policies returning a deterministic transform.

    Subclasses implement ``get_transform(self, image)`` (or with more parameters, e.g.
    ``get_transform(self, image, sem_seg)``), which must return a ``Transform`` and may not
    modify its inputs. The parameters name the attributes read from the input object
    (:class:`AugInput`); a single parameter always receives ``image``. Set the class attribute
    ``input_args`` to choose them explicitly.

    Calling the augmentation on an ``AugInput`` computes the transform, applies it to the input
    in place (``aug_input.transform(tfm)``) and returns it.
    """

    input_args: Optional[Tuple[str, ...]] = None
    """Names of the ``AugInput`` attributes passed to ``get_transform``; None = from signature."""

    def _init(self, params: Optional[dict] = None) -> None:
        """Store every entry of ``params`` (usually ``locals()``) not named self or ``_*``."""
        if params:
            for name, value in params.items():
                if name != "self" and not name.startswith("_"):
                    setattr(self, name, value)

    def get_transform(self, *args) -> Transform:
        """Make the random choices for these inputs and return the resulting ``Transform``.

        Args are the input attributes named by ``input_args`` (by default the image, an
        ``HxW[xC]`` numpy array). The inputs must not be modified.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement get_transform().")

    def __call__(self, aug_input) -> Transform:
        """Compute the transform for ``aug_input``, apply it to ``aug_input`` in place, return it.

        ``aug_input`` needs the attributes ``get_transform`` reads and a ``transform(tfm)``
        method, like :class:`AugInput`.
        """
        args = _get_aug_input_args(self, aug_input)
        tfm = self.get_transform(*args)
        if not isinstance(tfm, (Transform, TransformList)):
            raise TypeError(
                f"{type(self).__name__}.get_transform must return a Transform, got "
                f"{type(tfm).__name__}."
            )
        aug_input.transform(tfm)
        return tfm

    def _rand_range(self, low=1.0, high=None, size=None):
        """Uniform random float(s) in ``[low, high)``; with one bound, in ``[0, low)``."""
        if high is None:
            low, high = 0, low
        if size is None:
            size = []
        return np.random.uniform(low, high, size)

    def __repr__(self) -> str:
        """``ClassName(arg=value, ...)`` for the ``__init__`` arguments not left at default.

        Requires each ``__init__`` parameter to be stored under its own name (see ``_init``);
        otherwise falls back to ``object.__repr__``.
        """
        try:
            signature = inspect.signature(self.__init__)
        except (TypeError, ValueError):
            return super().__repr__()
        parts = []
        for name, param in signature.parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(self, name):
                return super().__repr__()
            value = getattr(self, name)
            if value is param.default:
                continue
            text = pprint.pformat(value)
            parts.append(f"{name}={'...' if chr(10) in text else text}")
        return f"{type(self).__name__}({', '.join(parts)})"

    __str__ = __repr__


TransformGen = Augmentation
"""Deprecated alias of :class:`Augmentation`."""


class _TransformToAug(Augmentation):
    """An augmentation that always returns the same, given transform."""

    def __init__(self, tfm: Transform):
        self.tfm = tfm

    def get_transform(self, *args) -> Transform:
        return self.tfm

    def __repr__(self) -> str:
        return repr(self.tfm)

    __str__ = __repr__


def _transform_to_aug(tfm_or_aug: Union[Transform, Augmentation]) -> Augmentation:
    """Return augmentations unchanged; wrap a ``Transform`` as a constant augmentation.

    This is what lets lists of augmentations mix in fixed transforms.
    """
    if isinstance(tfm_or_aug, Augmentation):
        return tfm_or_aug
    if isinstance(tfm_or_aug, Transform):
        return _TransformToAug(tfm_or_aug)
    raise TypeError(
        "Expected an Augmentation or a Transform, got "
        f"{type(tfm_or_aug).__name__}: {tfm_or_aug!r}."
    )


class AugmentationList(Augmentation):
    """Applies a sequence of augmentations (or transforms) one after the other.

    Each one sees the input as transformed by the previous ones. Calling it returns the
    :class:`TransformList` of all the transforms, in order.
    """

    def __init__(self, augs: Sequence[Union[Transform, Augmentation]]):
        """
        Args:
            augs: augmentations and/or fixed transforms.
        """
        super().__init__()
        self.augs = [_transform_to_aug(x) for x in augs]

    def __call__(self, aug_input) -> TransformList:
        tfms = [aug(aug_input) for aug in self.augs]
        return TransformList(tfms)

    def __repr__(self) -> str:
        return f"AugmentationList[{', '.join(str(a) for a in self.augs)}]"

    __str__ = __repr__


class AugInput:
    """The inputs augmentations read and transform: an image plus optional boxes and sem_seg.

    Attributes (all numpy arrays, updated in place by :meth:`transform`):
        image: ``HxW`` or ``HxWxC``, uint8 (0..255) or floating point.
        boxes: ``(N, 4)`` float ``XYXY`` boxes in absolute pixel coordinates, or None.
        sem_seg: ``HxW`` integer label map, or None.

    Subclass it (or write any class with a ``transform(tfm)`` method) to carry other data;
    augmentations read whichever attributes their ``get_transform`` asks for.
    """

    image: np.ndarray
    boxes: Optional[np.ndarray] = None
    sem_seg: Optional[np.ndarray] = None

    def __init__(
        self,
        image: np.ndarray,
        *,
        boxes: Optional[np.ndarray] = None,
        sem_seg: Optional[np.ndarray] = None,
    ):
        _check_img_dtype(image)
        self.image = image
        self.boxes = boxes
        self.sem_seg = sem_seg

    def transform(self, tfm: Transform) -> None:
        """Apply ``tfm`` in place: image, then boxes and sem_seg when present."""
        self.image = tfm.apply_image(self.image)
        if self.boxes is not None:
            self.boxes = tfm.apply_box(self.boxes)
        if self.sem_seg is not None:
            self.sem_seg = tfm.apply_segmentation(self.sem_seg)

    def apply_augmentations(
        self, augmentations: Sequence[Union[Augmentation, Transform]]
    ) -> TransformList:
        """Run ``augmentations`` on this input in place; return the transforms applied."""
        return AugmentationList(augmentations)(self)


StandardAugInput = AugInput
"""Alias of :class:`AugInput` (older name)."""


def apply_augmentations(augmentations: Sequence[Union[Transform, Augmentation]], inputs):
    """Apply ``augmentations`` to ``inputs``.

    Args:
        augmentations: augmentations and/or transforms.
        inputs: an image array (HxW[xC]) or an :class:`AugInput`.

    Returns:
        ``(transformed image, TransformList)`` for an array input (the array is not modified),
        or ``(the same AugInput, transformed in place, TransformList)``.
    """
    if isinstance(inputs, np.ndarray):
        aug_input = AugInput(inputs)
        tfms = aug_input.apply_augmentations(augmentations)
        return aug_input.image, tfms
    tfms = inputs.apply_augmentations(augmentations)
    return inputs, tfms


apply_transform_gens = apply_augmentations
"""Deprecated alias of :func:`apply_augmentations`."""
