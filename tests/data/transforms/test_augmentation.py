"""The augmentation framework: Augmentation, AugInput, AugmentationList, apply_augmentations."""

import numpy as np
import pytest

from segtron.data import transforms as T
from segtron.data.transforms.augmentation import _transform_to_aug


class _Recorder(T.Augmentation):
    """Records what get_transform received; returns an HFlip of the image width."""

    def __init__(self):
        self.seen = None

    def get_transform(self, img):
        self.seen = img
        return T.HFlipTransform(img.shape[1])


class _NeedsSemSeg(T.Augmentation):
    def get_transform(self, image, sem_seg):
        self.seen = (image.shape, sem_seg.shape)
        return T.NoOpTransform()


def _input():
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    return T.AugInput(image, boxes=np.array([[1.0, 2.0, 3.0, 4.0]]),
                      sem_seg=np.zeros((6, 8), np.uint8))


def test_call_applies_transform_in_place_and_returns_it():
    aug_input = _input()
    original = aug_input.image.copy()
    aug = _Recorder()
    tfm = aug(aug_input)
    assert isinstance(tfm, T.HFlipTransform)
    assert aug.seen is not None and aug.seen.shape == (6, 8, 3)
    np.testing.assert_array_equal(aug_input.image, original[:, ::-1])
    np.testing.assert_array_equal(aug_input.boxes, [[5.0, 2.0, 7.0, 4.0]])


def test_input_args_come_from_the_signature():
    assert _Recorder.input_args is None
    aug = _Recorder()
    aug(_input())
    assert aug.input_args == ("image",)  # one parameter: always the image
    aug2 = _NeedsSemSeg()
    aug2(_input())
    assert aug2.input_args == ("image", "sem_seg") and aug2.seen == ((6, 8, 3), (6, 8))


def test_explicit_input_args_and_errors():
    class ByName(T.Augmentation):
        input_args = ("sem_seg",)

        def get_transform(self, seg):
            assert seg.ndim == 2
            return T.NoOpTransform()

    ByName()(_input())

    class VarArgs(T.Augmentation):
        def get_transform(self, *args):
            return T.NoOpTransform()

    class VarArgsTwo(T.Augmentation):
        def get_transform(self, image, *rest):
            return T.NoOpTransform()

    VarArgs()(_input())  # a single parameter means "image"
    with pytest.raises(TypeError, match="input_args"):
        VarArgsTwo()(_input())

    class NeedsMissing(T.Augmentation):
        def get_transform(self, image, keypoints):
            return T.NoOpTransform()

    with pytest.raises(AttributeError, match="'keypoints'"):
        NeedsMissing()(_input())

    class ReturnsWrong(T.Augmentation):
        def get_transform(self, image):
            return "flip"

    with pytest.raises(TypeError, match="must return a Transform"):
        ReturnsWrong()(_input())
    with pytest.raises(NotImplementedError):
        T.Augmentation().get_transform(np.zeros((2, 2)))


def test_repr_lists_non_default_init_args():
    assert repr(T.RandomFlip()) == "RandomFlip()"
    assert repr(T.RandomFlip(0.3, horizontal=False, vertical=True)) == (
        "RandomFlip(prob=0.3, horizontal=False, vertical=True)")
    assert repr(T.ResizeShortestEdge((640, 672), 1333)) == (
        "ResizeShortestEdge(short_edge_length=(640, 672), max_size=1333)")
    assert str(T.RandomCrop("absolute", (10, 20))) == (
        "RandomCrop(crop_type='absolute', crop_size=(10, 20))")
    assert repr(T.RandomLighting(0.1)) == "RandomLighting(scale=0.1)"
    lst = T.AugmentationList([T.RandomFlip(), T.HFlipTransform(8)])
    assert repr(lst) == "AugmentationList[RandomFlip(), HFlipTransform(width=8)]"

    class Opaque(T.Augmentation):
        def __init__(self, x):
            pass

    assert repr(Opaque(1)).startswith("<")  # falls back to object.__repr__


def test_rand_range():
    aug = T.Augmentation()
    v = aug._rand_range()
    assert 0.0 <= v < 1.0 and np.ndim(v) == 0
    vals = aug._rand_range(2.0, 3.0, size=(50,))
    assert vals.shape == (50,) and vals.min() >= 2.0 and vals.max() < 3.0
    assert np.all(aug._rand_range(0.5, size=10) < 0.5)


def test_augmentation_list_mixes_transforms_and_augmentations():
    aug_input = _input()
    tfms = T.AugmentationList([T.HFlipTransform(8), T.Resize((12, 16)), T.HFlipTransform(16)])(
        aug_input)
    assert isinstance(tfms, T.TransformList) and len(tfms) == 3
    assert aug_input.image.shape == (12, 16, 3) and aug_input.sem_seg.shape == (12, 16)
    np.testing.assert_allclose(aug_input.boxes, [[2.0, 4.0, 6.0, 8.0]])
    polys = tfms.apply_polygons([np.array([[1.0, 2.0], [3.0, 2.0], [3.0, 4.0]])])
    np.testing.assert_allclose(polys[0], [[2.0, 4.0], [6.0, 4.0], [6.0, 8.0]])


def test_transform_to_aug():
    aug = T.RandomFlip()
    assert _transform_to_aug(aug) is aug
    wrapped = _transform_to_aug(T.VFlipTransform(6))
    assert isinstance(wrapped, T.Augmentation)
    assert isinstance(wrapped.get_transform(np.zeros((6, 8))), T.VFlipTransform)
    assert repr(wrapped) == "VFlipTransform(height=6)"
    with pytest.raises(TypeError, match="Augmentation or a Transform"):
        _transform_to_aug(lambda image: T.NoOpTransform())


def test_apply_augmentations_on_array_and_on_auginput():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :5] = 255
    out, tfms = T.apply_augmentations([T.HFlipTransform(20), T.Resize((5, 10))], image)
    assert out.shape == (5, 10, 3) and out[:, -2:].min() == 255 and image[:, :5].min() == 255
    assert isinstance(tfms, T.TransformList) and len(tfms) == 2
    aug_input = T.AugInput(image.copy())
    same, tfms2 = T.apply_augmentations([T.RandomFlip(prob=1.0)], aug_input)
    assert same is aug_input and aug_input.image[:, -5:].min() == 255
    assert len(tfms2) == 1
    tl = aug_input.apply_augmentations([T.RandomFlip(prob=1.0)])
    assert isinstance(tl, T.TransformList) and aug_input.image[:, :5].min() == 255


def test_aliases():
    assert T.apply_transform_gens is T.apply_augmentations
    assert T.StandardAugInput is T.AugInput
    assert T.TransformGen is T.Augmentation


def test_auginput_validates_image():
    with pytest.raises(TypeError, match="numpy array"):
        T.AugInput([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match="HxW"):
        T.AugInput(np.zeros((2, 2, 2, 2), np.uint8))
    aug_input = T.AugInput(np.zeros((4, 5), np.float32))
    assert aug_input.boxes is None and aug_input.sem_seg is None
    aug_input.transform(T.HFlipTransform(5))  # absent fields stay None
    assert aug_input.boxes is None and aug_input.sem_seg is None


def test_exports_match_detectron2():
    expected = {
        # fvcore
        "Transform", "TransformList", "NoOpTransform", "HFlipTransform", "VFlipTransform",
        "CropTransform", "PadTransform", "BlendTransform", "ScaleTransform",
        "GridSampleTransform",
        # transform.py
        "ExtentTransform", "ResizeTransform", "RotationTransform", "ColorTransform",
        "PILColorTransform",
        # augmentation.py
        "Augmentation", "AugmentationList", "AugInput", "TransformGen", "apply_transform_gens",
        "StandardAugInput", "apply_augmentations",
        # augmentation_impl.py
        "FixedSizeCrop", "RandomApply", "RandomBrightness", "RandomContrast", "RandomCrop",
        "RandomExtent", "RandomFlip", "RandomSaturation", "RandomLighting", "RandomRotation",
        "Resize", "ResizeScale", "ResizeShortestEdge", "RandomCrop_CategoryAreaConstraint",
        "RandomResize", "MinIoURandomCrop",
    }
    assert expected <= set(T.__all__)
    for name in T.__all__:
        assert hasattr(T, name)
