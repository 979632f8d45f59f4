"""The RetinaNet peer of ``benchmarks/retinanet_inference.py``: torchvision's
``retinanet_resnet50_fpn`` and the segtron RetinaNet its weights are copied into compute the
same function.

The models are random, so before the copy every 1-D tensor of torchvision's model (conv biases,
FrozenBN weight / bias / running statistics) is re-drawn: with torchvision's init these are
all 0 or 1 (or one constant per conv), and a mis-named norm or a wrong order of the head's
bias channels would go unseen. The classification weights are scaled up so that scores
spread (with the init's std 0.01 they all sit near the 0.01 prior and their order is noise).
The image is 256x384, a multiple of 128 in both sides, so that torchvision's anchor strides
(``padded size // grid size``) are 64 and 128 on P6 / P7 as in segtron; at other sizes its
P6 / P7 anchors sit elsewhere.

Tolerances (and what was measured when the test was written):
- features and head outputs: the same convolutions on the same weights, so only float
  rounding separates them: features (up to ~35) within 1e-3 (4e-5 measured), logits and
  deltas within 1e-4 (5e-6).
- anchors: torchvision rounds its cell anchors to whole pixels, segtron (Detectron2) does not,
  so each coordinate may differ by up to 0.5 pixel.
- detections: scores are sigmoids of the same logits, within 1e-4 (4e-7). A box decodes the
  same deltas (dx, dy, dw, dh) from anchors whose centre differs by <= 0.5 pixel and width by
  <= 1, so a coordinate moves by at most 0.5 + |dx| + exp(dw) / 2 pixels; with this head's
  small deltas that is about a pixel: within 1 (0.75). torchvision clips boxes to the image
  before NMS while segtron (as Detectron2) clips after, so a box crossing the border overlaps
  its neighbours differently in the two NMS and may be kept by one and suppressed by the
  other, which shifts every later detection. The first ``FIRST`` detections are compared as
  they are; then both lists are compared in order without the boxes that touch the border
  (the ones clipping changed).
"""

import numpy as np
import pytest
import torch

from benchmarks.torchvision_peer import (
    build_retinanet_pair,
    build_torchvision_retinanet,
    torchvision_retinanet_to_segtron_state_dict,
)
from segtron.modeling.meta_arch.dense_detector import permute_to_N_HWA_K

NUM_CLASSES = 7  # fewer than COCO's 80 keeps the test fast; any K > 1 tests the channel order
HEIGHT, WIDTH = 256, 384
FIRST = 10  # detections compared before any box touching the border may differ


def _redraw_1d_tensors(model, generator):
    """Give every 1-D float tensor of ``model``'s state random values: FrozenBN weights and
    running variances in [0.5, 1) (so that activations stay in the tens through 16 residual
    blocks), biases and running means their current mean plus N(0, 0.2) (the classification
    bias keeps its prior's -4.6 as mean)."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dim() != 1 or not tensor.is_floating_point():
                continue
            if name.endswith(("weight", "running_var")):  # 1-D weights are norm scales
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            else:
                noise = torch.randn(tensor.shape, generator=generator) * 0.2
                tensor.copy_(tensor.mean() + noise)


def _to_torchvision_anchor_order(x, num_sizes=3, num_ratios=3):
    """(N, H*W*A, C) in segtron's (size-major) anchor order -> torchvision's (ratio-major)."""
    n, rows, c = x.shape
    x = x.reshape(n, rows // (num_sizes * num_ratios), num_sizes, num_ratios, c)
    return x.transpose(2, 3).reshape(n, rows, c)


@pytest.fixture(scope="module")
def pair_and_image():
    """(torchvision model, segtron model, uint8 RGB (3, HEIGHT, WIDTH) image); both models in
    eval mode with the same (re-drawn, see the module docstring) weights."""
    torch.manual_seed(0)
    tv_model, st_model = build_retinanet_pair(num_classes=NUM_CLASSES, min_size=HEIGHT)
    _redraw_1d_tensors(tv_model, torch.Generator().manual_seed(1))
    with torch.no_grad():  # logits spread ~1 around the prior instead of ~0.1: scores 0.01-0.3
        tv_model.head.classification_head.cls_logits.weight.mul_(10)
    st_model.load_state_dict(torchvision_retinanet_to_segtron_state_dict(tv_model.state_dict()))
    tv_model.eval()
    st_model.eval()
    rgb = np.random.default_rng(0).integers(0, 256, (3, HEIGHT, WIDTH), dtype=np.uint8)
    return tv_model, st_model, torch.from_numpy(rgb)


def test_torchvision_side_is_torchvisions_retinanet_resnet50_fpn():
    from torchvision.models.detection import retinanet_resnet50_fpn

    official = retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                      num_classes=NUM_CLASSES)
    ours = build_torchvision_retinanet(frozen_bn=True, score_thresh=0.0, num_classes=NUM_CLASSES)
    shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes
    # P6 is computed from P5 (256 channels), not from C5 (2048).
    assert shapes["backbone.fpn.extra_blocks.p6.weight"] == (256, 256, 3, 3)
    assert ours.anchor_generator.sizes == official.anchor_generator.sizes
    assert ours.anchor_generator.aspect_ratios == official.anchor_generator.aspect_ratios
    # FrozenBN and the stem and res2 frozen, as the builder does with pretrained weights.
    assert not any(".bn" in k or "downsample.1" in k for k, _ in ours.named_parameters())
    frozen = {k for k, p in ours.named_parameters() if not p.requires_grad}
    assert frozen == {k for k, _ in ours.named_parameters()
                      if k.startswith(("backbone.body.conv1.", "backbone.body.layer1."))}
    assert frozen


def test_same_features_head_outputs_and_anchors(pair_and_image):
    tv_model, st_model, image = pair_and_image
    with torch.inference_mode():
        images, _ = tv_model.transform([image.float() / 255])
        tv_features = list(tv_model.backbone(images.tensors).values())
        tv_out = tv_model.head(tv_features)
        tv_anchors = tv_model.anchor_generator(images, tv_features)[0]

        batch = st_model.preprocess_image([{"image": image}])
        assert tuple(batch.tensor.shape) == tuple(images.tensors.shape)
        features = st_model.backbone(batch.tensor)
        st_features = [features[name] for name in st_model.head_in_features]
        logits, deltas = st_model.head(st_features)
        st_anchors = torch.cat([b.tensor for b in st_model.anchor_generator(st_features)])

    assert len(st_features) == len(tv_features) == 5
    for tv_f, st_f in zip(tv_features, st_features):
        assert tv_f.shape == st_f.shape
        torch.testing.assert_close(st_f, tv_f, atol=1e-3, rtol=1e-5)
    st_logits = torch.cat([permute_to_N_HWA_K(x, NUM_CLASSES) for x in logits], dim=1)
    st_deltas = torch.cat([permute_to_N_HWA_K(x, 4) for x in deltas], dim=1)
    torch.testing.assert_close(_to_torchvision_anchor_order(st_logits), tv_out["cls_logits"],
                               atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(_to_torchvision_anchor_order(st_deltas),
                               tv_out["bbox_regression"], atol=1e-4, rtol=1e-5)
    st_anchors = _to_torchvision_anchor_order(st_anchors[None])[0]
    assert st_anchors.shape == tv_anchors.shape
    assert (st_anchors - tv_anchors).abs().max() <= 0.5 + 1e-4


def _off_border(boxes):
    """Which boxes do not touch the image border (clipping left them as decoded)."""
    return (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < WIDTH) & (boxes[:, 3] < HEIGHT)


def test_same_detections_away_from_the_border(pair_and_image):
    tv_model, st_model, image = pair_and_image
    with torch.inference_mode():
        tv_out = tv_model([image.float() / 255])[0]
        st_out = st_model([{"image": image, "height": HEIGHT, "width": WIDTH}])[0]["instances"]
    assert len(tv_out["boxes"]) == 100
    assert len(st_out) >= 95  # segtron drops boxes clipped to nothing, as Detectron2 does
    # The first detections agree as they are, border or not.
    assert st_out.pred_classes[:FIRST].tolist() == tv_out["labels"][:FIRST].tolist()
    torch.testing.assert_close(st_out.pred_boxes.tensor[:FIRST], tv_out["boxes"][:FIRST],
                               atol=1.0, rtol=0)
    torch.testing.assert_close(st_out.scores[:FIRST], tv_out["scores"][:FIRST], atol=1e-4, rtol=0)
    # Then each list without its border boxes (see the module docstring), in order.
    tv_keep = _off_border(tv_out["boxes"])
    st_keep = _off_border(st_out.pred_boxes.tensor)
    n = int(min(tv_keep.sum(), st_keep.sum()))
    assert n >= 60
    tv_classes = tv_out["labels"][tv_keep][:n]
    assert len(set(tv_classes.tolist())) >= 2
    assert st_out.pred_classes[st_keep][:n].tolist() == tv_classes.tolist()
    torch.testing.assert_close(st_out.scores[st_keep][:n], tv_out["scores"][tv_keep][:n],
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(st_out.pred_boxes.tensor[st_keep][:n],
                               tv_out["boxes"][tv_keep][:n], atol=1.0, rtol=0)
    # Scores are spread (not all at the prior's 0.01), so the order means something.
    assert tv_out["scores"][0] - tv_out["scores"][n - 1] > 0.05
