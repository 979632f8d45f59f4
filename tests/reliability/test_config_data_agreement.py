"""Every shipped config's NUM_CLASSES agrees with the class lists of its training datasets,
so the check ``build_detection_train_loader`` runs (``segtron.data.train_data_checks``)
neither stops nor warns about a config we ship."""

import argparse
from pathlib import Path
from unittest import mock

import pytest

import train_net
from segtron.data import MetadataCatalog
from segtron.data import train_data_checks
from segtron.data.train_data_checks import check_num_classes, num_classes_keys

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(
    p.relative_to(REPO).as_posix()
    for p in [*REPO.glob("configs/**/*.yaml"), *REPO.glob("projects/*/configs/**/*.yaml")]
)


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_config_num_classes_match_its_training_data(path):
    cfg = train_net.build_config(argparse.Namespace(config_file=str(REPO / path), opts=[]))
    with mock.patch.object(train_data_checks.logger, "warning") as warning:
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
    assert warning.call_count == 0, warning.call_args


def test_the_check_covers_the_shipped_detectors_and_their_datasets():
    """Not vacuous: the shapes configs name a class count the check compares with metadata."""
    compared = set()
    for path in CONFIGS:
        if "Shapes" not in path:
            continue
        cfg = train_net.build_config(argparse.Namespace(config_file=str(REPO / path), opts=[]))
        for key, _, field in num_classes_keys(cfg):
            if all(MetadataCatalog.get(n).get(field) for n in cfg.DATASETS.TRAIN):
                compared.add(key)
    assert compared >= {
        "MODEL.ROI_HEADS.NUM_CLASSES", "MODEL.RETINANET.NUM_CLASSES", "MODEL.FCOS.NUM_CLASSES",
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "MODEL.SSD.NUM_CLASSES", "MODEL.YOLOX.NUM_CLASSES",
    }
