"""Loading a golden fixture of ``../shared/compat/golden/<name>/`` (see its README): the
config, the fp16-stored weights, and the test image resized as Detectron2 resizes it."""

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from segtron.config import get_cfg
from segtron.data import detection_utils
from segtron.data import transforms as T
from segtron.layers.winograd import winograd_available
from segtron.modeling import build_model
from tests.conftest import lift_winograd_limits

# Detectron2's exact operations; NHWC convolutions with frozen BN folded; and those plus the
# Winograd/GEMM inference convolutions, forced onto every eligible conv of the thin models
# (whose 32-channel FPNs are below the size at which they are chosen by default).
MODES = ["exact", "channels_last", "winograd"]


@contextmanager
def golden_mode(mode: str):
    """Run the body in ``mode``: for "winograd", skip where this torch has no NNPACK and lift
    the size limits so every eligible conv of a thin model uses it."""
    with pytest.MonkeyPatch.context() as patch:
        if mode == "winograd":
            if not winograd_available():
                pytest.skip("this torch build has no NNPACK for this CPU")
            lift_winograd_limits(patch)
        yield


def load_golden_weights(path):
    """The fixture's state dict: float tensors stored as float16 are cast to float32."""
    with np.load(path) as npz:
        out = {}
        for name in npz.files:
            array = npz[name]
            if array.dtype == np.float16:
                array = array.astype(np.float32)
            tensor = torch.from_numpy(array)
            out[name] = tensor
    return out


def golden_model(root: Path, mode: str, add_config=None):
    """(cfg, eval-mode model with the fixture's weights, strictly loaded). ``mode``: "exact"
    (Detectron2's operations), "channels_last" or "winograd" (segtron's faster CPU modes).
    ``add_config(cfg)``, when given, adds a project's keys before the fixture's config is
    merged."""
    cfg = get_cfg()
    if add_config is not None:
        add_config(cfg)
    cfg.merge_from_file(str(root / "config.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CHANNELS_LAST = mode in ("channels_last", "winograd")
    cfg.MODEL.WINOGRAD_CONV = mode == "winograd"
    model = build_model(cfg).eval()
    weights = load_golden_weights(root / "weights_fp16.npz")
    incompatible = model.load_state_dict(weights, strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    return cfg, model


def golden_inputs(root: Path, cfg, image_format=None):
    """The fixture image as batched inputs: resized with ResizeShortestEdge(INPUT.MIN_SIZE_TEST,
    MAX_SIZE_TEST), "height"/"width" the original size. The channel order is ``image_format``
    (default INPUT.FORMAT); "BGR" feeds the stored array as it is, whatever the config says."""
    image = detection_utils.read_image(
        str(root / "image.png"), format=image_format or cfg.INPUT.FORMAT
    )
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    return [{
        "image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1))),
        "height": image.shape[0],
        "width": image.shape[1],
    }]


def golden_forward(root: Path, mode: str, add_config=None, image_format=None) -> dict:
    """Run the fixture's model on its image (call inside ``golden_mode(mode)``): {"mode",
    "root", "cfg", "model", "summary" (summary.json), "expected" (expected.npz as a dict),
    "images" (the preprocessed ImageList), "features" (backbone outputs), "outputs" (the
    model's list of result dicts)}. ``add_config``, ``image_format``: see :func:`golden_model`
    and :func:`golden_inputs`."""
    cfg, model = golden_model(root, mode, add_config)
    batched = golden_inputs(root, cfg, image_format)
    with torch.no_grad():
        images = model.preprocess_image(batched)
        features = model.backbone(images.tensor)
        outputs = model(batched)
    with np.load(root / "expected.npz") as expected:
        expected = dict(expected)
    return {
        "mode": mode, "root": root, "cfg": cfg, "model": model,
        "summary": json.loads((root / "summary.json").read_text()), "expected": expected,
        "images": images, "features": features, "outputs": outputs,
    }


def assert_input_sizes(images, summary) -> None:
    """The resized and the padded network input sizes are the fixture's."""
    assert list(images.image_sizes[0]) == summary["resized_input_hw"]
    assert list(images.tensor.shape[-2:]) == summary["padded_input_hw"]


def assert_feature_matches(feature: torch.Tensor, summary, level: str) -> None:
    """FPN level ``level``: the fixture's shape, and its sum and sum of absolute values within
    1e-4 relative (../shared/compat/README.md)."""
    shape, total, abs_total = summary["features"][level]
    feature = feature.double()
    assert list(feature.shape) == shape
    assert feature.sum().item() == pytest.approx(total, rel=1e-4, abs=1e-4 * abs_total)
    assert feature.abs().sum().item() == pytest.approx(abs_total, rel=1e-4)
