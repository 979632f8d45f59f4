"""segtron.model_zoo: config lookup (checkout and pip-installed), model-zoo URLs, get()."""

import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from iopath.common.file_io import HTTPURLHandler

import segtron.modeling
from segtron import model_zoo
from segtron.model_zoo.model_zoo import _ModelZooUrls

from ..checkpoint.tiny_models import TINY, TinyDetector, randomize

REPO = Path(__file__).resolve().parents[2]
D2 = "https://dl.fbaipublicfiles.com/detectron2/"

# Detectron2's model zoo (detectron2/model_zoo/model_zoo.py): the released weights of every
# YAML config that has some, as "<model id>/model_final_<hash>.pkl".
URLS = {
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml": "137257644/model_final_721ade.pkl",
    "COCO-Detection/faster_rcnn_R_50_DC5_1x.yaml": "137847829/model_final_51d356.pkl",
    "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml": "137257794/model_final_b275ba.pkl",
    "COCO-Detection/faster_rcnn_R_50_C4_3x.yaml": "137849393/model_final_f97cb7.pkl",
    "COCO-Detection/faster_rcnn_R_50_DC5_3x.yaml": "137849425/model_final_68d202.pkl",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml": "137849458/model_final_280758.pkl",
    "COCO-Detection/faster_rcnn_R_101_C4_3x.yaml": "138204752/model_final_298dad.pkl",
    "COCO-Detection/faster_rcnn_R_101_DC5_3x.yaml": "138204841/model_final_3e0943.pkl",
    "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml": "137851257/model_final_f6e8b1.pkl",
    "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml": "139173657/model_final_68b088.pkl",
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml": "190397773/model_final_bfca0b.pkl",
    "COCO-Detection/retinanet_R_50_FPN_3x.yaml": "190397829/model_final_5bd44e.pkl",
    "COCO-Detection/retinanet_R_101_FPN_3x.yaml": "190397697/model_final_971ab9.pkl",
    "COCO-Detection/rpn_R_50_C4_1x.yaml": "137258005/model_final_450694.pkl",
    "COCO-Detection/rpn_R_50_FPN_1x.yaml": "137258492/model_final_02ce48.pkl",
    "COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml": "137635226/model_final_e5f7ce.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml": "137259246/model_final_9243eb.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_1x.yaml": "137260150/model_final_4f86c3.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": "137260431/model_final_a54504.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x.yaml": "137849525/model_final_4ce675.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_DC5_3x.yaml": "137849551/model_final_84107b.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml": "137849600/model_final_f10217.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x.yaml": "138363239/model_final_a2914c.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_DC5_3x.yaml": "138363294/model_final_0464b7.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml": "138205316/model_final_a3ec72.pkl",
    "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml":
        "139653917/model_final_2d9806.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml": "137261548/model_final_04e291.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml": "137849621/model_final_a6e10b.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml": "138363331/model_final_997cc7.pkl",
    "COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml": "139686956/model_final_5ad38f.pkl",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml": "139514544/model_final_dbfeb4.pkl",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml": "139514569/model_final_c10459.pkl",
    "COCO-PanopticSegmentation/panoptic_fpn_R_101_3x.yaml": "139514519/model_final_cafdb1.pkl",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": "144219072/model_final_571f7c.pkl",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml": "144219035/model_final_824ab5.pkl",
    "LVISv0.5-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml":
        "144219108/model_final_5e3439.pkl",
    "Cityscapes/mask_rcnn_R_50_FPN.yaml": "142423278/model_final_af9cf5.pkl",
    "PascalVOC-Detection/faster_rcnn_R_50_C4.yaml": "142202221/model_final_b1acc2.pkl",
    "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml": "138602867/model_final_65c703.pkl",
    "Misc/mask_rcnn_R_50_FPN_3x_dconv_c3-c5.yaml": "144998336/model_final_821d0b.pkl",
    "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml": "138602847/model_final_e9d89b.pkl",
    "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml": "144998488/model_final_480dd8.pkl",
    "Misc/mask_rcnn_R_50_FPN_3x_syncbn.yaml": "169527823/model_final_3b3c51.pkl",
    "Misc/mask_rcnn_R_50_FPN_3x_gn.yaml": "138602888/model_final_dc5d9e.pkl",
    "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml": "138602908/model_final_01ca85.pkl",
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml": "183808979/model_final_da7b4c.pkl",
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn.yaml": "184226666/model_final_5ce33e.pkl",
    "Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x.yaml": "139797668/model_final_be35db.pkl",
    "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv.yaml":
        "18131413/model_0039999_e76410.pkl",
    "Detectron1-Comparisons/faster_rcnn_R_50_FPN_noaug_1x.yaml": "137781054/model_final_7ab50c.pkl",
    "Detectron1-Comparisons/mask_rcnn_R_50_FPN_noaug_1x.yaml": "137781281/model_final_62ca52.pkl",
    "Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x.yaml": "137781195/model_final_cce136.pkl",
}

# Detectron2's YAML configs without released weights (its other configs are LazyConfig .py
# files: common/, new_baselines/, Misc/torchvision_imagenet_R_50.py, ...; not shipped).
WITHOUT_WEIGHTS = [
    "Base-RCNN-C4.yaml",
    "Base-RCNN-DilatedC5.yaml",
    "Base-RCNN-FPN.yaml",
    "Base-RetinaNet.yaml",
    "COCO-Keypoints/Base-Keypoint-RCNN-FPN.yaml",
    "COCO-PanopticSegmentation/Base-Panoptic-FPN.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_101_FPN_1x.yaml",
    "LVISv1-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_1x.yaml",
    "Misc/mask_rcnn_R_50_FPN_1x_cls_agnostic.yaml",
    "Misc/semantic_R_50_FPN_1x.yaml",
    "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml",
] + [
    f"quick_schedules/{name}.yaml"
    for name in (
        "cascade_mask_rcnn_R_50_FPN_inference_acc_test",
        "cascade_mask_rcnn_R_50_FPN_instant_test",
        "fast_rcnn_R_50_FPN_inference_acc_test",
        "fast_rcnn_R_50_FPN_instant_test",
        "keypoint_rcnn_R_50_FPN_inference_acc_test",
        "keypoint_rcnn_R_50_FPN_instant_test",
        "keypoint_rcnn_R_50_FPN_normalized_training_acc_test",
        "keypoint_rcnn_R_50_FPN_training_acc_test",
        "mask_rcnn_R_50_C4_GCV_instant_test",
        "mask_rcnn_R_50_C4_inference_acc_test",
        "mask_rcnn_R_50_C4_instant_test",
        "mask_rcnn_R_50_C4_training_acc_test",
        "mask_rcnn_R_50_DC5_inference_acc_test",
        "mask_rcnn_R_50_FPN_inference_acc_test",
        "mask_rcnn_R_50_FPN_instant_test",
        "mask_rcnn_R_50_FPN_pred_boxes_training_acc_test",
        "mask_rcnn_R_50_FPN_training_acc_test",
        "panoptic_fpn_R_50_inference_acc_test",
        "panoptic_fpn_R_50_instant_test",
        "panoptic_fpn_R_50_training_acc_test",
        "retinanet_R_50_FPN_inference_acc_test",
        "retinanet_R_50_FPN_instant_test",
        "rpn_R_50_FPN_inference_acc_test",
        "rpn_R_50_FPN_instant_test",
        "semantic_R_50_FPN_inference_acc_test",
        "semantic_R_50_FPN_instant_test",
        "semantic_R_50_FPN_training_acc_test",
    )
]
DETECTRON2_CONFIGS = sorted(URLS) + WITHOUT_WEIGHTS


def test_detectron2_config_list():
    assert len(URLS) == 52 and len(WITHOUT_WEIGHTS) == 40
    assert len(set(DETECTRON2_CONFIGS)) == len(DETECTRON2_CONFIGS) == 92


@pytest.mark.parametrize("config", DETECTRON2_CONFIGS)
def test_every_detectron2_config_is_shipped(config):
    path = Path(model_zoo.get_config_file(config))
    assert path.is_file() and path.as_posix().endswith("configs/" + config)
    assert config in model_zoo.list_configs()
    if config in URLS:
        assert model_zoo.get_checkpoint_url(config).endswith(URLS[config])
    else:
        with pytest.raises(RuntimeError, match="No pretrained model-zoo weights"):
            model_zoo.get_checkpoint_url(config)


def test_url_table_is_detectron2s():
    """The package's table holds exactly Detectron2's YAML entries, nothing more (its .py
    new_baselines entries: tests/model_zoo/test_lazy_configs.py)."""
    yaml_entries = {k for k in _ModelZooUrls.CONFIG_PATH_TO_URL_SUFFIX
                    if not k.startswith("new_baselines/")}
    assert {f"{k}.yaml" for k in yaml_entries} == set(URLS)


@pytest.mark.parametrize("config", sorted(URLS))
def test_checkpoint_urls(config):
    expected = D2 + config[: -len(".yaml")] + "/" + URLS[config]
    assert model_zoo.get_checkpoint_url(config) == expected
    assert model_zoo.get_config(config, trained=True).MODEL.WEIGHTS == expected


def test_every_url_has_a_shipped_config():
    for config in _ModelZooUrls.config_files():
        assert Path(model_zoo.get_config_file(config)).is_file()


def test_no_url_for_base_configs():
    with pytest.raises(RuntimeError, match="No pretrained model-zoo weights.*Base-RCNN-FPN"):
        model_zoo.get_checkpoint_url("Base-RCNN-FPN.yaml")


def test_get_config_file_in_checkout():
    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
    assert Path(path) == REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_3x.yaml"
    assert "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml" in model_zoo.list_configs()


def test_missing_config_lists_closest():
    with pytest.raises(RuntimeError) as e:
        model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_2x.yaml")
    msg = str(e.value)
    assert "mask_rcnn_R_50_FPN_2x.yaml" in msg and "not available" in msg
    assert "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml" in msg


def test_get_config_untrained_keeps_imagenet_weights():
    cfg = model_zoo.get_config("COCO-Detection/retinanet_R_50_FPN_1x.yaml")
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet"


@pytest.fixture
def fake_download(tmp_path, monkeypatch):
    """Serve https:// downloads from local files: url -> path registered in the returned dict."""
    served = {}

    def get_local_path(self, path, force=False, **kwargs):
        if path not in served:
            raise AssertionError(f"unexpected download of {path}")
        return served[path]

    monkeypatch.setattr(HTTPURLHandler, "_get_local_path", get_local_path)
    return served


def test_get_builds_with_build_model_and_loads_weights(tmp_path, monkeypatch, fake_download):
    source = randomize(TinyDetector(**TINY))
    weights = {k: v.numpy() for k, v in source.state_dict().items()}
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
    config = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
    fake_download[model_zoo.get_checkpoint_url(config)] = str(tmp_path / "model_final.pkl")

    seen = []

    def fake_build_model(cfg):
        seen.append(cfg.clone())
        return TinyDetector(**TINY)

    monkeypatch.setattr(segtron.modeling, "build_model", fake_build_model, raising=False)
    model = model_zoo.get(config, trained=True, device="cpu")
    assert seen[0].MODEL.DEVICE == "cpu" and seen[0].MODEL.WEIGHTS.endswith("model_final_a54504.pkl")
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key

    model_zoo.get(config, trained=True)
    assert seen[1].MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")


# One untrained model per config family (full size, on the CPU): its meta-architecture and
# what sets it apart. tests/test_configs.py builds every config (on the meta device).
FAMILIES = {
    "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml": "GeneralizedRCNN",  # Res5ROIHeads
    "COCO-Detection/rpn_R_50_FPN_1x.yaml": "ProposalNetwork",
    "COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml": "GeneralizedRCNN",  # precomputed proposals
    "COCO-Detection/retinanet_R_101_FPN_3x.yaml": "RetinaNet",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x_giou.yaml": "GeneralizedRCNN",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml": "GeneralizedRCNN",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml": "PanopticFPN",
    "Cityscapes/mask_rcnn_R_50_FPN.yaml": "GeneralizedRCNN",  # starts from a COCO model
    "Detectron1-Comparisons/keypoint_rcnn_R_50_FPN_1x.yaml": "GeneralizedRCNN",
    "LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml": "GeneralizedRCNN",
    "Misc/mask_rcnn_R_50_FPN_1x_dconv_c3-c5.yaml": "GeneralizedRCNN",  # deformable convs
    "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn.yaml": "GeneralizedRCNN",  # GN, no weights
    "PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml": "GeneralizedRCNN",
    "quick_schedules/semantic_R_50_FPN_instant_test.yaml": "SemanticSegmentor",
}
STEM = "backbone.bottom_up.stem.conv1.weight"
@pytest.mark.parametrize("config", sorted(FAMILIES))
def test_get_untrained_builds_and_loads_the_config_weights(config, tmp_path, fake_download):
    """``get(config)`` builds the config's model and loads its MODEL.WEIGHTS (here a stand-in
    file in that URL's format holding one stem weight, served for that URL only)."""
    weights = model_zoo.get_config(config).MODEL.WEIGHTS
    if weights:
        assert weights.startswith("detectron2://"), weights
        value = np.full((64, 3, 7, 7), 0.5, dtype=np.float32)
        if weights.startswith("detectron2://ImageNetPretrained/MSRA/"):
            content = {"conv1_w": value}  # Caffe2 blobs, renamed and matched by suffix
        else:  # a model-zoo model (Cityscapes starts from COCO Mask R-CNN): exact names
            content = {"model": {STEM: value}, "__author__": "Detectron2 Model Zoo"}
        with open(tmp_path / "weights.pkl", "wb") as f:
            pickle.dump(content, f)
        fake_download[D2 + weights[len("detectron2://"):]] = str(tmp_path / "weights.pkl")
    model = model_zoo.get(config, device="cpu")
    assert type(model).__name__ == FAMILIES[config]
    assert model.training
    (stem,) = [v for k, v in model.state_dict().items() if k.endswith("stem.conv1.weight")]
    assert stem.device.type == "cpu"
    assert bool(torch.all(stem == 0.5)) == bool(weights)


def _zoo_pickle_from_shapes(path, shapes):
    weights = {k: np.full(tuple(s), 0.5, dtype=np.float16) for k, s in shapes.items()}
    with open(path, "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f, protocol=4)


@pytest.mark.slow
def test_detectron2_zoo_checkpoint_loads_unchanged(tmp_path, compat_dir, fake_download, caplog, monkeypatch):
    """A Detectron2 model-zoo file (its exact keys and shapes) loads into the model with no report."""
    if not hasattr(segtron.modeling, "build_model"):
        pytest.skip("segtron.modeling.build_model is not written yet")
    for name in ("segtron", "segtron.checkpoint"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    config = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    shapes = json.loads((compat_dir / "d2_state_dict_shapes.json").read_text())[config]
    _zoo_pickle_from_shapes(tmp_path / "zoo.pkl", shapes)
    fake_download[model_zoo.get_checkpoint_url(config)] = str(tmp_path / "zoo.pkl")
    caplog.set_level("INFO", logger="segtron.checkpoint")
    model = model_zoo.get(config, trained=True, device="cpu")
    assert "not found in the checkpoint" not in caplog.text
    assert "not used by the model" not in caplog.text
    assert "Skip loading parameter" not in caplog.text
    key = "backbone.bottom_up.res2.0.conv1.weight"
    assert torch.all(model.state_dict()[key] == 0.5)


def _copy_source_tree(dst: Path) -> None:
    """What a clean clone has that the build needs (no build/, egg-info or caches)."""
    dst.mkdir()
    for name in ("setup.py", "README.md", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "configs")
    shutil.copytree(REPO / "segtron", dst / "segtron", ignore=ignore)
    shutil.copytree(REPO / "configs", dst / "configs", ignore=shutil.ignore_patterns("__pycache__"))


def test_pip_install_ships_the_configs(tmp_path):
    src, target = tmp_path / "src", tmp_path / "site"
    _copy_source_tree(src)
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
           "--disable-pip-version-check", "--quiet", "--target", str(target), "."]
    run = subprocess.run(pip, cwd=src, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    shipped = target / "segtron" / "model_zoo" / "configs"
    for pattern in ("*.yaml", "*.py"):  # YAML and LazyConfig configs
        expected = sorted(p.relative_to(REPO / "configs")
                          for p in (REPO / "configs").rglob(pattern))
        assert sorted(p.relative_to(shipped) for p in shipped.rglob(pattern)) == expected

    probe = (
        "import segtron, segtron.model_zoo as mz\n"
        "print(segtron.__file__)\n"
        "path = mz.get_config_file('COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml')\n"
        "print(path)\n"
        "print(mz.get_config('COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml').MODEL.KEYPOINT_ON)\n"
        "lsj = mz.get_config('new_baselines/mask_rcnn_R_101_FPN_400ep_LSJ.py', trained=True)\n"
        "print(lsj.model.backbone.bottom_up.stages.depth, lsj.train.init_checkpoint)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    module_file, config_file, keypoint_on, depth, lsj_weights = out.stdout.split()
    assert Path(module_file).is_relative_to(target)
    assert Path(config_file) == shipped / "COCO-InstanceSegmentation" / "mask_rcnn_R_50_FPN_1x.yaml"
    assert keypoint_on == "True"
    # A .py config of the installed copy, its relative imports (common/) resolved there too.
    assert depth == "101" and lsj_weights.endswith("42073830/model_final_f96b26.pkl")
