"""``benchmarks/semantic_heads.py``: parameter and FLOP counts, one timed training step, the
mIoU reader and the table, on the two DeepLabV3+ shapes configs (plain and depthwise-separable
convs). FLOPs are counted at 64 px and the step runs on 2 images of 64 px to keep it cheap."""

import json
import os

import pytest
import torch

from benchmarks import semantic_heads
from benchmarks.peer_timing import time_interleaved

SIZE = 64


@pytest.fixture(scope="module")
def deeplab_v3_plus_models():
    """{label: (cfg, model)} for "DeepLabV3+" and "DeepLabV3+ (DS conv)"."""
    torch.manual_seed(0)
    return {label: semantic_heads.build_config_and_model(
                os.path.join(semantic_heads.REPO_ROOT, semantic_heads.CONFIGS[label]))
            for label in ("DeepLabV3+", "DeepLabV3+ (DS conv)")}


def test_configs_exist_and_build_their_heads(deeplab_v3_plus_models):
    for path in semantic_heads.CONFIGS.values():
        assert os.path.isfile(os.path.join(semantic_heads.REPO_ROOT, path)), path
    for cfg, model in deeplab_v3_plus_models.values():
        assert type(model.sem_seg_head).__name__ == cfg.MODEL.SEM_SEG_HEAD.NAME


def test_parameter_counts(deeplab_v3_plus_models):
    (_, plain), (_, dsconv) = deeplab_v3_plus_models.values()
    for model in (plain, dsconv):
        total = semantic_heads.parameter_millions(model)
        assert total == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
        head = semantic_heads.parameter_millions(model.sem_seg_head)
        backbone = semantic_heads.parameter_millions(model.backbone)
        assert 0 < head < total
        assert head + backbone == pytest.approx(total)
    # Same backbone; separable 3x3 convs make the head smaller.
    assert (semantic_heads.parameter_millions(dsconv.backbone)
            == semantic_heads.parameter_millions(plain.backbone))
    assert (semantic_heads.parameter_millions(dsconv.sem_seg_head)
            < semantic_heads.parameter_millions(plain.sem_seg_head))


def test_inference_flops(deeplab_v3_plus_models):
    (_, plain), (_, dsconv) = deeplab_v3_plus_models.values()
    plain_total, plain_head = semantic_heads.inference_gflops(plain, SIZE)
    dsconv_total, dsconv_head = semantic_heads.inference_gflops(dsconv, SIZE)
    assert 0 < plain_head < plain_total
    assert 0 < dsconv_head < dsconv_total
    assert dsconv_head < plain_head
    # Same backbone: the whole models differ by their heads only.
    assert plain_total - plain_head == pytest.approx(dsconv_total - dsconv_head, rel=1e-6)
    # FLOPs grow with the pixels: 4x at twice the side (a little less: the ASPP's pooling
    # branch is per image), and the count is the same when repeated.
    assert semantic_heads.inference_gflops(plain, 2 * SIZE)[0] == pytest.approx(
        4 * plain_total, rel=0.05)
    assert semantic_heads.inference_gflops(plain, SIZE) == (plain_total, plain_head)
    assert not plain.training


def test_one_timed_training_step_updates_the_model(deeplab_v3_plus_models):
    cfg, model = deeplab_v3_plus_models["DeepLabV3+ (DS conv)"]
    step = semantic_heads.training_step(cfg, model, size=SIZE, batch_size=2)
    assert model.training
    before = model.sem_seg_head.predictor.weight.detach().clone()
    times = time_interleaved({"dsconv": step}, repeats=1, warmup=0)
    assert len(times["dsconv"]) == 1 and times["dsconv"][0] > 0
    assert not torch.equal(model.sem_seg_head.predictor.weight, before)
    # Random labels over 9 classes: the cross-entropy starts near ln(9).
    assert 1.0 < step() < 5.0


def test_read_miou_takes_the_last_evaluation(tmp_path):
    lines = [
        {"iteration": 19, "total_loss": 2.1, "lr": 0.001},
        {"iteration": 1999, "total_loss": 0.5, "sem_seg/mIoU": 61.5, "sem_seg/fwIoU": 70.0},
        {"iteration": 2019, "total_loss": 0.4},
        {"iteration": 3999, "total_loss": 0.3, "sem_seg/mIoU": 72.25},
        {"iteration": 3999, "val_total_loss": 0.35},
    ]
    (tmp_path / "metrics.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert semantic_heads.read_miou(str(tmp_path)) == 72.25

    no_eval = tmp_path / "no_eval"
    no_eval.mkdir()
    (no_eval / "metrics.json").write_text(json.dumps(lines[0]) + "\n")
    assert semantic_heads.read_miou(str(no_eval)) is None


def test_markdown_table_and_results_argument():
    row = {"label": "FCN", "config": "configs/Shapes/fcn_R_18_DC.yaml", "params_m": 2.947,
           "head_params_m": 0.148, "gflops": 2.457, "head_gflops": 0.118, "s_per_iter": 0.6,
           "miou": None, "miou_per_gflop": None}
    with_miou = dict(row, label="SemSegFPN", miou=70.0, miou_per_gflop=70.0 / 2.457)
    lines = semantic_heads.markdown_table([row, with_miou]).splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == [
        "head", "config", "params M (head)", "GFLOPs (head)", "s/iter", "mIoU", "mIoU/GFLOP"]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == [
        "FCN", "`fcn_R_18_DC.yaml`", "2.95 (0.15)", "2.46 (0.12)", "0.600", "-", "-"]
    assert [c.strip() for c in lines[3].split("|")[-3:-1]] == ["70.0", "28.5"]

    assert semantic_heads._label_and_dir("DeepLabV3+ (DS conv)=out/a=b") == (
        "DeepLabV3+ (DS conv)", "out/a=b")
    with pytest.raises(Exception, match="LABEL=OUTPUT_DIR"):
        semantic_heads._label_and_dir("Unknown=out")
