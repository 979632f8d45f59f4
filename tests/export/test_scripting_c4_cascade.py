"""Scripting Mask R-CNN C4 (Res5ROIHeads) and Cascade R-CNN (CascadeROIHeads) with
``scripting_with_instances``: the saved TorchScript file runs in a fresh process and matches the
eager model's raw inference on two images, as Detectron2's export tests script them."""

import pytest
import torch

from segtron.export import scripting_with_instances
from segtron.export.torchscript import detectron2_export_fields, scriptable_adapter
from segtron.modeling.roi_heads import CascadeROIHeads, StandardROIHeads

from .ts_models import check_scripted, images, tiny_model

_BOX_FIELDS = ["pred_boxes", "scores", "pred_classes"]
_MASK_FIELDS = _BOX_FIELDS + ["pred_masks"]
_C4 = "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml"
_CASCADE = "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml"


@pytest.mark.parametrize("config, opts, fields", [
    (_C4, [], _MASK_FIELDS),
    ("COCO-Detection/faster_rcnn_R_50_C4_1x.yaml", [], _BOX_FIELDS),  # no mask branch
    (_CASCADE, [], _MASK_FIELDS),
    (_CASCADE, ["MODEL.MASK_ON", "False"], _BOX_FIELDS),
])
def test_scripted_c4_and_cascade_match_eager_in_fresh_process(config, opts, fields, tmp_path):
    model = tiny_model(config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2", *opts)
    check_scripted(model, tmp_path, fields)


def test_scripting_cascade_restores_the_class_annotations():
    # Scripting makes `training` a constant on each module class (CascadeROIHeads keeps the
    # Final mask_on / keypoint_on it inherits meanwhile); afterwards the classes are as before.
    classes = (CascadeROIHeads, StandardROIHeads)
    before = {cls: cls.__dict__.get("__annotations__") for cls in classes}
    model = tiny_model(_CASCADE, "MODEL.MASK_ON", "False")
    scripted = scripting_with_instances(scriptable_adapter(model), detectron2_export_fields())
    assert {cls: cls.__dict__.get("__annotations__") for cls in classes} == before
    assert "training" not in StandardROIHeads.__annotations__
    with torch.no_grad():
        out = scripted([{"image": images()[0]}])[0]
    assert "pred_masks" not in out  # mask_on stayed a False constant: no mask branch compiled
