"""Region Proposal Network (Faster R-CNN) and its head.

Detectron2 path: ``detectron2.modeling.proposal_generator.rpn``.

Layout conventions (they must match the anchor generator, see ``anchor_generator.py``): on a
level with A anchors per location and an (H, W) grid, the head predicts objectness as
(N, A, H, W) and deltas as (N, A * 4, H, W), channel ``a * 4 + k`` holding coordinate k of
anchor a. The RPN flattens both to the anchor order, location-major with anchors inner:
objectness (N, H * W * A) and deltas (N, H * W * A, 4), row ``(y * W + x) * A + a``.
"""

import logging
import numbers
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import Conv2d, ShapeSpec, cat
from ...structures import Boxes, ImageList, Instances, pairwise_iou
from ...utils.events import put_scalars_if_recording
from ..anchor_generator import build_anchor_generator
from ..box_regression import Box2BoxTransform, _dense_box_regression_loss
from ..feature_names import check_in_features
from ..matcher import Matcher
from ..registries import PROPOSAL_GENERATOR_REGISTRY, RPN_HEAD_REGISTRY
from ..sampling import subsample_labels
from .proposal_utils import nms_top_candidates, select_top_per_level

__all__ = ["RPN_HEAD_REGISTRY", "build_rpn_head", "StandardRPNHead", "RPN"]

logger = logging.getLogger(__name__)


def _check_features_present(in_features: List[str], features: Dict[str, torch.Tensor]) -> None:
    """KeyError naming the MODEL.RPN.IN_FEATURES missing from the backbone's ``features``."""
    missing = [f for f in in_features if f not in features]
    if missing:
        raise KeyError(
            f"RPN: features {missing} (MODEL.RPN.IN_FEATURES) are missing from the backbone "
            f"output, which has {sorted(features)}."
        )


def build_rpn_head(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """Build the RPN head named by ``cfg.MODEL.RPN.HEAD_NAME`` from ``RPN_HEAD_REGISTRY``.

    Args:
        cfg: the config.
        input_shape: one ``ShapeSpec`` per feature level the head runs on, in level order.
    """
    name = cfg.MODEL.RPN.HEAD_NAME
    return RPN_HEAD_REGISTRY.get(name)(cfg, input_shape)


@RPN_HEAD_REGISTRY.register()
class StandardRPNHead(nn.Module):
    """The RPN head shared by all levels: 3x3 conv(s) + ReLU, then two sibling 1x1 convs.

    ``objectness_logits`` predicts one logit per anchor (A channels) and ``anchor_deltas`` the
    ``box_dim`` box-regression deltas per anchor (A * box_dim channels). Parameter names are
    Detectron2's: ``conv.{weight,bias}`` (or ``conv.conv{k}.*`` with several hidden convs),
    ``objectness_logits.*``, ``anchor_deltas.*``.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        num_anchors: int,
        box_dim: int = 4,
        conv_dims: Sequence[int] = (-1,),
    ):
        """Args:
            in_channels: channels of every input feature map.
            num_anchors: anchors per location A (the same on every level).
            box_dim: numbers per box delta (4 for axis-aligned boxes).
            conv_dims: output channels of the hidden 3x3 convs; -1 keeps the input's channels.
                With one entry the hidden conv is the module ``conv``; with several,
                ``conv`` is an ``nn.Sequential`` of ``conv0``, ``conv1``, ...
        """
        super().__init__()
        conv_dims = list(conv_dims)
        if len(conv_dims) == 0:
            raise ValueError(
                "StandardRPNHead: conv_dims (MODEL.RPN.CONV_DIMS) is empty; give at least one "
                "hidden conv width, e.g. [-1] to keep the input channels."
            )
        channels = int(in_channels)
        if len(conv_dims) == 1:
            out = channels if conv_dims[0] == -1 else int(conv_dims[0])
            self._check_width(out, conv_dims)
            self.conv = self._hidden_conv(channels, out)
            channels = out
        else:
            self.conv = nn.Sequential()
            for k, dim in enumerate(conv_dims):
                out = channels if dim == -1 else int(dim)
                self._check_width(out, conv_dims)
                self.conv.add_module(f"conv{k}", self._hidden_conv(channels, out))
                channels = out
        self.objectness_logits = Conv2d(channels, num_anchors, kernel_size=1, stride=1)
        self.anchor_deltas = Conv2d(channels, num_anchors * box_dim, kernel_size=1, stride=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0)

    @staticmethod
    def _check_width(width: int, conv_dims) -> None:
        if width <= 0:
            raise ValueError(
                f"StandardRPNHead: conv_dims (MODEL.RPN.CONV_DIMS) = {list(conv_dims)} gives a "
                f"hidden conv with {width} channels; use positive widths or -1 (= input channels)."
            )

    @staticmethod
    def _hidden_conv(in_channels: int, out_channels: int) -> Conv2d:
        return Conv2d(
            in_channels, out_channels, kernel_size=3, stride=1, padding=1, activation=nn.ReLU()
        )

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        """Arguments from the input shapes (channels), the anchor generator the config builds
        for them (anchors per location, box_dim) and MODEL.RPN.CONV_DIMS."""
        channels = [s.channels for s in input_shape]
        if len(set(channels)) != 1:
            raise ValueError(
                f"StandardRPNHead is shared by all levels, so every level must have the same "
                f"channels; MODEL.RPN.IN_FEATURES gives levels with channels {channels}."
            )
        anchor_generator = build_anchor_generator(cfg, input_shape)
        num_anchors = list(anchor_generator.num_anchors)
        if len(set(num_anchors)) != 1:
            raise ValueError(
                f"StandardRPNHead needs the same number of anchors per location on every level; "
                f"MODEL.ANCHOR_GENERATOR.SIZES / ASPECT_RATIOS give {num_anchors}."
            )
        return {
            "in_channels": channels[0],
            "num_anchors": num_anchors[0],
            "box_dim": anchor_generator.box_dim,
            "conv_dims": cfg.MODEL.RPN.CONV_DIMS,
        }

    def forward(
        self, features: List[torch.Tensor]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Args:
            features: L feature maps (N, C, Hi, Wi).

        Returns:
            pred_objectness_logits: L tensors (N, A, Hi, Wi).
            pred_anchor_deltas: L tensors (N, A * box_dim, Hi, Wi).
        """
        logits, deltas = [], []
        for x in features:
            hidden = self.conv(x)
            logits.append(self.objectness_logits(hidden))
            deltas.append(self.anchor_deltas(hidden))
        return logits, deltas


@PROPOSAL_GENERATOR_REGISTRY.register()
class RPN(nn.Module):
    """Region Proposal Network: objectness and box deltas for dense anchors, decoded into
    proposals; in training also the anchor labels and the two RPN losses.

    ``forward(images, features, gt_instances=None) -> (proposals, losses)``.
    """

    _box2box_transform_class = Box2BoxTransform
    """Box coding built by ``from_config`` from MODEL.RPN.BBOX_REG_WEIGHTS."""

    @configurable
    def __init__(
        self,
        *,
        in_features: List[str],
        head: nn.Module,
        anchor_generator: nn.Module,
        anchor_matcher: Matcher,
        box2box_transform: Box2BoxTransform,
        batch_size_per_image: int,
        positive_fraction: float,
        pre_nms_topk: Tuple[int, int],
        post_nms_topk: Tuple[int, int],
        nms_thresh: float = 0.7,
        min_box_size: float = 0.0,
        anchor_boundary_thresh: float = -1.0,
        loss_weight: Union[float, Dict[str, float]] = 1.0,
        box_reg_loss_type: str = "smooth_l1",
        smooth_l1_beta: float = 0.0,
    ):
        """Args:
            in_features: names of the feature maps to use, in level order (e.g. p2..p6).
            head: maps the list of feature maps to (objectness (N, A, Hi, Wi), deltas
                (N, A * box_dim, Hi, Wi)) per level, e.g. ``StandardRPNHead``.
            anchor_generator: maps the list of feature maps to one ``Boxes`` of Hi * Wi * A
                anchors per level (location-major), with attribute ``box_dim``.
            anchor_matcher: labels anchors by IoU with the ground truth (1 / 0 / -1).
            box2box_transform: the box coding of the deltas.
            batch_size_per_image: anchors sampled per image for the losses (and the loss
                normaliser: losses are divided by ``batch_size_per_image * num_images``).
            positive_fraction: at most this fraction of the sampled anchors is positive.
            pre_nms_topk: (train, test) candidates kept per level before NMS.
            post_nms_topk: (train, test) proposals kept per image after NMS.
            nms_thresh: NMS IoU threshold on the proposals.
            min_box_size: proposals with a side <= this (pixels) are dropped.
            anchor_boundary_thresh: when >= 0, anchors reaching more than this many pixels
                beyond the image are ignored in training (legacy; -1 disables it).
            loss_weight: a number for both losses, or a dict with keys "loss_rpn_cls" and
                "loss_rpn_loc" (a missing key means 1).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            smooth_l1_beta: smooth-L1 beta (0 = L1); only with "smooth_l1".
        """
        super().__init__()
        self.in_features = list(in_features)
        self.rpn_head = head
        self.anchor_generator = anchor_generator
        self.anchor_matcher = anchor_matcher
        self.box2box_transform = box2box_transform
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)
        if len(pre_nms_topk) != 2 or len(post_nms_topk) != 2:
            raise ValueError(
                f"RPN: pre_nms_topk and post_nms_topk must be (train, test) pairs, got "
                f"{pre_nms_topk!r} and {post_nms_topk!r}."
            )
        # Indexed by self.training.
        self.pre_nms_topk = {True: int(pre_nms_topk[0]), False: int(pre_nms_topk[1])}
        self.post_nms_topk = {True: int(post_nms_topk[0]), False: int(post_nms_topk[1])}
        self.nms_thresh = float(nms_thresh)
        self.min_box_size = float(min_box_size)
        self.anchor_boundary_thresh = anchor_boundary_thresh
        if isinstance(loss_weight, numbers.Real):
            loss_weight = {"loss_rpn_cls": float(loss_weight), "loss_rpn_loc": float(loss_weight)}
        self.loss_weight = dict(loss_weight)
        self.box_reg_loss_type = box_reg_loss_type
        self.smooth_l1_beta = smooth_l1_beta

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        """Arguments from MODEL.RPN.*, MODEL.PROPOSAL_GENERATOR.MIN_SIZE and the backbone's
        output shapes (``input_shape``: feature name -> ``ShapeSpec``)."""
        rpn = cfg.MODEL.RPN
        in_features = list(rpn.IN_FEATURES)
        shapes = check_in_features(in_features, input_shape, "MODEL.RPN.IN_FEATURES")
        return {
            "in_features": in_features,
            "head": build_rpn_head(cfg, shapes),
            "anchor_generator": build_anchor_generator(cfg, shapes),
            "anchor_matcher": Matcher(
                rpn.IOU_THRESHOLDS, rpn.IOU_LABELS, allow_low_quality_matches=True
            ),
            "box2box_transform": cls._box2box_transform_class(weights=rpn.BBOX_REG_WEIGHTS),
            "batch_size_per_image": rpn.BATCH_SIZE_PER_IMAGE,
            "positive_fraction": rpn.POSITIVE_FRACTION,
            "pre_nms_topk": (rpn.PRE_NMS_TOPK_TRAIN, rpn.PRE_NMS_TOPK_TEST),
            "post_nms_topk": (rpn.POST_NMS_TOPK_TRAIN, rpn.POST_NMS_TOPK_TEST),
            "nms_thresh": rpn.NMS_THRESH,
            "min_box_size": cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE,
            "anchor_boundary_thresh": rpn.BOUNDARY_THRESH,
            "loss_weight": {
                "loss_rpn_cls": rpn.LOSS_WEIGHT,
                "loss_rpn_loc": rpn.BBOX_REG_LOSS_WEIGHT * rpn.LOSS_WEIGHT,
            },
            "box_reg_loss_type": rpn.BBOX_REG_LOSS_TYPE,
            "smooth_l1_beta": rpn.SMOOTH_L1_BETA,
        }

    # -- training targets ------------------------------------------------------------------

    def _subsample_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Keep a random sample of ``batch_size_per_image`` labels (1 / 0) and set every other
        entry to -1 (ignore). ``labels`` (R,) is modified in place and returned."""
        pos_idx, neg_idx = subsample_labels(
            labels, self.batch_size_per_image, self.positive_fraction, 0
        )
        labels.fill_(-1)
        labels.scatter_(0, pos_idx, 1)
        labels.scatter_(0, neg_idx, 0)
        return labels

    @torch.no_grad()
    def label_and_sample_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        """Label every anchor of every image and sample the anchors the losses use.

        Args:
            anchors: one ``Boxes`` per level; R anchors in all, in level then anchor order.
            gt_instances: N ``Instances`` with ``gt_boxes``; their ``image_size`` is used for
                the boundary check.

        Returns:
            gt_labels: N int8 tensors (R,): 1 sampled positive, 0 sampled negative, -1 not
                sampled / ignored. An image without ground truth has only negatives to sample.
            matched_gt_boxes: N float tensors (R, 4): the ground-truth box matched to each
                anchor (meaningful where the label is 1; zeros for an image without gt).
        """
        anchors = type(anchors[0]).cat(list(anchors))
        gt_labels, matched_gt_boxes = [], []
        for inst in gt_instances:
            gt_boxes = inst.gt_boxes
            iou = self._anchor_iou(gt_boxes, anchors)  # (M, R)
            matched_idxs, labels = self.anchor_matcher(iou)
            labels = labels.to(device=gt_boxes.device)
            del iou
            if self.anchor_boundary_thresh >= 0:
                inside = anchors.inside_box(inst.image_size, self.anchor_boundary_thresh)
                labels[~inside] = -1
            labels = self._subsample_labels(labels)
            if len(gt_boxes) == 0:
                matched = torch.zeros_like(anchors.tensor)
            else:
                matched = gt_boxes.tensor[matched_idxs]
            gt_labels.append(labels)
            matched_gt_boxes.append(matched)
        return gt_labels, matched_gt_boxes

    def _anchor_iou(self, gt_boxes: Boxes, anchors: Boxes) -> torch.Tensor:
        """(M, R) IoU of the ground-truth boxes with all anchors (``RRPN``: rotated IoU)."""
        return pairwise_iou(gt_boxes, anchors)

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """The two RPN losses, each summed over the sampled anchors of all images and divided
        by ``batch_size_per_image * num_images``, then multiplied by ``loss_weight``.

        Args:
            anchors: one ``Boxes`` per level (Ai anchors each, R in all).
            pred_objectness_logits: one (N, Ai) tensor per level.
            gt_labels: N (R,) label tensors from :meth:`label_and_sample_anchors`.
            pred_anchor_deltas: one (N, Ai, 4) tensor per level.
            gt_boxes: N (R, 4) matched ground-truth boxes.

        Returns:
            {"loss_rpn_cls": binary cross-entropy with logits on anchors labelled 0 / 1,
            "loss_rpn_loc": box-regression loss on anchors labelled 1}.
        """
        num_images = len(gt_labels)
        labels = torch.stack(gt_labels)  # (N, R)
        pos_mask = labels == 1
        self._log_anchor_counts(pos_mask, labels == 0, num_images)

        loc_loss = _dense_box_regression_loss(
            anchors,
            self.box2box_transform,
            pred_anchor_deltas,
            gt_boxes,
            pos_mask,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        valid = labels >= 0
        cls_loss = F.binary_cross_entropy_with_logits(
            cat(pred_objectness_logits, dim=1)[valid],
            labels[valid].to(torch.float32),
            reduction="sum",
        )
        normalizer = self.batch_size_per_image * num_images
        losses = {"loss_rpn_cls": cls_loss / normalizer, "loss_rpn_loc": loc_loss / normalizer}
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    @staticmethod
    def _log_anchor_counts(pos_mask: torch.Tensor, neg_mask: torch.Tensor, num_images: int):
        put_scalars_if_recording(**{
            "rpn/num_pos_anchors": pos_mask.sum().item() / num_images,
            "rpn/num_neg_anchors": neg_mask.sum().item() / num_images,
        })

    # -- forward ---------------------------------------------------------------------------

    def _dense_predictions(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[List[Boxes], List[torch.Tensor], List[torch.Tensor]]:
        """Anchors, objectness logits (N, Ai) and deltas (N, Ai, B) of every level, in the
        anchor order (see the module docstring)."""
        if not torch.jit.is_scripting():
            _check_features_present(self.in_features, features)
        feature_list = [features[f] for f in self.in_features]
        anchors = self.anchor_generator(feature_list)
        logits, deltas = self.rpn_head(feature_list)
        box_dim = self.anchor_generator.box_dim
        # (N, A, H, W) -> (N, H, W, A) -> (N, H*W*A)
        pred_objectness_logits = [score.permute(0, 2, 3, 1).flatten(1) for score in logits]
        # (N, A*B, H, W) -> (N, A, B, H, W) -> (N, H, W, A, B) -> (N, H*W*A, B)
        pred_anchor_deltas = [
            d.view(d.shape[0], -1, box_dim, d.shape[-2], d.shape[-1])
            .permute(0, 3, 4, 1, 2)
            .flatten(1, -2)
            for d in deltas
        ]
        return anchors, pred_objectness_logits, pred_anchor_deltas

    def forward(
        self,
        images: ImageList,
        features: Dict[str, torch.Tensor],
        gt_instances: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """Args:
            images: the N input images (their ``image_sizes`` clip the proposals).
            features: feature name -> (N, C, Hi, Wi); must contain every ``in_features`` name.
            gt_instances: N ``Instances`` with ``gt_boxes``; required in training.

        Returns:
            proposals: N ``Instances`` with ``proposal_boxes`` and ``objectness_logits``, at
                most ``post_nms_topk`` each, by decreasing logit (no gradient).
            losses: {"loss_rpn_cls", "loss_rpn_loc"} in training, else {}.
        """
        anchors, pred_objectness_logits, pred_anchor_deltas = self._dense_predictions(features)
        if self.training:
            if gt_instances is None:
                raise ValueError(
                    "RPN requires gt_instances in training! Pass the ground truth of each image "
                    "(batched inputs need an 'instances' field), or call model.eval() for "
                    "inference."
                )
            gt_labels, gt_boxes = self.label_and_sample_anchors(anchors, gt_instances)
            losses = self.losses(
                anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes
            )
        else:
            losses = {}
        proposals = self.predict_proposals(
            anchors, pred_objectness_logits, pred_anchor_deltas, images.image_sizes
        )
        return proposals, losses

    def predict_proposals(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Decode the deltas and select the top proposals (see ``find_top_rpn_proposals``).

        Runs without gradient: the proposals are treated as constants by the ROI heads
        (approximate joint training), in training as in inference. The pre-/post-NMS top-k
        follow ``self.training``.

        Args:
            anchors: one ``Boxes`` per level (Ai anchors).
            pred_objectness_logits: one (N, Ai) tensor per level.
            pred_anchor_deltas: one (N, Ai, B) tensor per level.
            image_sizes: N (h, w).
        """
        candidates = self._candidates(anchors, pred_objectness_logits, pred_anchor_deltas)
        return self.proposals_from_candidates(candidates, image_sizes)

    def _candidates(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoded boxes of the top ``pre_nms_topk`` logits of each level (no gradient)."""
        with torch.no_grad():
            pred_proposals = self._decode_proposals(anchors, pred_anchor_deltas)
            return select_top_per_level(
                pred_proposals, pred_objectness_logits, pred_objectness_logits[0].shape[0],
                self.pre_nms_topk[self.training], box_dim=self.anchor_generator.box_dim,
                caller="RPN.predict_proposals",
            )

    def top_candidates(
        self, features: Dict[str, torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The part of inference with static shapes: head, anchors, box decoding and each
        level's top ``pre_nms_topk`` (no host sync; for a given input size every output has a
        fixed shape, so it can be captured in a CUDA graph). ``forward`` in eval mode equals
        ``proposals_from_candidates(top_candidates(features), image_sizes)``.

        Args:
            features: feature name -> (N, C, Hi, Wi); must contain every ``in_features`` name.

        Returns:
            scores (N, R) logits, boxes (N, R, 4) XYXY in input pixels, levels (R,) int64.
        """
        anchors, logits, deltas = self._dense_predictions(features)
        return self._candidates(anchors, logits, deltas)

    def proposals_from_candidates(
        self,
        candidates: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Instances]:
        """Filtering, clipping and NMS of :meth:`top_candidates`' output (data-dependent
        sizes): N ``Instances`` with ``proposal_boxes`` and ``objectness_logits``."""
        scores, boxes, levels = candidates
        with torch.no_grad():
            return nms_top_candidates(
                scores, boxes, levels, image_sizes, self.nms_thresh,
                self.post_nms_topk[self.training], self.min_box_size, self.training,
            )

    def _decode_proposals(
        self, anchors: List[Boxes], pred_anchor_deltas: List[torch.Tensor]
    ) -> List[torch.Tensor]:
        """Apply each level's (N, Ai, B) deltas to its Ai anchors; returns (N, Ai, B) boxes."""
        num_images = pred_anchor_deltas[0].shape[0]
        out = []
        for anchors_i, deltas_i in zip(anchors, pred_anchor_deltas):
            box_dim = anchors_i.tensor.shape[1]
            flat_deltas = deltas_i.reshape(-1, box_dim)
            flat_anchors = anchors_i.tensor.unsqueeze(0).expand(num_images, -1, -1)
            flat_anchors = flat_anchors.reshape(-1, box_dim)
            boxes = self.box2box_transform.apply_deltas(flat_deltas, flat_anchors)
            out.append(boxes.view(num_images, -1, box_dim))
        return out
