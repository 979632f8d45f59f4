"""SSD (Liu et al., "SSD: Single Shot MultiBox Detector", ECCV 2016): the ``SSD``
meta-architecture, registered as "SSD" in META_ARCH_REGISTRY.

Every image is normalised and resized (bilinear, aspect ratio not kept) to a fixed square
(MODEL.SSD.IMAGE_SIZE, 300); the backbone's maps (MODEL.SSD.IN_FEATURES) each get default
boxes (:class:`~.prior_boxes.PriorBoxGenerator`) and a 3x3-conv head (:class:`~.head.SSDHead`)
predicting K + 1 softmax scores (background first) and 4 deltas per box, coded with
``Box2BoxTransform(MODEL.SSD.BBOX_REG_WEIGHTS)``.

Training (:meth:`SSD.forward_training`): default boxes are matched to the ground truth
(:func:`~.matching.match_priors`), then :func:`~.loss.ssd_losses` gives "loss_cls" (softmax
cross-entropy over the positives and 3x as many hard negatives) and "loss_box_reg" (smooth L1
on the positives' deltas), both per positive.

Inference (:meth:`SSD.forward_inference`): softmax; every box decoded and clipped to the
square; per class, the TOPK_CANDIDATES_TEST best boxes scoring above SCORE_THRESH_TEST; NMS
per class at NMS_THRESH_TEST; the TEST.DETECTIONS_PER_IMAGE best kept. Results are rescaled to
each input's "height" x "width" (by default the size of its "image").

Parity: with :func:`~.torchvision_weights.load_torchvision_ssd300_vgg16` this model computes
torchvision's ``ssd300_vgg16`` (same detections, see tests/projects/test_ssd_parity.py).
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from segtron.config import configurable
from segtron.layers import batched_nms_topk, cat, move_device_like
from segtron.layers.execution import to_input_layout
from segtron.modeling import META_ARCH_REGISTRY
from segtron.modeling.backbone import Backbone, build_backbone
from segtron.modeling.box_regression import Box2BoxTransform
from segtron.modeling.feature_names import check_in_features
from segtron.modeling.meta_arch.dense_detector import DenseDetector, check_num_classes
from segtron.structures import Boxes, ImageList, Instances, pairwise_iou
from segtron.utils.events import put_scalars_if_recording

from .head import SSDHead
from .loss import ssd_losses
from .matching import match_priors
from .prior_boxes import PriorBoxGenerator

__all__ = ["SSD"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class SSD(DenseDetector):
    """SSD: fixed-size resize -> backbone -> :class:`SSDHead` on default boxes -> softmax
    losses with hard negative mining / per-class NMS (module docstring).

    Inputs and outputs are those of every segtron detector: ``forward(list[dict])`` with
    "image" (C, H, W) in INPUT.FORMAT, 0..255, of any size, "instances" (``gt_boxes`` in that
    image's pixels, ``gt_classes`` in [0, K)) in training, optional "height" / "width";
    returns ``{"loss_cls", "loss_box_reg"}`` in training and ``[{"instances": Instances(
    pred_boxes, scores, pred_classes)}]`` in eval.
    """

    _in_features_key = "MODEL.SSD.IN_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        prior_generator: PriorBoxGenerator,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        image_size: int = 300,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        smooth_l1_beta: float = 1.0,
        test_score_thresh: float = 0.01,
        test_topk_candidates: int = 400,
        test_nms_thresh: float = 0.45,
        max_detections_per_image: int = 200,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vis_period: int = 0,
        input_format: Optional[str] = "RGB",
        channels_last: bool = False,
        winograd_conv: bool = False,
    ):
        """Args:
            backbone: e.g. ``build_ssd_vgg_backbone``.
            head: maps the selected features to (logits: m tensors (N, A_k * (K + 1), H_k,
                W_k), deltas: m tensors (N, A_k * 4, H_k, W_k)), e.g. :class:`SSDHead`.
            head_in_features: the backbone outputs given to the head, finest first.
            prior_generator: the default boxes of those maps.
            box2box_transform: the coding of the deltas (weights (10, 10, 5, 5)).
            num_classes: K, object classes without background.
            image_size: side of the square every image is resized to.
            iou_threshold: IoU a default box needs with a ground truth to be positive.
            neg_pos_ratio: hard negatives per positive in the classification loss.
            smooth_l1_beta: beta of the smooth-L1 box loss.
            test_score_thresh: inference keeps (box, class) scores above this.
            test_topk_candidates: inference keeps at most this many candidates per class.
            test_nms_thresh: IoU threshold of the per-class NMS.
            max_detections_per_image: detections kept per image after NMS.
            pixel_mean, pixel_std, vis_period, input_format, channels_last, winograd_conv:
                as in :class:`DenseDetector`.
        """
        super().__init__(
            backbone,
            head,
            head_in_features,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            vis_period=vis_period,
            input_format=input_format,
            channels_last=channels_last,
            winograd_conv=winograd_conv,
        )
        self.prior_generator = prior_generator
        self.box2box_transform = box2box_transform
        self.num_classes = check_num_classes(num_classes, "MODEL.SSD.NUM_CLASSES")
        if int(image_size) != image_size or image_size < 1:
            raise ValueError(
                f"MODEL.SSD.IMAGE_SIZE = {image_size!r}: the side of the square network input "
                "must be a positive integer (300 for SSD300, 512 for SSD512)."
            )
        self.image_size = int(image_size)
        if not 0 < iou_threshold <= 1:
            raise ValueError(
                f"MODEL.SSD.IOU_THRESHOLD = {iou_threshold}: must be in (0, 1] (SSD uses 0.5)."
            )
        if neg_pos_ratio < 0:
            raise ValueError(
                f"MODEL.SSD.NEG_POS_RATIO = {neg_pos_ratio}: must be >= 0 (SSD uses 3)."
            )
        if int(test_topk_candidates) < 1:
            raise ValueError(
                f"MODEL.SSD.TOPK_CANDIDATES_TEST = {test_topk_candidates}: must be >= 1."
            )
        self.iou_threshold = float(iou_threshold)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.test_score_thresh = float(test_score_thresh)
        self.test_topk_candidates = int(test_topk_candidates)
        self.test_nms_thresh = float(test_nms_thresh)
        self.max_detections_per_image = int(max_detections_per_image)

    @classmethod
    def from_config(cls, cfg):
        """Backbone from MODEL.BACKBONE (e.g. build_ssd_vgg_backbone); head, default boxes and
        every other setting from MODEL.SSD.*; TEST.DETECTIONS_PER_IMAGE, MODEL.PIXEL_MEAN /
        STD, MODEL.CHANNELS_LAST, MODEL.WINOGRAD_CONV, VIS_PERIOD, INPUT.FORMAT."""
        ssd = cfg.MODEL.SSD
        check_num_classes(ssd.NUM_CLASSES, "MODEL.SSD.NUM_CLASSES")
        backbone = build_backbone(cfg)
        feature_shapes = check_in_features(
            ssd.IN_FEATURES, backbone.output_shape(), "MODEL.SSD.IN_FEATURES"
        )
        return {
            "backbone": backbone,
            "head": SSDHead(cfg, feature_shapes),
            "head_in_features": list(ssd.IN_FEATURES),
            "prior_generator": PriorBoxGenerator(cfg),
            "box2box_transform": Box2BoxTransform(weights=ssd.BBOX_REG_WEIGHTS),
            "num_classes": ssd.NUM_CLASSES,
            "image_size": ssd.IMAGE_SIZE,
            "iou_threshold": ssd.IOU_THRESHOLD,
            "neg_pos_ratio": ssd.NEG_POS_RATIO,
            "smooth_l1_beta": ssd.SMOOTH_L1_BETA,
            "test_score_thresh": ssd.SCORE_THRESH_TEST,
            "test_topk_candidates": ssd.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": ssd.NMS_THRESH_TEST,
            **cls._common_config(cfg),
        }

    # -- input ------------------------------------------------------------------------------

    def forward(self, batched_inputs: List[Dict]):
        """As :meth:`DenseDetector.forward`; in eval, an input without "height" / "width" gets
        its results in its image's size (not in the network's IMAGE_SIZE square)."""
        if not self.training:
            batched_inputs = [_with_output_size(item, i) for i, item in enumerate(batched_inputs)]
        return super().forward(batched_inputs)

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise each input's "image" with the pixel statistics, then resize it (bilinear,
        no antialiasing, aspect ratio not kept) to IMAGE_SIZE x IMAGE_SIZE, in that order (as
        torchvision). Returns the (N, C, S, S) batch with every image size (S, S)."""
        size = (self.image_size, self.image_size)
        images = []
        for i, item in enumerate(batched_inputs):
            image = move_device_like(_image_of(item, i), self.pixel_mean)
            image = (image - self.pixel_mean) / self.pixel_std
            if tuple(image.shape[-2:]) != size:
                image = F.interpolate(
                    image[None], size=size, mode="bilinear", align_corners=False
                )[0]
            images.append(image)
        batch = to_input_layout(torch.stack(images), self.channels_last)
        return ImageList(batch, [size] * len(images))

    def _flat_predictions(
        self, predictions: Tuple[List[torch.Tensor], List[torch.Tensor]]
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The head's outputs as (N, R, K + 1) logits and (N, R, 4) deltas, R the number of
        default boxes of all maps in :class:`PriorBoxGenerator`'s order."""
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes + 1, 4])
        return cat(logits, dim=1), cat(deltas, dim=1)

    def _priors(self, features: List[torch.Tensor], images: ImageList) -> torch.Tensor:
        """(R, 4) default boxes of all maps, in network-input pixels."""
        return Boxes.cat(self.prior_generator(features, tuple(images.tensor.shape[-2:]))).tensor

    # -- training ---------------------------------------------------------------------------

    def forward_training(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """Match the default boxes to the ground truth and return :func:`ssd_losses`. Records
        "num_pos_anchors" (positives per image) when training under an event storage."""
        pred_logits, pred_deltas = self._flat_predictions(predictions)
        priors = self._priors(features, images)
        gt_labels, target_deltas = self.label_priors(priors, gt_instances, images.image_sizes)
        put_scalars_if_recording(num_pos_anchors=(gt_labels > 0).sum().item() / len(gt_labels))
        return ssd_losses(
            pred_logits,
            pred_deltas,
            gt_labels,
            target_deltas,
            neg_pos_ratio=self.neg_pos_ratio,
            smooth_l1_beta=self.smooth_l1_beta,
        )

    @torch.no_grad()
    def label_priors(
        self,
        priors: torch.Tensor,
        gt_instances: List[Instances],
        network_sizes: List[Tuple[int, int]],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training targets of every default box.

        Args:
            priors: (R, 4) default boxes in network-input pixels.
            gt_instances: N ``Instances`` with ``gt_boxes`` in the pixels of their image
                (``image_size``) and ``gt_classes`` in [0, K).
            network_sizes: N (h, w) network-input sizes; the ground truth is scaled from
                ``image_size`` to them.

        Returns:
            gt_labels: (N, R) int64, 0 for background, c + 1 for a box matched to class c.
            target_deltas: (N, R, 4) deltas from each positive box to its match (zeros
                elsewhere).
        """
        labels, deltas = [], []
        for inst, (net_h, net_w) in zip(gt_instances, network_sizes):
            labels_i = torch.zeros(len(priors), dtype=torch.int64, device=priors.device)
            deltas_i = torch.zeros_like(priors)
            if len(inst) > 0:
                gt_boxes = inst.gt_boxes.tensor.to(priors).clone()
                height, width = inst.image_size
                gt_boxes[:, 0::2] *= net_w / width
                gt_boxes[:, 1::2] *= net_h / height
                matches = match_priors(
                    pairwise_iou(Boxes(gt_boxes), Boxes(priors)), self.iou_threshold
                )
                positive = matches >= 0
                matched = matches[positive]
                labels_i[positive] = inst.gt_classes.to(priors.device)[matched] + 1
                deltas_i[positive] = self.box2box_transform.get_deltas(
                    priors[positive], gt_boxes[matched]
                )
            labels.append(labels_i)
            deltas.append(deltas_i)
        return torch.stack(labels), torch.stack(deltas)

    # -- inference --------------------------------------------------------------------------

    def forward_inference(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor]],
    ) -> List[Instances]:
        """One ``Instances`` (pred_boxes, scores, pred_classes) per image, in network-input
        pixels (``detector_postprocess`` rescales them)."""
        pred_logits, pred_deltas = self._flat_predictions(predictions)
        priors = self._priors(features, images)
        scores = F.softmax(pred_logits, dim=-1)
        return [
            self.inference_single_image(priors, scores[i], pred_deltas[i], image_size)
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self,
        priors: torch.Tensor,
        scores: torch.Tensor,
        deltas: torch.Tensor,
        image_size: Tuple[int, int],
    ) -> Instances:
        """Detections of one image.

        Args:
            priors: (R, 4) default boxes.
            scores: (R, K + 1) softmax scores, background first.
            deltas: (R, 4) predicted deltas.
            image_size: (h, w) of the network input; the boxes are clipped to it.

        Returns:
            at most ``max_detections_per_image`` detections by decreasing score, after
            per-class NMS of the per-class top ``test_topk_candidates`` candidates scoring
            above ``test_score_thresh``.
        """
        boxes = Boxes(self.box2box_transform.apply_deltas(deltas, priors))
        boxes.clip(image_size)
        object_scores = scores[:, 1:]
        k = min(self.test_topk_candidates, object_scores.shape[0])
        top_scores, top_rows = object_scores.topk(k, dim=0)  # (k, K), best first per class
        # Class by class (the order torchvision lists its candidates in).
        top_scores, top_rows = top_scores.t(), top_rows.t()
        keep = top_scores > self.test_score_thresh
        classes = torch.arange(self.num_classes, device=scores.device)[:, None].expand_as(keep)
        cand_scores, cand_rows, cand_classes = top_scores[keep], top_rows[keep], classes[keep]
        cand_boxes = boxes.tensor[cand_rows]
        kept = batched_nms_topk(
            cand_boxes, cand_scores, cand_classes, self.test_nms_thresh,
            self.max_detections_per_image,
        )
        return Instances(
            image_size,
            pred_boxes=Boxes(cand_boxes[kept]),
            scores=cand_scores[kept],
            pred_classes=cand_classes[kept],
        )


def _image_of(item: Dict, index: int) -> torch.Tensor:
    if "image" not in item:
        raise KeyError(
            f"Batched input {index} has no 'image' key (keys: {sorted(item)}); each input dict "
            "needs the (C, H, W) image tensor under 'image'."
        )
    return item["image"]


def _with_output_size(item: Dict, index: int) -> Dict:
    """``item`` with "height" / "width" defaulting to its image's size."""
    if "height" in item and "width" in item:
        return item
    height, width = _image_of(item, index).shape[-2:]
    return {**item, "height": item.get("height", int(height)),
            "width": item.get("width", int(width))}
