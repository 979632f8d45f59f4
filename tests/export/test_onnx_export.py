"""ONNX export round trip: each meta-architecture exported with ``export_onnx`` runs in
onnxruntime and matches the eager model on the image it was traced on and on an image of other
content and size (boxes within 1e-2 px, scores within 1e-4, classes equal, masks IoU >= 0.99)."""

import io
from pathlib import Path

import onnx
import pytest
import torch

from projects.DeepLab import add_deeplab_config
from segtron.config import get_cfg
from segtron.export import STABLE_ONNX_OPSET_VERSION
from segtron.export.onnx_export import (
    OUTPUTS_SCHEMA_KEY,
    ExportedModel,
    ONNXRuntimeModel,
    export_onnx,
    schema_from_json,
    schema_to_json,
)
from segtron.export.flatten import flatten_to_tuple
from segtron.structures import Boxes, Instances

from .ts_models import IMAGE_A_HW, IMAGE_B_HW, assert_same_instances, images, tiny_model

REPO = Path(__file__).resolve().parents[2]
DEEPLAB_CONFIG = REPO / "projects/DeepLab/configs/Shapes/deeplab_v3_plus_R_18_os16.yaml"
# GroupNorm(32) in the semantic head: 32 channels is the narrowest width it accepts.
SEM_OPTS = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32"]


def _export(model, image):
    """Export to bytes; returns (adapter, runner reading the bytes back, the ONNX proto)."""
    buffer = io.BytesIO()
    adapter = export_onnx(model, image, buffer)
    data = buffer.getvalue()
    return adapter, ONNXRuntimeModel(data), onnx.load_from_string(data)


def _spread_head_scores(model):
    # A fresh dense head scores every anchor at about its prior probability; wider weights
    # spread the scores so that a threshold keeps some detections and drops others.
    for module in model.head.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
    return model


def _check_detector(model, eager, unwrap):
    """Export on image A, compare onnxruntime with ``eager(model, inputs)`` on A and B;
    returns the detection counts."""
    image_a, image_b = images()
    _, runner, proto = _export(model, image_a)
    assert proto.opset_import[0].version == STABLE_ONNX_OPSET_VERSION
    counts = []
    for image, hw in zip((image_a, image_b), (IMAGE_A_HW, IMAGE_B_HW)):
        with torch.no_grad():
            expected = unwrap(eager(model, [{"image": image}]))
        actual = unwrap(runner(image))
        assert tuple(int(v) for v in actual.image_size) == hw
        assert_same_instances(expected, actual, hw)
        counts.append(len(expected))
    return counts


def _rcnn_raw(model, inputs):
    # As exported: R-CNN results in the network input's resolution, masks per box.
    return [{"instances": x} for x in model.inference(inputs, do_postprocess=False)]


def _first_instances(outputs):
    return outputs[0]["instances"]


@pytest.mark.parametrize("config", [
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
])
def test_rcnn_onnx_matches_eager(config):
    model = tiny_model(config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    counts = _check_detector(model, _rcnn_raw, _first_instances)
    # The number of detections differs between the images: it is not frozen by the export.
    assert counts[0] != counts[1], counts


def test_mask_rcnn_channels_last_onnx_matches_eager():
    # MODEL.CHANNELS_LAST runs NHWC-only kernels in eager mode (ROIAlign as a sparse product,
    # fc1 as a convolution); the exported graph uses the plain ops with the same results.
    model = tiny_model("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2", "MODEL.CHANNELS_LAST", "True")
    _check_detector(model, _rcnn_raw, _first_instances)


@pytest.mark.parametrize("config, opts", [
    ("COCO-Detection/retinanet_R_50_FPN_1x.yaml",
     ["MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.3"]),
    # GroupNorm(32) in the head: 64 channels keep 2 values per group on the 1x1 P7 map.
    ("COCO-Detection/fcos_R_50_FPN_1x.yaml",
     ["MODEL.FCOS.NUM_CLASSES", "3", "MODEL.FCOS.SCORE_THRESH_TEST", "0.05",
      "MODEL.FPN.OUT_CHANNELS", "64"]),
])
def test_dense_detector_onnx_matches_eager(config, opts):
    model = _spread_head_scores(tiny_model(config, *opts))
    counts = _check_detector(model, lambda m, x: m(x), _first_instances)
    assert counts[0] != counts[1], counts


def _deeplab_v3_plus():
    cfg = get_cfg()
    add_deeplab_config(cfg)
    cfg.merge_from_file(str(DEEPLAB_CONFIG))
    return tiny_model(None, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "MODEL.RESNETS.NORM", "BN",
                      "MODEL.SEM_SEG_HEAD.NORM", "BN", cfg=cfg)


@pytest.mark.parametrize("build", [
    lambda: tiny_model("Misc/semantic_R_50_FPN_1x.yaml", *SEM_OPTS),
    _deeplab_v3_plus,
], ids=["semantic_fpn", "deeplab_v3_plus"])
def test_semantic_segmentor_onnx_matches_eager(build):
    model = build()
    image_a, image_b = images()
    _, runner, _ = _export(model, image_a)
    for image, hw in zip((image_a, image_b), (IMAGE_A_HW, IMAGE_B_HW)):
        with torch.no_grad():
            expected = model([{"image": image}])[0]["sem_seg"]
        actual = runner(image)[0]["sem_seg"]
        assert expected.shape == (5, *hw)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(actual.argmax(0), expected.argmax(0))


def test_panoptic_fpn_raw_outputs_onnx_match_eager():
    # Un-postprocessed (detections, semantic logits): the panoptic merge stays in Python.
    model = tiny_model("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", *SEM_OPTS,
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")

    def raw(m, inputs):
        return m.inference(inputs, do_postprocess=False)

    image_a, image_b = images()
    buffer = io.BytesIO()
    export_onnx(model, image_a, buffer, inference_func=raw)
    runner = ONNXRuntimeModel(buffer.getvalue())
    for image, hw in zip((image_a, image_b), (IMAGE_A_HW, IMAGE_B_HW)):
        with torch.no_grad():
            expected_det, expected_sem = raw(model, [{"image": image}])
        actual_det, actual_sem = runner(image)
        assert_same_instances(expected_det[0], actual_det[0], hw)
        assert actual_sem.shape == expected_sem.shape
        torch.testing.assert_close(actual_sem, expected_sem, atol=1e-4, rtol=1e-4)


def test_onnx_file_has_dynamic_image_size_and_detection_count(tmp_path):
    model = tiny_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml")
    path = str(tmp_path / "model.onnx")
    export_onnx(model, images()[0], path)
    proto = onnx.load(path)
    (image_input,) = proto.graph.input
    dims = image_input.type.tensor_type.shape.dim
    assert dims[0].dim_value == 3  # channels stay fixed
    assert dims[1].dim_param and dims[2].dim_param
    for output in proto.graph.output:
        assert all(d.dim_param for d in output.type.tensor_type.shape.dim), output.name
    # The outputs' structure travels in the file: a runner loaded from the path alone
    # rebuilds list[dict[str, Instances]].
    meta = {p.key: p.value for p in proto.metadata_props}
    assert OUTPUTS_SCHEMA_KEY in meta
    outputs = ONNXRuntimeModel(path)(images()[1])
    assert isinstance(outputs[0]["instances"], Instances)
    assert isinstance(outputs[0]["instances"].pred_boxes, Boxes)


def test_exported_model_postprocesses_like_the_eager_model():
    # ExportedModel pastes masks and rescales to "height" x "width" in Python, as the eager
    # model's own postprocessing does, and casts a uint8 image to the exported float input.
    model = tiny_model("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    image_a, _ = images()
    _, runner, _ = _export(model, image_a)
    image_u8 = image_a.round().to(torch.uint8)
    inputs = [{"image": image_u8, "height": 100, "width": 130}]
    with torch.no_grad():
        expected = model(inputs)[0]["instances"]
    actual = ExportedModel(runner)(inputs)[0]["instances"]
    assert expected.image_size == actual.image_size == (100, 130)
    assert expected.pred_masks.dtype == actual.pred_masks.dtype == torch.bool
    assert_same_instances(expected, actual)


def test_outputs_schema_survives_json():
    instances = Instances((5, 7), pred_boxes=Boxes(torch.rand(2, 4)), scores=torch.rand(2))
    outputs = [{"instances": instances, "sem_seg": torch.rand(3, 5, 7)}]
    flat, schema = flatten_to_tuple(outputs)
    rebuilt = schema_from_json(schema_to_json(schema))(flat)
    assert sorted(rebuilt[0]) == ["instances", "sem_seg"]
    assert rebuilt[0]["instances"].image_size == (5, 7)
    assert torch.equal(rebuilt[0]["instances"].pred_boxes.tensor, instances.pred_boxes.tensor)
    assert torch.equal(rebuilt[0]["sem_seg"], outputs[0]["sem_seg"])
    with pytest.raises(KeyError, match="NoSuchSchema"):
        schema_from_json('{"__schema__": "NoSuchSchema"}')


def test_export_refuses_a_model_in_training_mode():
    model = tiny_model("COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml").train()
    with pytest.raises(ValueError, match="eval"):
        export_onnx(model, images()[0], io.BytesIO())
