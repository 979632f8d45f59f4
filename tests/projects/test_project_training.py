"""Every SSD and YOLOX config, and every config of the shapes detector ablation, trains 10
iterations with train_net.py's Trainer, on a small shapes split at small sizes and (YOLOX) a
tiny width, through the data loader and hooks the config selects: SSD's augmented loader,
YOLOX's mosaic loader, mode switch and weight average.
"""

import argparse
import json
from pathlib import Path

import pytest
import torch

import train_net
from segtron.data import DatasetCatalog, MetadataCatalog
from segtron.data.datasets.shapes import register_shapes_instances
from segtron.engine import hooks
from tests.engine.defaults_toys import restored_process_state

REPO = Path(__file__).resolve().parents[2]
DATASET = "_test_project_training_shapes"
ITERS = 10

SMALL_YOLOX = ["MODEL.YOLOX.WIDTH", "0.125", "MODEL.YOLOX.NUM_CLASSES", "5",
               "INPUT.MOSAIC.SIZE", "[128, 128]", "INPUT.MIN_SIZE_TRAIN", "(96, 128)",
               "INPUT.MAX_SIZE_TRAIN", "160", "MODEL.YOLOX.NO_AUG_ITERS", "4"]
CONFIGS = {
    "projects/SSD/configs/Shapes/ssd_R_18.yaml": ["MODEL.SSD.IMAGE_SIZE", "128"],
    # Batch 1 (VGG-16 has no BatchNorm): full-width VGG-16 at 300 px is the costliest here.
    "projects/SSD/configs/COCO-Detection/ssd300_vgg16.yaml": [
        "MODEL.SSD.NUM_CLASSES", "5", "SOLVER.BASE_LR", "1e-4", "SOLVER.IMS_PER_BATCH", "1"],
    # From random weights instead of ImageNet's (so with trained BatchNorm, not frozen), at a
    # quarter of the width.
    "projects/SSD/configs/COCO-Detection/ssd300_R_50.yaml": [
        "MODEL.SSD.NUM_CLASSES", "5", "MODEL.WEIGHTS", "", "SOLVER.BASE_LR", "1e-4",
        "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", "0",
        "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "16", "MODEL.SSD.RESNET_EXTRA_CHANNELS",
        "[128, 128, 64, 64, 64]"],
    "projects/YOLO/configs/Shapes/yolox_nano.yaml": SMALL_YOLOX,
    "projects/YOLO/configs/COCO-Detection/yolox_nano.yaml": SMALL_YOLOX,
    "projects/YOLO/configs/COCO-Detection/yolox_tiny.yaml": SMALL_YOLOX,
    "projects/YOLO/configs/COCO-Detection/yolox_s.yaml": SMALL_YOLOX,
    # The detector ablation (issue 16's configs), at the shapes configs' own sizes.
    "configs/Shapes/faster_rcnn_R_18_FPN.yaml": [],
    # Issue 19's timm backbone (ConvNeXt-Atto from random weights) under the same detector.
    "configs/Shapes/faster_rcnn_timm_convnext_FPN.yaml": [],
    "configs/Shapes/Detectors/faster_rcnn.yaml": [],
    "configs/Shapes/Detectors/mask_rcnn.yaml": [],
    "configs/Shapes/Detectors/retinanet.yaml": [],
    "configs/Shapes/Detectors/fcos.yaml": [],
    "configs/Shapes/Detectors/ssd.yaml": ["MODEL.SSD.IMAGE_SIZE", "128"],
    "configs/Shapes/Detectors/yolox.yaml": SMALL_YOLOX,
}


@pytest.fixture(scope="module")
def shapes_split(tmp_path_factory):
    """A registered 6-image shapes split of 128-pixel images (5 classes)."""
    root = tmp_path_factory.mktemp("shapes")
    register_shapes_instances(DATASET, str(root), "train", 6, 5, image_size=128)
    try:
        yield DATASET
    finally:
        DatasetCatalog.remove(DATASET)
        MetadataCatalog.remove(DATASET)


def _config(path, extra, output_dir):
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", f"('{DATASET}',)", "DATASETS.TEST", "()",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(ITERS), "SOLVER.STEPS", "()",
            "SOLVER.WARMUP_ITERS", "2", "SOLVER.CHECKPOINT_PERIOD", "1000",
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output_dir), "SEED", "1", *extra]
    return train_net.build_config(argparse.Namespace(config_file=str(REPO / path), opts=opts))


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_project_config_trains_ten_iterations(path, shapes_split, tmp_path):
    cfg = _config(path, CONFIGS[path], tmp_path)
    seen = []
    with restored_process_state():
        trainer = train_net.Trainer(cfg)
        trainer.resume_or_load(resume=False)

        def record():
            model = trainer.model
            mosaic = getattr(trainer.data_loader, "mosaic_dataset", None)
            seen.append((getattr(model, "use_l1_loss", None),
                         None if mosaic is None else mosaic.enabled))

        trainer.register_hooks([hooks.CallbackHook(after_step=lambda _: record())])
        trainer.train()
    assert len(seen) == ITERS
    records = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    last = [r for r in records if "total_loss" in r][-1]
    assert last["iteration"] == ITERS - 1
    assert torch.isfinite(torch.tensor(last["total_loss"]))
    final = torch.load(tmp_path / "model_final.pth", weights_only=False)
    assert ("model_ema" in final) == cfg.MODEL_EMA.ENABLED
    if cfg.DATALOADER.TRAIN_LOADER == "YOLOXMosaicLoader":
        # The last 4 iterations: L1 loss on, mosaic off; before them, the opposite.
        switch = ITERS - cfg.MODEL.YOLOX.NO_AUG_ITERS
        assert seen == [(False, True)] * switch + [(True, False)] * (ITERS - switch)
        assert "loss_l1" in last
