"""Tracing detectors with TracingAdapter: the saved TorchScript file runs in a fresh process
(torch + torchvision only) and matches the eager model on the tracing image and on an image of
other content and size."""

import pytest
import torch

from .ts_models import (
    IMAGE_A_HW,
    IMAGE_B_HW,
    assert_same_instances,
    images,
    run_fresh,
    tiny_model,
    trace_and_save,
)


def _raw_inference(model, inputs):
    # As Detectron2's export_model.py: R-CNN results in the network input's resolution, masks
    # as per-box (N, 1, 28, 28) probabilities (pasted afterwards, outside the graph).
    return model.inference(inputs, do_postprocess=False)


def _check_detector(model, tmp_path, inference_func, unwrap):
    image_a, image_b = images()
    ts_path = tmp_path / "model.ts"
    adapter = trace_and_save(model, image_a, ts_path, inference_func)
    flat_outputs = run_fresh(ts_path, [image_a, image_b], tmp_path)
    counts = []
    for image, flat, hw in zip((image_a, image_b), flat_outputs, (IMAGE_A_HW, IMAGE_B_HW)):
        with torch.no_grad():
            expected = unwrap((inference_func or (lambda m, x: m(x)))(model, [{"image": image}]))
        actual = unwrap(adapter.outputs_schema(flat))
        assert tuple(int(v) for v in actual.image_size) == hw
        assert_same_instances(expected, actual, hw)
        counts.append(len(expected))
    return counts


@pytest.mark.parametrize("config", [
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
])
def test_rcnn_traced_matches_eager_in_fresh_process(config, tmp_path):
    model = tiny_model(config, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")
    counts = _check_detector(model, tmp_path, _raw_inference, lambda out: out[0])
    # The number of detections differs between the images: it is not frozen by the trace.
    assert counts[0] != counts[1], counts


def _spread_head_scores(model):
    # A fresh dense head scores every anchor at about its prior probability; wider weights
    # spread the scores so that a threshold keeps some detections and drops others.
    for module in model.head.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.normal_(module.weight, std=0.05)
    return model


@pytest.mark.parametrize("config, opts", [
    ("COCO-Detection/retinanet_R_50_FPN_1x.yaml",
     ["MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.RETINANET.SCORE_THRESH_TEST", "0.3"]),
    # GroupNorm(32) in the head: 64 channels keep 2 values per group on the 1x1 P7 map.
    ("COCO-Detection/fcos_R_50_FPN_1x.yaml",
     ["MODEL.FCOS.NUM_CLASSES", "3", "MODEL.FCOS.SCORE_THRESH_TEST", "0.05",
      "MODEL.FPN.OUT_CHANNELS", "64"]),
])
def test_dense_detector_traced_matches_eager_in_fresh_process(config, opts, tmp_path):
    model = _spread_head_scores(tiny_model(config, *opts))
    # Traced with the model's own forward (inputs -> [{"instances": ...}], postprocessed).
    counts = _check_detector(model, tmp_path, None, lambda out: out[0]["instances"])
    assert counts[0] != counts[1], counts
