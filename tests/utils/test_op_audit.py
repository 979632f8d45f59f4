"""OpAudit: ops and host syncs counted per stage on toy modules whose ops are known by hand,
each sync rule on its own, hook removal, and the tiny Mask R-CNN's stages."""

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from segtron.config import get_cfg
from segtron.modeling import build_model
from segtron.utils.op_audit import MODEL_ROW, OpAudit, default_stages, is_host_sync
from tests.conftest import REPO_ROOT

TINY_MASK_RCNN = REPO_ROOT / "configs" / "Shapes" / "tiny_mask_rcnn_R_50_FPN.yaml"


class ConvReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        return torch.relu(self.conv(x))


class Syncing(nn.Module):
    """One of each: a scalar read, nonzero, a boolean-mask read and torchvision's NMS."""

    def forward(self, x):
        boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1]])
        scores = torch.tensor([0.9, 0.8])
        keep = torchvision.ops.nms(boxes, scores, 0.5)
        return x.sum().item(), x.nonzero(), x[x > 0], keep


class Inner(nn.Module):
    def forward(self, x):
        return x.nonzero()


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()

    def forward(self, x):
        self.inner(x)
        return bool(x.max() > 0)


class Model(nn.Module):
    """``features`` (conv, relu) then ``head`` (outer and its inner), then a scalar read of its
    own, outside every stage."""

    def __init__(self):
        super().__init__()
        self.features = ConvReLU()
        self.head = Outer()

    def forward(self, x):
        y = self.features(x)
        self.head(y)
        return y.mean().item()


def _audit(module, *args, stages=None):
    """The audit of one inference (no autograd: it would add the detach of saved tensors)."""
    with OpAudit(module, stages) as audit, torch.no_grad():
        module(*args)
    return audit


def test_conv_relu_has_its_two_ops_and_no_sync():
    audit = _audit(ConvReLU(), torch.randn(1, 2, 5, 5), stages=[])
    total = audit.total()
    assert total.op_counts == Counter({"aten::convolution": 1, "aten::relu": 1})
    assert (total.ops, total.syncs) == (2, 0)
    assert list(audit.rows()) == [MODEL_ROW]


def test_the_syncs_of_a_module_are_the_ones_it_calls():
    model = nn.Sequential(Syncing())
    audit = _audit(model, torch.tensor([1.0, -1.0, 2.0]))
    row = audit.rows()["0"]
    assert row.sync_counts == Counter({"aten::_local_scalar_dense": 1, "aten::nonzero": 1,
                                       "aten::index": 1, "torchvision::nms": 1})
    assert row.syncs == 4
    # torch.tensor twice, sum and gt: ops, not syncs
    assert row.op_counts["aten::gt"] == 1 and row.op_counts["aten::sum"] == 1
    assert row.ops == row.syncs + 4
    assert MODEL_ROW not in audit.rows()  # nothing ran outside the stage


def test_nested_stages_attribute_to_the_innermost_and_order_is_forward():
    model = Model()
    assert default_stages(model) == ["features", "features.conv", "head", "head.inner"]
    audit = _audit(model, torch.randn(1, 2, 5, 5))
    rows = audit.rows()
    assert list(rows) == ["features", "features.conv", "head", "head.inner", MODEL_ROW]
    assert rows["features.conv"].op_counts == Counter({"aten::convolution": 1})
    assert rows["features"].op_counts == Counter({"aten::relu": 1})
    assert rows["head.inner"].sync_counts == Counter({"aten::nonzero": 1})
    assert rows["head.inner"].ops == 1
    # bool(x.max() > 0): max, gt, then the scalar read
    assert rows["head"].op_counts == Counter({"aten::max": 1, "aten::gt": 1,
                                              "aten::_local_scalar_dense": 1})
    assert rows["head"].syncs == 1
    assert rows[MODEL_ROW].op_counts == Counter({"aten::mean": 1,
                                                 "aten::_local_scalar_dense": 1})
    assert audit.total().ops == sum(r.ops for r in rows.values()) == 8
    assert audit.total().syncs == 3
    assert audit.total("head").syncs == 2 and audit.total("head").ops == 4


def test_views_and_allocations_launch_no_kernel():
    class Views(nn.Module):
        def forward(self, x):
            y = x.view(-1).unsqueeze(0).t()[0]  # view, unsqueeze, t, select
            return torch.empty(3), y + 1

    audit = _audit(Views(), torch.ones(2, 2), stages=[])
    total = audit.total()
    assert (total.ops, total.views, total.kernels, total.syncs) == (6, 5, 1, 0)
    assert audit.as_dict()["total"]["kernels"] == 1


def test_hooks_are_removed_and_counting_stops_on_exit():
    model = Model()
    x = torch.randn(1, 2, 5, 5)
    audit = _audit(model, x)
    before = audit.as_dict()
    model(x)
    assert audit.as_dict() == before
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._forward_hooks_always_called


def test_an_exception_in_a_stage_leaves_no_hooks_and_the_stack_recovers():
    class Failing(nn.Module):
        def forward(self, x):
            x.abs()
            raise RuntimeError("boom")

    class Catching(nn.Module):
        def __init__(self):
            super().__init__()
            self.failing = Failing()

        def forward(self, x):
            try:
                self.failing(x)
            except RuntimeError:
                pass
            return x.neg()  # back in the outer stage

    model = nn.Sequential(Catching())
    audit = _audit(model, torch.ones(2))
    assert audit.rows()["0"].op_counts == Counter({"aten::neg": 1})
    assert audit.rows()["0.failing"].op_counts == Counter({"aten::abs": 1})

    with pytest.raises(ValueError):
        with OpAudit(model):
            raise ValueError("out")
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_unknown_stage_is_named():
    with pytest.raises(KeyError, match="'head.nope'.*features, head"):
        OpAudit(Model(), ["head.nope"])


@pytest.mark.parametrize("call, syncs", [
    (lambda x, m: x[torch.tensor([0, 2])], 0),  # integer indexing
    (lambda x, m: x.masked_fill(m, 0.0), 0),
    (lambda x, m: torch.where(m, x, 0.0), 0),
    (lambda x, m: torch.where(m), 1),  # nonzero
    (lambda x, m: x.masked_select(m), 1),
    (lambda x, m: torch.unique(x), 1),
    (lambda x, m: torch.unique_consecutive(x), 1),
    (lambda x, m: torch.bincount(m.long()), 1),
    (lambda x, m: torch.equal(x, x), 1),
    (lambda x, m: torch.repeat_interleave(m.long()), 1),
    (lambda x, m: torch.repeat_interleave(m.long(), output_size=3), 0),
    (lambda x, m: x.repeat_interleave(2), 0),
    (lambda x, m: x.clone().__setitem__(m, 0.0), 0),  # ATen's masked_fill shortcut
    (lambda x, m: x.clone().__setitem__(m, x[m] * 2), 2),  # the read and the write
    (lambda x, m: x.tolist(), 1),
    (lambda x, m: x.cpu().numpy(), 1),
    (lambda x, m: int(m.sum()), 1),
])
def test_each_sync_rule(call, syncs):
    class Call(nn.Module):
        def forward(self, x):
            return call(x, x > 1)

    audit = _audit(Call(), torch.tensor([1.0, 2.0, 3.0, 2.0]), stages=[])
    assert audit.total().syncs == syncs, audit.total().sync_counts


def test_copies_between_host_and_device_sync_unless_non_blocking():
    cpu = torch.zeros(2)
    to_copy = torch.ops.aten._to_copy.default
    assert is_host_sync(to_copy, (cpu,), {"device": torch.device("cuda")})
    assert not is_host_sync(to_copy, (cpu,), {"device": "cuda", "non_blocking": True})
    assert not is_host_sync(to_copy, (cpu,), {"dtype": torch.float64})
    assert not is_host_sync(to_copy, (cpu,), {"device": "meta"})
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    copy = torch.ops.aten.copy_.default
    assert is_host_sync(copy, (cpu, gpu), {})
    assert is_host_sync(copy, (gpu, cpu), {})
    assert not is_host_sync(copy, (cpu, gpu, True), {})
    assert not is_host_sync(copy, (cpu, torch.ones(2)), {})


def test_table_and_dict():
    audit = _audit(Model(), torch.randn(1, 2, 5, 5))
    lines = audit.table().splitlines()
    assert lines[0].split() == ["stage", "ops", "kernels", "syncs", "which", "syncs"]
    assert [line.split()[0] for line in lines[2:7]] == [
        "features", "features.conv", "head", "head.inner", MODEL_ROW]
    assert lines[5].split() == ["head.inner", "1", "1", "1", "aten::nonzero", "x1"]
    assert lines[-1].split()[:4] == ["total", "8", "8", "3"]
    data = json.loads(json.dumps(audit.as_dict()))
    assert [s["stage"] for s in data["stages"]][-1] == MODEL_ROW
    assert data["total"]["sync_counts"] == {"aten::_local_scalar_dense": 2,
                                            "aten::nonzero": 1}
    head = audit.as_dict("head")
    assert [s["stage"] for s in head["stages"]] == ["head", "head.inner"]
    assert head["total"]["ops"] == 4


@pytest.fixture(scope="module")
def tiny_mask_rcnn_audit():
    cfg = get_cfg()
    cfg.merge_from_file(str(TINY_MASK_RCNN))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # boxes reach the second NMS
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with OpAudit(model) as audit, torch.no_grad():
        model([{"image": image}])
    return audit


def test_tiny_mask_rcnn_stages(tiny_mask_rcnn_audit):
    audit = tiny_mask_rcnn_audit
    rows = audit.rows()
    assert list(rows)[:3] == [MODEL_ROW, "backbone", "backbone.bottom_up"]
    assert rows["backbone"].ops > 0 and rows["backbone"].syncs == 0
    backbone = audit.total("backbone")
    assert backbone.syncs == 0 and backbone.ops > 100  # ResNet-50: 53 convolutions
    assert backbone.op_counts["aten::convolution"] == 53 + 4 + 4  # + FPN lateral, output
    total = audit.total()
    assert total.ops == sum(r.ops for r in rows.values())
    assert total.syncs == sum(r.syncs for r in rows.values())
    assert rows["proposal_generator"].sync_counts["torchvision::nms"] >= 1
    assert rows["roi_heads"].sync_counts["torchvision::nms"] >= 1
    for pooler in ("roi_heads.box_pooler", "roi_heads.mask_pooler"):
        assert rows[pooler].sync_counts["aten::roi_align"] == 0
        assert rows[pooler].op_counts["torchvision::roi_align"] >= 1
