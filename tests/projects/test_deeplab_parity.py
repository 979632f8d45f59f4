"""DeepLab project: Detectron2 output parity on ``golden/deeplab_v3_plus_thin`` (deep stem,
multi-grid res5, ASPP and decoder with depthwise-separable convs), and the import names a
Detectron2 DeepLab script uses."""

import sys

import numpy as np
import pytest

import projects.DeepLab as deeplab_package
from segtron import compat
from tests.modeling.golden import (
    MODES,
    assert_feature_matches,
    assert_input_sizes,
    golden_forward,
    golden_mode,
)

FIXTURE = "golden/deeplab_v3_plus_thin"


@pytest.fixture(scope="module", params=MODES)
def golden(compat_dir, request):
    with golden_mode(request.param):
        # The fixture's image.png is the BGR array the model was fed (its README), although the
        # config says RGB: feed it as stored.
        run = golden_forward(compat_dir / FIXTURE, request.param,
                             deeplab_package.add_deeplab_config, image_format="BGR")
    run["sem_seg"] = run["outputs"][0]["sem_seg"].numpy()
    run["expected"] = run["expected"]["sem_seg"]
    yield run


def test_golden_model_is_the_deeplab_one(golden):
    model = golden["model"]
    assert type(model.sem_seg_head).__name__ == "DeepLabV3PlusHead"
    assert type(model.backbone.stem).__name__ == "DeepLabStem"
    res5_dilations = [block.conv2.dilation[0] for block in model.backbone.res5]
    assert res5_dilations == [2, 4, 8]  # RES5_DILATION 2 x multi-grid (1, 2, 4)


def test_golden_input_sizes(golden):
    assert_input_sizes(golden["images"], golden["summary"])


@pytest.mark.parametrize("level", ["res2", "res5"])
def test_golden_backbone_features(golden, level):
    assert_feature_matches(golden["features"][level], golden["summary"], level)


def test_golden_sem_seg(golden):
    """Logits within 1e-3 of the largest |logit|, argmax equal on >= 99.9% of pixels
    (../shared/compat/README.md)."""
    ours, theirs = golden["sem_seg"], golden["expected"]
    assert ours.shape == theirs.shape == (4, 240, 320)
    assert np.abs(ours - theirs).max() <= 1e-3 * np.abs(theirs).max()
    assert (ours.argmax(0) == theirs.argmax(0)).mean() >= 0.999


def test_importable_under_segtron_and_detectron2_names():
    """One module object, whichever name imports it (so components register once)."""
    import segtron.projects.deeplab as by_segtron_name

    assert by_segtron_name is deeplab_package
    assert sys.modules["projects.DeepLab"] is deeplab_package
    compat.install_detectron2_alias()
    try:
        from detectron2.projects.deeplab import add_deeplab_config, build_lr_scheduler

        assert add_deeplab_config is deeplab_package.add_deeplab_config
        assert build_lr_scheduler is deeplab_package.build_lr_scheduler
    finally:
        compat.uninstall_detectron2_alias()


def test_unknown_project_name_is_explained():
    with pytest.raises(ModuleNotFoundError, match="No project 'no_such_project'.*deeplab"):
        import segtron.projects.no_such_project  # noqa: F401
