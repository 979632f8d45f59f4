"""segtron.utils.testing: Detectron2's test helpers (sample image, boxes, Instances comparison)."""

import unittest
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segtron.structures import Boxes, Instances
from segtron.utils import testing


def test_sample_image_has_detectron2s_format_and_is_fixed():
    chw = testing.get_sample_coco_image()
    assert isinstance(chw, torch.Tensor) and chw.dtype == torch.uint8
    assert tuple(chw.shape) == (3, 480, 640)  # COCO 000000000009.jpg's size
    hwc = testing.get_sample_coco_image(tensor=False)
    assert isinstance(hwc, np.ndarray) and hwc.shape == (480, 640, 3) and hwc.dtype == np.uint8
    assert np.array_equal(chw.permute(1, 2, 0).numpy(), hwc)
    # Not a blank canvas: several colours (the shapes) over a textured background.
    assert len(np.unique(hwc.reshape(-1, 3), axis=0)) > 1000
    # Callers may scribble on what they get without changing the next call's image.
    hwc[:] = 0
    chw.zero_()
    again = testing.get_sample_coco_image(tensor=False)
    assert again.any() and np.array_equal(again, testing.get_sample_coco_image().permute(1, 2, 0))


def test_sample_image_is_a_pure_function_of_its_seed():
    first = testing._sample_image_bgr()
    testing._sample_image_bgr.cache_clear()
    assert np.array_equal(testing._sample_image_bgr(), first)


def test_random_boxes_are_valid_and_bounded():
    torch.manual_seed(0)
    boxes = testing.random_boxes(500, max_coord=60)
    assert boxes.shape == (500, 4) and boxes.dtype == torch.float32
    assert (boxes >= 1).all() and (boxes < 60).all()
    assert (boxes[:, 2] >= boxes[:, 0] + 1).all() and (boxes[:, 3] >= boxes[:, 1] + 1).all()
    assert testing.random_boxes(0).shape == (0, 4)
    with pytest.raises(ValueError, match="num_boxes"):
        testing.random_boxes(-1)


def _instances(**overrides):
    fields = {
        "pred_boxes": Boxes(torch.tensor([[1.0, 2.0, 30.0, 40.0], [5.0, 5.0, 9.0, 9.0]])),
        "scores": torch.tensor([0.9, 0.4]),
        "pred_classes": torch.tensor([1, 3]),
    }
    fields.update(overrides)
    return Instances((48, 64), **fields)


def test_assert_instances_allclose_accepts_small_differences():
    a = _instances()
    b = _instances(scores=torch.tensor([0.9 + 1e-7, 0.4]),
                   pred_boxes=Boxes(a.pred_boxes.tensor + 5e-4))
    testing.assert_instances_allclose(a, b)


@pytest.mark.parametrize(
    "other, message",
    [
        (Instances((48, 65)), "image_size is"),
        (Instances((48, 64), scores=torch.tensor([0.9, 0.4])), "Fields are"),
        (_instances(scores=torch.tensor([0.9, 0.5])), "Field scores differs too much"),
        (_instances(pred_classes=torch.tensor([1, 2])), "Field pred_classes differs!"),
        (_instances(pred_boxes=Boxes(torch.zeros(2, 4))), "Field pred_boxes differs too much"),
        (_instances(scores=torch.tensor([0.9, 0.4, 0.1])[:2].reshape(2, 1)), "has shape"),
    ],
)
def test_assert_instances_allclose_names_the_difference(other, message):
    with pytest.raises(AssertionError, match=message):
        testing.assert_instances_allclose(_instances(), other, msg="check:")


def test_assert_instances_allclose_size_as_tensor_and_unknown_types():
    a = _instances()
    traced = _instances()
    traced._image_size = (torch.tensor(48), torch.tensor(64))  # what tracing produces
    testing.assert_instances_allclose(a, traced, size_as_tensor=True)
    odd = Instances((48, 64), names=["a", "b"])
    with pytest.raises(ValueError, match="field 'names'"):
        testing.assert_instances_allclose(odd, odd)


def test_convert_scripted_instances_reads_detectron2s_scripted_layout():
    scripted = SimpleNamespace(image_size=(10, 20), _field_names=["scores", "pred_masks"],
                               _scores=torch.tensor([0.5]), _pred_masks=None)
    converted = testing.convert_scripted_instances(scripted)
    assert isinstance(converted, Instances) and converted.image_size == (10, 20)
    assert list(converted.get_fields()) == ["scores"]  # unset (None) fields are left out
    testing.assert_instances_allclose(scripted, Instances((10, 20), scores=torch.tensor([0.5])))
    copy = testing.convert_scripted_instances(_instances())
    assert sorted(copy.get_fields()) == ["pred_boxes", "pred_classes", "scores"]
    with pytest.raises(ValueError, match="image_size"):
        testing.convert_scripted_instances(torch.zeros(2))


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
def test_reload_script_model_round_trips():
    module = torch.jit.trace(torch.nn.Linear(3, 2).eval(), torch.randn(1, 3))
    reloaded = testing.reload_script_model(module)
    x = torch.randn(4, 3)
    assert torch.equal(reloaded(x), module(x))


def test_min_torch_version():
    assert testing.min_torch_version("1.0")
    assert not testing.min_torch_version("999.0")
    installed = torch.__version__.split("+")[0]
    assert testing.min_torch_version(installed) and testing.min_torch_version("v1.13.1")
    with pytest.raises(ValueError, match="not-a-version"):
        testing.min_torch_version("not-a-version")


def _fake_onnx(input_dims, output_dims):
    """An object shaped like onnx.ModelProto's graph inputs/outputs (onnx is not installed)."""
    def value(dims):
        dim = [SimpleNamespace(dim_param=p, dim_value=v) for p, v in dims]
        return SimpleNamespace(type=SimpleNamespace(
            tensor_type=SimpleNamespace(shape=SimpleNamespace(dim=dim))))

    return SimpleNamespace(graph=SimpleNamespace(input=[value(input_dims)],
                                                 output=[value(output_dims)]))


def test_has_dynamic_axes():
    dynamic = [("batch", 0), ("height", 0)]
    assert testing.has_dynamic_axes(_fake_onnx(dynamic, [("num_boxes", 0)]))
    assert not testing.has_dynamic_axes(_fake_onnx(dynamic, [("", 4)]))  # a fixed output axis
    assert not testing.has_dynamic_axes(_fake_onnx([("3", 0)], dynamic))  # a numeric name


class _OpsetCase(unittest.TestCase):
    __test__ = False  # run by test_skip_decorators, not collected on its own
    opset_version = 11

    @testing.skipIfUnsupportedMinOpsetVersion(12)
    def test_needs_12(self):
        raise AssertionError("should have been skipped")

    @testing.skipIfUnsupportedMinOpsetVersion(9)
    def test_needs_9(self):
        pass

    @testing.skipIfUnsupportedMinTorchVersion("999.0")
    def test_needs_future_torch(self):
        raise AssertionError("should have been skipped")


def test_skip_decorators():
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(_OpsetCase).run(result)
    assert result.testsRun == 3 and not result.failures and not result.errors
    assert sorted(t.id().rsplit(".", 1)[1] for t, _ in result.skipped) == [
        "test_needs_12", "test_needs_future_torch"]


def test_get_model_no_weights_builds_a_model_zoo_config():
    model = testing.get_model_no_weights("Shapes/mask_rcnn_R_18_FPN_demo.yaml")
    assert type(model).__name__ == "GeneralizedRCNN"
    assert sum(p.numel() for p in model.parameters()) > 0
