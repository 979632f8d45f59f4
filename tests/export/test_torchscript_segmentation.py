"""Tracing semantic / panoptic segmenters with TracingAdapter: the saved TorchScript file runs
in a fresh process (torch + torchvision only) and matches the eager model on the tracing image
and on an image of other content and size."""

from pathlib import Path

import torch

from projects.DeepLab import add_deeplab_config
from segtron.config import get_cfg

from .ts_models import (
    IMAGE_A_HW,
    IMAGE_B_HW,
    assert_same_instances,
    images,
    run_fresh,
    tiny_model,
    trace_and_save,
)

REPO = Path(__file__).resolve().parents[2]
# GroupNorm(32) in the semantic heads: 32 channels is the narrowest width they accept.
SEM_OPTS = ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32"]


def _check_semantic(model, tmp_path):
    image_a, image_b = images()
    ts_path = tmp_path / "model.ts"
    adapter = trace_and_save(model, image_a, ts_path)
    flat_outputs = run_fresh(ts_path, [image_a, image_b], tmp_path)
    for image, flat, hw in zip((image_a, image_b), flat_outputs, (IMAGE_A_HW, IMAGE_B_HW)):
        with torch.no_grad():
            expected = model([{"image": image}])[0]["sem_seg"]
        actual = adapter.outputs_schema(flat)[0]["sem_seg"]
        assert expected.shape == (5, *hw)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(actual.argmax(0), expected.argmax(0))


def test_semantic_fpn_traced_matches_eager_in_fresh_process(tmp_path):
    model = tiny_model("Misc/semantic_R_50_FPN_1x.yaml", *SEM_OPTS)
    _check_semantic(model, tmp_path)


def test_deeplab_v3_plus_traced_matches_eager_in_fresh_process(tmp_path):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    cfg.merge_from_file(str(REPO / "projects/DeepLab/configs/Shapes" /
                            "deeplab_v3_plus_R_18_os16.yaml"))
    model = tiny_model(None, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5",
                       "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN", cfg=cfg)
    _check_semantic(model, tmp_path)


def test_panoptic_fpn_traced_raw_outputs_match_eager_in_fresh_process(tmp_path):
    model = tiny_model("COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml", *SEM_OPTS,
                       "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")

    # Un-postprocessed (detections, semantic logits): the panoptic merge is a data-dependent
    # Python loop, run on the rebuilt outputs after the traced graph.
    def raw(m, inputs):
        return m.inference(inputs, do_postprocess=False)

    image_a, image_b = images()
    ts_path = tmp_path / "model.ts"
    adapter = trace_and_save(model, image_a, ts_path, raw)
    flat_outputs = run_fresh(ts_path, [image_a, image_b], tmp_path)
    for image, flat, hw in zip((image_a, image_b), flat_outputs, (IMAGE_A_HW, IMAGE_B_HW)):
        with torch.no_grad():
            expected_det, expected_sem = raw(model, [{"image": image}])
        actual_det, actual_sem = adapter.outputs_schema(flat)
        assert_same_instances(expected_det[0], actual_det[0], hw)
        assert actual_sem.shape == expected_sem.shape
        torch.testing.assert_close(actual_sem, expected_sem, atol=1e-4, rtol=1e-4)
