"""Scripting whole detectors with ``scripting_with_instances`` (Detectron2's fields and
adapters): the saved TorchScript file runs in a fresh process (torch + torchvision only) and
matches the eager model on two images of different content and size."""

import pytest
import torch

from segtron.export import scripting_with_instances
from segtron.export.torchscript import detectron2_export_fields, scriptable_adapter
from segtron.structures import Boxes, Instances

from .ts_models import ROTATED_RCNN_OPTS, check_scripted, eager_raw, images, tiny_model


@pytest.mark.parametrize("config, fields", [
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", ["pred_boxes", "scores", "pred_classes"]),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
     ["pred_boxes", "scores", "pred_classes", "pred_masks"]),
])
def test_scripted_rcnn_matches_eager_in_fresh_process(config, fields, tmp_path):
    model = tiny_model(config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    check_scripted(model, tmp_path, fields)


def test_scripted_retinanet_matches_eager_in_fresh_process(tmp_path):
    model = tiny_model("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "MODEL.RETINANET.NUM_CLASSES",
                       "3", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.3")
    # Wider head weights spread the scores, so the threshold keeps some anchors, not all.
    for module in model.head.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
    check_scripted(model, tmp_path, ["pred_boxes", "scores", "pred_classes"])


def test_scripting_leaves_the_eager_model_unchanged():
    model = tiny_model("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    image = images()[0]
    before = eager_raw(model, image)
    scripted = scripting_with_instances(scriptable_adapter(model), detectron2_export_fields())
    # Eager code still runs its own paths (postprocessing, real Instances, training flag).
    after = eager_raw(model, image)
    assert type(after) is Instances and type(after.pred_boxes) is Boxes
    assert torch.equal(before.pred_boxes.tensor, after.pred_boxes.tensor)
    assert torch.equal(before.pred_masks, after.pred_masks)
    assert "ResNet" in type(model.backbone.bottom_up).__name__  # not the scripting copy
    assert "res2.0.conv1.weight" in model.backbone.bottom_up.state_dict()
    assert model.backbone.__class__.__dict__.get("__annotations__", {}).get("training") is None
    with torch.no_grad():
        with pytest.raises(Exception, match="do_postprocess=False"):
            scripted.model.inference([{"image": image}])  # postprocessing stays in Python
        # Scripting twice in one process compiles against a fresh Instances class.
        again = scripting_with_instances(scriptable_adapter(model), detectron2_export_fields())
        out = again([{"image": image}])[0]
    torch.testing.assert_close(out["pred_boxes"], before.pred_boxes.tensor)
    model.train()
    assert model.training and model.backbone.training  # the training flag still works


def test_unscriptable_detector_names_module_and_function():
    # The rotated R-CNN's proposal decoding is not scriptable: the error says where it failed.
    model = tiny_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", *ROTATED_RCNN_OPTS)
    with pytest.raises(RuntimeError) as info:
        scripting_with_instances(scriptable_adapter(model), detectron2_export_fields())
    message = str(info.value)
    assert "cannot compile RCNNScriptableAdapter" in message
    assert "in model.proposal_generator: RRPN" in message
    assert "function RPN._decode_proposals" in message and "rpn.py" in message
    assert "trace the model with TracingAdapter" in message
