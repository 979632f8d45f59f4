"""Helpers of the TorchScript export tests: tiny models from model-zoo configs, tracing through
TracingAdapter, running a saved TorchScript file in a fresh process, comparing outputs."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import torch

from segtron import model_zoo
from segtron.export import TracingAdapter, scripting_with_instances
from segtron.export.torchscript import detectron2_export_fields, scriptable_adapter
from segtron.modeling import GeneralizedRCNN, build_model
from segtron.modeling.postprocessing import detector_postprocess
from segtron.structures import Boxes, Instances

# Narrow ResNet-18 + FPN: every meta-architecture builds and runs in well under a second.
TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
]

# Image A traces the model; image B has other content and another size (a padded size whose
# P2 level has fewer anchors than the RPN's PRE_NMS_TOPK_TEST, unlike A's).
IMAGE_A_HW = (64, 96)
IMAGE_B_HW = (56, 60)


def images(seed: int = 1):
    """Images A and B as float (3, H, W) tensors in 0..255 (different random content)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.rand((3, *IMAGE_A_HW), generator=gen) * 255
    b = torch.rand((3, *IMAGE_B_HW), generator=gen) * 255
    return a, b


def tiny_model(config: str, *opts: str, cfg=None, seed: int = 0):
    """Build ``config`` (a model-zoo name, or ``cfg`` when given) with TINY widths and ``opts``
    overrides, random weights from ``seed``, in eval mode."""
    if cfg is None:
        cfg = model_zoo.get_config(config)
    cfg.merge_from_list(TINY + list(opts))
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def trace_and_save(model, image, path: Path, inference_func: Optional[Callable] = None):
    """Trace ``model`` on ``[{"image": image}]`` through a TracingAdapter, save it to ``path``;
    returns the adapter (its ``outputs_schema`` rebuilds outputs)."""
    adapter = TracingAdapter(model, [{"image": image}], inference_func)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
    torch.jit.save(traced, str(path))
    return adapter


_RUNNER = textwrap.dedent(
    """
    import sys
    import torch, torchvision  # torchvision registers the nms / roi_align ops
    model = torch.jit.load(sys.argv[1])
    images = torch.load(sys.argv[2])
    with torch.no_grad():
        outputs = [CALL for image in images]
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("segtron", "detectron2"))
    assert not loaded, loaded
    torch.save(outputs, sys.argv[3])
    """
)


def run_fresh(ts_path: Path, inputs: Sequence[torch.Tensor], workdir: Path,
              call: str = "tuple(model(image))") -> List:
    """Run the saved TorchScript file on each input in a new Python process that imports only
    torch and torchvision (cwd outside the repo, no PYTHONPATH); returns one result per input.

    ``call`` is the Python expression run per input (``model`` and ``image`` in scope): by
    default a traced adapter's flat outputs; a scripted detector takes
    ``model([{"image": image}])[0]``."""
    in_path, out_path = workdir / "inputs.pt", workdir / "outputs.pt"
    torch.save(list(inputs), in_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER.replace("CALL", call), str(ts_path), str(in_path),
         str(out_path)],
        cwd=str(workdir), env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out_path)


def box_iou_diagonal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of mask pairs a[i], b[i] ((N, H, W) bool); 1 where both are empty."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def assert_same_instances(expected: Instances, actual: Instances, hw=None) -> None:
    """Boxes within 1e-2 px, scores within 1e-4, classes equal; masks (pasted into an image of
    ``hw`` = (height, width) by ``detector_postprocess`` when they are per-box) IoU >= 0.99."""
    assert len(expected) == len(actual), (len(expected), len(actual))
    assert len(expected) > 0, "the test needs detections; lower the score threshold"
    torch.testing.assert_close(
        actual.pred_boxes.tensor, expected.pred_boxes.tensor, atol=1e-2, rtol=0)
    torch.testing.assert_close(actual.scores, expected.scores, atol=1e-4, rtol=0)
    assert torch.equal(actual.pred_classes, expected.pred_classes)
    if expected.has("pred_masks"):
        if hw is not None:
            expected = detector_postprocess(expected, *hw)
            actual = detector_postprocess(actual, *hw)
        em, am = expected.pred_masks, actual.pred_masks
        if em.dtype != torch.bool:
            em, am = em.squeeze(1) >= 0.5, am.squeeze(1) >= 0.5
        assert em.shape == am.shape
        assert em.any(), "no mask pixel set; the mask comparison would be vacuous"
        assert float(box_iou_diagonal(em, am).min()) >= 0.99


# The scripted module takes Detectron2's batched inputs: a list of {"image": tensor}.
SCRIPTED_CALL = 'model([{"image": image}])[0]'


def eager_raw(model, image):
    """What the scripted adapter computes, from the eager model: raw detections in the network
    input's resolution (R-CNN: do_postprocess=False; dense: forward_inference)."""
    with torch.no_grad():
        if isinstance(model, GeneralizedRCNN):
            return model.inference([{"image": image}], do_postprocess=False)[0]
        batch = model.preprocess_image([{"image": image}])
        features = model.backbone(batch.tensor)
        features = [features[name] for name in model.head_in_features]
        return model.forward_inference(batch, features, model.head(features))[0]


def as_instances(fields, hw):
    """The scripted output dict of one image as ``Instances`` (``*_boxes`` fields as Boxes)."""
    return Instances(hw, **{k: Boxes(v) if k.endswith("_boxes") else v for k, v in fields.items()})


def check_scripted(model, tmp_path, expected_fields):
    """Script ``model``, run the saved file in a fresh process on images A and B and compare
    with the eager model; returns the (eager, scripted) ``Instances`` of both images."""
    scripted = scripting_with_instances(scriptable_adapter(model), detectron2_export_fields())
    ts_path = tmp_path / "model.ts"
    torch.jit.save(scripted, str(ts_path))
    image_a, image_b = images()
    outputs = run_fresh(ts_path, [image_a, image_b], tmp_path, call=SCRIPTED_CALL)
    pairs = []
    for image, fields, hw in zip((image_a, image_b), outputs, (IMAGE_A_HW, IMAGE_B_HW)):
        assert sorted(fields) == sorted(expected_fields)
        expected, actual = eager_raw(model, image), as_instances(fields, hw)
        # Masks (per-box probabilities) are compared after the same pasting into the image.
        assert_same_instances(expected, actual, hw)
        pairs.append((expected, actual))
    counts = [len(expected) for expected, _ in pairs]
    assert counts[0] != counts[1], counts  # nothing frozen from one image to the other
    return pairs


# Rotated Faster R-CNN (RRPN + RROIHeads): rotated boxes are not TorchScript types, so it
# does not script (nor does Detectron2's).
ROTATED_RCNN_OPTS = [
    "MODEL.MASK_ON", "False", "MODEL.PROPOSAL_GENERATOR.NAME", "RRPN",
    "MODEL.ANCHOR_GENERATOR.NAME", "RotatedAnchorGenerator",
    "MODEL.RPN.BBOX_REG_WEIGHTS", "(1, 1, 1, 1, 1)", "MODEL.ROI_HEADS.NAME", "RROIHeads",
    "MODEL.ROI_BOX_HEAD.POOLER_TYPE", "ROIAlignRotated",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS", "(10, 10, 5, 5, 1)",
]
