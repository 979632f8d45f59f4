"""``tools/deploy/export_model.py`` end to end on a tiny quickstart model trained for a few
iterations: the ONNX file it writes gives DefaultPredictor's detections in onnxruntime, and
``--run-eval`` gives the AP of train_net's evaluation of the eager model."""

import importlib.util
import os
import subprocess
import sys

import cv2
import pytest
import torch

from segtron.data.datasets.shapes import prepare_shapes_split
from segtron.engine import DefaultPredictor
from segtron.export.onnx_export import ExportedModel, ONNXRuntimeModel
from segtron.modeling import build_model
from tests.conftest import REPO_ROOT
from tests.export.ts_models import ROTATED_RCNN_OPTS, as_instances, eager_raw
from tests.export.ts_models import assert_same_instances

TOOL = os.path.join(REPO_ROOT, "tools", "deploy", "export_model.py")
DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "Shapes", "mask_rcnn_R_18_FPN_demo.yaml")
# The quickstart config, narrower and at 128 px, every detection kept (a model trained for a
# few iterations scores low), a few iterations of training.
SMALL = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160", "MODEL.DEVICE", "cpu",
]


def _load_tool():
    spec = importlib.util.spec_from_file_location("export_model_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_datasets(tmp_path_factory):
    """A datasets root with small shapes splits (8 train, 4 val images of 128 px);
    SEGTRON_DATASETS points at it for the module's tests."""
    root = tmp_path_factory.mktemp("datasets")
    prepare_shapes_split(str(root / "shapes"), "train", 8, 0, image_size=128, num_workers=1)
    prepare_shapes_split(str(root / "shapes"), "val", 4, 1, image_size=128, num_workers=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGTRON_DATASETS", str(root))
        yield root


@pytest.fixture(scope="module")
def trained(small_datasets, tmp_path_factory):
    """(datasets root, weights path): a model trained on ``small_datasets`` for a few
    iterations by train_net.py."""
    root = small_datasets
    out = tmp_path_factory.mktemp("train")
    env = dict(os.environ, SEGTRON_DATASETS=str(root), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "train_net.py"), "--config-file", DEMO_CONFIG,
         *SMALL, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "8", "SOLVER.WARMUP_ITERS", "2",
         "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"],
        cwd=str(out), env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return root, out / "model_final.pth"


@pytest.fixture(scope="module")
def eager_results(trained, tmp_path_factory):
    """train_net's evaluation (Trainer.test, as --eval-only) of the eager trained model."""
    import train_net
    from segtron.checkpoint import DetectionCheckpointer
    from segtron.modeling import build_model

    cfg = _cfg(_load_tool(), trained[1])
    model = build_model(cfg)
    DetectionCheckpointer(model).load(str(trained[1]))
    output = str(tmp_path_factory.mktemp("eager"))
    results = train_net.Trainer.test(
        cfg, model, [train_net.Trainer.build_evaluator(cfg, "shapes_val", output)])
    assert results["bbox"]["AP50"] > 0, "the comparison needs some true detections"
    return results


def _assert_same_metrics(results, eager):
    for task in ("bbox", "segm"):
        assert sorted(results[task]) == sorted(eager[task])
        for key, value in eager[task].items():  # AP, AP50, ..., per class, operating point
            assert results[task][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def _cfg(tool, weights):
    args = tool.parse_args(["--output", "unused", "--config-file", DEMO_CONFIG, *SMALL,
                            "MODEL.WEIGHTS", str(weights)])
    return tool.setup_cfg(args)


@pytest.mark.slow
def test_onnx_export_matches_predictor_and_eval(trained, eager_results, tmp_path,
                                                restore_logging):
    root, weights = trained
    tool = _load_tool()
    image_path = str(root / "shapes" / "val" / "000002.png")
    out = tmp_path / "export"
    results = tool.main(["--format", "onnx", "--export-method", "tracing", "--config-file",
                         DEMO_CONFIG, "--sample-image", image_path, "--run-eval", "--output",
                         str(out), *SMALL, "MODEL.WEIGHTS", str(weights)])
    onnx_path = out / "model.onnx"
    assert onnx_path.is_file()

    # onnxruntime on the sample image, postprocessed in Python, equals DefaultPredictor.
    cfg = _cfg(tool, weights)
    expected = DefaultPredictor(cfg)(cv2.imread(image_path))["instances"]
    inputs = tool.get_sample_inputs(cfg, image_path)
    actual = ExportedModel(ONNXRuntimeModel(str(onnx_path)))(inputs)[0]["instances"]
    assert actual.image_size == expected.image_size == (inputs[0]["height"],
                                                       inputs[0]["width"])
    assert_same_instances(expected, actual)

    # --run-eval: the metrics of train_net's evaluation of the eager model.
    _assert_same_metrics(results, eager_results)


def test_torchscript_export_traces_on_the_first_test_image(small_datasets, tmp_path,
                                                           restore_logging):
    """Without --sample-image the model (random weights here) is traced on the first image of
    DATASETS.TEST[0] (uint8, from the test loader) and model.ts plus its IR dump are written.
    (--run-eval is checked with ONNX above; the TorchScript and ONNX round trips themselves in
    tests/export.)"""
    tool = _load_tool()
    out = tmp_path / "export"
    tool.main(["--format", "torchscript", "--config-file", DEMO_CONFIG, "--output", str(out),
               *SMALL, "MODEL.WEIGHTS", ""])
    traced = torch.jit.load(str(out / "model.ts"))
    assert isinstance(traced, torch.jit.ScriptModule)
    assert (out / "model_ts_code.txt").stat().st_size > 0  # dump_torchscript_IR ran


def test_tracer_warnings_are_counted_not_printed(small_datasets, tmp_path, restore_logging):
    import logging
    import warnings

    tool = _load_tool()
    argv = ["--format", "torchscript", "--config-file", DEMO_CONFIG, *SMALL, "MODEL.WEIGHTS", ""]
    messages = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("segtron.tools.export_model").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tool.main(["--output", str(tmp_path / "quiet"), *argv])
    finally:
        logging.getLogger("segtron.tools.export_model").removeHandler(handler)
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    assert any("TracerWarnings while tracing" in m for m in messages), messages
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tool.main(["--output", str(tmp_path / "loud"), "--show-tracer-warnings", *argv])
    assert [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
@pytest.mark.parametrize("flags, message", [
    (["--format", "caffe2"], "no Caffe2 export"),
    (["--export-method", "caffe2_tracing"], "no Caffe2 export"),
    (["--format", "onnx", "--export-method", "scripting"], "needs --export-method tracing"),
    (["--export-method", "scripting", "--run-eval"], "not supported with --export-method"),
])
def test_unsupported_combinations_fail_before_building(flags, message, tmp_path):
    tool = _load_tool()
    with pytest.raises(ValueError, match=message):
        tool.main([*flags, "--output", str(tmp_path), "--config-file", "does-not-exist.yaml"])


def test_help_says_what_stays_outside_the_graph():
    result = subprocess.run([sys.executable, TOOL, "--help"], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    for text in ("--format", "--export-method", "--sample-image", "--run-eval", "--output",
                 "do_postprocess=False", "detector_postprocess"):
        assert text in result.stdout, text


def _scripting_argv(output, *opts, config=DEMO_CONFIG, base=SMALL):
    return ["--format", "torchscript", "--export-method", "scripting", "--config-file",
            config, "--output", str(output), *base, "MODEL.WEIGHTS", "", *opts]


# A dense detector (FCOS, GroupNorm head) at small widths; 64 FPN channels: GroupNorm's 32
# groups need more than one value each on the 1x1 P7 map of an 80 x 72 image.
FCOS_SMALL = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
              "MODEL.RESNETS.RES2_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "64",
              "MODEL.FCOS.SCORE_THRESH_TEST", "0.0"]


@pytest.mark.parametrize("config, base, fields", [
    (DEMO_CONFIG, SMALL, ["pred_boxes", "pred_classes", "pred_masks", "scores"]),
    (os.path.join(REPO_ROOT, "configs", "Shapes", "fcos_R_18_FPN.yaml"), FCOS_SMALL,
     ["pred_boxes", "pred_classes", "scores"]),
], ids=["mask_rcnn", "fcos"])
def test_scripting_exports_a_model_matching_eager(config, base, fields, tmp_path,
                                                  restore_logging):
    """--export-method scripting writes model.ts (and its IR): called on [{"image": ...}] of
    any size it gives the eager model's raw detections (an R-CNN's
    inference(do_postprocess=False), a dense detector's forward_inference) as dicts of
    tensors."""
    tool = _load_tool()
    argv = _scripting_argv(tmp_path, config=config, base=base)
    torch.manual_seed(0)
    assert tool.main(argv) is None
    for name in ("model.ts", "model_ts_code.txt", "model_ts_IR.txt"):
        assert (tmp_path / name).stat().st_size > 0, name
    torch.manual_seed(0)  # the same random weights as the exported model
    eager = build_model(tool.setup_cfg(tool.parse_args(argv))).eval()
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    for hw in ((96, 128), (80, 72)):
        image = torch.rand((3, *hw), generator=torch.Generator().manual_seed(hw[1])) * 255
        with torch.no_grad():
            fields_out = scripted([{"image": image}])[0]
        assert sorted(fields_out) == fields
        assert_same_instances(eager_raw(eager, image), as_instances(fields_out, hw), hw)


def test_scripting_what_does_not_script_fails_saying_what_and_what_to_do(
    tmp_path, restore_logging
):
    """A model whose code does not script (a rotated R-CNN's proposal decoding) stops the tool
    with the scripting error itself (module, function, file) and points to tracing, writing
    no file; a meta-architecture other than GeneralizedRCNN / RetinaNet is refused."""
    tool = _load_tool()
    with pytest.raises(RuntimeError) as info:
        tool.main(_scripting_argv(tmp_path, *ROTATED_RCNN_OPTS))
    message = str(info.value)
    assert "GeneralizedRCNN could not be scripted" in message
    assert "proposal_generator: RRPN" in message
    assert "rpn.py" in message  # the compiler's source location
    assert "--export-method tracing" in message
    assert not (tmp_path / "model.ts").exists()
    with pytest.raises(RuntimeError, match=r"supports GeneralizedRCNN and the dense detectors "
                                           r"\(RetinaNet, FCOS\), not Sem"):
        tool.main(_scripting_argv(tmp_path, "MODEL.META_ARCHITECTURE", "SemanticSegmentor"))
