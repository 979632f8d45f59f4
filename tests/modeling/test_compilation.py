"""MODEL.COMPILE: torch.compile of named submodules, in place.

Dynamo's "eager" backend traces and runs the captured graphs without generating kernels, so
these tests check the plumbing (what is compiled, names kept, the detector still traceable
and trainable) in seconds; the inductor backend's speed is a GPU benchmark's business.
"""

import pytest
import torch

from segtron.config import get_cfg
from segtron.modeling import build_model
from segtron.modeling.compilation import compile_submodules
from segtron.structures import BitMasks, Boxes, Instances
from segtron.utils.events import EventStorage
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "Shapes" / "tiny_mask_rcnn_R_50_FPN.yaml"


def _cfg(**overrides):
    cfg = get_cfg()
    cfg.merge_from_file(str(TINY))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.NORM = "FrozenBN"  # no batch statistics: eager and compiled see one input
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def _batch(size=(64, 96)):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, *size), generator=g).float()}]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compiled_backbone_keeps_names_and_outputs():
    torch.manual_seed(0)
    eager = build_model(_cfg()).eval()
    torch.manual_seed(0)
    compiled = build_model(_cfg(**{"MODEL.COMPILE.ENABLED": True,
                                   "MODEL.COMPILE.BACKEND": "eager"})).eval()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert compiled.backbone._compiled_call_impl is not None
    assert getattr(eager.backbone, "_compiled_call_impl", None) is None
    assert compiled.roi_heads._compiled_call_impl is None  # only what MODULES names
    with torch.no_grad():
        want = eager.backbone(eager.preprocess_image(_batch()).tensor)
        got = compiled.backbone(compiled.preprocess_image(_batch()).tensor)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_compiled_model_trains_one_step():
    torch.manual_seed(0)
    model = build_model(_cfg(**{"MODEL.COMPILE.ENABLED": True,
                                "MODEL.COMPILE.BACKEND": "eager"})).train()
    batch = _batch()
    masks = torch.zeros(1, 64, 96, dtype=torch.bool)
    masks[0, 8:50, 8:40] = True
    batch[0]["instances"] = Instances((64, 96), gt_boxes=Boxes(torch.tensor([[8.0, 8, 40, 50]])),
                                      gt_classes=torch.tensor([1]), gt_masks=BitMasks(masks))
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.fpn")]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_bad_module_names_and_modes_say_which_key():
    with pytest.raises(KeyError, match="MODEL.COMPILE.MODULES.*no submodule 'neck'"):
        build_model(_cfg(**{"MODEL.COMPILE.ENABLED": True,
                            "MODEL.COMPILE.MODULES": "['neck']"}))
    with pytest.raises(ValueError, match="MODEL.COMPILE.MODE: mode 'fastest' is not"):
        build_model(_cfg(**{"MODEL.COMPILE.ENABLED": True, "MODEL.COMPILE.MODE": "fastest"}))
    with pytest.raises(ValueError, match="^mode 'fastest' is not a torch.compile mode"):
        compile_submodules(torch.nn.Linear(2, 2), [""], mode="fastest")
