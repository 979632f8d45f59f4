"""Instances: fields, length checks, indexing, concatenation and errors."""

import copy
import pickle

import numpy as np
import pytest
import torch

from segtron.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks


def make(n=4, image_size=(30, 40)):
    inst = Instances(image_size)
    inst.pred_boxes = Boxes(torch.arange(4 * n, dtype=torch.float32).view(n, 4))
    inst.scores = torch.linspace(0.1, 0.9, n) if n else torch.zeros(0)
    inst.pred_classes = torch.arange(n)
    inst.names = [f"obj{i}" for i in range(n)]
    return inst


def test_fields_set_get_has_remove():
    inst = Instances((10, 20), scores=torch.tensor([0.5, 0.7]))
    assert inst.image_size == (10, 20)
    assert inst.has("scores") and not inst.has("labels")
    inst.set("labels", torch.tensor([1, 2]))
    assert torch.equal(inst.get("labels"), torch.tensor([1, 2]))
    assert torch.equal(inst.labels, inst.get_fields()["labels"])
    assert list(inst.get_fields()) == ["scores", "labels"]
    inst.remove("labels")
    assert not inst.has("labels")
    assert not hasattr(inst, "labels")
    with pytest.raises(KeyError, match="labels"):
        inst.remove("labels")
    # replacing a field with a different length is fine when it is the only field
    inst.scores = torch.zeros(5)
    assert len(inst) == 5


def test_missing_field_error_names_fields():
    inst = make(2)
    with pytest.raises(AttributeError) as err:
        inst.gt_masks
    msg = str(err.value)
    assert "gt_masks" in msg and "pred_boxes" in msg and "scores" in msg
    with pytest.raises(AttributeError, match="gt_masks"):
        inst.get("gt_masks")


def test_length_mismatch_error_names_field_and_lengths():
    inst = make(3)
    with pytest.raises(ValueError) as err:
        inst.gt_classes = torch.zeros(5)
    msg = str(err.value)
    assert "gt_classes" in msg and "5" in msg and "3" in msg
    with pytest.raises(TypeError, match="length"):
        inst.set("flag", 3)


def test_len_without_fields_raises():
    inst = Instances((4, 4))
    with pytest.raises(NotImplementedError, match="no length"):
        len(inst)
    assert "num_instances=0" in repr(inst)
    with pytest.raises(NotImplementedError):
        iter(make(2))


def test_int_indexing_keeps_length_one():
    inst = make(4)
    for i in (0, 2, -1, np.int64(3), torch.tensor(1)):
        one = inst[i]
        k = int(i) % 4
        assert len(one) == 1 and one.image_size == (30, 40)
        assert one.pred_boxes.tensor.tolist() == [inst.pred_boxes.tensor[k].tolist()]
        assert one.scores.tolist() == [inst.scores[k].item()]
        assert one.names == [f"obj{k}"]
    for bad in (4, -5):
        with pytest.raises(IndexError, match="out of range"):
            inst[bad]


def test_slice_mask_and_index_tensor():
    inst = make(5)
    sl = inst[1:4]
    assert sl.pred_classes.tolist() == [1, 2, 3] and sl.names == ["obj1", "obj2", "obj3"]
    mask = torch.tensor([True, False, False, True, True])
    sel = inst[mask]
    assert sel.pred_classes.tolist() == [0, 3, 4]
    assert sel.names == ["obj0", "obj3", "obj4"]
    assert sel.pred_boxes.tensor.tolist() == inst.pred_boxes.tensor[mask].tolist()
    idx = torch.tensor([4, 0, 0])
    sel = inst[idx]
    assert sel.pred_classes.tolist() == [4, 0, 0] and sel.names == ["obj4", "obj0", "obj0"]
    empty = inst[torch.zeros(5, dtype=torch.bool)]
    assert len(empty) == 0 and empty.pred_boxes.tensor.shape == (0, 4)


def test_indexing_structures_fields():
    inst = Instances((8, 8))
    inst.gt_masks = BitMasks(torch.rand(3, 8, 8) > 0.5)
    inst.gt_polys = PolygonMasks([[[0, 0, 4, 0, 4, 4]], [[1, 1, 5, 1, 5, 5]], [[2, 2, 6, 2, 6, 6]]])
    inst.gt_keypoints = Keypoints(torch.rand(3, 5, 3))
    sel = inst[torch.tensor([2, 0])]
    assert torch.equal(sel.gt_masks.tensor, inst.gt_masks.tensor[[2, 0]])
    assert sel.gt_polys.polygons[0][0].tolist() == [2, 2, 6, 2, 6, 6]
    assert sel.gt_keypoints.tensor.shape == (2, 5, 3)
    assert len(inst[1]) == 1 and inst[1].gt_masks.tensor.shape == (1, 8, 8)


def test_cat():
    a, b = make(2), make(3)
    c = Instances.cat([a, b])
    assert len(c) == 5 and c.image_size == (30, 40)
    assert c.pred_classes.tolist() == [0, 1, 0, 1, 2]
    assert c.names == ["obj0", "obj1", "obj0", "obj1", "obj2"]
    assert isinstance(c.pred_boxes, Boxes)
    want = a.pred_boxes.tensor.tolist() + b.pred_boxes.tensor.tolist()
    assert c.pred_boxes.tensor.tolist() == want
    assert Instances.cat([a]) is a
    assert len(Instances.cat([make(0), make(0)])) == 0


def test_cat_errors():
    with pytest.raises(ValueError, match="non-empty"):
        Instances.cat([])
    with pytest.raises(ValueError, match="image_size"):
        Instances.cat([make(2, (30, 40)), make(2, (31, 40))])
    other = make(2)
    other.remove("names")
    with pytest.raises(ValueError, match="fields"):
        Instances.cat([make(2), other])
    with pytest.raises(TypeError):
        Instances.cat([make(1), torch.zeros(1)])
    odd = Instances((2, 2), things=range(3))
    with pytest.raises(ValueError, match="things"):
        Instances.cat([odd, Instances((2, 2), things=range(2))])


def test_to_converts_fields():
    inst = make(3)
    moved = inst.to(torch.float64)
    assert moved.scores.dtype == torch.float64
    assert moved.pred_boxes.tensor.dtype == torch.float32  # Boxes stay float32
    assert moved.names is inst.names  # lists have no .to and are carried over
    meta = Instances((5, 5), scores=torch.zeros(2)).to("meta")
    assert meta.scores.device.type == "meta"


def test_repr_and_copy():
    inst = make(2)
    text = repr(inst)
    assert "num_instances=2" in text and "image_height=30" in text and "image_width=40" in text
    assert "pred_boxes" in text and "scores" in text
    for dup in (copy.deepcopy(inst), pickle.loads(pickle.dumps(inst))):
        assert len(dup) == 2 and dup.names == inst.names
        assert torch.equal(dup.scores, inst.scores)
