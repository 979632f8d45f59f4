"""Test-time augmentation: the augmented copies, un-doing their transforms when merging boxes and
masks, and exact agreement with plain inference when the augmentation is the identity."""

import os

import numpy as np
import pytest
import torch
from torch import nn

from segtron.config import get_cfg
from segtron.modeling import GeneralizedRCNNWithTTA, build_model
from segtron.modeling import test_time_augmentation as tta_module
from segtron.modeling.test_time_augmentation import DatasetMapperTTA
from segtron.structures import Boxes, Instances

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO, "configs", "Shapes", "tiny_mask_rcnn_R_50_FPN.yaml")


def _tiny_cfg():
    cfg = get_cfg()
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "BN", "INPUT.MIN_SIZE_TEST", "96",
                         "INPUT.MAX_SIZE_TEST", "160"])
    return cfg


def _image(h, w, seed=0):
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 256, (3, h, w), np.uint8))


@pytest.fixture(scope="module")
def model():
    """The tiny Mask R-CNN, randomly initialised (seeded), in eval mode. Its BatchNorm
    statistics are those of two random images, so that activations stay in range and the
    untrained heads give ordinary (many, varied) detections."""
    torch.manual_seed(0)
    net = build_model(_tiny_cfg())
    for bn in net.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.momentum = None  # running statistics = the average over the batch below
            bn.reset_running_stats()
    with torch.no_grad():
        images = [{"image": _image(96, 128, seed)} for seed in (1, 2)]
        net.backbone(net.preprocess_image(images).tensor)
    return net.eval()


# ----------------------------------------------------------------------------- the mapper


def test_mapper_makes_each_size_plain_then_flipped():
    image = _image(60, 80)
    item = {"image": image, "height": 120, "width": 160, "image_id": 7, "meta": {"a": [1]}}
    copies = DatasetMapperTTA(min_sizes=(30, 45, 100), max_size=120, flip=True)(item)

    assert len(copies) == 3 * 2
    # Shorter side 30 / 45 of a 60x80 image; 100 would make the longer side 133.3 > 120, so
    # the longer side becomes 120 and the shorter 90.
    sizes = [tuple(c["image"].shape) for c in copies]
    assert sizes == [(3, 30, 40)] * 2 + [(3, 45, 60)] * 2 + [(3, 90, 120)] * 2
    for plain, flipped in zip(copies[0::2], copies[1::2]):
        assert plain["image"].dtype == torch.uint8
        assert torch.equal(flipped["image"], plain["image"].flip(dims=[2]))
    assert not torch.equal(copies[0]["image"], copies[1]["image"])
    # Other fields are carried over as copies; the input is left alone.
    assert all(c["image_id"] == 7 and c["meta"] == {"a": [1]} for c in copies)
    copies[0]["meta"]["a"].append(2)
    assert item["meta"] == {"a": [1]} and item["image"] is image and "transforms" not in item

    # "transforms" map original (120x160) coordinates onto each copy: x 10..50, y 20..60 is
    # scaled by 30/120 = 0.25 onto the first copy, and mirrored in its width 40 on the second.
    box = np.array([[10.0, 20.0, 50.0, 60.0]])
    np.testing.assert_allclose(copies[0]["transforms"].apply_box(box), [[2.5, 5, 12.5, 15]])
    np.testing.assert_allclose(copies[1]["transforms"].apply_box(box), [[27.5, 5, 37.5, 15]])
    np.testing.assert_allclose(copies[4]["transforms"].apply_box(box), [[7.5, 15, 37.5, 45]])


def test_mapper_from_config_without_flip_and_at_the_input_size():
    cfg = get_cfg()
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", "(60, 30)", "TEST.AUG.MAX_SIZE", "1000",
                         "TEST.AUG.FLIP", "False"])
    mapper = DatasetMapperTTA(cfg)
    assert (mapper.min_sizes, mapper.max_size, mapper.flip) == ((60, 30), 1000, False)
    image = _image(60, 80)
    copies = mapper({"image": image, "height": 60, "width": 80})
    assert [tuple(c["image"].shape) for c in copies] == [(3, 60, 80), (3, 30, 40)]
    assert torch.equal(copies[0]["image"], image)  # the identity resize keeps the pixels
    np.testing.assert_array_equal(copies[0]["transforms"].apply_box(np.array([[1.5, 2, 3, 4]])),
                                  [[1.5, 2, 3, 4]])

    with pytest.raises(ValueError, match="TEST.AUG.MIN_SIZES"):
        DatasetMapperTTA(min_sizes=(), max_size=100)


# ----------------------------------------------------------------------------- refusals


def test_unsupported_models_and_configs_are_refused(model):
    cfg = _tiny_cfg()
    with pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE"):
        GeneralizedRCNNWithTTA(cfg, nn.Linear(2, 2))
    keypoint_cfg = cfg.clone()
    keypoint_cfg.MODEL.KEYPOINT_ON = True
    with pytest.raises(NotImplementedError, match="MODEL.KEYPOINT_ON"):
        GeneralizedRCNNWithTTA(keypoint_cfg, model)
    proposals_cfg = cfg.clone()
    proposals_cfg.MODEL.LOAD_PROPOSALS = True
    with pytest.raises(NotImplementedError, match="MODEL.LOAD_PROPOSALS"):
        GeneralizedRCNNWithTTA(proposals_cfg, model)
    with pytest.raises(ValueError, match="batch_size"):
        GeneralizedRCNNWithTTA(cfg, model, batch_size=0)


# ----------------------------------------------------------------------------- the real model


def _sorted_fields(inst):
    """(boxes, scores, classes, masks) sorted by decreasing score (ties by class, then box)."""
    keys = [(-float(s), int(c), tuple(b)) for s, c, b in
            zip(inst.scores, inst.pred_classes, inst.pred_boxes.tensor.tolist())]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    fields = [inst.pred_boxes.tensor[order], inst.scores[order], inst.pred_classes[order]]
    if inst.has("pred_masks"):
        fields.append(inst.pred_masks[order])
    return fields


@pytest.mark.parametrize("mask_on", [True, False])
def test_identity_augmentation_equals_plain_inference(model, mask_on):
    """One scale equal to the input's size, no flip: TTA's merge (NMS again over the already
    NMS-ed detections) and its second pass for the masks give plain inference's results."""
    cfg = _tiny_cfg()
    cfg.merge_from_list(["MODEL.MASK_ON", str(mask_on), "TEST.AUG.MIN_SIZES", "(96,)",
                         "TEST.AUG.MAX_SIZE", "1000", "TEST.AUG.FLIP", "False"])
    inputs = [{"image": _image(96, 128, seed), "height": 96, "width": 128} for seed in (1, 2)]
    saved_mask_on = model.roi_heads.mask_on
    model.roi_heads.mask_on = mask_on
    try:
        with torch.no_grad():
            # One image per forward pass, as TTA runs each image's copies (a batch of two
            # would round the convolutions differently).
            plain = [model([x])[0] for x in inputs]
            augmented = GeneralizedRCNNWithTTA(cfg, model, batch_size=2)(inputs)
    finally:
        model.roi_heads.mask_on = saved_mask_on
    assert model.roi_heads.mask_on == saved_mask_on

    for p, a in zip(plain, augmented):
        p, a = p["instances"], a["instances"]
        assert a.image_size == p.image_size == (96, 128)
        assert len(p) > 10  # a random model still detects plenty at score > 0.05
        assert a.has("pred_masks") == mask_on
        for p_field, a_field in zip(_sorted_fields(p), _sorted_fields(a)):
            assert torch.equal(p_field, a_field)


# ----------------------------------------------------------------------------- known outputs

# Each copy of a 100x200 input (original image 200x400) returns the same box relative to its
# size, x 10%..40% and y 20%..60% of the copy, with a score and class of its own.
_PER_COPY = {(50, False): (0.9, 1), (50, True): (0.8, 1), (100, False): (0.7, 2),
             (100, True): (0.6, 1)}
_M = 8  # mask resolution of the fake mask head


def _is_flipped(image):
    """The test image is bright on its left half; a mirrored copy is bright on the right."""
    w = image.shape[2]
    return image[:, :, : w // 2].float().mean() < image[:, :, w // 2:].float().mean()


def _fake_inference(calls):
    """A stand-in for ``GeneralizedRCNN.inference`` recording its calls in ``calls``."""

    def inference(batched_inputs, detected_instances=None, do_postprocess=True):
        assert do_postprocess is False
        calls.append((len(batched_inputs), detected_instances))
        outputs = []
        for i, item in enumerate(batched_inputs):
            h, w = item["image"].shape[1:]
            flipped = bool(_is_flipped(item["image"]))
            if detected_instances is not None:
                # Masks of a mirror-consistent model: the object's left half, seen on the right
                # in a flipped copy.
                given = detected_instances[i]
                mask = torch.zeros(len(given), 1, _M, _M)
                if flipped:
                    mask[..., _M // 2:] = 1.0
                else:
                    mask[..., : _M // 2] = 1.0
                given.pred_masks = mask
                outputs.append(given)
                continue
            score, cls = _PER_COPY[(h, flipped)]
            inst = Instances((h, w))
            inst.pred_boxes = Boxes(torch.tensor([[0.1 * w, 0.2 * h, 0.4 * w, 0.6 * h]]))
            inst.scores = torch.tensor([score])
            inst.pred_classes = torch.tensor([cls])
            outputs.append(inst)
        return outputs

    return inference


def _bright_left_image():
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    image[:, :, :100] = 200
    return image


@pytest.mark.parametrize("mask_on", [False, True])
def test_flipped_and_rescaled_boxes_are_mapped_back_and_merged(model, monkeypatch, mask_on):
    cfg = _tiny_cfg()
    cfg.merge_from_list(["MODEL.MASK_ON", str(mask_on), "TEST.AUG.MIN_SIZES", "(50, 100)",
                         "TEST.AUG.MAX_SIZE", "1000", "TEST.AUG.FLIP", "True",
                         "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.5"])
    calls = []
    monkeypatch.setattr(model, "inference", _fake_inference(calls))
    item = {"image": _bright_left_image(), "height": 200, "width": 400}
    (out,) = GeneralizedRCNNWithTTA(cfg, model, batch_size=3)([item])
    result = out["instances"]

    # Unflipped copies' box, in the 200x400 original: x 40..160, y 40..120. The flipped copies'
    # box is the mirror image, x 240..360. The same box twice in class 1 (0.8 and 0.6) is
    # suppressed by NMS; class 2's (0.7) is kept beside class 1's (0.9).
    assert result.image_size == (200, 400)
    torch.testing.assert_close(result.pred_boxes.tensor, torch.tensor(
        [[40.0, 40, 160, 120], [240, 40, 360, 120], [40, 40, 160, 120]]))
    torch.testing.assert_close(result.scores, torch.tensor([0.9, 0.8, 0.7]))
    assert result.pred_classes.tolist() == [1, 1, 2]
    # Four copies in batches of at most 3; a second pass on the merged boxes for masks.
    assert [n for n, given in calls if given is None] == [3, 1]
    assert result.has("pred_masks") == mask_on
    if not mask_on:
        assert len(calls) == 2
        return

    # The merged boxes were mapped onto each copy: the 50x100 flipped copy sees the first box
    # (x 40..160 of 400 -> 10..40 of 100, y 40..120 of 200 -> 10..30) mirrored, x 60..90.
    given = [g for _, gs in calls if gs is not None for g in gs]
    assert [g.image_size for g in given] == [(50, 100), (50, 100), (100, 200), (100, 200)]
    torch.testing.assert_close(given[1].pred_boxes.tensor[0], torch.tensor([60.0, 10, 90, 30]))
    torch.testing.assert_close(given[2].pred_boxes.tensor[0], torch.tensor([20.0, 20, 80, 60]))
    # The flipped copies' masks were mirrored back before averaging, so every mask covers the
    # left half of its box (averaging without un-flipping would give 0.5 everywhere, all off).
    masks = result.pred_masks
    assert masks.shape == (3, 200, 400) and masks.dtype == torch.bool
    for mask, (x0, y0, x1, y1) in zip(masks, result.pred_boxes.tensor.int().tolist()):
        mid = (x0 + x1) // 2
        assert mask[y0 + 5: y1 - 5, x0 + 5: mid - 5].all()
        assert not mask[y0 + 5: y1 - 5, mid + 5: x1 - 5].any()
        assert not mask[:, :x0].any() and not mask[:, x1 + 1:].any()


def test_no_detections_give_empty_results(model, monkeypatch):
    cfg = _tiny_cfg()
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", "(50,)", "TEST.AUG.FLIP", "True"])

    def inference(batched_inputs, detected_instances=None, do_postprocess=True):
        outputs = []
        for i, item in enumerate(batched_inputs):
            if detected_instances is not None:
                given = detected_instances[i]
                given.pred_masks = torch.zeros(0, 1, _M, _M)
                outputs.append(given)
                continue
            inst = Instances(tuple(item["image"].shape[1:]))
            inst.pred_boxes = Boxes(torch.zeros(0, 4))
            inst.scores = torch.zeros(0)
            inst.pred_classes = torch.zeros(0, dtype=torch.int64)
            outputs.append(inst)
        return outputs

    monkeypatch.setattr(model, "inference", inference)
    # No "height" / "width": the results come in the image's own size.
    (out,) = GeneralizedRCNNWithTTA(cfg, model)([{"image": _bright_left_image()}])
    result = out["instances"]
    assert len(result) == 0 and result.image_size == (100, 200)
    assert result.pred_masks.shape == (0, 100, 200)


def test_turning_off_heads_is_undone_on_errors(model, monkeypatch):
    cfg = _tiny_cfg()
    cfg.merge_from_list(["TEST.AUG.MIN_SIZES", "(40,)"])

    def failing_inference(*args, **kwargs):
        assert model.roi_heads.mask_on is False
        raise RuntimeError("boom")

    monkeypatch.setattr(model, "inference", failing_inference)
    assert model.roi_heads.mask_on is True
    with pytest.raises(RuntimeError, match="boom"):
        GeneralizedRCNNWithTTA(cfg, model)([{"image": _image(40, 60)}])
    assert model.roi_heads.mask_on is True


def test_module_exports_match_detectron2():
    assert tta_module.__all__ == ["DatasetMapperTTA", "GeneralizedRCNNWithTTA"]
