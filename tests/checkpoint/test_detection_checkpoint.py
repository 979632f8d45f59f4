"""DetectionCheckpointer: every supported file format loads exactly; reports; atomic saving."""

import logging
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from iopath.common.file_io import HTTPURLHandler

import segtron.checkpoint as checkpoint_pkg
from segtron.checkpoint import Checkpointer, DetectionCheckpointer, PeriodicCheckpointer
from segtron.utils.file_io import PathManager

from .tiny_models import TINY, TinyDetector, TinyResNet, assert_same_weights, randomize


def _c2_name(d2_key: str) -> str:
    """Caffe2 (MSRA ImageNet) blob name of a TinyResNet key, written out by hand."""
    module, _, leaf = d2_key.rpartition(".")
    if module == "stem.conv1":
        return "conv1_w"
    if module == "stem.conv1.norm":
        return {"weight": "res_conv1_bn_s", "bias": "res_conv1_bn_b"}[leaf]
    parts = module.split(".")  # resN, i, convK|shortcut[, norm]
    branch = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}[parts[2]]
    base = f"{parts[0]}_{parts[1]}_{branch}"
    if len(parts) == 3:
        return base + "_w"
    return base + {"weight": "_bn_s", "bias": "_bn_b"}[leaf]


def _write_pkl(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return str(path)


@pytest.fixture
def source():
    return randomize(TinyResNet(**TINY))


def test_exports():
    assert set(checkpoint_pkg.__all__) >= {"DetectionCheckpointer", "Checkpointer", "PeriodicCheckpointer"}
    assert issubclass(DetectionCheckpointer, Checkpointer)
    from fvcore.common.checkpoint import PeriodicCheckpointer as FvPeriodic

    assert PeriodicCheckpointer is FvPeriodic


def test_pth_with_model_key_and_extra_data(tmp_path, source):
    torch.save({"model": source.state_dict(), "iteration": 7}, tmp_path / "a.pth")
    target = TinyResNet(**TINY)
    extra = DetectionCheckpointer(target).load(str(tmp_path / "a.pth"))
    assert_same_weights(target, source.state_dict())
    assert extra == {"iteration": 7}


def test_bare_state_dict_pth(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "bare.pth")
    target = TinyResNet(**TINY)
    DetectionCheckpointer(target).load(str(tmp_path / "bare.pth"))
    assert_same_weights(target, source.state_dict())


def test_detectron2_model_zoo_pkl_with_ndarrays(tmp_path, source, ckpt_log):
    weights = {k: v.numpy() for k, v in source.state_dict().items()}
    path = _write_pkl(tmp_path / "model_final.pkl", {"model": weights, "__author__": "Detectron2 Model Zoo"})
    target = TinyResNet(**TINY)
    DetectionCheckpointer(target).load(path)
    assert_same_weights(target, source.state_dict())
    assert "Detectron2 Model Zoo" in ckpt_log.text
    assert "not found in the checkpoint" not in ckpt_log.text


def test_caffe2_imagenet_pkl_into_detector(tmp_path, source, ckpt_log):
    """MSRA-style blob names (BN folded: no running stats) load under backbone.bottom_up.*."""
    blobs = {
        _c2_name(k): v.numpy()
        for k, v in source.state_dict().items()
        if not k.endswith(("running_mean", "running_var"))
    }
    blobs["fc1000_w"] = np.zeros((10, 8), dtype=np.float32)
    blobs["fc1000_b"] = np.zeros((10,), dtype=np.float32)
    blobs["conv1_w_momentum"] = np.zeros((4, 3, 7, 7), dtype=np.float32)
    path = _write_pkl(tmp_path / "R-tiny.pkl", blobs)

    detector = TinyDetector(**TINY)
    DetectionCheckpointer(detector).load(path)
    expected = {
        "backbone.bottom_up." + k: v
        for k, v in source.state_dict().items()
        if not k.endswith(("running_mean", "running_var"))
    }
    assert_same_weights(detector, expected)
    # Folded BN: FrozenBN fills the identity statistics.
    state = detector.state_dict()
    assert torch.equal(state["backbone.bottom_up.stem.conv1.norm.running_var"], torch.ones(4))
    assert torch.equal(state["backbone.bottom_up.res3.0.shortcut.norm.running_mean"], torch.zeros(8))

    text = ckpt_log.text
    assert "Names in Model" in text and "Names in Checkpoint" in text  # the matching table
    assert "res_conv1_bn_{b,s}" in text or "res_conv1_bn_b" in text
    assert "not used by the model" in text and "fc1000" in text  # unexpected-keys table
    assert "momentum" not in text.split("not used by the model")[1]
    # Missing: the predictor, grouped by module; never pixel_mean / pixel_std.
    missing = text.split("not found in the checkpoint")[1]
    assert "roi_heads.box_predictor.cls_score" in missing and "bias, weight" in missing
    assert "pixel_mean" not in missing


def test_caffe2_author_in_detectron2_format_means_caffe2_names(tmp_path, source):
    blobs = {_c2_name(k): v.numpy() for k, v in source.state_dict().items() if "running" not in k}
    path = _write_pkl(tmp_path / "c2.pkl", {"model": blobs, "__author__": "Caffe2"})
    target = TinyResNet(**TINY)
    DetectionCheckpointer(target).load(path)
    assert_same_weights(target, {k: v for k, v in source.state_dict().items() if "running" not in k})


def _torchvision_to_d2(key: str) -> str:
    """Expected Detectron2 name of a torchvision resnet18 key (spelled out independently)."""
    table = {"conv1.weight": "stem.conv1.weight"}
    if key in table:
        return table[key]
    if key.startswith("bn1."):
        return "stem.conv1.norm." + key[4:]
    layer, block, rest = key.split(".", 2)
    stage = f"res{int(layer[len('layer'):]) + 1}"
    rest = (rest.replace("bn1.", "conv1.norm.").replace("bn2.", "conv2.norm.")
            .replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm."))
    return f"{stage}.{block}.{rest}"


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    """torchvision's resnet18 (random values) saved as a bare state dict, once per module."""
    torch.manual_seed(0)
    tv = randomize(torchvision.models.resnet18())
    path = tmp_path_factory.mktemp("tv") / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    return str(path), tv.state_dict()


def test_torchvision_resnet18_state_dict(resnet18_file, ckpt_log):
    path, tv_state = resnet18_file
    target = TinyResNet()  # resnet18 shapes, FrozenBN (no num_batches_tracked)
    DetectionCheckpointer(target).load(path)
    expected = {
        _torchvision_to_d2(k): v
        for k, v in tv_state.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    assert set(expected) == set(target.state_dict())
    assert_same_weights(target, expected)

    text = ckpt_log.text
    assert "Recognised a torchvision ResNet checkpoint" in text
    assert "| res3.0.shortcut.norm.{" in text and "| layer2.0.downsample.1.{" in text  # file names shown
    warnings = [r.getMessage() for r in ckpt_log.records if r.levelno == logging.WARNING]
    hint = [w for w in warnings if "STRIDE_IN_1X1" in w]
    assert hint and "INPUT.FORMAT RGB" in hint[0] and "PIXEL_MEAN" in hint[0] and "PIXEL_STD" in hint[0]
    assert "not used by the model" not in text  # fc and counters dropped
    assert "not found in the checkpoint" not in text


def test_torchvision_into_batchnorm_model_into_detector(resnet18_file, tmp_path):
    path, tv_state = resnet18_file
    torch.save({"model": tv_state, "epoch": 3}, tmp_path / "r18.pth")
    detector = TinyDetector(frozen=False)  # nn.BatchNorm2d: num_batches_tracked are loaded too
    extra = DetectionCheckpointer(detector).load(str(tmp_path / "r18.pth"))
    bottom_up = detector.backbone.bottom_up
    assert torch.equal(bottom_up.res3[0].shortcut.norm.running_var, tv_state["layer2.0.downsample.1.running_var"])
    assert torch.equal(bottom_up.res5[1].conv2.weight, tv_state["layer4.1.conv2.weight"])
    assert bottom_up.stem.conv1.norm.num_batches_tracked == tv_state["bn1.num_batches_tracked"]
    assert extra["epoch"] == 3


def test_missing_and_unexpected_tables(tmp_path, source, ckpt_log):
    state = source.state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("res3.")}
    partial["extra_head.fc.weight"] = torch.zeros(2, 2)
    partial["extra_head.fc.bias"] = torch.zeros(2)
    torch.save({"model": partial}, tmp_path / "partial.pth")
    target = TinyResNet(**TINY)
    DetectionCheckpointer(target).load(str(tmp_path / "partial.pth"))
    assert_same_weights(target, {k: v for k, v in partial.items() if not k.startswith("extra")})

    warnings = [r.getMessage() for r in ckpt_log.records if r.levelno == logging.WARNING]
    missing = next(w for w in warnings if "not found in the checkpoint" in w)
    unexpected = next(w for w in warnings if "not used by the model" in w)
    # One table row per module, leaves grouped.
    # (A plain dict has no state-dict version, so FrozenBN fills its running stats itself.)
    rows = [line for line in missing.splitlines() if line.startswith("| res3")]
    assert len(rows) == 6
    assert any(r.split("|")[1].strip() == "res3.0.shortcut.norm" and r.split("|")[2].strip() == "bias, weight"
               for r in rows)
    assert "res2" not in missing and "stem" not in missing
    assert "extra_head.fc" in unexpected and "bias, weight" in unexpected


def test_shape_mismatch_is_skipped_with_warning(tmp_path, source, ckpt_log):
    state = dict(source.state_dict())
    state["res3.0.conv2.weight"] = torch.zeros(8, 8, 5, 5)
    torch.save({"model": state}, tmp_path / "bad.pth")
    target = TinyResNet(**TINY)
    before = target.res3[0].conv2.weight.detach().clone()
    DetectionCheckpointer(target).load(str(tmp_path / "bad.pth"))
    assert torch.equal(target.res3[0].conv2.weight, before)
    assert_same_weights(target, {k: v for k, v in state.items() if k != "res3.0.conv2.weight"})
    msg = next(r.getMessage() for r in ckpt_log.records if "res3.0.conv2.weight" in r.getMessage()
               and r.levelno == logging.WARNING)
    assert "(8, 8, 5, 5)" in msg and "(8, 8, 3, 3)" in msg


def test_matching_heuristics_query_loads_backbone_into_detector(tmp_path, source):
    torch.save({"model": source.state_dict()}, tmp_path / "backbone.pth")
    detector = TinyDetector(**TINY)
    DetectionCheckpointer(detector).load(str(tmp_path / "backbone.pth") + "?matching_heuristics=True")
    assert_same_weights(detector, {"backbone.bottom_up." + k: v for k, v in source.state_dict().items()})

    with pytest.raises(ValueError, match="Unsupported query"):
        DetectionCheckpointer(detector).load(str(tmp_path / "backbone.pth") + "?foo=1")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DetectionCheckpointer(TinyResNet(**TINY)).load(str(tmp_path / "nope.pth"))


def test_empty_path_loads_nothing():
    assert DetectionCheckpointer(TinyResNet(**TINY)).load("") == {}


def test_detectron2_url_resolves_without_network(tmp_path, source, monkeypatch):
    """detectron2:// goes to Detectron2's https storage; the download is faked here."""
    weights = {k: v.numpy() for k, v in source.state_dict().items()}
    local = _write_pkl(tmp_path / "R-50.pkl", {"model": weights, "__author__": "test"})
    requested = []

    def fake_get_local_path(self, path, force=False, **kwargs):
        requested.append(path)
        return local

    monkeypatch.setattr(HTTPURLHandler, "_get_local_path", fake_get_local_path)
    target = TinyResNet(**TINY)
    DetectionCheckpointer(target).load("detectron2://ImageNetPretrained/MSRA/R-50.pkl")
    assert requested == ["https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/MSRA/R-50.pkl"]
    assert_same_weights(target, source.state_dict())

    requested.clear()
    DetectionCheckpointer(TinyResNet(**TINY)).load("catalog://ImageNetPretrained/MSRA/R-50")
    assert requested == ["https://dl.fbaipublicfiles.com/detectron/ImageNetPretrained/MSRA/R-50.pkl"]


def test_uses_segtron_path_manager_and_save_to_disk_default():
    ckpt = DetectionCheckpointer(TinyResNet(**TINY))
    assert ckpt.path_manager is PathManager
    assert ckpt.save_to_disk is True  # main process
    assert DetectionCheckpointer(TinyResNet(**TINY), save_to_disk=False).save_to_disk is False


def test_save_and_resume_with_optimizer(tmp_path, source):
    opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    saver = DetectionCheckpointer(source, str(tmp_path), optimizer=opt)
    saver.save("model_0000009", iteration=9)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not list(tmp_path.glob("*.tmp"))

    target = TinyResNet(**TINY)
    opt2 = torch.optim.SGD(target.parameters(), lr=0.5, momentum=0.9)
    loader = DetectionCheckpointer(target, str(tmp_path), optimizer=opt2)
    assert loader.has_checkpoint()
    extra = loader.resume_or_load("ignored.pth", resume=True)
    assert extra["iteration"] == 9
    assert opt2.param_groups[0]["lr"] == 0.1
    assert_same_weights(target, source.state_dict())

    # resume=False loads the given path (model only), not the last checkpoint.
    other = randomize(TinyResNet(**TINY))
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    loader.resume_or_load(str(tmp_path / "other.pth"), resume=False)
    assert_same_weights(target, other.state_dict())


def test_save_does_nothing_when_not_saving_to_disk(tmp_path, source):
    DetectionCheckpointer(source, str(tmp_path), save_to_disk=False).save("x")
    DetectionCheckpointer(source, "").save("x")
    assert not list(tmp_path.iterdir())


def test_periodic_checkpointer_works_with_it(tmp_path, source):
    periodic = PeriodicCheckpointer(DetectionCheckpointer(source, str(tmp_path)), period=2, max_iter=4)
    for it in range(4):
        periodic.step(it)
    assert (tmp_path / "model_final.pth").is_file() and (tmp_path / "model_0000001.pth").is_file()
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path, source, monkeypatch):
    saver = DetectionCheckpointer(source, str(tmp_path))
    saver.save("model_0000001", iteration=1)
    good = (tmp_path / "model_0000001.pth").read_bytes()
    saved_state = {k: v.clone() for k, v in source.state_dict().items()}

    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes of a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crashing_save)
    with torch.no_grad():
        source.stem.conv1.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        saver.save("model_0000002", iteration=2)
    monkeypatch.setattr(torch, "save", real_save)

    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    assert not (tmp_path / "model_0000002.pth").exists()
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert saver.get_all_checkpoint_files() == [str(tmp_path / "model_0000001.pth")]

    target = TinyResNet(**TINY)
    extra = DetectionCheckpointer(target, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert_same_weights(target, saved_state)


def test_crash_while_overwriting_same_name_keeps_old_file(tmp_path, source, monkeypatch):
    saver = DetectionCheckpointer(source, str(tmp_path))
    saver.save("model_final", iteration=3)
    good = (tmp_path / "model_final.pth").read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        saver.save("model_final", iteration=4)
    assert (tmp_path / "model_final.pth").read_bytes() == good
    assert not (tmp_path / "model_final.pth.tmp").exists()


def test_bad_checkpoint_name_is_refused(tmp_path, source):
    with pytest.raises(ValueError, match="file name"):
        DetectionCheckpointer(source, str(tmp_path)).save("sub/model")


def test_checkpoint_with_numpy_objects_loads_without_full_unpickling(tmp_path, source, ckpt_log):
    """Old checkpoints may hold numpy arrays and scalars, which torch's tensors-only loader
    refuses; they are on segtron's allowlist, so no full unpickling is needed."""
    torch.save({"model": source.state_dict(), "stats": np.arange(3), "it": np.int64(5)},
               tmp_path / "old.pth")
    target = TinyResNet(**TINY)
    extra = DetectionCheckpointer(target).load(str(tmp_path / "old.pth"))
    assert_same_weights(target, source.state_dict())
    assert extra["stats"].tolist() == [0, 1, 2] and extra["it"] == 5
    assert "full unpickling" not in ckpt_log.text


def test_pathlike_path(tmp_path, source):
    torch.save(source.state_dict(), tmp_path / "p.pth")
    target = TinyResNet(**TINY)
    DetectionCheckpointer(target).load(tmp_path / "p.pth")
    assert_same_weights(target, source.state_dict())
