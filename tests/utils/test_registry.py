"""Registries at Detectron2's names and module paths; a miss lists what is registered."""

import importlib

import pytest

from segtron.utils.registry import Registry, locate

# (module path, registry attribute, registry name) exactly as in Detectron2.
D2_REGISTRIES = [
    ("segtron.modeling.meta_arch.build", "META_ARCH_REGISTRY", "META_ARCH"),
    ("segtron.modeling.backbone.build", "BACKBONE_REGISTRY", "BACKBONE"),
    ("segtron.modeling.proposal_generator.build", "PROPOSAL_GENERATOR_REGISTRY", "PROPOSAL_GENERATOR"),
    ("segtron.modeling.proposal_generator.rpn", "RPN_HEAD_REGISTRY", "RPN_HEAD"),
    ("segtron.modeling.anchor_generator", "ANCHOR_GENERATOR_REGISTRY", "ANCHOR_GENERATOR"),
    ("segtron.modeling.roi_heads.roi_heads", "ROI_HEADS_REGISTRY", "ROI_HEADS"),
    ("segtron.modeling.roi_heads.box_head", "ROI_BOX_HEAD_REGISTRY", "ROI_BOX_HEAD"),
    ("segtron.modeling.roi_heads.mask_head", "ROI_MASK_HEAD_REGISTRY", "ROI_MASK_HEAD"),
    ("segtron.modeling.roi_heads.keypoint_head", "ROI_KEYPOINT_HEAD_REGISTRY", "ROI_KEYPOINT_HEAD"),
    ("segtron.modeling.meta_arch.semantic_seg", "SEM_SEG_HEADS_REGISTRY", "SEM_SEG_HEADS"),
]


@pytest.mark.parametrize("module, attr, name", D2_REGISTRIES)
def test_registry_at_detectron2_path(module, attr, name):
    registry = getattr(importlib.import_module(module), attr)
    assert isinstance(registry, Registry)
    assert registry._name == name
    # The same object is exported from segtron.modeling.
    assert getattr(importlib.import_module("segtron.modeling"), attr) is registry


def test_register_get_and_miss_message():
    reg = Registry("TOYS")

    @reg.register()
    class RedCar:
        pass

    assert reg.get("RedCar") is RedCar
    assert "RedCar" in reg
    with pytest.raises(KeyError) as e:
        reg.get("RedCat")
    message = str(e.value)
    assert "TOYS" in message and "Did you mean 'RedCar'" in message and "Registered: RedCar" in message
    with pytest.raises(AssertionError):  # fvcore refuses to register a name twice
        reg.register(RedCar)


def test_locate():
    import torch.nn

    assert locate("torch.nn.ReLU") is torch.nn.ReLU
    with pytest.raises(ImportError, match="no.such"):
        locate("no.such.thing")


def test_convert_target_to_string_is_the_shortest_path_locate_resolves():
    from segtron.modeling.meta_arch.rcnn import GeneralizedRCNN
    from segtron.utils.registry import _convert_target_to_string

    name = _convert_target_to_string(GeneralizedRCNN)
    assert name == "segtron.modeling.GeneralizedRCNN"
    assert locate(name) is GeneralizedRCNN
    # Not re-exported higher up: the full path.
    assert _convert_target_to_string(_convert_target_to_string) == (
        "segtron.utils.registry._convert_target_to_string"
    )
    with pytest.raises(ValueError, match="not an instance"):
        _convert_target_to_string(object())
