"""What only a CUDA machine can check: structures moving to the GPU and back, an AMP training
step (fp16 autocast + GradScaler), a model on the GPU agreeing with the same weights on the CPU,
a one-process NCCL group, and a training loader with pinned memory.

Every test here needs a CUDA device and is skipped elsewhere, saying so; CI has no GPU, so these
run when a session has a GPU machine lent (see the README's GPU notes).
"""

import contextlib
import copy

import pytest
import torch

from segtron.config import get_cfg
from segtron.engine.train_loop import AMPTrainer
from segtron.modeling import build_model
from segtron.structures import BitMasks, Boxes, ImageList, Instances
from segtron.utils.events import EventStorage
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (none visible to torch here)")

TINY = REPO_ROOT / "configs" / "Shapes" / "tiny_mask_rcnn_R_50_FPN.yaml"


def _tiny_cfg(device):
    cfg = get_cfg()
    cfg.merge_from_file(str(TINY))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.RESNETS.NORM = "FrozenBN"  # no batch statistics: CPU and GPU see one function
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return cfg


def _batch(num_images=2, size=(96, 128), seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
        boxes = torch.tensor([[10.0, 12.0, 50.0, 60.0], [40.0, 30.0, 100.0, 90.0]])
        masks = torch.zeros(2, *size, dtype=torch.bool)
        masks[0, 12:60, 10:50] = True
        masks[1, 30:90, 40:100] = True
        instances = Instances(size, gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 3]),
                              gt_masks=BitMasks(masks))
        batch.append({"image": image, "instances": instances, "height": size[0],
                      "width": size[1]})
    return batch


def test_structures_move_to_the_gpu_and_back():
    boxes = Boxes(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    instances = Instances((8, 8), pred_boxes=boxes, scores=torch.tensor([0.5]),
                          pred_masks=BitMasks(torch.ones(1, 8, 8, dtype=torch.bool)))
    on_gpu = instances.to("cuda")
    assert on_gpu.pred_boxes.tensor.is_cuda and on_gpu.scores.is_cuda
    assert on_gpu.pred_masks.tensor.is_cuda
    back = on_gpu.to("cpu")
    assert torch.equal(back.pred_boxes.tensor, boxes.tensor)
    images = ImageList.from_tensors([torch.ones(3, 5, 7, device="cuda")], size_divisibility=4)
    assert images.tensor.is_cuda and tuple(images.tensor.shape) == (1, 3, 8, 8)


def test_amp_training_step_on_the_gpu():
    """AMPTrainer: fp16 autocast with a GradScaler. A from-scratch model's first float16
    gradients overflow at the scaler's initial scale (65536; measured with float16 autocast on
    the CPU: 2 such steps here, 12 with FrozenBN): each such step is skipped, leaving the weights
    alone, and halves the scale, until a step is taken; then trainable weights move and the
    losses are finite."""
    cfg = _tiny_cfg("cuda")
    # The config's own norm: batch statistics keep activations near 1 (FrozenBN's identity
    # statistics let them grow to ~3e4 from scratch, half float16's range).
    cfg.MODEL.RESNETS.NORM = "naiveSyncBN"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = iter(lambda: _batch(), None)  # the same batch forever
    trainer = AMPTrainer(model, data, optimizer)
    scaler = trainer.grad_scaler
    assert scaler.is_enabled()

    def moved():
        return [n for n, p in model.named_parameters() if p.requires_grad
                and not torch.equal(p.detach(), before[n])]

    with EventStorage(0) as storage:
        trainer.storage = storage
        for step in range(16):  # 16 halvings take the scale from 65536 to 1
            trainer.iter = storage.iter = step
            scale = scaler.get_scale()
            trainer.run_step()
            if scaler.get_scale() == scale:  # no inf / NaN gradient: the optimizer stepped
                break
            assert scaler.get_scale() == scale / 2, (step, scale, scaler.get_scale())
            assert not moved(), f"step {step} was skipped but weights changed"
        else:
            pytest.fail("every AMP step of 16 had non-finite gradients")
        losses = {k: v for k, (v, _) in storage.latest().items() if "loss" in k}
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    assert moved(), f"no weight changed after the AMP step taken at step {step}"


@contextlib.contextmanager
def _float32_without_tf32():
    """CUDA float32 matmuls and cuDNN convolutions in full float32 (torch lets cuDNN use TF32,
    10-bit mantissas, by default), restored on exit."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _calibrate_batch_norm(model, inputs):
    """Set every BatchNorm's running statistics to those of ``inputs`` (one forward of the
    backbone in training mode) and put ``model`` in eval mode: a from-scratch model whose
    activations stay near 1, so its detection scores are spread out, not saturated at 1.0."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model.backbone(model.preprocess_image(inputs).tensor)
    model.eval()


def test_gpu_inference_agrees_with_the_cpu():
    """The same weights on the CPU and the GPU, in float32 (TF32 off): each of the CPU's top 10
    detections is on the GPU too, same class, score within 1e-3, box within 0.1 px.

    Matched by value, not by rank: scores a few 1e-4 apart may swap places across devices. With
    FrozenBN's identity statistics a from-scratch model's scores saturate at 1.0 (ties that each
    device orders its own way), hence BatchNorm set to the input's statistics."""
    torch.manual_seed(0)
    cfg = _tiny_cfg("cpu")
    cfg.MODEL.RESNETS.NORM = "BN"
    cpu_model = build_model(cfg)
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in _batch(1)]
    _calibrate_batch_norm(cpu_model, inputs)
    gpu_model = copy.deepcopy(cpu_model).to("cuda")
    with torch.no_grad(), _float32_without_tf32():
        cpu = cpu_model(inputs)[0]["instances"]
        gpu = gpu_model(inputs)[0]["instances"].to("cpu")
    top = min(10, len(cpu))
    assert top == 10 and len(gpu) > 0
    assert len(set(cpu.scores[:top].tolist())) == top, cpu.scores[:top]  # no saturated ties
    for i in range(top):
        same = ((gpu.pred_classes == cpu.pred_classes[i])
                & ((gpu.scores - cpu.scores[i]).abs() <= 1e-3)
                & ((gpu.pred_boxes.tensor - cpu.pred_boxes.tensor[i]).abs().amax(dim=1) <= 0.1))
        assert same.any(), (f"CPU detection {i} (class {int(cpu.pred_classes[i])}, score "
                            f"{float(cpu.scores[i]):.5f}, box {cpu.pred_boxes.tensor[i].tolist()})"
                            " has no match among the GPU's detections")


def test_one_process_nccl_group():
    import torch.distributed as dist

    from segtron.utils import comm

    store = dist.HashStore()
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        value = torch.ones(3, device="cuda")
        dist.all_reduce(value)
        assert value.tolist() == [1.0, 1.0, 1.0]
        comm.synchronize()
        assert comm.all_gather({"rank": comm.get_rank()}) == [{"rank": 0}]
    finally:
        dist.destroy_process_group()


def test_training_loader_with_pinned_memory():
    from segtron.data import build_detection_train_loader

    dicts = [{"image": torch.zeros(3, 8, 8), "image_id": i} for i in range(4)]
    loader = build_detection_train_loader(dicts, mapper=None, total_batch_size=2,
                                          aspect_ratio_grouping=False, pin_memory=True)
    batch = next(iter(loader))
    assert len(batch) == 2 and all(x["image"].is_pinned() for x in batch)


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "fp16-autocast"])
def test_rcnn_inference_from_cuda_graphs_equals_eager(amp):
    """TEST.CUDA_GRAPHS: the captured call and the replays give eager inference's detections
    bit for bit; an input of another size gets its own graph."""
    torch.manual_seed(0)
    model = build_model(_tiny_cfg("cuda")).eval()
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in _batch(1)]
    other = [{k: v for k, v in x.items() if k != "instances"} for x in _batch(1, (64, 160), 1)]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        model.cuda_graphs = False
        eager = [model(x)[0]["instances"] for x in (inputs, other)]
        model.cuda_graphs = True
        runs = [model(x)[0]["instances"] for x in (inputs, inputs, other, other)]
    assert model.dense_graphs._runner.num_graphs == 2
    for got, want in zip(runs, [eager[0], eager[0], eager[1], eager[1]]):
        assert len(got) == len(want) > 0
        assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
        assert torch.equal(got.scores, want.scores)
        assert torch.equal(got.pred_masks, want.pred_masks)


def test_cuda_graph_replay_outlives_the_anchor_cache():
    """A captured graph owns the anchors it reads: after eager runs on nine other sizes have
    cycled the anchor generator's cache (8 entries), its replay still equals eager inference."""
    torch.manual_seed(0)
    model = build_model(_tiny_cfg("cuda")).eval()
    inputs = [{k: v for k, v in x.items() if k != "instances"} for x in _batch(1)]
    with torch.no_grad():
        want = model(inputs)[0]["instances"]
        model.cuda_graphs = True
        model(inputs)  # captures
        model.cuda_graphs = False
        for width in range(160, 160 + 32 * 9, 32):
            model([{"image": torch.zeros(3, 64, width, device="cuda")}])
        torch.cuda.empty_cache()
        model.cuda_graphs = True
        got = model(inputs)[0]["instances"]
    assert len(got) == len(want) > 0
    assert torch.equal(got.pred_boxes.tensor, want.pred_boxes.tensor)
    assert torch.equal(got.scores, want.scores)
