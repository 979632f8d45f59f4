"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", 2017).

Detectron2 path: ``detectron2.modeling.meta_arch.retinanet``.

A ResNet-FPN backbone (P3-P7), one head shared by all levels with a classification and a
box-regression subnet, A anchors per location (3 scales x 3 aspect ratios by default).
Training labels anchors by IoU with the ground truth (MODEL.RETINANET.IOU_THRESHOLDS /
IOU_LABELS, each gt also claiming its best anchors) and sums a sigmoid focal loss over every
non-ignored anchor and a box loss over the foreground ones, both divided by a moving average
of the number of foreground anchors. Inference keeps, per level, the top
TOPK_CANDIDATES_TEST (anchor, class) pairs scoring above SCORE_THRESH_TEST, then runs NMS per
class and keeps TEST.DETECTIONS_PER_IMAGE.
"""

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...config import configurable
from ...layers import Conv2d, CycleBatchNormList, ShapeSpec, cat, get_norm
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ...utils.events import put_scalars_if_recording
from ..anchor_generator import build_anchor_generator
from ..backbone import Backbone, build_backbone
from ..box_regression import Box2BoxTransform, _dense_box_regression_loss, check_box_reg_loss_type
from ..feature_names import check_in_features
from ..matcher import Matcher
from ..registries import META_ARCH_REGISTRY
from .dense_detector import DenseDetector, check_num_classes

__all__ = ["RetinaNet", "RetinaNetHead"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class RetinaNet(DenseDetector):
    """RetinaNet: backbone -> :class:`RetinaNetHead` on anchors -> focal loss / NMS.

    Training: ``forward -> {"loss_cls", "loss_box_reg"}``. Inference: ``[{"instances":
    Instances(pred_boxes, scores, pred_classes)}, ...]``.
    """

    _in_features_key = "MODEL.RETINANET.IN_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        anchor_generator: nn.Module,
        box2box_transform: Box2BoxTransform,
        anchor_matcher: Matcher,
        num_classes: int,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.5,
        max_detections_per_image: int = 100,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        vis_period: int = 0,
        input_format: Optional[str] = "BGR",
        channels_last: bool = False,
        winograd_conv: bool = False,
    ):
        """Args:
            backbone: e.g. ``build_retinanet_resnet_fpn_backbone`` (outputs p3..p7).
            head: maps the feature list to (logits: L tensors (N, A * K, Hi, Wi), deltas:
                L tensors (N, A * 4, Hi, Wi)), e.g. :class:`RetinaNetHead`.
            head_in_features: backbone outputs given to the head, finest first.
            anchor_generator: one ``Boxes`` of Hi * Wi * A anchors per level.
            box2box_transform: the box coding of the deltas (MODEL.RETINANET.BBOX_REG_WEIGHTS).
            anchor_matcher: labels anchors 1 / 0 / -1 by IoU (foreground / background /
                ignored).
            num_classes: K, the number of object classes (no background class).
            focal_loss_alpha, focal_loss_gamma: the sigmoid focal loss's weights.
            smooth_l1_beta: beta of the smooth-L1 box loss (0 = L1).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            test_score_thresh: inference keeps (anchor, class) scores above this.
            test_topk_candidates: inference keeps at most this many candidates per level.
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
        self.anchor_generator = anchor_generator
        self.box2box_transform = box2box_transform
        self.anchor_matcher = anchor_matcher
        self.num_classes = check_num_classes(num_classes, "MODEL.RETINANET.NUM_CLASSES")
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.smooth_l1_beta = smooth_l1_beta
        self.box_reg_loss_type = check_box_reg_loss_type(
            box_reg_loss_type, "MODEL.RETINANET.BBOX_REG_LOSS_TYPE"
        )
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = int(test_topk_candidates)
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = int(max_detections_per_image)

    @classmethod
    def from_config(cls, cfg):
        """Backbone from MODEL.BACKBONE, head and anchors for MODEL.RETINANET.IN_FEATURES, and
        every other MODEL.RETINANET.* key; TEST.DETECTIONS_PER_IMAGE, MODEL.PIXEL_MEAN / STD,
        MODEL.CHANNELS_LAST, MODEL.WINOGRAD_CONV, VIS_PERIOD, INPUT.FORMAT."""
        retina = cfg.MODEL.RETINANET
        check_num_classes(retina.NUM_CLASSES, "MODEL.RETINANET.NUM_CLASSES")
        backbone = build_backbone(cfg)
        feature_shapes = check_in_features(
            retina.IN_FEATURES, backbone.output_shape(), "MODEL.RETINANET.IN_FEATURES"
        )
        return {
            "backbone": backbone,
            "head": RetinaNetHead(cfg, feature_shapes),
            "head_in_features": list(retina.IN_FEATURES),
            "anchor_generator": build_anchor_generator(cfg, feature_shapes),
            "box2box_transform": Box2BoxTransform(weights=retina.BBOX_REG_WEIGHTS),
            "anchor_matcher": Matcher(
                retina.IOU_THRESHOLDS, retina.IOU_LABELS, allow_low_quality_matches=True
            ),
            "num_classes": retina.NUM_CLASSES,
            "focal_loss_alpha": retina.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": retina.FOCAL_LOSS_GAMMA,
            "smooth_l1_beta": retina.SMOOTH_L1_LOSS_BETA,
            "box_reg_loss_type": retina.BBOX_REG_LOSS_TYPE,
            "test_score_thresh": retina.SCORE_THRESH_TEST,
            "test_topk_candidates": retina.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": retina.NMS_THRESH_TEST,
            **cls._common_config(cfg),
        }

    # -- training ---------------------------------------------------------------------------

    def forward_training(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """Label the anchors and return :meth:`losses`."""
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Assign every anchor a class label and a matched ground-truth box.

        Args:
            anchors: one ``Boxes`` per level; R anchors in all, in level then anchor order.
            gt_instances: N ``Instances`` with ``gt_boxes`` and ``gt_classes``.

        Returns:
            gt_labels: N int64 tensors (R,): the gt class in [0, K) for foreground anchors,
                K (= num_classes) for background, -1 for ignored anchors.
            matched_gt_boxes: N (R, 4) tensors, the matched gt box (meaningful for foreground
                anchors; zeros for an image without ground truth).
        """
        anchors = Boxes.cat(list(anchors))
        gt_labels, matched_gt_boxes = [], []
        for inst in gt_instances:
            matched_idxs, anchor_labels = self.anchor_matcher(pairwise_iou(inst.gt_boxes, anchors))
            if len(inst) > 0:
                boxes = inst.gt_boxes.tensor[matched_idxs]
                labels = inst.gt_classes[matched_idxs].clone()
                labels[anchor_labels == 0] = self.num_classes
                labels[anchor_labels == -1] = -1
            else:
                boxes = torch.zeros_like(anchors.tensor)
                labels = torch.full_like(matched_idxs, self.num_classes)
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
    ) -> Dict[str, torch.Tensor]:
        """The two RetinaNet losses.

        Args:
            anchors: one ``Boxes`` per level (R anchors in all).
            pred_logits: one (N, Ri, K) tensor per level.
            gt_labels: N (R,) labels from :meth:`label_anchors`.
            pred_anchor_deltas: one (N, Ri, 4) tensor per level.
            gt_boxes: N (R, 4) matched gt boxes.

        Returns:
            {"loss_cls": sigmoid focal loss summed over the classes of every anchor not
            ignored, "loss_box_reg": box loss summed over foreground anchors}, both divided by
            the moving average (momentum 0.9, start 100) of the number of foreground anchors
            in the batch (at least 1). Records "num_pos_anchors" (per image) when training.
        """
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)  # (N, R)
        valid = labels >= 0
        foreground = valid & (labels != self.num_classes)
        num_foreground = foreground.sum().item()
        put_scalars_if_recording(num_pos_anchors=num_foreground / num_images)
        normalizer = self._ema_update("loss_normalizer", max(num_foreground, 1), 100)

        loss_cls = self._focal_classification_loss(
            cat(pred_logits, dim=1), labels, self.focal_loss_alpha, self.focal_loss_gamma
        )
        loss_box_reg = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            foreground,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return {"loss_cls": loss_cls / normalizer, "loss_box_reg": loss_box_reg / normalizer}

    # -- inference --------------------------------------------------------------------------

    def forward_inference(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor]],
    ) -> List[Instances]:
        """One ``Instances`` (pred_boxes, scores, pred_classes) per image, in the network
        input's size, boxes not clipped (``detector_postprocess`` clips them)."""
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            [predictions[0], predictions[1]], [self.num_classes, 4]
        )
        anchors = self.anchor_generator(features)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [x[i].sigmoid() for x in pred_logits]
            deltas = [x[i] for x in pred_anchor_deltas]
            results.append(self.inference_single_image(anchors, scores, deltas, image_size))
        return results

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[torch.Tensor],
        box_delta: List[torch.Tensor],
        image_size: Tuple[int, int],
    ) -> Instances:
        """Detections of one image.

        Args:
            anchors: one ``Boxes`` per level (Ri anchors).
            box_cls: one (Ri, K) tensor of class probabilities per level.
            box_delta: one (Ri, 4) tensor of deltas per level.
            image_size: (h, w) of the network input.

        Returns:
            at most ``max_detections_per_image`` detections by decreasing score, after
            per-class NMS at ``test_nms_thresh``.
        """
        return self._detect_in_image(anchors, box_cls, box_delta, image_size)


class RetinaNetHead(nn.Module):
    """RetinaNet's head, shared by all levels: a classification subnet and a box subnet, each
    ``len(conv_dims)`` x (3x3 conv [+ norm] + ReLU), then a 3x3 conv to A * K logits
    (``cls_score``) and one to A * 4 deltas (``bbox_pred``).

    Parameter names are Detectron2's: ``cls_subnet.{i}.*`` / ``bbox_subnet.{i}.*`` (the
    Sequential's indices: conv, [norm,] ReLU per layer), ``cls_score.*``, ``bbox_pred.*``.
    With norm "BN" or "SyncBN" each norm keeps separate statistics per level
    (``CycleBatchNormList``) and one shared affine transform, as in Detectron2.

    ``forward(features: L maps (N, C, Hi, Wi)) -> (logits: L (N, A * K, Hi, Wi), deltas: L
    (N, A * 4, Hi, Wi))``.
    """

    _cfg_prefix = "MODEL.RETINANET"
    """The config section error messages name (subclasses built from other keys change it)."""

    @configurable
    def __init__(
        self,
        *,
        input_shape: List[ShapeSpec],
        num_classes: int,
        num_anchors: int,
        conv_dims: Sequence[int],
        norm="",
        prior_prob: float = 0.01,
    ):
        """Args:
            input_shape: one ``ShapeSpec`` per level; all with the same channels.
            num_classes: K.
            num_anchors: A, anchors per location (the same on every level).
            conv_dims: output channels of each hidden conv of both subnets (non-empty).
            norm: norm after each hidden conv: "" (none), a ``get_norm`` name ("GN", "BN",
                "SyncBN", ...) or a callable taking the channel count.
            prior_prob: the initial foreground probability of every logit: ``cls_score``'s
                bias starts at ``-log((1 - prior_prob) / prior_prob)``.
        """
        super().__init__()
        if not input_shape:
            raise ValueError(f"{type(self).__name__}: input_shape is empty; give one per level.")
        channels = {s.channels for s in input_shape}
        if len(channels) != 1:
            raise ValueError(
                f"{type(self).__name__} is shared by all levels, so they need the same number "
                f"of channels; got {[s.channels for s in input_shape]}."
            )
        conv_dims = [int(c) for c in conv_dims]
        if not conv_dims or min(conv_dims) <= 0:
            raise ValueError(
                f"{type(self).__name__}: conv_dims must be a non-empty list of positive widths "
                f"({self._cfg_prefix}.NUM_CONVS >= 1), got {conv_dims}."
            )
        if not 0 < prior_prob < 1:
            raise ValueError(
                f"{type(self).__name__}: prior_prob ({self._cfg_prefix}.PRIOR_PROB) must be in "
                f"(0, 1), got {prior_prob}."
            )
        num_levels = len(input_shape)
        self._num_features = num_levels
        if norm in ("BN", "SyncBN"):
            logger.info(
                "RetinaNetHead: %s with statistics per level (%d levels).", norm, num_levels
            )
            bn_class = nn.BatchNorm2d if norm == "BN" else nn.SyncBatchNorm

            def norm(c):  # noqa: F811  (the name a config gave becomes a constructor)
                return CycleBatchNormList(length=num_levels, bn_class=bn_class, num_features=c)

        elif "BatchNorm" in type(get_norm(norm, 32) or nn.Identity()).__name__:
            logger.warning(
                "RetinaNetHead: norm %r shares batch statistics between levels; expect worse "
                "results than with 'BN' (statistics per level) or 'GN'.", norm,
            )

        in_channels = [channels.pop()] + conv_dims[:-1]
        self.cls_subnet = self._subnet(in_channels, conv_dims, norm)
        self.bbox_subnet = self._subnet(in_channels, conv_dims, norm)
        self.cls_score = Conv2d(conv_dims[-1], num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = Conv2d(conv_dims[-1], num_anchors * 4, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, mean=0, std=0.01)
                nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _subnet(in_channels: List[int], out_channels: List[int], norm) -> nn.Sequential:
        layers = []
        for cin, cout in zip(in_channels, out_channels):
            layers.append(Conv2d(cin, cout, 3, padding=1))
            if norm:
                layers.append(get_norm(norm, cout))
            layers.append(nn.ReLU(inplace=True))
        return nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        """MODEL.RETINANET.{NUM_CLASSES, NUM_CONVS, PRIOR_PROB, NORM}; hidden widths equal to
        the input channels; anchors per location from the anchor generator the config builds
        for ``input_shape``."""
        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"{cls.__name__} is shared by all levels, so every level needs the same number "
                f"of anchors per location; MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS give "
                f"{num_anchors}."
            )
        retina = cfg.MODEL.RETINANET
        return {
            "input_shape": input_shape,
            "num_classes": check_num_classes(retina.NUM_CLASSES, "MODEL.RETINANET.NUM_CLASSES"),
            "conv_dims": [input_shape[0].channels] * retina.NUM_CONVS,
            "prior_prob": retina.PRIOR_PROB,
            "norm": retina.NORM,
            "num_anchors": num_anchors[0],
        }

    def _check_num_levels(self, features: List[torch.Tensor]) -> None:
        """Raise ValueError unless ``features`` has one map per level the head was built for."""
        if len(features) != self._num_features:
            if not torch.jit.is_scripting():
                raise ValueError(
                    f"{type(self).__name__} was built for {self._num_features} levels, got "
                    f"{len(features)} feature maps."
                )
            raise ValueError("The head got another number of feature maps than it was built for.")

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Args:
            features: L maps (N, C, Hi, Wi), finest first.

        Returns:
            logits: L tensors (N, A * K, Hi, Wi); deltas: L tensors (N, A * 4, Hi, Wi).
        """
        self._check_num_levels(features)
        logits: List[torch.Tensor] = []
        deltas: List[torch.Tensor] = []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            deltas.append(self.bbox_pred(self.bbox_subnet(feature)))
        return logits, deltas
