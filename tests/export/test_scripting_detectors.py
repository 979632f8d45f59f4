"""Scripting whole detectors with ``scripting_with_instances`` (Detectron2's fields and
adapters): the saved TorchScript file runs in a fresh process (torch + torchvision only) and
matches the eager model on two images of different content and size."""

import pytest
import torch

from segtron.export import scripting_with_instances
from segtron.export.torchscript import detectron2_export_fields, scriptable_adapter
from segtron.modeling import GeneralizedRCNN
from segtron.structures import Boxes, Instances

from .ts_models import (
    IMAGE_A_HW,
    IMAGE_B_HW,
    assert_same_instances,
    images,
    run_fresh,
    tiny_model,
)

# The scripted module takes Detectron2's batched inputs: a list of {"image": tensor}.
_SCRIPTED_CALL = 'model([{"image": image}])[0]'

def _eager_raw(model, image):
    """What the scripted adapter computes, from the eager model: raw detections in the network
    input's resolution (R-CNN: do_postprocess=False; dense: forward_inference)."""
    with torch.no_grad():
        if isinstance(model, GeneralizedRCNN):
            return model.inference([{"image": image}], do_postprocess=False)[0]
        batch = model.preprocess_image([{"image": image}])
        features = model.backbone(batch.tensor)
        features = [features[name] for name in model.head_in_features]
        return model.forward_inference(batch, features, model.head(features))[0]


def _as_instances(fields, hw):
    return Instances(hw, **{k: Boxes(v) if k.endswith("_boxes") else v for k, v in fields.items()})


def _check_scripted(model, tmp_path, expected_fields):
    scripted = scripting_with_instances(scriptable_adapter(model), detectron2_export_fields())
    ts_path = tmp_path / "model.ts"
    torch.jit.save(scripted, str(ts_path))
    image_a, image_b = images()
    outputs = run_fresh(ts_path, [image_a, image_b], tmp_path, call=_SCRIPTED_CALL)
    counts = []
    for image, fields, hw in zip((image_a, image_b), outputs, (IMAGE_A_HW, IMAGE_B_HW)):
        assert sorted(fields) == sorted(expected_fields)
        expected = _eager_raw(model, image)
        # Masks (per-box probabilities) are compared after the same pasting into the image.
        assert_same_instances(expected, _as_instances(fields, hw), hw)
        counts.append(len(expected))
    assert counts[0] != counts[1], counts  # nothing frozen from one image to the other


@pytest.mark.parametrize("config, fields", [
    ("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml", ["pred_boxes", "scores", "pred_classes"]),
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
     ["pred_boxes", "scores", "pred_classes", "pred_masks"]),
])
def test_scripted_rcnn_matches_eager_in_fresh_process(config, fields, tmp_path):
    model = tiny_model(config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    _check_scripted(model, tmp_path, fields)


def test_scripted_retinanet_matches_eager_in_fresh_process(tmp_path):
    model = tiny_model("COCO-Detection/retinanet_R_50_FPN_1x.yaml", "MODEL.RETINANET.NUM_CLASSES",
                       "3", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.3")
    # Wider head weights spread the scores, so the threshold keeps some anchors, not all.
    for module in model.head.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
    _check_scripted(model, tmp_path, ["pred_boxes", "scores", "pred_classes"])


def test_scripting_leaves_the_eager_model_unchanged():
    model = tiny_model("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    image = images()[0]
    before = _eager_raw(model, image)
    scripted = scripting_with_instances(scriptable_adapter(model), detectron2_export_fields())
    # Eager code still runs its own paths (postprocessing, real Instances, training flag).
    after = _eager_raw(model, image)
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
    # Keypoint R-CNN's keypoint decoding is not scriptable: the error says where it failed.
    model = tiny_model("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml")
    with pytest.raises(RuntimeError) as info:
        scripting_with_instances(scriptable_adapter(model), detectron2_export_fields())
    message = str(info.value)
    assert "cannot compile RCNNScriptableAdapter" in message
    assert "in model.roi_heads.keypoint_head: KRCNNConvDeconvUpsampleHead" in message
    assert "heatmaps_to_keypoints" in message and "keypoint_head.py" in message
    assert "trace the model with TracingAdapter" in message
