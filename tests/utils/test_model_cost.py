"""segtron.utils.model_cost: a tiny RetinaNet run rebuilt from its OUTPUT_DIR (config, weights,
test images at the test size), parameters and fvcore GFLOPs against hand counts, and the
interleaved CPU timing on fake models that record their calls."""

import argparse
import os
import time
import uuid
from pathlib import Path

import pytest
import torch
from torch import nn

from segtron.checkpoint import DetectionCheckpointer
from segtron.config import get_cfg
from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.shapes import register_shapes_instances
from segtron.modeling import build_model
from segtron.utils import model_cost
from tests.conftest import REPO_ROOT

# A RetinaNet R18-FPN a few channels wide, tested at 64 px: builds and runs in milliseconds.
TINY_RETINANET_OVERRIDES = [
    "MODEL.RETINANET.NORM", "", "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "8",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96",
]
NUM_IMAGES = 3


def register_tiny_shapes(root: Path) -> str:
    """A 3-image shapes split (~64 px images) under ``root``, registered under a unique name,
    which is returned; remove it with ``unregister``."""
    name = f"cost_test_shapes_{uuid.uuid4().hex[:8]}"
    register_shapes_instances(name, str(root), "val", NUM_IMAGES, 5, image_size=64)
    return name


def unregister(name: str) -> None:
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def write_tiny_detector_run(directory: Path, dataset: str, opts=()) -> nn.Module:
    """Write ``config.yaml`` (a tiny RetinaNet tested on ``dataset``, then the ``KEY VALUE``
    overrides ``opts``) and ``model_final.pth`` into ``directory`` as train_net.py would, and
    return the saved model."""
    import train_net

    directory.mkdir(parents=True, exist_ok=True)
    cfg = train_net.build_config(argparse.Namespace(
        config_file=str(REPO_ROOT / "configs" / "Shapes" / "retinanet_R_18_FPN.yaml"),
        opts=[*TINY_RETINANET_OVERRIDES, "DATASETS.TEST", f"('{dataset}',)",
              "OUTPUT_DIR", str(directory), *opts]))
    (directory / "config.yaml").write_text(cfg.dump())
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(directory)).save("model_final")
    return model


@pytest.fixture
def one_thread():
    """torch on one thread for the test (the detector tests run the model), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_run(tmp_path):
    """(OUTPUT_DIR of a tiny RetinaNet run, the model it saved)."""
    dataset = register_tiny_shapes(tmp_path / "shapes")
    model = write_tiny_detector_run(tmp_path / "run", dataset)
    yield tmp_path / "run", model
    unregister(dataset)


# ------------------------------------------------------------------------ run dir -> model


def test_load_run_config_and_model(tiny_run):
    run_dir, saved = tiny_run
    cfg = model_cost.load_run_config(str(run_dir))
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
    assert cfg.MODEL.FPN.OUT_CHANNELS == 16 and cfg.INPUT.MIN_SIZE_TEST == 64
    # config.yaml holds the projects' keys, which the defaults alone refuse.
    with pytest.raises(KeyError):
        get_cfg().merge_from_file(str(run_dir / "config.yaml"))

    model = model_cost.load_run_model(str(run_dir), cfg)
    assert not model.training
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    loaded, expected = model.state_dict(), saved.state_dict()
    assert loaded.keys() == expected.keys()
    # A fresh build draws other random weights: equal tensors mean the checkpoint was loaded.
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    fresh = build_model(cfg)
    assert not torch.equal(fresh.state_dict()["head.cls_score.weight"],
                           expected["head.cls_score.weight"])


def test_missing_config_or_checkpoint_is_named(tmp_path):
    with pytest.raises(ValueError, match=str(tmp_path / "config.yaml")):
        model_cost.load_run_config(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*model_final.pth"):
        model_cost.find_run_checkpoint(str(tmp_path))


def test_checkpoint_choice(tmp_path):
    old, new = tmp_path / "model_0000009.pth", tmp_path / "model_0000019.pth"
    for path, mtime in ((old, 1000), (new, 2000)):
        path.write_bytes(b"")
        os.utime(path, (mtime, mtime))
    assert model_cost.find_run_checkpoint(str(tmp_path)) == str(new)  # newest
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    assert model_cost.find_run_checkpoint(str(tmp_path)) == str(old)  # as tagged
    (tmp_path / "model_final.pth").write_bytes(b"")
    assert model_cost.find_run_checkpoint(str(tmp_path)) == str(tmp_path / "model_final.pth")


def test_test_images_at_test_size(tiny_run):
    cfg = model_cost.load_run_config(str(tiny_run[0]))
    images = model_cost.test_images(cfg, 2)
    assert len(images) == 2
    for item in images:
        assert item["image"].shape[0] == 3
        assert min(item["image"].shape[1:]) == 64  # INPUT.MIN_SIZE_TEST; originals are ~56-72
        assert "annotations" not in item
    assert len(model_cost.test_images(cfg, 10)) == NUM_IMAGES
    cfg.DATASETS.TEST = ()
    with pytest.raises(ValueError, match="DATASETS.TEST"):
        model_cost.test_images(cfg, 1)


# --------------------------------------------------------------------- parameters, GFLOPs


class _ConvModel(nn.Module):
    """One convolution behind the list-of-dicts interface of the segtron models."""

    def __init__(self, in_channels=3, out_channels=8, kernel=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)

    def forward(self, batched_inputs):
        images = torch.stack([x["image"].float() for x in batched_inputs])
        return [{"sem_seg": out} for out in self.conv(images)]


def _input(height, width):
    return {"image": torch.zeros(3, height, width), "height": height, "width": width}


def test_count_parameters_by_hand():
    shared = nn.Linear(4, 2)  # 4 * 2 + 2 = 10, counted once
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), shared, shared)
    # conv 4*3*3*3 + 4 = 112, BatchNorm weight and bias 8 (its running statistics are buffers)
    assert model_cost.count_parameters(model) == 112 + 8 + 10


def test_gflops_of_a_convolution_by_hand():
    model = _ConvModel(in_channels=3, out_channels=8, kernel=3)
    # one multiply-add per output pixel, output channel, input channel and kernel tap
    assert model_cost.gflops(model, [_input(20, 30)]) == pytest.approx(8 * 3 * 9 * 20 * 30 / 1e9)
    mean = (8 * 3 * 9 * (20 * 30 + 40 * 30)) / 2 / 1e9
    assert model_cost.gflops(model, [_input(20, 30), _input(40, 30)]) == pytest.approx(mean)
    with pytest.raises(ValueError, match="no inputs"):
        model_cost.gflops(model, [])


def test_gflops_of_a_detector_grow_with_the_pixels(tiny_run, one_thread):
    _, model = tiny_run
    model.eval()
    small = model_cost.gflops(model, [_input(64, 64)])
    large = model_cost.gflops(model, [_input(128, 128)])
    assert small > 0
    assert large / small == pytest.approx(4.0, rel=0.1)  # convolutions: linear in the pixels


# --------------------------------------------------------------------------------- timing


class _RecordingModel(nn.Module):
    """Appends (its name, the image's id, grad enabled) to ``log`` per call; sleeps
    ``seconds``."""

    def __init__(self, name, log, seconds=0.0):
        super().__init__()
        self.name, self.log, self.seconds = name, log, seconds

    def forward(self, batched_inputs):
        assert len(batched_inputs) == 1  # batch 1
        self.log.append((self.name, batched_inputs[0]["id"], torch.is_grad_enabled()))
        if self.seconds:
            time.sleep(self.seconds)
        return [{}]


def test_measure_ms_per_image_interleaves_the_models():
    log = []
    models = {"A": _RecordingModel("A", log, seconds=0.005), "B": _RecordingModel("B", log)}
    inputs = {"A": [{"id": "a0"}, {"id": "a1"}], "B": [{"id": "b0"}, {"id": "b1"}, {"id": "b2"}]}
    ms = model_cost.measure_ms_per_image(models, inputs, repeats=2, warmup=1)

    one_round = [("A", "a0"), ("B", "b0"), ("A", "a1"), ("B", "b1"), ("B", "b2")]
    warmup = [("A", "a0"), ("B", "b0")]
    assert [(name, image) for name, image, _ in log] == warmup + one_round + one_round
    assert not any(grad for _, _, grad in log)  # under torch.no_grad
    assert set(ms) == {"A", "B"}
    assert ms["A"] >= 5.0  # it sleeps 5 ms per image
    assert 0 < ms["B"] < ms["A"]


def test_measure_ms_per_image_checks_its_arguments():
    log = []
    models = {"A": _RecordingModel("A", log)}
    with pytest.raises(ValueError, match="same names"):
        model_cost.measure_ms_per_image(models, {"B": [{"id": 0}]})
    with pytest.raises(ValueError, match="no inputs for A"):
        model_cost.measure_ms_per_image(models, {"A": []})
    assert log == []


def test_measure_runs(tiny_run, one_thread):
    run_dir, saved = tiny_run
    costs = model_cost.measure_runs([str(run_dir), str(run_dir)], num_images=2, repeats=1,
                                    warmup=1)
    assert len(costs) == 2
    for cost in costs:
        assert cost.params == sum(p.numel() for p in saved.parameters())
        assert cost.gflops > 0 and cost.ms_per_image > 0
    assert costs[0].gflops == pytest.approx(costs[1].gflops)  # same model, same images
