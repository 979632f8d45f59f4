import importlib

import segtron.layers as layers

# Public names of detectron2.layers that segtron provides, plus the losses.
EXPECTED = [
    "ShapeSpec", "Conv2d", "ConvTranspose2d", "BatchNorm2d", "Linear", "interpolate", "cat",
    "nonzero_tuple", "cross_entropy", "empty_input_loss_func_wrapper", "shapes_to_tensor",
    "move_device_like", "FrozenBatchNorm2d", "get_norm", "NaiveSyncBatchNorm",
    "CycleBatchNormList", "LayerNorm", "ROIAlign", "roi_align", "nms", "batched_nms",
    "DeformConv", "ModulatedDeformConv", "paste_masks_in_image", "ciou_loss", "diou_loss",
    "giou_loss", "smooth_l1_loss", "sigmoid_focal_loss", "ASPP", "DepthwiseSeparableConv2d",
    "CNNBlockBase", "nms_rotated", "batched_nms_rotated", "ROIAlignRotated", "roi_align_rotated",
]


def test_public_names_exported():
    missing = [name for name in EXPECTED if not hasattr(layers, name)]
    assert not missing
    assert set(EXPECTED) <= set(layers.__all__)
    assert callable(layers.nms) and callable(layers.roi_align)


def test_submodules_importable_by_detectron2_paths():
    for module, name in [
        ("segtron.layers.wrappers", "Conv2d"),
        ("segtron.layers.batch_norm", "FrozenBatchNorm2d"),
        ("segtron.layers.shape_spec", "ShapeSpec"),
        ("segtron.layers.roi_align", "ROIAlign"),
        ("segtron.layers.nms", "batched_nms"),
        ("segtron.layers.aspp", "ASPP"),
        ("segtron.layers.deform_conv", "ModulatedDeformConv"),
        ("segtron.layers.mask_ops", "paste_masks_in_image"),
        ("segtron.layers.losses", "ciou_loss"),
        ("segtron.layers.nms", "nms_rotated"),
        ("segtron.layers.nms", "batched_nms_rotated"),
        ("segtron.layers.roi_align_rotated", "ROIAlignRotated"),
        ("segtron.layers.rotated_boxes", "pairwise_iou_rotated"),
    ]:
        assert hasattr(importlib.import_module(module), name), (module, name)
