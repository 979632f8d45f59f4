"""TEST.CUDA_GRAPHS: R-CNN inference through the static / dynamic split of the RPN.

The CUDA capture itself needs a GPU (tests/cuda/test_cuda_graphs.py). Here a stand-in capture
backend "replays" by running the captured function again on the static buffers, which checks
everything around the capture: that the static part reads nothing but its input tensor, that
the dynamic part gets the same proposals, and that graphs are kept per input size.
"""

import copy
import pickle

import pytest
import torch
from torch.utils import _pytree as pytree

from segtron.config import get_cfg
from segtron.modeling import build_model
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "Shapes" / "tiny_mask_rcnn_R_50_FPN.yaml"


def _model(**overrides):
    cfg = get_cfg()
    cfg.merge_from_file(str(TINY))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # many detections: a strict comparison
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _image(height, width, seed):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randint(0, 256, (3, height, width), generator=g).float()}


def _detections(model, inputs):
    with torch.no_grad():
        outs = model(inputs)
    return [o["instances"] for o in outs]


def _assert_same(a, b):
    assert len(a) == len(b) and len(a) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.equal(a.pred_masks, b.pred_masks)


class _ReplayByRerun:
    """A capture backend for CPU tensors: "capture" keeps the function and its static inputs,
    "replay" runs it again on them and writes the results into the captured outputs."""

    def __init__(self):
        self.captures = 0

    def supports(self, device):
        return device.type == "cpu"

    def capture(self, fn, static_inputs, warmup_iters):
        self.captures += 1
        outputs = fn(*static_inputs)

        def replay():
            fresh = pytree.tree_leaves(fn(*static_inputs))
            for kept, new in zip(pytree.tree_leaves(outputs), fresh):
                kept.copy_(new)

        return replay, outputs


def test_split_path_gives_the_eager_detections():
    model = _model()
    inputs = [_image(96, 128, 0), _image(80, 112, 1)]
    eager = _detections(model, inputs)
    model.cuda_graphs = True
    calls = []
    model.proposal_generator.register_forward_hook(lambda *a: calls.append("forward"))
    graphed = _detections(model, inputs)
    assert calls == [], "the RPN's forward ran: inference did not take the split path"
    for a, b in zip(eager, graphed):
        _assert_same(a, b)


def test_replayed_static_part_gives_the_eager_detections_per_input_size():
    model = _model(**{"TEST.CUDA_GRAPHS.ENABLED": True})
    first = [_image(96, 128, 0)]
    eager = {}
    model.cuda_graphs = False
    for seed, size in enumerate([(96, 128), (90, 120), (64, 96)]):
        eager[seed] = _detections(model, [_image(*size, seed)])[0]
    model.cuda_graphs = True
    _detections(model, first)  # creates the runner (a plain call on CPU)
    backend = _ReplayByRerun()
    model.dense_graphs._runner._backend = backend
    for seed, size in enumerate([(96, 128), (90, 120), (64, 96)]):
        _assert_same(_detections(model, [_image(*size, seed)])[0], eager[seed])
    # 96x128 and 90x120 pad to one 96x128 batch (size divisibility 32): one graph for both.
    assert backend.captures == 2
    assert model.dense_graphs._runner.num_graphs == 2


def test_copies_and_pickles_start_without_graphs():
    model = _model(**{"TEST.CUDA_GRAPHS.ENABLED": True})
    _detections(model, [_image(64, 64, 0)])
    assert model.dense_graphs._runner is not None
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.cuda_graphs and clone.dense_graphs._runner is None
        _assert_same(_detections(clone, [_image(64, 64, 0)])[0],
                     _detections(model, [_image(64, 64, 0)])[0])


def test_config_keys_and_their_errors():
    model = _model(**{"TEST.CUDA_GRAPHS.ENABLED": True, "TEST.CUDA_GRAPHS.MAX_SHAPES": 3})
    assert model.cuda_graphs and model.dense_graphs.max_shapes == 3
    assert not _model().cuda_graphs
    with pytest.raises(ValueError, match="TEST.CUDA_GRAPHS.MAX_SHAPES"):
        _model(**{"TEST.CUDA_GRAPHS.MAX_SHAPES": 0})


def test_models_without_a_splittable_proposal_generator_run_as_usual():
    model = _model(**{"TEST.CUDA_GRAPHS.ENABLED": True})
    assert model.dense_graphs.applies(model)
    model.train()
    assert not model.dense_graphs.applies(model)
    model.eval()
    model.proposal_generator = None  # precomputed proposals
    assert not model.dense_graphs.applies(model)
