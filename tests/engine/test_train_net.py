"""``train_net.py`` end to end on CPU: the command line, projects, evaluators, two gloo
processes against a single-process evaluation, and kill-and-resume.

The end-to-end runs use the registered ``shapes_train`` / ``shapes_val`` names with small splits
(8 and 4 images of ~128 px) prepared beforehand under a temporary datasets root
(``SEGTRON_DATASETS``): the registered splits use whatever complete split they find there, as
``datasets/prepare_shapes.py --num-train N`` documents for users.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch

from segtron.config import get_cfg
from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.shapes import prepare_shapes_split, register_shapes_instances
from segtron.modeling import build_model
from segtron.solver import build_lr_scheduler
from tests.engine.defaults_toys import restored_process_state

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(REPO, "train_net.py")
TINY_CONFIG = os.path.join(REPO, "configs", "Shapes", "tiny_mask_rcnn_R_50_FPN.yaml")
# Smaller inputs than the tiny config's, every detection kept (so the evaluations compare real
# predictions, even of an untrained model) and a fixed seed.
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
         "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "SEED", "3", "MODEL.DEVICE", "cpu"]

sys.path.insert(0, REPO)
import train_net  # noqa: E402


@pytest.fixture(scope="module")
def shapes_env(tmp_path_factory):
    """Environment for train_net subprocesses: small shapes splits under a temporary root."""
    root = tmp_path_factory.mktemp("datasets")
    prepare_shapes_split(str(root / "shapes"), "train", 8, 0, image_size=128, num_workers=1)
    prepare_shapes_split(str(root / "shapes"), "val", 4, 1, image_size=128, num_workers=1)
    env = dict(os.environ, SEGTRON_DATASETS=str(root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONHASHSEED", None)
    return env


def _run(argv, env, cwd, script=TRAIN_NET, timeout=300):
    result = subprocess.run([sys.executable, script, *argv], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"train_net {argv} failed:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-6000:]}"
    return result


def _metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _written_iterations(output_dir):
    """Iterations whose metrics.json line is complete so far (a run may be mid-write)."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["iteration"] for line in f if line.endswith("\n")]


def _copypaste(log_file):
    """The "copypaste:" result lines of a log (print_csv_format's output)."""
    with open(log_file, encoding="utf-8") as f:
        return [line.split("copypaste:", 1)[1].strip() for line in f if "copypaste:" in line]


# ----------------------------------------------------------------------------- in-process


def test_help_lists_detectron2_flags():
    result = subprocess.run([sys.executable, TRAIN_NET, "--help"], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for flag in ("--config-file", "--resume", "--eval-only", "--num-gpus", "--num-machines",
                 "--machine-rank", "--dist-url", "opts", "--num-machines 2"):
        assert flag in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_on_a_cpu_machine_fails_before_launch_suggesting_cpu(capsys):
    with pytest.raises(RuntimeError, match="MODEL.DEVICE cpu"):
        train_net.invoke_main(["--num-gpus", "2", "--config-file", TINY_CONFIG,
                               "MODEL.DEVICE", "cuda"])


def test_dist_flags_reach_launch(monkeypatch):
    """--dist-timeout (minutes), else DIST.TIMEOUT_MINUTES, becomes launch's timeout;
    --dist-url defaults to a free port."""
    seen = {}
    monkeypatch.setattr(train_net, "launch", lambda main, gpus, **kwargs: seen.update(kwargs))
    common = ["--num-gpus", "2", "--config-file", TINY_CONFIG, "MODEL.DEVICE", "cpu"]
    train_net.invoke_main(["--dist-timeout", "5", *common, "DIST.TIMEOUT_MINUTES", "7"])
    assert seen["timeout"] == timedelta(minutes=5)
    assert (seen["dist_url"], seen["backend"]) == ("auto", "gloo")
    train_net.invoke_main([*common, "DIST.TIMEOUT_MINUTES", "7"])
    assert seen["timeout"] == timedelta(minutes=7)
    train_net.invoke_main(common)
    assert seen["timeout"] == timedelta(minutes=30)
    with pytest.raises(ValueError, match="DIST.TIMEOUT_MINUTES"):
        train_net.invoke_main([*common, "DIST.TIMEOUT_MINUTES", "0"])


def _args(*argv):
    return train_net.default_argument_parser().parse_args(list(argv))


def test_hostile_config_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """A Python tag in the config fails naming the file and tag; nothing runs or starts."""
    marker = tmp_path / "code_ran"
    config = tmp_path / "hostile.yaml"
    config.write_text(f"_BASE_: {TINY_CONFIG}\n"
                      f"OUTPUT_DIR: !!python/object/apply:os.mkdir ['{marker}']\n")
    launched = []
    monkeypatch.setattr(train_net, "launch", lambda *a, **k: launched.append(a))
    with pytest.raises(ValueError) as info:
        train_net.invoke_main(["--config-file", str(config)])
    assert str(config) in str(info.value) and "python/object/apply:os.mkdir" in str(info.value)
    assert not marker.exists() and not launched


def test_unsafe_loading_flags_are_explicit_opt_ins(tmp_path, monkeypatch):
    from segtron.utils.safe_unpickling import UNSAFE_UNPICKLING_ENV

    config = tmp_path / "tagged.yaml"
    config.write_text(f"_BASE_: {TINY_CONFIG}\n"
                      "SOLVER:\n  MAX_ITER: !!python/object/apply:len [[1, 2, 3]]\n")
    with pytest.raises(ValueError, match="--allow-unsafe-yaml"):
        train_net.build_config(_args("--config-file", str(config)))
    cfg = train_net.build_config(_args("--allow-unsafe-yaml", "--config-file", str(config)))
    assert cfg.SOLVER.MAX_ITER == 3

    monkeypatch.setenv(UNSAFE_UNPICKLING_ENV, "0")  # restored after the test
    assert _args("--config-file", str(config)).allow_unsafe_unpickling is False
    assert os.environ[UNSAFE_UNPICKLING_ENV] == "0"
    assert _args("--allow-unsafe-unpickling").allow_unsafe_unpickling is True
    assert os.environ[UNSAFE_UNPICKLING_ENV] == "1"  # inherited by the processes it starts


def test_projects_are_loaded_and_add_their_config_keys():
    assert "projects.simple_mask_head" in [p.__name__ for p in train_net.PROJECTS]
    cfg = train_net.build_config(_args(
        "--config-file", TINY_CONFIG, "MODEL.ROI_MASK_HEAD.NAME", "SimpleMaskHead",
        "MODEL.SIMPLE_MASK_HEAD.DEPTHWISE", "False"))
    assert cfg.MODEL.SIMPLE_MASK_HEAD.DEPTHWISE is False
    head = build_model(cfg).roi_heads.mask_head
    assert type(head).__name__ == "SimpleMaskHead"
    assert train_net.launch_backend(cfg) == "gloo"


def test_simple_mask_head_trains_with_the_standard_loss():
    cfg = train_net.build_config(_args("--config-file", TINY_CONFIG,
                                       "MODEL.ROI_MASK_HEAD.NAME", "SimpleMaskHead"))
    head = build_model(cfg).roi_heads.mask_head
    logits = head.layers(torch.zeros(3, 32, 14, 14))
    assert logits.shape == (3, 5, 28, 28)
    assert any(type(m).__name__ == "DepthwiseSeparableConv2d" for m in head.modules())


def test_load_projects_imports_packages_and_skips_other_entries(tmp_path, monkeypatch):
    plugins = tmp_path / "st_test_plugins"
    (plugins / "alpha").mkdir(parents=True)
    (plugins / "alpha" / "__init__.py").write_text("LOADED = True\n"
                                                   "def add_config(cfg):\n    pass\n")
    (plugins / "not_a_package").mkdir()
    (plugins / "_private").mkdir()
    (plugins / "_private" / "__init__.py").write_text("raise RuntimeError('must not load')\n")
    (plugins / "broken").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        (plugins / "broken" / "__init__.py").write_text("import does_not_exist_anywhere\n")
        with pytest.raises(ImportError, match="project 'broken'"):
            train_net.load_projects(str(plugins))
        (plugins / "broken" / "__init__.py").write_text("")
        modules = train_net.load_projects(str(plugins))
        assert [m.__name__ for m in modules] == ["st_test_plugins.alpha", "st_test_plugins.broken"]
        assert modules[0].LOADED
    finally:
        for name in [n for n in sys.modules if n.startswith("st_test_plugins")]:
            del sys.modules[name]


@pytest.mark.parametrize("metadata,expected", [
    ({"evaluator_type": "sem_seg"}, ["SemSegEvaluator"]),
    ({"evaluator_type": "coco_panoptic_seg", "panoptic_json": "p.json", "panoptic_root": "p"},
     ["COCOPanopticEvaluator"]),
    ({"evaluator_type": "coco_panoptic_seg", "panoptic_json": "p.json", "panoptic_root": "p",
      "sem_seg_root": "s", "json_file": "i.json"},
     ["SemSegEvaluator", "COCOEvaluator", "COCOPanopticEvaluator"]),
    ({"evaluator_type": "pascal_voc"}, ["PascalVOCDetectionEvaluator"]),
    ({"evaluator_type": "lvis"}, ["LVISEvaluator"]),
    ({"evaluator_type": "cityscapes_instance"}, ["CityscapesInstanceEvaluator"]),
    ({"evaluator_type": "cityscapes_sem_seg"}, ["CityscapesSemSegEvaluator"]),
])
def test_evaluators_for_semantic_and_panoptic_datasets(metadata, expected):
    """A "_separated" panoptic dataset (semantic pngs and an instances json) is scored by all
    three evaluators, as Detectron2's train_net does; a "standard" one by PQ alone."""
    MetadataCatalog.get("st_test_seg_eval").set(**metadata)
    try:
        assert [c.__name__ for c in train_net.evaluator_classes("st_test_seg_eval")] == expected
    finally:
        MetadataCatalog.remove("st_test_seg_eval")


def test_unevaluated_test_dataset_fails_at_start_up(tmp_path, monkeypatch):
    """DATASETS.TEST naming a dataset nobody evaluates stops main() before any model is built."""
    MetadataCatalog.get("st_test_cityscapes_like").evaluator_type = "kitti_instance"
    monkeypatch.setattr(train_net.Trainer, "__init__",
                        lambda *a, **k: pytest.fail("built a trainer before checking"))
    args = train_net.default_argument_parser().parse_args([
        "--config-file", TINY_CONFIG, "DATASETS.TEST", "('st_test_cityscapes_like',)",
        "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu",
    ])
    try:
        with restored_process_state(), pytest.raises(
            NotImplementedError, match=r"st_test_cityscapes_like.*'kitti_instance'.*'sem_seg'"
        ):
            train_net.main(args)  # default_setup configures the loggers: put them back
    finally:
        MetadataCatalog.remove("st_test_cityscapes_like")


def test_build_evaluator_by_evaluator_type(tmp_path):
    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    register_shapes_instances("st_test_coco_eval", str(tmp_path / "shapes"), "val", 2, 0,
                              image_size=64)
    DatasetCatalog.register("st_test_weird_eval", lambda: [])
    MetadataCatalog.get("st_test_weird_eval").evaluator_type = "weird"
    try:
        evaluator = train_net.Trainer.build_evaluator(cfg, "st_test_coco_eval")
        assert type(evaluator).__name__ == "COCOEvaluator"
        with pytest.raises(NotImplementedError, match="st_test_weird_eval.*'weird'.*train_net"):
            train_net.Trainer.build_evaluator(cfg, "st_test_weird_eval")
    finally:
        for name in ("st_test_coco_eval", "st_test_weird_eval"):
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)


def test_tta_ap_change_is_logged_per_task_and_dataset(engine_log):
    """One line per task with an AP in both results; one test dataset (tasks at the top) or
    several (tasks under each dataset, whose key gets the "_TTA" suffix)."""
    train_net.log_tta_change(
        {"bbox": {"AP": 40.0, "AP50": 60.0}, "segm": {"AP": 30.0}, "sem_seg": {"mIoU": 5.0}},
        {"bbox_TTA": {"AP": 41.5}, "segm_TTA": {"AP": 29.25}, "sem_seg_TTA": {"mIoU": 6.0}},
    )
    train_net.log_tta_change(
        {"a": {"bbox": {"AP": 10.0}}, "b": {"bbox": {"AP": 20.0}}},
        {"a_TTA": {"bbox": {"AP": 12.0}}, "b_TTA": {"bbox": {"AP": 20.0}}},
    )
    lines = [r.getMessage() for r in engine_log.records if r.name == "segtron.train_net"]
    assert lines == [
        "TTA changes bbox AP from 40.00 to 41.50 (+1.50)",
        "TTA changes segm AP from 30.00 to 29.25 (-0.75)",
        "TTA changes a bbox AP from 10.00 to 12.00 (+2.00)",
        "TTA changes b bbox AP from 20.00 to 20.00 (+0.00)",
    ]


def test_tta_of_an_unsupported_model_fails_before_evaluating(tmp_path, monkeypatch):
    """TEST.AUG.ENABLED with a RetinaNet: a ValueError naming the meta-architecture, raised
    before the plain evaluation runs."""
    monkeypatch.setattr(train_net.Trainer, "test",
                        classmethod(lambda *a, **k: pytest.fail("evaluated before checking")))
    args = train_net.default_argument_parser().parse_args([
        "--eval-only", "--config-file", os.path.join(REPO, "configs", "Shapes",
                                                     "retinanet_R_18_FPN.yaml"),
        "OUTPUT_DIR", str(tmp_path), "MODEL.DEVICE", "cpu", "TEST.AUG.ENABLED", "True",
    ])
    with restored_process_state(), pytest.raises(ValueError, match="MODEL.META_ARCHITECTURE"):
        train_net.main(args)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_two_gloo_processes_train_and_evaluate_like_one(shapes_env, tmp_path):
    """--num-gpus 2 on CPU: 2 gloo processes train (DDP), compute validation losses and
    evaluate; rank 0 alone writes metrics.json; the distributed evaluation equals a 1-process
    --eval-only run of the saved model_final.pth."""
    out = tmp_path / "dist"
    _run(["--num-gpus", "2", "--dist-url", "auto", "--config-file", TINY_CONFIG, *SMALL,
          "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD", "100",
          "TEST.VAL_LOSS_PERIOD", "6"],
         shapes_env, tmp_path)
    assert (out / "log.txt.rank1").exists()
    assert "World size: 2" in (out / "log.txt").read_text()
    assert os.listdir(out).count("metrics.json") == 1
    metrics = _metrics(out)
    train_entries = [m for m in metrics if "total_loss" in m]
    eval_entries = [m for m in metrics if "bbox/AP" in m]
    # One writer: each iteration once (the last one, 11: period 20 > 12 iterations).
    assert [m["iteration"] for m in train_entries] == [11]
    assert len(eval_entries) == 1
    # ValidationLoss ran on both processes (it gathers) at iteration 5 and after training.
    assert [m["iteration"] for m in metrics if "val_total_loss" in m] == [5, 12]
    dist_results = _copypaste(out / "log.txt")
    ap_rows = [line for line in dist_results if line[:1].isdigit()]
    assert len(ap_rows) == 2 and all(row.split(",")[0] != "nan" for row in ap_rows)

    single = tmp_path / "single"
    _run(["--eval-only", "--config-file", TINY_CONFIG, *SMALL, "OUTPUT_DIR", str(single),
          "MODEL.WEIGHTS", str(out / "model_final.pth")], shapes_env, tmp_path)
    assert _copypaste(single / "log.txt") == dist_results
    with open(out / "inference" / "coco_instances_results.json") as f:
        dist_predictions = json.load(f)
    with open(single / "inference" / "coco_instances_results.json") as f:
        single_predictions = json.load(f)
    key = lambda p: (p["image_id"], -p["score"], p["bbox"])  # noqa: E731
    assert len(dist_predictions) == len(single_predictions) > 0
    for a, b in zip(sorted(dist_predictions, key=key), sorted(single_predictions, key=key)):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)


_WRITE_EVERY_ITERATION = '''
"""train_net.py whose Trainer writes metrics.json at every iteration (to see each LR)."""
import sys
sys.path.insert(0, {repo!r})
import train_net
from segtron.engine import hooks


class Trainer(train_net.Trainer):
    def build_hooks(self):
        return [hooks.PeriodicWriter(self.build_writers(), period=1)
                if isinstance(h, hooks.PeriodicWriter) else h for h in super().build_hooks()]


train_net.Trainer = Trainer
if __name__ == "__main__":
    train_net.invoke_main()
'''


def _uninterrupted_lrs(opts):
    """The LR at each iteration of an uninterrupted run with these overrides."""
    cfg = train_net.build_config(_args("--config-file", TINY_CONFIG, *opts))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_complete_checkpoint(shapes_env, tmp_path):
    """SIGKILL once model_0000009.pth is the last checkpoint; --resume continues at iteration
    10 on the uninterrupted LR schedule, ignoring a half-written and a stray checkpoint file."""
    script = tmp_path / "train_every_iter.py"
    script.write_text(_WRITE_EVERY_ITERATION.format(repo=REPO))
    out = tmp_path / "out"
    opts = [*SMALL, "OUTPUT_DIR", str(out), "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "16",
            "SOLVER.CHECKPOINT_PERIOD", "5", "SOLVER.WARMUP_ITERS", "6", "SOLVER.STEPS", "(12,)"]
    argv = [sys.executable, str(script), "--config-file", TINY_CONFIG, *opts]

    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=shapes_env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            last = out / "last_checkpoint"
            # The checkpointer runs before the writer in a step's after_step, so wait for both:
            # model_0000009.pth recorded and iteration 9's metrics line written.
            while not (last.exists() and last.read_text() == "model_0000009.pth"
                       and 9 in _written_iterations(out)):
                assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
                assert time.monotonic() < deadline, "no model_0000009.pth in time"
                time.sleep(0.1)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model_final.pth").exists()
    before = _metrics(out)
    # What a crash mid-save leaves: a partial temp file; plus a corrupt file nobody points to.
    (out / "model_0000014.pth.tmp").write_bytes(b"\x80half-written")
    (out / "model_0000012.pth").write_bytes(b"garbage")

    _run(["--resume", "--config-file", TINY_CONFIG, *opts], shapes_env, tmp_path,
         script=str(script))
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 10" in log
    assert "model_0000009.pth" in log and "model_0000012.pth" not in log
    after = _metrics(out)
    # Each iteration once: rows the killed run wrote past iteration 9 (if any) were dropped.
    assert [m["iteration"] for m in after] == list(range(16))
    expected = _uninterrupted_lrs(opts)
    for entry in before + after:
        assert entry["lr"] == pytest.approx(expected[entry["iteration"]], rel=1e-9, abs=0)
    assert [m["iteration"] for m in before][:10] == list(range(10))
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 15


# -- the training mapper -------------------------------------------------------------------------


def test_semantic_training_resizes_then_crops_to_a_fixed_network_size(monkeypatch):
    """A SemanticSegmentor's training image is resized (shortest edge 50: 100x200 -> 50x100),
    then cropped to INPUT.CROP.SIZE in those pixels, then flipped; the label map follows."""
    import numpy as np

    from segtron.data import detection_utils
    from segtron.data import transforms as T

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (50,), 1000
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", [32, 48]
    mapper = train_net.train_mapper(cfg)
    kinds = [type(a) for a in mapper.augmentations.augs]
    assert kinds == [T.ResizeShortestEdge, T.RandomCrop_CategoryAreaConstraint, T.RandomFlip]
    files = {
        "image.png": np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8),
        "labels.png": np.ones((100, 200, 1), dtype=np.uint8),
    }
    monkeypatch.setattr(detection_utils, "read_image", lambda name, format=None: files[name])
    out = mapper({"file_name": "image.png", "sem_seg_file_name": "labels.png",
                  "height": 100, "width": 200})
    assert tuple(out["image"].shape) == (3, 32, 48)
    assert tuple(out["sem_seg"].shape) == (32, 48) and bool((out["sem_seg"] == 1).all())
    # Any other meta-architecture keeps Detectron2's order: crop first, then resize.
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    kinds = [type(a) for a in train_net.train_mapper(cfg).augmentations.augs]
    assert kinds[:2] == [T.RandomCrop, T.ResizeShortestEdge]


def test_semantic_crop_reads_the_single_category_limit():
    from segtron.data.sem_seg_augmentation import build_sem_seg_train_augmentation

    cfg = get_cfg()
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", [8, 8]
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    crop = build_sem_seg_train_augmentation(cfg)[1]
    assert crop.single_category_max_area == 1.0 and crop.ignored_category == 255
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75   # the DeepLab project's key
    assert build_sem_seg_train_augmentation(cfg)[1].single_category_max_area == 0.75
    cfg.INPUT.CROP.ENABLED = False
    assert len(build_sem_seg_train_augmentation(cfg)) == 2  # resize and flip


_TTA = ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(96, 128)", "TEST.AUG.MAX_SIZE", "160"]


def _tables(log_file):
    """{task: AP} of each "copypaste:" table of a log, in order, as (task, AP) pairs."""
    lines = _copypaste(log_file)
    return [(lines[i].split("Task: ", 1)[1], float(lines[i + 2].split(",")[0]))
            for i in range(len(lines)) if lines[i].startswith("Task: ")]


@pytest.mark.slow
def test_tta_after_training_and_in_eval_only(shapes_env, tmp_path):
    """TEST.AUG.ENABLED: training ends with a plain then a TTA evaluation (``bbox_TTA/AP`` in
    metrics.json, predictions in inference_TTA/); --eval-only of the saved weights logs both
    tables again, with the same numbers, and the AP change of each task."""
    train_dir, eval_dir = tmp_path / "train", tmp_path / "eval"
    _run(["--config-file", TINY_CONFIG, *SMALL, *_TTA, "OUTPUT_DIR", str(train_dir),
          "SOLVER.MAX_ITER", "10", "SOLVER.CHECKPOINT_PERIOD", "100"], shapes_env, tmp_path)
    _run(["--eval-only", "--config-file", TINY_CONFIG, *SMALL, *_TTA, "OUTPUT_DIR",
          str(eval_dir), "MODEL.WEIGHTS", str(train_dir / "model_final.pth")], shapes_env,
         tmp_path)

    with open(os.path.join(shapes_env["SEGTRON_DATASETS"], "shapes", "annotations",
                           "instances_val.json")) as f:
        sizes = {im["id"]: (im["height"], im["width"]) for im in json.load(f)["images"]}
    for out in (train_dir, eval_dir):
        tables = _tables(out / "log.txt")
        assert [task for task, _ in tables] == ["bbox", "segm", "bbox", "segm"]  # plain, TTA
        log = (out / "log.txt").read_text()
        for (task, plain_ap), (_, tta_ap) in zip(tables[:2], tables[2:]):
            change = f"TTA changes {task} AP from {plain_ap:.2f} to {tta_ap:.2f} "
            assert change + f"({tta_ap - plain_ap:+.2f})" in log
        with open(out / "inference_TTA" / "coco_instances_results.json") as f:
            predictions = json.load(f)
        assert len(predictions) > 0
        # Boxes (XYWH) mapped back into the original val images, whatever copy they came from.
        for p in predictions:
            (x, y, w, h), (height, width) = p["bbox"], sizes[p["image_id"]]
            assert x >= 0 and y >= 0 and x + w <= width + 0.01 and y + h <= height + 0.01
    assert _tables(eval_dir / "log.txt") == _tables(train_dir / "log.txt")
    final = _metrics(train_dir)[-1]
    assert final["bbox_TTA/AP"] == pytest.approx(_tables(train_dir / "log.txt")[2][1], abs=1e-4)
    assert final["segm_TTA/AP"] == pytest.approx(_tables(train_dir / "log.txt")[3][1], abs=1e-4)


def test_every_builtin_dataset_has_an_evaluator():
    """Each registered builtin dataset's evaluator_type is scored by train_net.py."""
    import segtron.data.datasets  # noqa: F401  (registers the builtin datasets)

    types = {}
    for name in DatasetCatalog.list():
        evaluator_type = MetadataCatalog.get(name).get("evaluator_type")
        if evaluator_type is not None and not name.startswith("st_test"):
            types[evaluator_type] = name
    assert {"coco", "lvis", "pascal_voc", "cityscapes_instance", "cityscapes_sem_seg",
            "sem_seg", "coco_panoptic_seg"} <= set(types)
    for evaluator_type, name in types.items():
        assert train_net.evaluator_classes(name), (evaluator_type, name)


def test_project_keys_load_without_train_net(tmp_path):
    """A run's config that uses a project's key loads in a process that never imports
    train_net.py, from another working directory (tools and model_cost do that)."""
    import subprocess
    import sys

    (tmp_path / "config.yaml").write_text("MODEL:\n  SEM_SEG_HEAD:\n    PROJECT_CHANNELS: [40]\n")
    code = ("import sys; from segtron.utils.model_cost import load_run_config; "
            f"cfg = load_run_config({str(tmp_path)!r}); "
            "assert 'train_net' not in sys.modules; "
            "print(list(cfg.MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[40]"
