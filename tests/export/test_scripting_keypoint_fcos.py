"""Scripting Keypoint R-CNN and FCOS with ``scripting_with_instances``: the saved TorchScript
file runs in a fresh process and matches the eager model on two images (keypoints and their
heatmaps included), and the keypoint head and decoding script on their own."""

import torch

from segtron.export import scripting_with_instances
from segtron.export.scripting import patch_instances
from segtron.structures import Boxes, Instances, heatmaps_to_keypoints

from .test_onnx_export import _spread_head_scores
from .ts_models import check_scripted, tiny_model

_KEYPOINT_OPTS = ["MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(16, 16)",
                  "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS", "5",
                  "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2"]
_KEYPOINT_FIELDS = {"pred_boxes": Boxes, "pred_classes": torch.Tensor,
                    "pred_keypoints": torch.Tensor, "pred_keypoint_heatmaps": torch.Tensor}


def _assert_same_keypoints(expected: Instances, actual: Instances) -> None:
    """(x, y, score) keypoints within 1e-2 px / 1e-4, heatmap logits within 1e-4."""
    assert expected.pred_keypoints.shape == actual.pred_keypoints.shape
    torch.testing.assert_close(actual.pred_keypoint_heatmaps, expected.pred_keypoint_heatmaps,
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(actual.pred_keypoints[..., :2], expected.pred_keypoints[..., :2],
                               atol=1e-2, rtol=0)
    torch.testing.assert_close(actual.pred_keypoints[..., 2], expected.pred_keypoints[..., 2],
                               atol=1e-4, rtol=0)


def test_scripted_keypoint_rcnn_matches_eager_in_fresh_process(tmp_path):
    model = tiny_model("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", *_KEYPOINT_OPTS)
    pairs = check_scripted(model, tmp_path, ["pred_boxes", "scores", "pred_classes",
                                              "pred_keypoints", "pred_keypoint_heatmaps"])
    for expected, actual in pairs:
        assert expected.pred_keypoint_heatmaps.shape[1:] == (5, 56, 56)
        _assert_same_keypoints(expected, actual)
        # Keypoints lie inside their boxes, whose sides count as at least 1 px (a decoding
        # that ignored the boxes would not).
        low = expected.pred_boxes.tensor[:, None, :2]
        high = low + (expected.pred_boxes.tensor[:, None, 2:] - low).clamp(min=1)
        xy = actual.pred_keypoints[..., :2]
        assert bool((xy >= low - 1e-3).all() and (xy <= high + 1e-3).all())


def test_scripted_fcos_matches_eager_in_fresh_process(tmp_path):
    # GroupNorm(32) in the head: 64 channels keep 2 values per group on the 1x1 P7 map.
    model = _spread_head_scores(tiny_model(
        "COCO-Detection/fcos_R_50_FPN_1x.yaml", "MODEL.FCOS.NUM_CLASSES", "3",
        "MODEL.FCOS.SCORE_THRESH_TEST", "0.05", "MODEL.FPN.OUT_CHANNELS", "64",
    ))
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.head.modules())
    check_scripted(model, tmp_path, ["pred_boxes", "scores", "pred_classes"])


def test_scripted_keypoint_head_matches_eager():
    # As Detectron2's test_keypoint_head_scriptability: the head alone, with Instances.
    model = tiny_model("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml", *_KEYPOINT_OPTS)
    head = model.roi_heads.keypoint_head
    scripted = scripting_with_instances(head, _KEYPOINT_FIELDS)
    with patch_instances(_KEYPOINT_FIELDS) as typed:
        pass
    boxes = [torch.tensor([[2.0, 3.0, 40.5, 30.2], [10.0, 1.0, 12.0, 60.0]]),
             torch.zeros((0, 4)), torch.tensor([[5.0, 5.0, 5.5, 5.2]])]  # no box; sub-pixel box
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, head.conv_fcn1.in_channels, 14, 14, generator=gen)

    def instances(cls):
        return [cls((64, 80), pred_boxes=Boxes(b), pred_classes=torch.zeros(len(b)).long())
                for b in boxes]

    with torch.no_grad():
        expected = head(x, instances(Instances))
        actual = scripted(x, [typed.from_instances(i) for i in instances(Instances)])
    assert [len(i) for i in actual] == [2, 0, 1]
    for want, got in zip(expected, actual):
        _assert_same_keypoints(want, got)
        assert got.pred_keypoints.shape[1:] == (5, 3)


def test_scripted_heatmaps_to_keypoints_matches_eager():
    decode = torch.jit.script(heatmaps_to_keypoints)
    gen = torch.Generator().manual_seed(4)
    maps = torch.randn(3, 2, 8, 8, generator=gen, requires_grad=True)
    rois = torch.tensor([[0.0, 0.0, 10.5, 7.2], [2.0, 3.0, 40.0, 33.0], [1.0, 1.0, 1.5, 1.2]])
    expected = heatmaps_to_keypoints(maps, rois)
    assert not expected.requires_grad  # decoding never builds a graph
    assert torch.equal(decode(maps, rois), expected)
    # The peak of a one-hot map lands in the centre of its cell of the resized box.
    one_hot = torch.full((1, 1, 4, 4), -10.0)
    one_hot[0, 0, 1, 2] = 10.0
    out = decode(one_hot, torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    assert 4.0 <= float(out[0, 0, 0]) <= 6.0 and 2.0 <= float(out[0, 0, 1]) <= 4.0
    assert decode(maps[:0], rois[:0]).shape == (0, 2, 4)
