"""PanopticFPN: Detectron2 parity on the golden fixture (instances, sem_seg, panoptic_seg), the
combining heuristic on hand-made cases, a training step and its config keys."""

import json

import numpy as np
import pytest
import torch

from segtron import model_zoo
from segtron.modeling import build_model
from segtron.modeling.meta_arch import PanopticFPN, combine_semantic_and_instance_outputs
from segtron.structures import BitMasks, Boxes, Instances
from segtron.utils.events import EventStorage
from tests.modeling.golden import MODES, golden_inputs, golden_mode, golden_model

FIXTURE = "golden/panoptic_fpn_R50_thin"


@pytest.fixture(scope="module", params=MODES)
def golden(compat_dir, request):
    with golden_mode(request.param):
        root = compat_dir / FIXTURE
        cfg, model = golden_model(root, request.param)
        with torch.no_grad():
            outputs = model(golden_inputs(root, cfg))
    with np.load(root / "expected.npz") as expected:
        expected = dict(expected)
    yield {
        "mode": request.param,
        "summary": json.loads((root / "summary.json").read_text()),
        "expected": expected,
        "output": outputs[0],
    }


def test_golden_instances(golden):
    expected, instances = golden["expected"], golden["output"]["instances"]
    assert len(instances) == golden["summary"]["num_detections"] == len(expected["boxes"])
    np.testing.assert_array_equal(instances.pred_classes.numpy(), expected["classes"])
    np.testing.assert_allclose(instances.pred_boxes.tensor.numpy(), expected["boxes"], atol=1e-2)
    np.testing.assert_allclose(instances.scores.numpy(), expected["scores"], atol=1e-4)
    ours, theirs = instances.pred_masks.numpy(), expected["masks"]
    inter = (ours & theirs).reshape(len(theirs), -1).sum(1)
    union = (ours | theirs).reshape(len(theirs), -1).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    if golden["mode"] != "exact":  # a pixel at probability ~0.5 may round to the other side
        iou[(ours != theirs).reshape(len(theirs), -1).sum(1) <= 1] = 1.0
    assert iou.min() >= 0.99


def test_golden_sem_seg(golden):
    ours, theirs = golden["output"]["sem_seg"].numpy(), golden["expected"]["sem_seg"]
    assert ours.shape == theirs.shape == (4, 240, 320)
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
    assert (ours.argmax(0) == theirs.argmax(0)).mean() >= 0.999


def test_golden_panoptic_seg(golden):
    """Segment ids equal on >= 99.9% of pixels; the same segments_info (id, category_id,
    isthing) in the same order."""
    ids, info = golden["output"]["panoptic_seg"]
    assert ids.dtype == torch.int32 and ids.shape == (240, 320)
    assert (ids.numpy() == golden["expected"]["panoptic_seg"]).mean() >= 0.999
    key = [(s["id"], s["category_id"], s["isthing"]) for s in info]
    assert key == [(s["id"], s["category_id"], s["isthing"]) for s in golden["summary"]["segments_info"]]


# -- combining -------------------------------------------------------------------------------


def _instances(masks, scores, classes):
    inst = Instances((4, 6))
    inst.pred_masks = torch.tensor(masks, dtype=torch.bool)
    inst.scores = torch.tensor(scores)
    inst.pred_classes = torch.tensor(classes)
    inst.pred_boxes = Boxes(torch.zeros(len(scores), 4))
    return inst


def test_combine_on_a_hand_made_case():
    """4x6 image. Instances by score: B (0.9, class 2) covers columns 0-1; A (0.8, class 1)
    covers columns 1-3: 1/3 of A is already B's (<= 0.5), so A takes columns 2-3; C (0.7)
    covers columns 0-2, 100% taken: dropped; D (0.3) is under the score threshold. Semantic:
    class 0 (things) in columns 0-3, class 4 in column 4 (4 px), class 5 in column 5 (4 px);
    with a stuff area limit of 4 both stuff regions are kept, in class order."""
    col = lambda cs: [[1 if c in cs else 0 for c in range(6)] for _ in range(4)]  # noqa: E731
    inst = _instances([col({1, 2, 3}), col({0, 1}), col({0, 1, 2}), col({5})],
                      [0.8, 0.9, 0.7, 0.3], [1, 2, 3, 0])
    semantic = torch.tensor([[0, 0, 0, 0, 4, 5]] * 4)
    ids, info = combine_semantic_and_instance_outputs(inst, semantic, 0.5, 4, 0.5)
    assert ids.tolist() == [[1, 1, 2, 2, 3, 4]] * 4
    assert info == [
        {"id": 1, "isthing": True, "score": pytest.approx(0.9), "category_id": 2, "instance_id": 1},
        {"id": 2, "isthing": True, "score": pytest.approx(0.8), "category_id": 1, "instance_id": 0},
        {"id": 3, "isthing": False, "category_id": 4, "area": 4},
        {"id": 4, "isthing": False, "category_id": 5, "area": 4},
    ]
    # A larger stuff area limit drops both regions; they stay 0.
    ids, info = combine_semantic_and_instance_outputs(inst, semantic, 0.5, 5, 0.5)
    assert ids[:, 4:].abs().sum() == 0 and len(info) == 2


# -- training and config -----------------------------------------------------------------------


def _tiny_cfg():
    cfg = model_zoo.get_config("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml")
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "32",
        "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4",
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    ])
    return cfg


def test_training_step_losses_and_instance_loss_weight():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg()).train()
    assert isinstance(model, PanopticFPN)
    inst = Instances((64, 96))
    inst.gt_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0]]))
    inst.gt_classes = torch.tensor([2])
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[0, 8:40, 8:40] = True
    inst.gt_masks = BitMasks(mask)
    sem_seg = torch.full((64, 96), 1, dtype=torch.int64)
    sem_seg[8:40, 8:40] = 0
    batch = [{"image": torch.rand(3, 64, 96) * 255, "instances": inst, "sem_seg": sem_seg}]
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_rpn_cls", "loss_rpn_loc", "loss_cls",
                           "loss_box_reg", "loss_mask"}
    sum(losses.values()).backward()
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": torch.rand(3, 64, 96), "instances": inst}])

    cfg = _tiny_cfg()
    cfg.MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT = 0.5
    weighted = build_model(cfg)
    assert weighted.roi_heads.box_predictor.loss_weight == {"loss_cls": 0.5, "loss_box_reg": 0.5}
    assert weighted.roi_heads.mask_head.loss_weight == 0.5


def test_inference_without_postprocess_returns_raw_outputs():
    model = build_model(_tiny_cfg()).eval()
    with torch.no_grad():
        detections, sem_seg = model.inference([{"image": torch.rand(3, 64, 96) * 255}],
                                              do_postprocess=False)
        processed = model([{"image": torch.rand(3, 64, 96) * 255, "height": 32, "width": 48}])
    assert len(detections) == 1 and sem_seg.shape == (1, 4, 64, 96)
    assert set(processed[0]) == {"instances", "sem_seg", "panoptic_seg"}
    assert processed[0]["panoptic_seg"][0].shape == (32, 48)
