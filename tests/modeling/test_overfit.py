"""Mask R-CNN learns: training mode returns Detectron2's loss keys, a thin model trained from
scratch on a few synthetic shapes images drives its total loss below a third of the start, and
the faster CPU convolutions (MODEL.WINOGRAD_CONV) give the same training step."""

import os

import pytest
import torch

from segtron.config import get_cfg
from segtron.data import DatasetMapper
from segtron.data.datasets.coco import load_coco_json
from segtron.data.datasets.shapes import SHAPES_CLASSES, generate_shapes_dataset
from segtron.layers import winograd, wrappers
from segtron.layers.winograd import winograd_available
from segtron.modeling import build_model
from segtron.utils.events import EventStorage
from tests.conftest import lift_winograd_limits


def thin_mask_rcnn_cfg():
    """A small Mask R-CNN R50-FPN (widths / 4) for 5 shape classes at ~256 px inputs."""
    cfg = get_cfg()
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu",
        "MODEL.MASK_ON", "True",
        "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
        "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.RESNETS.NORM", "BN",
        "MODEL.RESNETS.OUT_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "16",
        "MODEL.FPN.IN_FEATURES", "['res2', 'res3', 'res4', 'res5']",
        "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128], [256]]",
        "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5', 'p6']",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "500",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
        "MODEL.ROI_HEADS.NAME", "StandardROIHeads",
        "MODEL.ROI_HEADS.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
        "MODEL.ROI_HEADS.NUM_CLASSES", str(len(SHAPES_CLASSES)),
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
        "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead",
        "MODEL.ROI_BOX_HEAD.NUM_FC", "2",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "7",
        "MODEL.ROI_MASK_HEAD.NUM_CONV", "2",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
        "INPUT.MIN_SIZE_TRAIN", "(256,)",
        "INPUT.MAX_SIZE_TRAIN", "400",
        "INPUT.MASK_FORMAT", "bitmask",
        "INPUT.RANDOM_FLIP", "none",
    ])
    return cfg


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    generate_shapes_dataset(root, "train", num_images=2, seed=7, num_workers=1)
    dicts = load_coco_json(os.path.join(root, "annotations", "instances_train.json"),
                           os.path.join(root, "train"))
    mapper = DatasetMapper(thin_mask_rcnn_cfg(), is_train=True)
    return [mapper(d) for d in dicts]


def test_training_returns_detectron2_loss_keys(batch):
    torch.manual_seed(0)
    model = build_model(thin_mask_rcnn_cfg()).train()
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())


@pytest.mark.slow
def test_thin_model_overfits_a_few_shapes_images(batch):
    torch.manual_seed(0)
    model = build_model(thin_mask_rcnn_cfg()).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    history = []
    with EventStorage() as storage:
        for iteration in range(150):
            storage.iter = iteration
            losses = model(batch)
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history.append(total.item())
            if iteration >= 10 and sum(history[-5:]) / 5 < history[0] / 3:
                break
    start, end = history[0], sum(history[-5:]) / 5
    assert end < start / 3, f"total loss went from {start:.3f} to {end:.3f} in {len(history)} iterations"


@pytest.mark.skipif(not winograd_available(), reason="no NNPACK in this build")
def test_winograd_training_step_matches_default(batch, monkeypatch):
    """MODEL.WINOGRAD_CONV in training (forced onto every eligible conv of the thin model, whose
    32-channel FPN is below the default size limits): same losses and gradients as oneDNN."""
    lift_winograd_limits(monkeypatch)
    cfg = thin_mask_rcnn_cfg()
    cfg.MODEL.CHANNELS_LAST = True
    torch.manual_seed(0)
    model = build_model(cfg).train()
    nnpack_calls, product_calls = [], []
    monkeypatch.setattr(winograd, "_nnpack_conv3x3",
                        _counting(winograd._nnpack_conv3x3, nnpack_calls))
    # The RPN's 1x1 convs read the Winograd convs' NCHW maps: matrix products, with autograd.
    monkeypatch.setattr(wrappers, "pointwise_conv_nchw",
                        _counting(wrappers.pointwise_conv_nchw, product_calls))
    # Every pass's ROI heads get the first pass's proposals, so sampling and mask targets are
    # the same discrete choices in each; the RPN's losses still come from each pass's convs.
    first_proposals = []

    def same_proposals(module, inputs, output):
        proposals, proposal_losses = output
        if not first_proposals:
            first_proposals.append(proposals)
        return first_proposals[0], proposal_losses

    model.proposal_generator.register_forward_hook(same_proposals)
    results = {}
    # (Winograd, channels-last): the default convolutions in both layouts, then Winograd.
    for winograd_on, channels_last in ((False, True), (False, False), (True, True)):
        model.winograd_conv, model.channels_last = winograd_on, channels_last
        model.zero_grad()
        torch.manual_seed(1)
        with EventStorage():
            losses = model(batch)
        sum(losses.values()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[winograd_on, channels_last] = ({k: v.item() for k, v in losses.items()}, grads)
        assert bool(nnpack_calls) == winograd_on and bool(product_calls) == winograd_on
    (losses_ref, grads_ref), (_, grads_nchw), (losses_wg, grads_wg) = results.values()
    assert losses_wg == pytest.approx(losses_ref, rel=1e-4, abs=1e-6)
    assert grads_wg.keys() == grads_ref.keys()
    # At initialisation the mask head's gradients are near-cancelling sums (mask logits ~0,
    # targets ~balanced): fp32 accumulation order alone moves them by up to a few percent of
    # their largest entry (measured at 1 thread: the default convolutions' NCHW and
    # channels-last gradients differ 2-5% there, Winograd's 0.3-1%). So each parameter's bar is
    # 1e-3 of its largest gradient or twice the default's own spread between the two layouts.
    for name, ref in grads_ref.items():
        scale = ref.abs().max().item() or 1.0
        spread = (grads_nchw[name] - ref).abs().max().item()
        assert (grads_wg[name] - ref).abs().max().item() <= max(1e-3 * scale, 2 * spread), name


def _counting(fn, calls):
    def wrapped(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)
    return wrapped
