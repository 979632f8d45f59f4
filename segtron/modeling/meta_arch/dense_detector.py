"""The skeleton shared by one-stage ("dense") detectors such as RetinaNet and FCOS.

Detectron2 path: ``detectron2.modeling.meta_arch.dense_detector``.

A dense detector predicts, at every location of every feature level, a fixed number A of
"anchors" (boxes for RetinaNet, points for FCOS), each with K class logits and a box delta.
:class:`DenseDetector` does what does not depend on the model:

- preprocessing (normalise, pad, batch) and feature selection (``head_in_features``);
- the layout change of the head's outputs from (N, A * K, Hi, Wi) to (N, Hi * Wi * A, K),
  matching the anchor generator's location-major order (:func:`permute_to_N_HWA_K`);
- inference decoding: per level, keep scores above a threshold, then the top-k of those, and
  decode their boxes (:meth:`DenseDetector._decode_multi_level_predictions`);
- rescaling the detections to each input's "height" x "width" (``detector_postprocess``);
- the moving average used to normalise losses by the number of foreground anchors.

Subclasses implement :meth:`DenseDetector.forward_training` and
:meth:`DenseDetector.forward_inference`. Inputs and outputs are those of ``GeneralizedRCNN``
(see ``rcnn.py``): ``list[dict]`` in, a loss dict (training) or ``list[{"instances":
Instances}]`` with ``pred_boxes``, ``scores``, ``pred_classes`` (inference) out.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...data.detection_utils import convert_image_to_rgb
from ...layers import batched_nms_topk, sigmoid_focal_loss
from ...structures import Boxes, ImageList, Instances
from ...utils.events import get_event_storage
from ..backbone import Backbone
from ..feature_names import check_in_features
from ..postprocessing import detector_postprocess
from .model_inputs import (
    batch_images,
    device_property,
    input_config,
    output_size,
    register_pixel_stats,
    winograd_conv_property,
)

__all__ = ["DenseDetector", "permute_to_N_HWA_K", "check_num_classes"]

logger = logging.getLogger(__name__)


def permute_to_N_HWA_K(tensor: torch.Tensor, K: int) -> torch.Tensor:
    """Reorder one level's dense prediction from (N, A * K, H, W) to (N, H * W * A, K).

    Channel ``a * K + k`` is value k of anchor a; row ``(y * W + x) * A + a`` of the result is
    anchor a at location (y, x), the anchor generator's order. Works on NCHW and NHWC inputs
    (for NHWC the result is a free view).
    """
    if tensor.dim() != 4:
        if not torch.jit.is_scripting():
            raise ValueError(
                f"permute_to_N_HWA_K expects an (N, A*K, H, W) prediction, got shape "
                f"{tuple(tensor.shape)}."
            )
        raise ValueError("permute_to_N_HWA_K expects an (N, A*K, H, W) prediction.")
    n, channels, height, width = tensor.shape[0], tensor.shape[1], tensor.shape[2], tensor.shape[3]
    if channels % K != 0:
        raise ValueError(
            f"permute_to_N_HWA_K: {channels} channels are not a multiple of K={K} values per "
            "anchor; the head's output channels and the number of classes/anchors disagree."
        )
    tensor = tensor.view(n, channels // K, K, height, width).permute(0, 3, 4, 1, 2)
    return tensor.reshape(n, -1, K)


def check_num_classes(num_classes: int, key: str) -> int:
    """``num_classes`` as an int; ValueError naming the config ``key`` unless it is >= 1."""
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(
            f"{key} = {num_classes!r}: the number of object classes must be an integer >= 1 "
            "(background is not a class here); set it to your dataset's number of classes."
        )
    return int(num_classes)


def _rows_holding_top_scores(scores: torch.Tensor, k: int) -> Optional[torch.Tensor]:
    """Indices (ascending) of the rows of ``scores`` (R, K) that can hold one of its ``k``
    largest entries, or None when that would not narrow the search.

    Exact: if m is the k-th largest row maximum, k rows hold an entry >= m, so the k-th
    largest entry is >= m and every top-k entry lies in a row whose maximum is >= m. With
    R * K in the millions (P3 of an 800x1067 image: 9.8M scores) searching those rows (about
    k, ties included) instead of every entry makes decoding ~10x faster.
    """
    num_rows, num_cols = scores.shape[0], scores.shape[1]
    # Traced graphs search every row: the narrowing's branch and row count would be frozen.
    if torch.jit.is_tracing() or num_rows <= k or num_cols == 1:
        return None
    row_max = scores.amax(dim=1)
    kth = row_max.topk(k, sorted=False).values.min()
    return torch.nonzero(row_max >= kth).squeeze(1)


class DenseDetector(nn.Module):
    """Base class of one-stage detectors: backbone -> per-level dense head -> decoding.

    ``forward(batched_inputs)``: in training returns ``forward_training(images, features,
    predictions, gt_instances)`` (a loss dict); in eval, ``forward_inference(images, features,
    predictions)`` gives one ``Instances`` per image in the network input's resolution, which
    is rescaled to each input's "height" x "width" and returned as
    ``[{"instances": Instances}, ...]``.
    """

    _in_features_key = "head_in_features"
    """How error messages name ``head_in_features`` (subclasses give their config key)."""

    def __init__(
        self,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[Sequence[str]] = None,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vis_period: int = 0,
        input_format: Optional[str] = None,
        channels_last: bool = False,
        winograd_conv: bool = False,
    ):
        """Args:
            backbone: maps the normalised (N, C, H, W) batch to named feature maps.
            head: maps the list of selected feature maps (N, Ci, Hi, Wi) to a tuple of
                per-level prediction lists, e.g. (logits, box deltas).
            head_in_features: names of the backbone outputs given to the head, in level order;
                default: every output, by increasing stride.
            pixel_mean, pixel_std: per-channel normalisation ``(x - mean) / std``.
            vis_period: every this many training iterations, draw the ground truth and the top
                predictions of the first image into the event storage (0: never).
            input_format: channel order of the images (e.g. "BGR"); needed to draw them.
            channels_last: feed the backbone NHWC batches (faster on CPU; float rounding
                differs from Detectron2's), as MODEL.CHANNELS_LAST for the R-CNNs.
            winograd_conv: CPU Winograd / GEMM convolutions outside the bottom-up network
                (MODEL.WINOGRAD_CONV); a settable attribute.
        """
        super().__init__()
        self.backbone = backbone
        self.head = head
        shapes = backbone.output_shape()
        if head_in_features is None:
            head_in_features = sorted(shapes, key=lambda name: shapes[name].stride)
        self.head_in_features = list(head_in_features)
        check_in_features(self.head_in_features, shapes, self._in_features_key)
        unused = sorted(set(shapes) - set(self.head_in_features))
        if unused:
            logger.warning("%s: backbone outputs %s are not used by the head.",
                           type(self).__name__, unused)
        self.vis_period = int(vis_period)
        if self.vis_period > 0 and input_format is None:
            raise ValueError(
                f"{type(self).__name__}: vis_period (VIS_PERIOD) > 0 needs input_format "
                "(INPUT.FORMAT) to draw the images."
            )
        self.input_format = input_format
        self.channels_last = bool(channels_last)
        self.winograd_conv = winograd_conv
        register_pixel_stats(self, pixel_mean, pixel_std)

    @staticmethod
    def _common_config(cfg) -> Dict:
        """The constructor arguments every dense detector reads the same way:
        MODEL.PIXEL_MEAN / PIXEL_STD, VIS_PERIOD, INPUT.FORMAT, MODEL.CHANNELS_LAST,
        MODEL.WINOGRAD_CONV and TEST.DETECTIONS_PER_IMAGE (``max_detections_per_image``)."""
        return {
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "vis_period": cfg.VIS_PERIOD,
            "input_format": cfg.INPUT.FORMAT,
            **input_config(cfg),
        }

    winograd_conv = winograd_conv_property
    device = device_property

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> ImageList:
        """Move each input's "image" to the model's device, normalise it and pad the images
        into one batch (bottom/right zeros, to the backbone's size divisibility)."""
        return batch_images(
            batched_inputs, self.pixel_mean, self.pixel_std, self.backbone.size_divisibility,
            self.backbone.padding_constraints, self.channels_last,
        )

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Args:
            batched_inputs: one dict per image with "image" (C, H, W), optionally "height" /
                "width" (output size), and "instances" (ground truth) in training.

        Returns:
            in training, a dict of scalar losses; in eval, ``[{"instances": Instances}, ...]``
            with ``pred_boxes``, ``scores`` and ``pred_classes`` in each input's output size.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[name] for name in self.head_in_features]
        predictions = self.head(features)

        if self.training:
            if "instances" not in batched_inputs[0]:
                raise ValueError(
                    f"{type(self).__name__} needs ground truth in training: each batched input "
                    "needs an 'instances' field (the DatasetMapper adds it from the dataset's "
                    "annotations); call model.eval() for inference."
                )
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            losses = self.forward_training(images, features, predictions, gt_instances)
            if self.vis_period > 0:
                storage = get_event_storage()
                if storage.iter % self.vis_period == 0:
                    with torch.no_grad():
                        results = self.forward_inference(
                            images, features, [[p.detach() for p in level] for level in predictions]
                        )
                    self.visualize_training(batched_inputs, results)
            return losses

        results = self.forward_inference(images, features, predictions)
        if torch.jit.is_scripting():
            # Scripted models return the raw Instances (network input size), as Detectron2's.
            return results
        processed = []
        for result, item, image_size in zip(results, batched_inputs, images.image_sizes):
            height, width = output_size(item, image_size)
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed

    def forward_training(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], ...],
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """Training losses from the head's predictions and the ground truth; per subclass."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_training().")

    def forward_inference(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], ...],
    ) -> List[Instances]:
        """One ``Instances`` per image in the network input's size; per subclass."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_inference().")

    def _transpose_dense_predictions(
        self, predictions: List[List[torch.Tensor]], dims_per_anchor: List[int]
    ) -> List[List[torch.Tensor]]:
        """Apply :func:`permute_to_N_HWA_K` to every level of every prediction.

        Args:
            predictions: e.g. (logits, deltas), each a list of (N, Ai * K, Hi, Wi) tensors.
            dims_per_anchor: K for each prediction, e.g. [num_classes, 4].

        Returns:
            the same nesting with (N, Hi * Wi * Ai, K) tensors.
        """
        if not torch.jit.is_scripting() and len(predictions) != len(dims_per_anchor):
            raise ValueError(
                f"{type(self).__name__}: the head returned {len(predictions)} predictions but "
                f"{len(dims_per_anchor)} were expected ({list(dims_per_anchor)} values each)."
            )
        return [
            [permute_to_N_HWA_K(x, k) for x in levels]
            for levels, k in zip(predictions, dims_per_anchor)
        ]

    def _ema_update(
        self, name: str, value: float, initial_value: float, momentum: float = 0.9
    ) -> float:
        """Update and return the exponential moving average ``self.<name>``:
        ``new = momentum * old + (1 - momentum) * value``, ``old = initial_value`` on the first
        call.

        Losses of dense detectors are divided by the number of foreground anchors; with a few
        images per batch that count varies a lot, and its moving average trains better.
        """
        old = getattr(self, name, initial_value)
        new = old * momentum + value * (1 - momentum)
        setattr(self, name, new)
        return new

    def _focal_classification_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, alpha: float, gamma: float
    ) -> torch.Tensor:
        """Sigmoid focal loss summed over every class of every anchor not ignored.

        Args:
            logits: (N, R, K) class logits of all anchors.
            labels: (N, R) int labels: a class in [0, K), K for background (all-zero
                targets), -1 for an ignored anchor (no loss).
            alpha, gamma: the focal loss's weights.

        Returns:
            scalar tensor, the sum (callers normalise it).
        """
        num_classes = logits.shape[-1]
        valid = labels >= 0
        # One-hot over K + 1 columns with the background column dropped: background rows are 0.
        targets = F.one_hot(labels[valid], num_classes=num_classes + 1)[:, :-1]
        logits = logits[valid]
        return sigmoid_focal_loss(
            logits, targets.to(logits.dtype), alpha=alpha, gamma=gamma, reduction="sum"
        )

    def _detect_in_image(
        self,
        anchors: List[Boxes],
        pred_scores: List[torch.Tensor],
        pred_deltas: List[torch.Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """The detections of one image: per-level candidates
        (:meth:`_decode_multi_level_predictions` with ``self.test_score_thresh`` and
        ``self.test_topk_candidates``), per-class NMS at ``self.test_nms_thresh``, then the
        first ``self.max_detections_per_image`` by score.

        Args:
            anchors: one ``Boxes`` per level (Ri anchors).
            pred_scores: one (Ri, K) tensor of scores per level.
            pred_deltas: one (Ri, 4) tensor of deltas per level.
            image_size: (h, w) of the network input.
        """
        pred = self._decode_multi_level_predictions(
            anchors,
            pred_scores,
            pred_deltas,
            self.test_score_thresh,
            self.test_topk_candidates,
            image_size,
        )
        keep = batched_nms_topk(
            pred.pred_boxes.tensor,
            pred.scores,
            pred.pred_classes,
            self.test_nms_thresh,
            self.max_detections_per_image,
        )
        return pred[keep]

    def _decode_per_level_predictions(
        self,
        anchors: Boxes,
        pred_scores: torch.Tensor,
        pred_deltas: torch.Tensor,
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """Candidate detections of one level of one image.

        Keeps the (anchor, class) pairs whose score is > ``score_thresh``, then the
        ``topk_candidates`` highest of those, and decodes their boxes from the anchors with
        ``self.box2box_transform``.

        Args:
            anchors: the level's R anchors.
            pred_scores: (R, K) class probabilities.
            pred_deltas: (R, 4) box deltas.
            score_thresh, topk_candidates: the two filters above.
            image_size: (h, w) of the network input.

        Returns:
            ``Instances`` with ``pred_boxes``, ``scores``, ``pred_classes``, by decreasing score.
        """
        num_classes = pred_scores.shape[1]
        rows = _rows_holding_top_scores(pred_scores, topk_candidates)
        if rows is not None:
            pred_scores = pred_scores[rows]
        flat_scores = pred_scores.reshape(-1)
        kept = torch.nonzero(flat_scores > score_thresh).squeeze(1)
        scores = flat_scores[kept]
        if not torch.jit.is_scripting() and torch.jit.is_tracing():
            # Traced: k follows the (dynamic) number of candidates above the threshold.
            num_topk = torch.clamp(torch.as_tensor(scores.shape[0]), max=topk_candidates)
            scores, order = scores.topk(num_topk)
        else:
            scores, order = scores.topk(min(topk_candidates, scores.numel()))
        kept = kept[order]
        anchor_idxs = torch.div(kept, num_classes, rounding_mode="floor")
        classes = kept - anchor_idxs * num_classes
        if rows is not None:
            anchor_idxs = rows[anchor_idxs]
        boxes = self.box2box_transform.apply_deltas(
            pred_deltas[anchor_idxs], anchors.tensor[anchor_idxs]
        )
        return Instances(image_size, pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes)

    def _decode_multi_level_predictions(
        self,
        anchors: List[Boxes],
        pred_scores: List[torch.Tensor],
        pred_deltas: List[torch.Tensor],
        score_thresh: float,
        topk_candidates: int,
        image_size: Tuple[int, int],
    ) -> Instances:
        """:meth:`_decode_per_level_predictions` on every level, concatenated in level order
        (``score_thresh`` and ``topk_candidates`` apply per level)."""
        per_level = [
            self._decode_per_level_predictions(
                anchors_i, scores_i, deltas_i, score_thresh, topk_candidates, image_size
            )
            for anchors_i, scores_i, deltas_i in zip(anchors, pred_scores, pred_deltas)
        ]
        if not torch.jit.is_scripting():
            return Instances.cat(per_level)
        return per_level[0].cat(per_level)  # (the typed Instances of TorchScript)

    def visualize_training(self, batched_inputs: List[Dict], results: List[Instances]) -> None:
        """Put one picture into the event storage: the first image with its ground-truth boxes
        (top) and its 20 highest-scoring predictions (bottom).

        Args:
            batched_inputs: the training batch (the first image is drawn).
            results: ``forward_inference``'s output for the batch (network-input size).
        """
        from ...utils.visualizer import Visualizer  # matplotlib: only when drawing

        max_boxes = 20
        image = batched_inputs[0]["image"]
        image = convert_image_to_rgb(image.permute(1, 2, 0), self.input_format)
        gt = Visualizer(image, None).overlay_instances(
            boxes=batched_inputs[0]["instances"].gt_boxes
        )
        predicted = detector_postprocess(results[0], image.shape[0], image.shape[1])
        boxes = predicted.pred_boxes.tensor.detach().cpu().numpy()[:max_boxes]
        pred = Visualizer(image, None).overlay_instances(boxes=boxes)
        picture = np.vstack((gt.get_image(), pred.get_image())).transpose(2, 0, 1)
        name = f"Top: GT bounding boxes; Bottom: {max_boxes} Highest Scoring Results"
        get_event_storage().put_image(name, torch.from_numpy(picture.copy()))
