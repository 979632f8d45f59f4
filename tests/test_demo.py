"""The CPU quickstart (``make demo``) end to end, shortened: the demo config trains a few
iterations on small shapes splits, evaluates, and the curves and prediction pictures are drawn,
through the Makefile's own ``demo-run`` steps, so a change that breaks the quickstart fails here.
"""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from segtron.config import get_cfg
from segtron.data.datasets.shapes import prepare_shapes_split
from tests.conftest import REPO_ROOT

DEMO_CONFIG = REPO_ROOT / "configs" / "Shapes" / "mask_rcnn_R_18_FPN_demo.yaml"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Run ``make demo-run`` for 4 iterations on 8 train / 4 val images of ~128 px."""
    root = tmp_path_factory.mktemp("datasets")
    prepare_shapes_split(str(root / "shapes"), "train", 8, 0, image_size=128, num_workers=1)
    prepare_shapes_split(str(root / "shapes"), "val", 4, 1, image_size=128, num_workers=1)
    out = tmp_path_factory.mktemp("demo") / "shapes_demo"
    # DEMO_ARGS reaches a shell: values with parentheses are quoted, as a user would.
    overrides = ("SOLVER.MAX_ITER 4 SOLVER.IMS_PER_BATCH 2 SOLVER.WARMUP_ITERS 2 "
                 "INPUT.MIN_SIZE_TRAIN '(128,)' INPUT.MIN_SIZE_TEST 128 "
                 "MODEL.ROI_HEADS.SCORE_THRESH_TEST 0.0 SEED 1")
    env = dict(os.environ, SEGTRON_DATASETS=str(root), OMP_NUM_THREADS="1")
    result = subprocess.run(
        ["make", "--no-print-directory", "demo-run", f"PY={sys.executable}",
         f"DEMO_DIR={out}", f"DEMO_ARGS={overrides}"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=480)
    assert result.returncode == 0, f"make demo-run failed:\n{result.stdout[-4000:]}\n" \
                                   f"{result.stderr[-6000:]}"
    return out, result.stdout + result.stderr


def test_demo_config_is_the_documented_quickstart():
    cfg = get_cfg()
    cfg.merge_from_file(str(DEMO_CONFIG))
    assert cfg.MODEL.MASK_ON and cfg.MODEL.WEIGHTS == ""  # from scratch, nothing to download
    assert cfg.DATASETS.TRAIN == ("shapes_train",) and cfg.DATASETS.TEST == ("shapes_val",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5
    assert cfg.MODEL.DEVICE == "cpu"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "configs/Shapes/mask_rcnn_R_18_FPN_demo.yaml" in makefile


def test_demo_trains_evaluates_and_writes_its_outputs(demo_run):
    out, console = demo_run
    for name in ("metrics.json", "config.yaml", "model_final.pth", "log.txt",
                 "inference/coco_instances_results.json"):
        assert (out / name).is_file(), f"{name} missing from {out}"
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    train = [r for r in records if "total_loss" in r]
    assert train and train[-1]["iteration"] == 3
    final = records[-1]
    for key in ("bbox/AP", "segm/AP"):
        assert key in final and 0.0 <= final[key] <= 100.0
    predictions = json.loads((out / "inference/coco_instances_results.json").read_text())
    assert predictions and {"image_id", "category_id", "bbox", "score",
                            "segmentation"} <= set(predictions[0])


def test_demo_console_shows_progress_and_coco_tables(demo_run):
    _, console = demo_run
    for text in ("eta:", "iter: 3", "total_loss:", "lr:", "Evaluation results for bbox",
                 "Evaluation results for segm", "copypaste: Task: segm"):
        assert text in console, f"'{text}' not in the demo's console output"


def test_demo_draws_curves_and_predictions(demo_run):
    out, console = demo_run
    for name, min_size in (("curves.png", (600, 300)), ("predictions.png", (256, 128))):
        path = out / name
        assert path.is_file(), f"{name} not written"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
            # A picture, not a blank canvas: many distinct colours.
            assert len(set(image.convert("RGB").resize((64, 64)).getdata())) > 50
    assert "predictions.png" in console and "curves.png" in console
