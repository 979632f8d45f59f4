"""FCOS (Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", 2019; and "FCOS: A
Simple and Strong Anchor-free Object Detector", 2020), as Detectron2 defines it.

Detectron2 path: ``detectron2.modeling.meta_arch.fcos``.

One point per location of P3-P7, represented as a square "anchor" box of side the level's
stride centred on the point (at ``(x * stride, y * stride)``). A point is a positive for a
ground-truth box when (1) it lies inside the box, (2) it lies within
``center_sampling_radius * stride`` of the box centre along both axes, and (3) its largest
distance to the box's sides is in the level's range: ``(4 * stride, 8 * stride)``, from 0 on
the finest level and unbounded on the coarsest. A point that qualifies for several boxes takes
the one of smallest area. Boxes are regressed as distances (l, t, r, b) to the sides divided by
the stride (``Box2BoxTransformLinear``), trained with a GIoU loss; a centerness branch on the
box subnet predicts ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``.

Losses: "loss_fcos_cls" (sigmoid focal loss over every point), "loss_fcos_loc" (GIoU over the
positives), "loss_fcos_ctr" (binary cross-entropy of the centerness over the positives), each
divided by a moving average (momentum 0.9, start 300) of the number of positives. At test
time a detection's score is ``sqrt(class probability * centerness)``.

Detectron2 builds FCOS from a Python config only; segtron reads MODEL.FCOS.* (with Detectron2's
values as defaults) and the backbone ``build_fcos_resnet_fpn_backbone`` (P6 from P5).
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import Conv2d, ShapeSpec, cat
from ...structures import Boxes, ImageList, Instances, pairwise_point_box_distance
from ...utils.events import put_scalars_if_recording
from ..anchor_generator import DefaultAnchorGenerator
from ..backbone import Backbone, build_backbone
from ..box_regression import (
    Box2BoxTransformLinear,
    _dense_box_regression_loss,
    check_box_reg_loss_type,
)
from ..feature_names import check_in_features
from ..registries import META_ARCH_REGISTRY
from .dense_detector import DenseDetector, check_num_classes
from .retinanet import RetinaNetHead

__all__ = ["FCOS", "FCOSHead"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class FCOS(DenseDetector):
    """FCOS: backbone -> :class:`FCOSHead` on one point per location -> focal / GIoU /
    centerness losses, or centerness-weighted scores and NMS.

    Training: ``forward -> {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}``. Inference:
    ``[{"instances": Instances(pred_boxes, scores, pred_classes)}, ...]``.
    """

    _in_features_key = "MODEL.FCOS.IN_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Optional[Sequence[str]] = None,
        box2box_transform: Optional[Box2BoxTransformLinear] = None,
        num_classes: int,
        center_sampling_radius: float = 1.5,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        box_reg_loss_type: str = "giou",
        test_score_thresh: float = 0.2,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vis_period: int = 0,
        input_format: Optional[str] = "BGR",
        channels_last: bool = False,
        winograd_conv: bool = False,
    ):
        """Args:
            backbone: e.g. ``build_fcos_resnet_fpn_backbone`` (outputs p3..p7).
            head: maps the feature list to (logits: L (N, K, Hi, Wi), deltas: L (N, 4, Hi, Wi),
                centerness: L (N, 1, Hi, Wi)), e.g. :class:`FCOSHead`.
            head_in_features: backbone outputs given to the head, finest first; default all.
            box2box_transform: default ``Box2BoxTransformLinear(normalize_by_size=True)``
                (distances to the sides in units of the stride).
            num_classes: K, the number of object classes.
            center_sampling_radius: positives lie within this many strides of the gt centre.
            focal_loss_alpha, focal_loss_gamma: the sigmoid focal loss's weights.
            box_reg_loss_type: "giou" (Detectron2's), "diou", "ciou" or "smooth_l1".
            test_score_thresh: inference keeps ``sqrt(prob * centerness)`` above this.
            test_topk_candidates: inference keeps at most this many candidates per level.
            test_nms_thresh: IoU threshold of the per-class NMS.
            max_detections_per_image: detections kept per image.
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
        self.num_classes = check_num_classes(num_classes, "MODEL.FCOS.NUM_CLASSES")
        # One point per location, as a box whose side is the level's stride.
        shapes = backbone.output_shape()
        strides = [shapes[name].stride for name in self.head_in_features]
        self.anchor_generator = DefaultAnchorGenerator(
            sizes=[[s] for s in strides], aspect_ratios=[1.0], strides=strides
        )
        if box2box_transform is None:
            box2box_transform = Box2BoxTransformLinear(normalize_by_size=True)
        self.box2box_transform = box2box_transform
        if center_sampling_radius <= 0:
            raise ValueError(
                "FCOS: center_sampling_radius (MODEL.FCOS.CENTER_SAMPLING_RADIUS) must be > 0 "
                f"strides, got {center_sampling_radius}."
            )
        self.center_sampling_radius = float(center_sampling_radius)
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.box_reg_loss_type = check_box_reg_loss_type(
            box_reg_loss_type, "MODEL.FCOS.BBOX_REG_LOSS_TYPE"
        )
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = int(test_topk_candidates)
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = int(max_detections_per_image)

    @classmethod
    def from_config(cls, cfg):
        """Backbone from MODEL.BACKBONE, head for MODEL.FCOS.IN_FEATURES and every other
        MODEL.FCOS.* key; TEST.DETECTIONS_PER_IMAGE, MODEL.PIXEL_MEAN / STD,
        MODEL.CHANNELS_LAST, MODEL.WINOGRAD_CONV, VIS_PERIOD, INPUT.FORMAT."""
        fcos = cfg.MODEL.FCOS
        check_num_classes(fcos.NUM_CLASSES, "MODEL.FCOS.NUM_CLASSES")
        backbone = build_backbone(cfg)
        feature_shapes = check_in_features(
            fcos.IN_FEATURES, backbone.output_shape(), "MODEL.FCOS.IN_FEATURES"
        )
        return {
            "backbone": backbone,
            "head": FCOSHead(cfg, feature_shapes),
            "head_in_features": list(fcos.IN_FEATURES),
            "num_classes": fcos.NUM_CLASSES,
            "center_sampling_radius": fcos.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": fcos.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": fcos.FOCAL_LOSS_GAMMA,
            "box_reg_loss_type": fcos.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": fcos.SCORE_THRESH_TEST,
            "test_topk_candidates": fcos.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": fcos.NMS_THRESH_TEST,
            **cls._common_config(cfg),
        }

    # -- training ---------------------------------------------------------------------------

    def forward_training(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """Assign points to ground truth and return :meth:`losses`."""
        pred_logits, pred_deltas, pred_centerness = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_deltas, gt_boxes, pred_centerness)

    @torch.no_grad()
    def _match_anchors(self, gt_boxes: Boxes, anchors: List[Boxes]) -> torch.Tensor:
        """Match quality (M, R) of M gt boxes and R points of all levels: ``1e8 - area(gt)``
        where the point is a positive for that gt (inside it, within the centre radius, in
        its level's scale range; see the module docstring), else 0. Larger is better, so the
        smallest qualifying box wins."""
        points_per_level = [len(a) for a in anchors]
        anchors = Boxes.cat(list(anchors))
        centers = anchors.get_centers()  # (R, 2)
        strides = anchors.tensor[:, 2] - anchors.tensor[:, 0]  # (R,): the box side is the stride
        lower = strides * 4
        lower[: points_per_level[0]] = 0
        upper = strides * 8
        upper[-points_per_level[-1]:] = float("inf")

        near_centre = (
            (centers[None, :, :] - gt_boxes.get_centers()[:, None, :]).abs().amax(dim=2)
            < self.center_sampling_radius * strides[None, :]
        )  # (M, R)
        sides = pairwise_point_box_distance(centers, gt_boxes).permute(1, 0, 2)  # (M, R, 4)
        inside = sides.amin(dim=2) > 0
        reach = sides.amax(dim=2)
        in_range = (reach > lower[None, :]) & (reach < upper[None, :])
        positive = near_centre & inside & in_range
        return positive.to(torch.float32) * (1e8 - gt_boxes.area()[:, None])

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Assign every point a class label and a gt box (the smallest qualifying box).

        Args:
            anchors: one ``Boxes`` of points (stride-sized boxes) per level; R in all.
            gt_instances: N ``Instances`` with ``gt_boxes`` and ``gt_classes``.

        Returns:
            gt_labels: N int64 (R,): the gt class for positives, K (num_classes) for the
                rest (FCOS ignores no point).
            matched_gt_boxes: N (R, 4): the assigned gt box (for non-positives, that of gt 0,
                or zeros for an image without gt).
        """
        gt_labels, matched_gt_boxes = [], []
        for inst in gt_instances:
            if len(inst) > 0:
                quality, matched = self._match_anchors(inst.gt_boxes, anchors).max(dim=0)
                matched[quality < 1e-5] = -1
                safe = matched.clamp(min=0)
                boxes = inst.gt_boxes.tensor[safe]
                labels = inst.gt_classes[safe].clone()
                labels[matched < 0] = self.num_classes
            else:
                boxes = torch.zeros_like(Boxes.cat(list(anchors)).tensor)
                labels = torch.full(
                    (len(boxes),), self.num_classes, dtype=torch.int64, device=boxes.device
                )
            gt_labels.append(labels)
            matched_gt_boxes.append(boxes)
        return gt_labels, matched_gt_boxes

    def losses(
        self,
        anchors: List[Boxes],
        pred_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
        pred_centerness: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """The three FCOS losses (see the module docstring).

        Args:
            anchors: one ``Boxes`` of points per level (R in all).
            pred_logits: one (N, Ri, K) tensor per level.
            gt_labels: N (R,) labels from :meth:`label_anchors`.
            pred_anchor_deltas: one (N, Ri, 4) tensor per level.
            gt_boxes: N (R, 4) assigned gt boxes.
            pred_centerness: one (N, Ri, 1) tensor of centerness logits per level.

        Returns:
            {"loss_fcos_cls", "loss_fcos_loc", "loss_fcos_ctr"}, each a sum divided by the
            moving average (momentum 0.9, start 300) of the number of positives (at least 1).
        """
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)  # (N, R)
        positive = (labels >= 0) & (labels != self.num_classes)
        num_positive = positive.sum().item()
        put_scalars_if_recording(num_pos_anchors=num_positive / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_positive, 1), 300)

        loss_cls = self._focal_classification_loss(
            cat(pred_logits, dim=1), labels, self.focal_loss_alpha, self.focal_loss_gamma
        )
        loss_loc = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            positive,
            box_reg_loss_type=self.box_reg_loss_type,
        )
        centerness_target = self.compute_ctrness_targets(anchors, gt_boxes)  # (N, R)
        centerness = cat(pred_centerness, dim=1).squeeze(2)  # (N, R)
        loss_ctr = F.binary_cross_entropy_with_logits(
            centerness[positive], centerness_target[positive], reduction="sum"
        )
        return {
            "loss_fcos_cls": loss_cls / normalizer,
            "loss_fcos_loc": loss_loc / normalizer,
            "loss_fcos_ctr": loss_ctr / normalizer,
        }

    def compute_ctrness_targets(
        self, anchors: List[Boxes], gt_boxes: List[torch.Tensor]
    ) -> torch.Tensor:
        """Centerness of every point in its assigned box:
        ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` with (l, t, r, b) the point's
        distances to the box's sides.

        Args:
            anchors: one ``Boxes`` of points per level (R in all).
            gt_boxes: N (R, 4) assigned boxes.

        Returns:
            (N, R) float tensor, in [0, 1] where the point is inside its box (undefined for
            points outside it, which no loss reads).
        """
        points = Boxes.cat(list(anchors)).tensor
        if len(gt_boxes) == 0:
            return points.new_zeros((0, len(points)))
        sides = torch.stack([self.box2box_transform.get_deltas(points, b) for b in gt_boxes])
        left_right, top_bottom = sides[..., [0, 2]], sides[..., [1, 3]]
        ratio = (left_right.amin(-1) / left_right.amax(-1)) * (
            top_bottom.amin(-1) / top_bottom.amax(-1)
        )
        return torch.sqrt(ratio)

    # -- inference --------------------------------------------------------------------------

    def forward_inference(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]],
    ) -> List[Instances]:
        """One ``Instances`` per image in the network input's size; each score is
        ``sqrt(sigmoid(class logit) * sigmoid(centerness logit))`` (eq. 4 of the 2020 paper)."""
        pred_logits, pred_deltas, pred_centerness = self._transpose_dense_predictions(
            [predictions[0], predictions[1], predictions[2]], [self.num_classes, 4, 1]
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [
                torch.sqrt(x[i].sigmoid() * c[i].sigmoid())
                for x, c in zip(pred_logits, pred_centerness)
            ]
            deltas = [x[i] for x in pred_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[torch.Tensor],
        box_delta: List[torch.Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """Detections of one image from per-level (Ri, K) scores and (Ri, 4) deltas: top-k
        above the threshold per level, NMS per class, at most ``max_detections_per_image``."""
        return self._detect_in_image(anchors, box_cls, box_delta, image_size)


class FCOSHead(RetinaNetHead):
    """FCOS's head: :class:`RetinaNetHead` with one anchor per location, plus a 3x3 conv
    ``ctrness`` on the box subnet's features predicting one centerness logit per location.

    ``forward(features: L maps (N, C, Hi, Wi)) -> (logits: L (N, K, Hi, Wi), deltas: L
    (N, 4, Hi, Wi), centerness: L (N, 1, Hi, Wi))``. Parameter names are Detectron2's
    (``cls_subnet``, ``bbox_subnet``, ``cls_score``, ``bbox_pred``, ``ctrness``).
    """

    _cfg_prefix = "MODEL.FCOS"

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], conv_dims: Sequence[int], **kwargs):
        """Args:
            input_shape, conv_dims: as in :class:`RetinaNetHead`.
            kwargs: ``num_classes``, ``norm``, ``prior_prob`` of :class:`RetinaNetHead`
                (``num_anchors`` is always 1).
        """
        super().__init__(input_shape=input_shape, conv_dims=conv_dims, num_anchors=1, **kwargs)
        self.ctrness = Conv2d(conv_dims[-1], 1, kernel_size=3, stride=1, padding=1)
        nn.init.normal_(self.ctrness.weight, std=0.01)
        nn.init.constant_(self.ctrness.bias, 0)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        """MODEL.FCOS.{NUM_CLASSES, NUM_CONVS, PRIOR_PROB, NORM}; hidden widths equal to the
        input channels."""
        fcos = cfg.MODEL.FCOS
        return {
            "input_shape": input_shape,
            "num_classes": check_num_classes(fcos.NUM_CLASSES, "MODEL.FCOS.NUM_CLASSES"),
            "conv_dims": [input_shape[0].channels] * fcos.NUM_CONVS,
            "prior_prob": fcos.PRIOR_PROB,
            "norm": fcos.NORM,
        }

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]]:
        """Args:
            features: L maps (N, C, Hi, Wi), finest first.

        Returns:
            logits (N, K, Hi, Wi), deltas (N, 4, Hi, Wi) and centerness logits (N, 1, Hi, Wi),
            one of each per level.
        """
        self._check_num_levels(features)
        logits: List[torch.Tensor] = []
        deltas: List[torch.Tensor] = []
        centerness: List[torch.Tensor] = []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            box_features = self.bbox_subnet(feature)
            deltas.append(self.bbox_pred(box_features))
            centerness.append(self.ctrness(box_features))
        return logits, deltas, centerness
