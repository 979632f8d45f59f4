"""tools/analyze_model.py, run in-process: Detectron2's figures for Mask R-CNN R50-FPN (the
parameter count, and fvcore's GFLOPs of the backbone with FPN on one 800x1088 image), and hand
counts on the stem of a tiny RetinaNet, from a fixed input size and from test images."""

import importlib.util

import pytest

from tests.conftest import REPO_ROOT
from tests.utils.test_model_cost import (
    TINY_RETINANET_OVERRIDES,
    register_tiny_shapes,
    unregister,
)

MASK_RCNN = str(REPO_ROOT / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_1x.yaml")
MASK_RCNN_ARGS = ["--config-file", MASK_RCNN, "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
RETINANET = str(REPO_ROOT / "configs" / "Shapes" / "retinanet_R_18_FPN.yaml")
# The tiny RetinaNet with a FrozenBN stem. Its config sets MODEL.CHANNELS_LAST, under which
# the norm would be folded into the conv; the tool counts with it off (Detectron2's ops).
TINY = [*TINY_RETINANET_OVERRIDES, "MODEL.RESNETS.NORM", "FrozenBN"]

# Its stem on a 64x64 image: conv 7x7 stride 2, 3 -> 8 channels, no bias, gives 8x32x32;
# fvcore: one flop per multiply-add, 2 per element of an inference BatchNorm with affine,
# 0 for ReLU and max-pooling.
STEM_CONV_OUT = 8 * 32 * 32
STEM_FLOPS = STEM_CONV_OUT * 3 * 7 * 7 + 2 * STEM_CONV_OUT
STEM_PARAMS = 8 * 3 * 7 * 7  # FrozenBN holds buffers only


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("analyze_model",
                                                  REPO_ROOT / "tools" / "analyze_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(tool, restore_logging, capsys):
    """run(*argv) -> (results, stdout) of tool.main on a CPU, one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def _run(*argv):
        results = tool.main([str(a) for a in argv])
        return results, capsys.readouterr().out

    yield _run
    torch.set_num_threads(threads)


def test_mask_rcnn_r50_fpn_parameters_match_detectron2(run):
    """Measured with Detectron2: 44,343,216 parameters."""
    results, out = run("--tasks", "parameter", *MASK_RCNN_ARGS)
    assert results["parameter"] == 44_343_216
    assert "Total parameters: 44,343,216" in out


@pytest.mark.slow  # traces the full-size ResNet-50-FPN on an 800x1088 image: ~3-5 s
def test_mask_rcnn_r50_fpn_backbone_gflops_match_detectron2(run):
    """Measured with Detectron2: its backbone with FPN on one 800x1088 input, 116.57 GFLOPs
    by fvcore's default counting (convolutions 116.19, inference BatchNorms 0.37, the FPN's
    nearest upsampling 0.02)."""
    results, out = run("--tasks", "flop", "--module", "backbone", "--input-size", 800, 1088,
                       *MASK_RCNN_ARGS)
    assert results["flop"] == pytest.approx(116.57, abs=0.005)
    assert "Total GFlops: 116.57" in out


def test_stem_by_hand_from_input_size(run):
    results, out = run("--tasks", "flop", "activation", "parameter", "structure",
                       "--module", "backbone.bottom_up.stem", "--input-size", 64, 64,
                       "--config-file", RETINANET, *TINY)
    assert results["flop"] == pytest.approx(STEM_FLOPS / 1e9)
    assert results["activation"] == pytest.approx(STEM_CONV_OUT / 1e6)
    assert results["parameter"] == STEM_PARAMS
    assert results["structure"].startswith("BasicStem(")
    assert "Flops table computed from only one input sample" in out
    assert "Model Structure:\nBasicStem(" in out


def test_test_images_and_whole_model(run, tmp_path):
    # Images of 56 to 72 px a side; resized so that the longer side is 64 (the shorter one
    # is then over 32), and padded to a multiple of 32: 64x64 model inputs.
    dataset = register_tiny_shapes(tmp_path / "shapes")
    try:
        opts = ["--config-file", RETINANET, *TINY, "DATASETS.TEST", f"('{dataset}',)",
                "INPUT.MAX_SIZE_TEST", 64]
        stem, _ = run("--tasks", "flop", "-n", 2, "--module", "backbone.bottom_up.stem", *opts)
        assert stem["flop"] == pytest.approx(STEM_FLOPS / 1e9)
        whole, out = run("--tasks", "flop", "parameter", "-n", 2, *opts)
    finally:
        unregister(dataset)
    assert whole["flop"] > 3 * stem["flop"]  # the rest of ResNet-18, the FPN and the head
    assert whole["parameter"] > 100 * STEM_PARAMS
    assert "Total GFlops:" in out


def test_ops_per_stage(run):
    """The ops task on the whole tiny RetinaNet, then on its stem alone."""
    results, out = run("--tasks", "ops", "--input-size", 64, 64, "--config-file", RETINANET,
                       *TINY)
    ops = results["ops"]
    stages = {s["stage"]: s for s in ops["first"]["stages"]}
    assert ops["ops"] == ops["first"]["total"]["ops"] == sum(s["ops"] for s in stages.values())
    assert ops["syncs"] == sum(s["syncs"] for s in stages.values()) > 0
    backbone = [s for name, s in stages.items() if name.split(".")[0] == "backbone"]
    assert sum(s["ops"] for s in backbone) > 0 and all(s["syncs"] == 0 for s in backbone)
    # Inference decodes each of the 5 levels (P3-P7) apart, each with a nonzero on the scores
    # above the threshold, in the meta-architecture itself; detector_postprocess takes one more
    # to drop boxes left empty after resizing.
    assert stages["(model)"]["sync_counts"]["aten::nonzero"] == 5 + 1
    assert "Ops and host syncs per stage" in out and "\nbackbone.bottom_up " in out
    assert f"Average ops: {ops['ops']:.1f}" in out

    stem = "backbone.bottom_up.stem"
    alone, out = run("--tasks", "ops", "--module", stem, "--input-size", 64, 64,
                     "--config-file", RETINANET, *TINY)
    rows = {s["stage"]: s for s in alone["ops"]["first"]["stages"]}
    assert all(name.startswith(stem) for name in rows)
    assert alone["ops"]["ops"] == sum(s["ops"] for s in rows.values())
    # BasicStem: conv1 (its own stage), then ReLU and 3x3 max-pooling
    assert rows[stem]["op_counts"] == {"aten::relu_": 1, "aten::max_pool2d_with_indices": 1}
    assert alone["ops"]["syncs"] == 0 and "(model)" not in out
    # The config's MODEL.CHANNELS_LAST folds the FrozenBN into the conv: the norm never runs
    # as a module, unless flops are counted in the same run (options off).
    assert f"{stem}.conv1.norm" not in rows
    both, _ = run("--tasks", "ops", "flop", "--module", stem, "--input-size", 64, 64,
                  "--config-file", RETINANET, *TINY)
    assert f"{stem}.conv1.norm" in [s["stage"] for s in both["ops"]["first"]["stages"]]


def test_bad_module_names(run):
    with pytest.raises(KeyError, match="'backbone.nope'"):
        run("--tasks", "parameter", "--module", "backbone.nope", "--config-file", RETINANET,
            *TINY)
    # The head takes a list of feature maps: not traceable alone.
    with pytest.raises(ValueError, match="'head'.*list"):
        run("--tasks", "flop", "--module", "head", "--input-size", 64, 64,
            "--config-file", RETINANET, *TINY)


def test_overrides_after_the_task_list_are_not_taken_for_tasks(tool):
    """``--tasks`` is variadic: the config overrides written after it must stay overrides."""
    args = tool.parse_args(["--config-file", RETINANET, "--tasks", "flop", "parameter",
                            "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    assert args.tasks == ["flop", "parameter"]
    assert args.config_file == RETINANET
    assert args.opts == ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]
    args = tool.parse_args(["--tasks", "ops", "--config-file", RETINANET, "MODEL.DEVICE", "cpu"])
    assert (args.tasks, args.opts) == (["ops"], ["MODEL.DEVICE", "cpu"])
    args = tool.parse_args(["--tasks", "structure", "--config-file", RETINANET, "-n", "3",
                            "MODEL.WEIGHTS", "w.pth"])
    assert (args.tasks, args.num_inputs) == (["structure"], 3)
    assert args.opts == ["MODEL.WEIGHTS", "w.pth"]



def test_an_unknown_task_is_named(tool, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(["--tasks", "flops", "--config-file", RETINANET])
    assert "invalid choice: 'flops'" in capsys.readouterr().err
