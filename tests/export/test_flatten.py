"""flatten_to_tuple schemas and TracingAdapter on nested structures."""

import pytest
import torch
from torch import nn

from segtron.export import TracingAdapter, flatten_to_tuple
from segtron.structures import Boxes, Instances, ROIMasks


def _nested():
    inst = Instances((5, 7), pred_boxes=Boxes(torch.rand(2, 4)), scores=torch.rand(2),
                     pred_masks=ROIMasks(torch.rand(2, 3, 3)))
    return [{"instances": inst, "extra": (torch.zeros(1), [torch.ones(2, 2)])},
            {"instances": Instances((4, 4), scores=torch.rand(0))}]


def test_roundtrip_of_nested_lists_dicts_tuples_instances_and_boxes():
    obj = _nested()
    flat, schema = flatten_to_tuple(obj)
    assert all(isinstance(x, torch.Tensor) for x in flat)
    # image 0: 3 fields + image_size, 2 extras; image 1: 1 field + image_size.
    assert len(flat) == 4 + 2 + 2
    back = schema(flat)
    assert isinstance(back, list) and len(back) == 2 and isinstance(back[0]["extra"], tuple)
    inst = back[0]["instances"]
    assert isinstance(inst, Instances) and inst.image_size == (5, 7)
    assert isinstance(inst.pred_boxes, Boxes) and isinstance(inst.pred_masks, ROIMasks)
    assert torch.equal(inst.pred_boxes.tensor, obj[0]["instances"].pred_boxes.tensor)
    assert torch.equal(back[0]["extra"][1][0], torch.ones(2, 2))
    assert back[1]["instances"].image_size == (4, 4) and len(back[1]["instances"]) == 0
    # Dict values are flattened in sorted key order, whatever the insertion order.
    flat_a, _ = flatten_to_tuple({"b": torch.ones(1), "a": torch.zeros(1)})
    assert torch.equal(flat_a[0], torch.zeros(1))
    with pytest.raises(ValueError, match="expects 8 flat values"):
        schema(flat[:-1])


def test_strings_are_leaves_and_int_keys_are_refused():
    flat, schema = flatten_to_tuple(("abc", torch.ones(1)))
    assert flat[0] == "abc" and schema(flat)[0] == "abc"
    with pytest.raises(KeyError, match="str keys"):
        flatten_to_tuple({1: torch.ones(1)})


class _Doubler(nn.Module):
    def forward(self, batched_inputs):
        out = []
        for item in batched_inputs:
            image = item["image"]
            boxes = Boxes(image.flatten()[:8].reshape(2, 4) * 2)
            out.append({"instances": Instances(image.shape[-2:], pred_boxes=boxes,
                                               scores=image.flatten()[:2])})
        return out


def test_tracing_adapter_flattens_inputs_and_rebuilds_outputs():
    image = torch.rand(3, 4, 5)
    adapter = TracingAdapter(_Doubler(), [{"image": image}])
    assert len(adapter.flattened_inputs) == 1 and adapter.flattened_inputs[0] is image
    assert adapter.outputs_schema is None
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    other = torch.rand(3, 6, 2)
    result = adapter.outputs_schema(traced(other))[0]["instances"]
    assert torch.allclose(result.pred_boxes.tensor, other.flatten()[:8].reshape(2, 4) * 2)
    assert result.image_size == (6, 2)  # the traced size follows the input


def test_tracing_adapter_non_tensor_inputs():
    inputs = [{"image": torch.rand(3, 4, 5), "file_name": "a.jpg"}]
    with pytest.raises(ValueError, match="allow_non_tensor"):
        TracingAdapter(_Doubler(), inputs)
    adapter = TracingAdapter(_Doubler(), inputs, allow_non_tensor=True)
    assert adapter.inputs_schema is None and len(adapter.flattened_inputs) == 1
    assert len(adapter(*adapter.flattened_inputs)) == 3  # boxes, scores, image size
    with pytest.raises(ValueError, match="flattened_inputs"):
        adapter(torch.rand(3, 4, 5))


def test_tracing_adapter_custom_inference_func_and_non_tensor_outputs():
    model = nn.Linear(2, 2)
    adapter = TracingAdapter(model, torch.ones(1, 2), lambda m, x: {"y": m(x), "n": 3})
    with pytest.raises(ValueError, match="non-tensor values"):
        adapter(*adapter.flattened_inputs)
    adapter = TracingAdapter(model, torch.ones(1, 2), lambda m, x: {"y": m(x)})
    (y,) = adapter(torch.ones(1, 2))
    assert torch.equal(y, model(torch.ones(1, 2)).detach())
