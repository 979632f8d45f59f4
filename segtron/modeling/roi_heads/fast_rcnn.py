"""The Fast R-CNN box predictor: per-region class scores and box deltas, their training losses
and their post-processing into detections.

Detectron2 path: ``detectron2.modeling.roi_heads.fast_rcnn``.

Shapes used throughout: R regions over all images of the batch, K foreground classes (the
background is the last class, index K), B = 4 box coordinates.
"""

import logging
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from ...config import configurable
from ...layers import ShapeSpec, batched_nms_topk, cat, cross_entropy, nonzero_tuple
from ...structures import Boxes, Instances
from ...utils.events import get_event_storage
from ..box_regression import Box2BoxTransform, _dense_box_regression_loss

__all__ = ["fast_rcnn_inference", "fast_rcnn_inference_single_image", "FastRCNNOutputLayers"]

logger = logging.getLogger(__name__)


def fast_rcnn_inference(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """Turn per-region predictions into final detections, image by image.

    Args:
        boxes: one (Ri, K*4) (class-specific) or (Ri, 4) (class-agnostic) tensor of decoded
            XYXY boxes per image.
        scores: one (Ri, K+1) tensor of class probabilities per image (background last).
        image_shapes: (height, width) of each image, to clip the boxes to.
        score_thresh: keep (region, class) pairs whose score is strictly above this.
        nms_thresh: IoU threshold of the per-class NMS.
        topk_per_image: keep at most this many detections per image (all when negative).

    Returns:
        instances: one ``Instances`` per image with ``pred_boxes`` (Boxes), ``scores`` (D,) and
            ``pred_classes`` (D,) int64, sorted by decreasing score.
        kept_indices: one (D,) int64 tensor per image: the region (row of that image's
            finite-valued inputs) each detection came from.
    """
    results = [
        fast_rcnn_inference_single_image(
            boxes_i, scores_i, shape_i, score_thresh, nms_thresh, topk_per_image
        )
        for boxes_i, scores_i, shape_i in zip(boxes, scores, image_shapes)
    ]
    return [r[0] for r in results], [r[1] for r in results]


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    image_shape: Tuple[int, int],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
) -> Tuple[Instances, torch.Tensor]:
    """:func:`fast_rcnn_inference` for one image.

    Steps, in Detectron2's order: drop regions with any non-finite box or score; drop the
    background column; clip every box to the image; keep (region, class) pairs with score >
    ``score_thresh`` (in row-major order of the (R, K) score matrix); NMS within each class
    (batched, kept indices in decreasing score); keep the first ``topk_per_image``.

    Args:
        boxes: (R, K*4) or (R, 4) decoded boxes.
        scores: (R, K+1) probabilities.
        image_shape: (height, width).

    Returns:
        (Instances, (D,) region indices); see :func:`fast_rcnn_inference`.
    """
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    # Traced graphs always filter: a branch taken on the tracing input would be frozen.
    if torch.jit.is_tracing() or not bool(finite.all()):
        boxes = boxes[finite]
        scores = scores[finite]

    scores = scores[:, :-1]
    num_reg_classes = boxes.shape[1] // 4
    # A copy, because Boxes.clip works in place and the decoded boxes may be views of a
    # tensor that autograd tracks.
    flat = Boxes(boxes.reshape(-1, 4).clone())
    flat.clip(image_shape, check_finite=False)  # the non-finite rows are gone
    boxes = flat.tensor.view(-1, num_reg_classes, 4)  # (R, K or 1, 4)

    keep_mask = scores > score_thresh  # (R, K)
    kept_pairs = keep_mask.nonzero()  # (P, 2): (region, class), row-major
    if num_reg_classes == 1:
        boxes = boxes[kept_pairs[:, 0], 0]
    else:
        boxes = boxes[keep_mask]
    scores = scores[keep_mask]

    # The first ``topk_per_image`` of a full batched NMS, computed from the top scores only.
    keep = batched_nms_topk(boxes, scores, kept_pairs[:, 1], nms_thresh, topk_per_image)
    boxes, scores, kept_pairs = boxes[keep], scores[keep], kept_pairs[keep]

    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = kept_pairs[:, 1]
    return result, kept_pairs[:, 0]


def _log_classification_stats(
    pred_logits: torch.Tensor, gt_classes: torch.Tensor, prefix: str = "fast_rcnn"
) -> None:
    """Record classification accuracy in the current ``EventStorage``.

    Scalars ``<prefix>/cls_accuracy`` (all regions), and, when there are foreground regions,
    ``<prefix>/fg_cls_accuracy`` and ``<prefix>/false_negative`` (foreground regions predicted
    as background).

    Args:
        pred_logits: (R, K+1) logits, background last.
        gt_classes: (R,) labels in [0, K].
    """
    num_regions = gt_classes.numel()
    if num_regions == 0:
        return
    pred_classes = pred_logits.argmax(dim=1)
    bg_class = pred_logits.shape[1] - 1

    fg = (gt_classes >= 0) & (gt_classes < bg_class)
    num_fg = int(fg.sum().item())
    fg_gt = gt_classes[fg]
    fg_pred = pred_classes[fg]

    storage = get_event_storage()
    storage.put_scalar(
        f"{prefix}/cls_accuracy", (pred_classes == gt_classes).sum().item() / num_regions
    )
    if num_fg > 0:
        storage.put_scalar(f"{prefix}/fg_cls_accuracy", (fg_pred == fg_gt).sum().item() / num_fg)
        storage.put_scalar(
            f"{prefix}/false_negative", (fg_pred == bg_class).sum().item() / num_fg
        )


def _fed_loss_weights_from_config(cfg) -> Callable[[], torch.Tensor]:
    """A thunk reading per-class federated-loss weights from the training datasets' metadata
    (``class_image_count ** FED_LOSS_FREQ_WEIGHT_POWER``); only called when USE_FED_LOSS."""

    def read_weights() -> torch.Tensor:
        from ...data.detection_utils import get_fed_loss_cls_weights

        return get_fed_loss_cls_weights(
            dataset_names=cfg.DATASETS.TRAIN,
            freq_weight_power=cfg.MODEL.ROI_BOX_HEAD.FED_LOSS_FREQ_WEIGHT_POWER,
        )

    return read_weights


class FastRCNNOutputLayers(nn.Module):
    """Two linear layers on per-region features: ``cls_score`` (K+1 class logits, background
    last) and ``bbox_pred`` (K*4 class-specific, or 4 class-agnostic, box deltas).

    ``forward(x (R, C) or (R, C, H, W)) -> (scores (R, K+1), proposal_deltas (R, K*4 or 4))``.
    """

    _box2box_transform_class = Box2BoxTransform
    """Box coding built by ``from_config`` from MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS."""

    @configurable
    def __init__(
        self,
        input_shape: Union[ShapeSpec, int],
        *,
        box2box_transform: Box2BoxTransform,
        num_classes: int,
        test_score_thresh: float = 0.0,
        test_nms_thresh: float = 0.5,
        test_topk_per_image: int = 100,
        cls_agnostic_bbox_reg: bool = False,
        smooth_l1_beta: float = 0.0,
        box_reg_loss_type: str = "smooth_l1",
        loss_weight: Union[float, Dict[str, float]] = 1.0,
        use_fed_loss: bool = False,
        use_sigmoid_ce: bool = False,
        get_fed_loss_cls_weights: Optional[Callable[[], torch.Tensor]] = None,
        fed_loss_num_classes: int = 50,
    ):
        """Args:
            input_shape: shape of the per-region features (channels * height * width inputs,
                unset sizes count as 1), or the number of input features.
            box2box_transform: the box coding of the deltas.
            num_classes: K, foreground classes.
            test_score_thresh, test_nms_thresh, test_topk_per_image: inference settings
                (see :func:`fast_rcnn_inference`).
            cls_agnostic_bbox_reg: predict one box per region instead of one per class.
            smooth_l1_beta: beta of the smooth-L1 box loss (0 = L1).
            box_reg_loss_type: "smooth_l1", "giou", "diou" or "ciou".
            loss_weight: a float for both losses, or a dict with weights for "loss_cls" and/or
                "loss_box_reg" (missing keys weigh 1).
            use_fed_loss: federated loss (LVIS): sigmoid CE restricted to the classes present
                plus sampled negatives; needs ``use_sigmoid_ce``.
            use_sigmoid_ce: per-class sigmoid cross-entropy instead of softmax CE; inference
                then uses sigmoid probabilities.
            get_fed_loss_cls_weights: a callable returning (K,) class weights for sampling the
                fed-loss negative classes (required when ``use_fed_loss``).
            fed_loss_num_classes: number of classes the fed loss covers per iteration.
        """
        super().__init__()
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        self.num_classes = num_classes
        input_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        self.cls_score = nn.Linear(input_size, num_classes + 1)
        num_reg_classes = 1 if cls_agnostic_bbox_reg else num_classes
        box_dim = len(box2box_transform.weights)
        self.bbox_pred = nn.Linear(input_size, num_reg_classes * box_dim)

        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        for layer in (self.cls_score, self.bbox_pred):
            nn.init.constant_(layer.bias, 0)

        self.box2box_transform = box2box_transform
        self.smooth_l1_beta = smooth_l1_beta
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image
        if box_reg_loss_type not in ("smooth_l1", "giou", "diou", "ciou"):
            raise ValueError(
                f"FastRCNNOutputLayers: box_reg_loss_type={box_reg_loss_type!r} is not supported "
                "(MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE); use 'smooth_l1', 'giou', 'diou' or "
                "'ciou'."
            )
        self.box_reg_loss_type = box_reg_loss_type
        if isinstance(loss_weight, (int, float)):
            loss_weight = {"loss_cls": float(loss_weight), "loss_box_reg": float(loss_weight)}
        self.loss_weight = dict(loss_weight)

        self.use_fed_loss = use_fed_loss
        self.use_sigmoid_ce = use_sigmoid_ce
        self.fed_loss_num_classes = fed_loss_num_classes
        if use_fed_loss:
            if not use_sigmoid_ce:
                raise ValueError(
                    "FastRCNNOutputLayers: the federated loss needs sigmoid cross-entropy; set "
                    "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE True (use_sigmoid_ce=True)."
                )
            if not callable(get_fed_loss_cls_weights):
                raise ValueError(
                    "FastRCNNOutputLayers: use_fed_loss=True needs get_fed_loss_cls_weights, a "
                    "callable returning one weight per class."
                )
            weights = torch.as_tensor(get_fed_loss_cls_weights(), dtype=torch.float32)
            if weights.shape != (num_classes,):
                raise ValueError(
                    f"FastRCNNOutputLayers: get_fed_loss_cls_weights() returned shape "
                    f"{tuple(weights.shape)}; expected ({num_classes},), one weight per class "
                    "(check the datasets' class_image_count against ROI_HEADS.NUM_CLASSES)."
                )
            self.register_buffer("fed_loss_cls_weights", weights)

    @classmethod
    def from_config(cls, cfg, input_shape):
        box_cfg = cfg.MODEL.ROI_BOX_HEAD
        return {
            "input_shape": input_shape,
            "box2box_transform": cls._box2box_transform_class(weights=box_cfg.BBOX_REG_WEIGHTS),
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "cls_agnostic_bbox_reg": box_cfg.CLS_AGNOSTIC_BBOX_REG,
            "smooth_l1_beta": box_cfg.SMOOTH_L1_BETA,
            "test_score_thresh": cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
            "test_nms_thresh": cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            "test_topk_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "box_reg_loss_type": box_cfg.BBOX_REG_LOSS_TYPE,
            "loss_weight": {"loss_box_reg": box_cfg.BBOX_REG_LOSS_WEIGHT},
            "use_fed_loss": box_cfg.USE_FED_LOSS,
            "use_sigmoid_ce": box_cfg.USE_SIGMOID_CE,
            "get_fed_loss_cls_weights": _fed_loss_weights_from_config(cfg),
            "fed_loss_num_classes": box_cfg.FED_LOSS_NUM_CLASSES,
        }

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Args:
            x: (R, C) or (R, C, H, W) per-region features (flattened when 4-D).

        Returns:
            scores (R, K+1) logits and proposal_deltas (R, K*4) or (R, 4).
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)

    # -- training ---------------------------------------------------------------------------

    def losses(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """Classification and box-regression losses.

        Args:
            predictions: the output of :meth:`forward` for the regions of ``proposals``.
            proposals: one ``Instances`` per image with ``proposal_boxes``, ``gt_classes``
                ((Ri,) in [0, K], K = background) and, for foreground regions, ``gt_boxes``.

        Returns:
            {"loss_cls": mean cross-entropy (or sigmoid CE), "loss_box_reg": box loss summed over
            foreground regions (the gt class's deltas) divided by max(R, 1)}, each multiplied by
            its ``loss_weight``.
        """
        scores, proposal_deltas = predictions
        if len(proposals):
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            if proposal_boxes.requires_grad:
                raise ValueError(
                    "FastRCNNOutputLayers.losses: proposal boxes must not require gradients; "
                    "detach them before passing them to the ROI heads."
                )
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            gt_classes = torch.empty(0, dtype=torch.int64, device=scores.device)
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=proposal_deltas.device)
        _log_classification_stats(scores, gt_classes)

        if self.use_sigmoid_ce:
            loss_cls = self.sigmoid_cross_entropy_loss(scores, gt_classes)
        else:
            loss_cls = cross_entropy(scores, gt_classes, reduction="mean")
        loss_box_reg = self.box_reg_loss(proposal_boxes, gt_boxes, proposal_deltas, gt_classes)
        losses = {"loss_cls": loss_cls, "loss_box_reg": loss_box_reg}
        return {name: value * self.loss_weight.get(name, 1.0) for name, value in losses.items()}

    def box_reg_loss(
        self,
        proposal_boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        pred_deltas: torch.Tensor,
        gt_classes: torch.Tensor,
    ) -> torch.Tensor:
        """Box loss over the foreground regions, normalised by the number of sampled regions.

        Args:
            proposal_boxes: (R, 4) region boxes.
            gt_boxes: (R, 4) the matched ground-truth boxes (only foreground rows are read).
            pred_deltas: (R, K*4) or (R, 4) predicted deltas.
            gt_classes: (R,) labels in [0, K].

        Returns:
            scalar: sum over foreground regions of the loss of the gt class's deltas, divided by
            max(R, 1) -- so each region weighs the same however many of them are foreground.
        """
        box_dim = proposal_boxes.shape[1]
        fg_inds = nonzero_tuple((gt_classes >= 0) & (gt_classes < self.num_classes))[0]
        if pred_deltas.shape[1] == box_dim:  # class-agnostic
            fg_deltas = pred_deltas[fg_inds]
        else:
            fg_deltas = pred_deltas.view(-1, self.num_classes, box_dim)[
                fg_inds, gt_classes[fg_inds]
            ]
        everything = torch.ones((1, fg_inds.numel()), dtype=torch.bool, device=pred_deltas.device)
        loss = _dense_box_regression_loss(
            [proposal_boxes[fg_inds]],
            self.box2box_transform,
            [fg_deltas.unsqueeze(0)],
            [gt_boxes[fg_inds]],
            everything,
            box_reg_loss_type=self.box_reg_loss_type,
            smooth_l1_beta=self.smooth_l1_beta,
        )
        return loss / max(gt_classes.numel(), 1.0)

    def sigmoid_cross_entropy_loss(
        self, pred_class_logits: torch.Tensor, gt_classes: torch.Tensor
    ) -> torch.Tensor:
        """Per-class binary cross-entropy on the K foreground logits (the background logit is
        ignored; a background region has all-zero targets), summed and divided by R. With the
        federated loss only the classes chosen by :meth:`get_fed_loss_classes` count.

        Args:
            pred_class_logits: (R, K+1) logits.
            gt_classes: (R,) labels in [0, K].
        """
        if pred_class_logits.numel() == 0:
            return pred_class_logits.new_zeros([1])[0]
        num_regions = pred_class_logits.shape[0]
        num_classes = pred_class_logits.shape[1] - 1
        target = F.one_hot(gt_classes, num_classes + 1).to(pred_class_logits.dtype)[:, :-1]
        loss = F.binary_cross_entropy_with_logits(
            pred_class_logits[:, :-1], target, reduction="none"
        )
        if self.use_fed_loss:
            chosen = self.get_fed_loss_classes(
                gt_classes,
                num_fed_loss_classes=self.fed_loss_num_classes,
                num_classes=num_classes,
                weight=self.fed_loss_cls_weights,
            )
            class_mask = pred_class_logits.new_zeros(num_classes + 1)
            class_mask[chosen] = 1
            loss = loss * class_mask[:num_classes].view(1, num_classes)
        return loss.sum() / num_regions

    def get_fed_loss_classes(
        self, gt_classes: torch.Tensor, num_fed_loss_classes: int, num_classes: int,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        """Classes the federated loss covers: every class present in ``gt_classes`` (possibly
        including the background index K) plus, when fewer than ``num_fed_loss_classes``,
        absent foreground classes drawn without replacement with probability ∝ ``weight``
        (global torch generator).

        Returns:
            1-D int64 tensor of class indices.
        """
        present = torch.unique(gt_classes)
        if len(present) >= num_fed_loss_classes:
            return present
        prob = present.new_ones(num_classes + 1).float()
        prob[-1] = 0
        prob[:num_classes] = weight.float().clone()
        prob[present] = 0
        negatives = torch.multinomial(prob, num_fed_loss_classes - len(present), replacement=False)
        return torch.cat([present, negatives])

    # -- inference --------------------------------------------------------------------------

    def inference(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> Tuple[List[Instances], List[torch.Tensor]]:
        """Detections from the predictions for ``proposals`` (each with ``proposal_boxes``):
        :func:`fast_rcnn_inference` with this layer's test settings.

        Returns:
            (one ``Instances`` per image, one (Di,) tensor of region indices per image).
        """
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [p.image_size for p in proposals]
        return fast_rcnn_inference(
            boxes, scores, image_shapes, self.test_score_thresh, self.test_nms_thresh,
            self.test_topk_per_image,
        )

    def predict_boxes_for_gt_classes(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Decoded boxes of each region for its ``gt_classes`` (clamped to [0, K-1], so
        background regions use class K-1); the single box when class-agnostic.

        Returns:
            one (Ri, 4) tensor per image.
        """
        if not len(proposals):
            return []
        _, proposal_deltas = predictions
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        num_regions, box_dim = proposal_boxes.shape
        decoded = self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes)
        num_reg_classes = decoded.shape[1] // box_dim
        if num_reg_classes > 1:
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            gt_classes = gt_classes.clamp(0, num_reg_classes - 1)
            rows = torch.arange(num_regions, dtype=torch.long, device=decoded.device)
            decoded = decoded.view(num_regions, num_reg_classes, box_dim)[rows, gt_classes]
        return list(decoded.split([len(p) for p in proposals]))

    def predict_boxes(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Decode the deltas relative to each image's ``proposal_boxes``.

        Returns:
            one (Ri, K*4) (or (Ri, 4) class-agnostic) tensor per image.
        """
        if not len(proposals):
            return []
        _, proposal_deltas = predictions
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        decoded = self.box2box_transform.apply_deltas(proposal_deltas, proposal_boxes)
        return list(decoded.split([len(p) for p in proposals]))

    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ) -> List[torch.Tensor]:
        """Class probabilities: softmax over K+1 classes (sigmoid per class with sigmoid CE).

        Returns:
            one (Ri, K+1) tensor per image.
        """
        scores, _ = predictions
        if self.use_sigmoid_ce:
            probs = scores.sigmoid()
        else:
            probs = F.softmax(scores, dim=-1)
        return list(probs.split([len(p) for p in proposals], dim=0))
