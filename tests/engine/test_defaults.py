"""``segtron.engine.defaults``: the argument parser, default_setup, writers, the predictor and
``DefaultTrainer`` (on a toy model, in this process)."""

import json
import logging
import os

import numpy as np
import pytest
import torch

from segtron.checkpoint import DetectionCheckpointer
from segtron.config import get_cfg
from segtron.engine import (
    DefaultPredictor,
    DefaultTrainer,
    create_ddp_model,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from segtron.modeling import build_model
from segtron.solver import build_lr_scheduler
from segtron.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter

from .defaults_toys import ToyModel, ToyTrainer, restored_process_state, toy_cfg

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO, "configs", "Shapes", "tiny_mask_rcnn_R_50_FPN.yaml")


@pytest.fixture(autouse=True)
def _restore_process_state():
    with restored_process_state():
        yield


# ----------------------------------------------------------------------------- parser


def test_parser_has_detectron2_flags_and_defaults():
    args = default_argument_parser().parse_args([])
    assert (args.config_file, args.resume, args.eval_only) == ("", False, False)
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (1, 1, 0)
    # Not Detectron2's fixed port per user: a free one, so two jobs at once do not collide.
    assert args.dist_url == "auto"
    assert args.dist_timeout is None  # the config's DIST.TIMEOUT_MINUTES
    assert (args.allow_unsafe_yaml, args.allow_unsafe_unpickling) == (False, False)
    assert args.opts == []


def test_parser_dist_timeout_in_minutes_above_zero(capsys):
    assert default_argument_parser().parse_args(["--dist-timeout", "7.5"]).dist_timeout == 7.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            default_argument_parser().parse_args(["--dist-timeout", bad])
        assert f"--dist-timeout '{bad}': give the number of minutes" in capsys.readouterr().err


def test_parser_collects_key_value_overrides_after_the_flags():
    args = default_argument_parser().parse_args([
        "--config-file", "a.yaml", "--num-gpus", "8", "--num-machines", "2", "--machine-rank",
        "1", "--dist-url", "tcp://10.0.0.1:1234", "--resume", "--eval-only",
        "SOLVER.BASE_LR", "0.1", "MODEL.WEIGHTS", "w.pth"])
    assert args.config_file == "a.yaml" and args.resume and args.eval_only
    assert (args.num_gpus, args.num_machines, args.machine_rank) == (8, 2, 1)
    assert args.dist_url == "tcp://10.0.0.1:1234"
    assert args.opts == ["SOLVER.BASE_LR", "0.1", "MODEL.WEIGHTS", "w.pth"]


def test_parser_epilog_shows_examples():
    text = default_argument_parser().format_help()
    for example in ("--num-gpus 8", "--machine-rank 0 --num-machines 2", "--machine-rank 1",
                    "--eval-only", "SOLVER.BASE_LR"):
        assert example in text
    assert default_argument_parser(epilog="custom epilog").epilog == "custom epilog"


# ----------------------------------------------------------------------------- setup, writers


def test_default_setup_writes_config_logs_and_seeds(tmp_path):
    cfg = get_cfg()
    cfg.merge_from_file(TINY_CONFIG)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SEED = 1234
    cfg.CUDNN_BENCHMARK = True
    cfg.freeze()
    args = default_argument_parser().parse_args(["--config-file", TINY_CONFIG])
    default_setup(cfg, args)

    saved = get_cfg()
    saved.merge_from_file(str(tmp_path / "out" / "config.yaml"))
    assert saved == cfg
    assert torch.initial_seed() == 1234  # SEED + rank 0
    assert torch.backends.cudnn.benchmark is True
    for handler in logging.getLogger("segtron").handlers:
        handler.flush()
    log = (tmp_path / "out" / "log.txt").read_text()
    assert "Rank of current process: 0. World size: 1" in log
    assert "Environment info" in log and "PyTorch" in log
    assert "Command line arguments" in log and "tiny_mask_rcnn_R_50_FPN.yaml" in log
    assert "FOR TESTS AND DOCUMENTATION EXAMPLES ONLY" in log  # the config file's contents


def test_default_setup_applies_float32_precision_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.FLOAT32_PRECISION = "high"
    default_setup(cfg, default_argument_parser().parse_args(["--eval-only"]))
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cudnn.allow_tf32 is True
    cfg.FLOAT32_PRECISION = "fastest"
    with pytest.raises(ValueError, match="'highest', 'high', 'medium'"):
        default_setup(cfg, None)


def test_default_writers(tmp_path):
    writers = default_writers(str(tmp_path / "w"), max_iter=10)
    assert [type(w) for w in writers] == [CommonMetricPrinter, JSONWriter, TensorboardXWriter]
    for w in writers:
        w.close()
    assert os.path.isdir(tmp_path / "w")


def test_create_ddp_model_is_a_no_op_in_one_process():
    model = ToyModel()
    assert create_ddp_model(model, broadcast_buffers=False) is model


# ----------------------------------------------------------------------------- scaling


def _scaled(reference, workers, **solver):
    cfg = get_cfg()
    cfg.SOLVER.REFERENCE_WORLD_SIZE = reference
    cfg.SOLVER.IMS_PER_BATCH = 16
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.MAX_ITER = 90000
    cfg.SOLVER.STEPS = (60000, 80000)
    cfg.SOLVER.WARMUP_ITERS = 1000
    cfg.SOLVER.CHECKPOINT_PERIOD = 5000
    cfg.TEST.EVAL_PERIOD = 3000
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    cfg.freeze()
    return cfg, DefaultTrainer.auto_scale_workers(cfg, workers)


def test_auto_scale_workers_follows_the_linear_scaling_rule():
    cfg, scaled = _scaled(8, 4)
    s = scaled.SOLVER
    assert (s.IMS_PER_BATCH, s.MAX_ITER, s.WARMUP_ITERS, s.STEPS) == (8, 180000, 2000,
                                                                      (120000, 160000))
    assert s.BASE_LR == pytest.approx(0.01)
    assert (s.CHECKPOINT_PERIOD, scaled.TEST.EVAL_PERIOD, s.REFERENCE_WORLD_SIZE) == (10000,
                                                                                      6000, 4)
    assert scaled.is_frozen() and cfg.SOLVER.IMS_PER_BATCH == 16  # a copy; input unchanged


def test_auto_scale_workers_disabled_or_same_size_returns_the_config():
    cfg, scaled = _scaled(0, 4)
    assert scaled is cfg
    cfg, scaled = _scaled(8, 8)
    assert scaled is cfg
    with pytest.raises(ValueError, match="divisible"):
        _scaled(3, 4)


# ----------------------------------------------------------------------------- predictor


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A randomly initialised tiny Mask R-CNN saved as a checkpoint, and its config."""
    cfg = get_cfg()
    cfg.merge_from_file(TINY_CONFIG)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.INPUT.MIN_SIZE_TEST = 96
    torch.manual_seed(0)
    model = build_model(cfg)
    out = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, str(out)).save("tiny")
    cfg.MODEL.WEIGHTS = str(out / "tiny.pth")
    return cfg, model


def test_predictor_returns_instances_in_original_image_size(tiny_weights):
    cfg, model = tiny_weights
    predictor = DefaultPredictor(cfg)
    for name, p in predictor.model.state_dict().items():
        assert torch.equal(p, model.state_dict()[name]), name  # MODEL.WEIGHTS was loaded
    image = np.random.default_rng(0).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    outputs = predictor(image)
    assert outputs["instances"].image_size == (80, 120)
    assert predictor.metadata.name == "shapes_val"


def test_predictor_flips_to_rgb_when_the_model_wants_rgb(tiny_weights):
    cfg, _ = tiny_weights
    cfg = cfg.clone()
    cfg.INPUT.FORMAT = "RGB"
    predictor = DefaultPredictor(cfg)
    seen = []
    predictor.model.forward = lambda inputs: seen.append(inputs) or [{}]
    image = np.zeros((40, 50, 3), dtype=np.uint8)
    image[..., 0] = 255  # blue, in BGR
    predictor(image)
    tensor = seen[0][0]["image"]
    assert tensor.shape[1:] == (96, 120) and (seen[0][0]["height"], seen[0][0]["width"]) == (40, 50)
    assert tensor[2].min() == 255 and tensor[0].max() == 0  # channel 2 is now blue
    with pytest.raises(ValueError, match="numpy image"):
        predictor(torch.zeros(3, 40, 50))


# ----------------------------------------------------------------------------- trainer


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_trainer_on_missing_cuda_fails_early_suggesting_cpu(tmp_path):
    cfg = toy_cfg(tmp_path)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.MODEL.DEVICE = "cuda"
    with pytest.raises(RuntimeError, match="MODEL.DEVICE cpu"):
        DefaultTrainer(cfg)


def test_default_hooks_in_order(tmp_path):
    cfg = toy_cfg(tmp_path)
    cfg.TEST.VAL_LOSS_PERIOD = 4
    ToyTrainer.build_validation_loss_loader = classmethod(lambda cls, cfg: [])
    try:
        trainer = ToyTrainer(cfg)
    finally:
        del ToyTrainer.build_validation_loss_loader
    assert [type(h) for h in trainer._hooks] == [
        hooks.IterationTimer, hooks.LRScheduler, hooks.PeriodicCheckpointer,
        hooks.ValidationLoss, hooks.EvalHook, hooks.PeriodicWriter]


def _lrs(metrics_file):
    lrs = {}
    with open(metrics_file, encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if "lr" in entry:
                lrs[entry["iteration"]] = entry["lr"]
    return lrs


def _expected_lrs(cfg):
    """The LR of every iteration of an uninterrupted run: the scheduler stepped once per
    iteration from the start."""
    optimizer = torch.optim.SGD(ToyModel().parameters(), lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


class _WriteEveryIteration(ToyTrainer):
    """Writes metrics.json at every iteration, to see each iteration's LR."""

    def build_hooks(self):
        ret = super().build_hooks()
        return ret[:-1] + [hooks.PeriodicWriter(self.build_writers(), period=1)]


def test_trainer_checkpoints_and_resumes_the_schedule(tmp_path):
    """Train 8 iterations; then train 8 more from a checkpoint of iteration 5: the resumed run
    starts at 6 with the optimizer, LR schedule and weights of the checkpoint."""
    cfg = toy_cfg(tmp_path)
    trainer = _WriteEveryIteration(cfg)
    trainer.resume_or_load(resume=True)  # nothing to resume: starts at 0
    assert trainer.start_iter == 0
    trainer.train()
    names = sorted(f for f in os.listdir(tmp_path) if f.endswith(".pth"))
    assert names == ["model_0000002.pth", "model_0000005.pth", "model_final.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    expected = _expected_lrs(cfg)
    assert _lrs(tmp_path / "metrics.json") == dict(enumerate(expected))

    # Resume from iteration 5 into a longer run (same schedule).
    (tmp_path / "last_checkpoint").write_text("model_0000005.pth")
    (tmp_path / "metrics.json").unlink()
    cfg.SOLVER.MAX_ITER = 12
    resumed = _WriteEveryIteration(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6
    saved = torch.load(tmp_path / "model_0000005.pth", weights_only=False)
    assert torch.equal(resumed.model.linear.weight, saved["model"]["linear.weight"])
    resumed.train()
    assert _lrs(tmp_path / "metrics.json") == {i: lr for i, lr in enumerate(_expected_lrs(cfg))
                                               if i >= 6}


class _MarkRunAndCrash(hooks.HookBase):
    """Puts scalar ``run`` (which run wrote a row) at every step; raises at the start of
    iteration ``crash_at``, like a process that dies there."""

    def __init__(self, run, crash_at=None):
        self.run, self.crash_at = run, crash_at

    def before_step(self):
        if self.trainer.iter == self.crash_at:
            raise RuntimeError(f"simulated crash at iteration {self.crash_at}")

    def after_step(self):
        self.trainer.storage.put_scalar("run", self.run, smoothing_hint=False)


class _MarkedRun(ToyTrainer):
    """ToyTrainer writing metrics.json every 2 iterations, with a ``_MarkRunAndCrash`` hook."""

    marker = None

    def build_hooks(self):
        ret = super().build_hooks()
        return [self.marker] + ret[:-1] + [hooks.PeriodicWriter(self.build_writers(), period=2)]


def _metrics_rows(metrics_file):
    with open(metrics_file, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_resumed_run_keeps_one_metrics_row_per_iteration_its_own(tmp_path, engine_log):
    """Checkpoints every 3 iterations, metrics every 2: a run dying at iteration 8 wrote rows
    up to 8 (the console printer's ETA of iteration 8 goes out with the last write), past its
    last checkpoint (5). Resumed at 6, the new run's row 7 replaces the old one instead of
    repeating the iteration."""
    cfg = toy_cfg(tmp_path, MAX_ITER=12)
    _MarkedRun.marker = _MarkRunAndCrash(run=1, crash_at=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _MarkedRun(cfg).train()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000005.pth"
    assert [r["iteration"] for r in _metrics_rows(tmp_path / "metrics.json")] == [1, 3, 5, 7, 8]

    _MarkedRun.marker = _MarkRunAndCrash(run=2)
    resumed = _MarkedRun(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 6
    resumed.train()
    _MarkedRun.marker = None
    rows = _metrics_rows(tmp_path / "metrics.json")
    assert [r["iteration"] for r in rows] == [1, 3, 5, 7, 9, 11]
    assert [r.get("run") for r in rows] == [1, 1, 1, 2, 2, 2]  # from 6 on: the resumed run's
    assert "dropped 2 row(s) of iterations >= 6" in engine_log.text


def test_trainer_without_resume_loads_only_model_weights(tmp_path):
    cfg = toy_cfg(tmp_path / "first", MAX_ITER=3)
    ToyTrainer(cfg).train()
    cfg2 = toy_cfg(tmp_path / "second")
    cfg2.MODEL.WEIGHTS = str(tmp_path / "first" / "model_final.pth")
    trainer = ToyTrainer(cfg2)
    trainer.resume_or_load(resume=False)
    assert trainer.start_iter == 0
    final = torch.load(cfg2.MODEL.WEIGHTS, weights_only=False)
    assert torch.equal(trainer.model.linear.weight, final["model"]["linear.weight"])
    assert trainer.optimizer.state_dict()["state"] == {}  # the optimizer starts afresh


def test_nan_loss_stops_training_and_the_last_checkpoint_stays_loadable(tmp_path):
    cfg = toy_cfg(tmp_path, CHECKPOINT_PERIOD=2)
    ToyTrainer.nan_at_iter = 5
    try:
        trainer = ToyTrainer(cfg)
        with pytest.raises(FloatingPointError, match="iteration=5"):
            trainer.train()
    finally:
        ToyTrainer.nan_at_iter = None
    assert not (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"
    resumed = ToyTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 4
    assert all(torch.isfinite(p).all() for p in resumed.model.parameters())


def test_test_without_evaluators(tmp_path, caplog):
    cfg = toy_cfg(tmp_path)
    cfg.DATASETS.TEST = ("shapes_val",)
    ToyTrainer.build_test_loader = classmethod(lambda cls, cfg, name: [])
    try:
        assert ToyTrainer.test(cfg, ToyModel()) == {}  # no evaluator: skipped with a warning
        with pytest.raises(ValueError, match="one per dataset"):
            ToyTrainer.test(cfg, ToyModel(), evaluators=[object(), object()])
    finally:
        del ToyTrainer.build_test_loader
