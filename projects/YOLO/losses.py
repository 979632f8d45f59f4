"""YOLOX's training losses (Ge et al., "YOLOX: Exceeding YOLO Series in 2021"), as pure tensor
functions over the flattened head outputs (:func:`~.decode.flatten_predictions`).

Per image, :func:`assign_targets` runs SimOTA (:func:`~.simota.simota_assign`) on detached
sigmoid probabilities and decoded boxes; :func:`yolox_losses` then computes, over the batch:

- ``loss_iou``: ``IOU_LOSS_WEIGHT`` (5.0) x the IoU loss of the foreground anchors' decoded
  boxes against their GT boxes, ``1 - IoU^2`` ("iou") or ``1 - GIoU`` ("giou");
- ``loss_obj``: binary cross-entropy (with logits) of every anchor's objectness against
  1 (foreground) / 0 (background);
- ``loss_cls``: binary cross-entropy (with logits) of the foreground anchors' K class logits
  against ``one_hot(gt class) x IoU`` (IoU of the anchor's predicted box with its GT box,
  computed during the assignment, no gradient);
- ``loss_l1`` (only with ``use_l1_loss``, YOLOX's last 15 epochs): L1 distance of the
  foreground anchors' raw (dx, dy, tw, th) to the GT box encoded the same way.

Each is a sum over the batch divided by ``max(number of foreground anchors in the batch, 1)``
(not a moving average, unlike RetinaNet / FCOS). Everything is computed in float32.

Grid (see :mod:`~.decode`): a prediction at cell (i, j) of stride s decodes around
``(i, j) * s``; SimOTA's anchor point for that cell is its middle ``((i, j) + 0.5) * s``
(:func:`anchor_centers`).
"""

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from segtron.layers import giou_loss
from segtron.utils.events import put_scalars_if_recording

from .decode import decode_boxes
from .simota import SimOTAResult, simota_assign

__all__ = [
    "IOU_LOSS_TYPES",
    "anchor_centers",
    "assign_targets",
    "check_iou_loss_type",
    "iou_loss",
    "l1_targets",
    "yolox_losses",
]

IOU_LOSS_TYPES = ("iou", "giou")
"""Accepted MODEL.YOLOX.IOU_LOSS_TYPE values."""


def check_iou_loss_type(loss_type: str) -> str:
    """``loss_type`` if it is one of :data:`IOU_LOSS_TYPES`, else ValueError naming
    MODEL.YOLOX.IOU_LOSS_TYPE."""
    if loss_type not in IOU_LOSS_TYPES:
        raise ValueError(
            f"MODEL.YOLOX.IOU_LOSS_TYPE = {loss_type!r}: must be 'iou' (1 - IoU^2, YOLOX's "
            "default) or 'giou' (1 - GIoU)."
        )
    return loss_type


def anchor_centers(offsets: torch.Tensor, cell_strides: torch.Tensor) -> torch.Tensor:
    """SimOTA's anchor points: (R, 2) cell middles ``(offsets + 0.5) * stride`` in input
    pixels, from :func:`~.decode.grid_points`' (R, 2) cell indices (i, j) and (R,) strides."""
    return (offsets + 0.5) * cell_strides[:, None]


def iou_loss(
    pred_boxes: torch.Tensor, target_boxes: torch.Tensor, loss_type: str = "iou"
) -> torch.Tensor:
    """Per-pair IoU loss of matching XYXY boxes, (F, 4) and (F, 4) pixels -> (F,).

    "iou": ``1 - IoU^2`` (in [0, 1]; no gradient for disjoint boxes); "giou": ``1 - GIoU``
    (in [0, 2], :func:`segtron.layers.giou_loss`).
    """
    check_iou_loss_type(loss_type)
    if loss_type == "giou":
        return giou_loss(pred_boxes, target_boxes)
    top_left = torch.max(pred_boxes[:, :2], target_boxes[:, :2])
    bottom_right = torch.min(pred_boxes[:, 2:], target_boxes[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    area_pred = (pred_boxes[:, 2:] - pred_boxes[:, :2]).prod(dim=1)
    area_target = (target_boxes[:, 2:] - target_boxes[:, :2]).prod(dim=1)
    iou = inter / (area_pred + area_target - inter + 1e-16)
    return 1 - iou**2


def l1_targets(
    gt_boxes: torch.Tensor,
    offsets: torch.Tensor,
    cell_strides: torch.Tensor,
    eps: float = 1e-8,
) -> torch.Tensor:
    """GT boxes encoded as the head's raw box values, the inverse of
    :func:`~.decode.decode_boxes`: (F, 4) XYXY pixels at cells (F, 2) (i, j) of strides (F,)
    -> (F, 4) ``(cx / s - i, cy / s - j, log(w / s + eps), log(h / s + eps))``."""
    strides = cell_strides[:, None]
    centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    sizes = gt_boxes[:, 2:] - gt_boxes[:, :2]
    return torch.cat((centres / strides - offsets, torch.log(sizes / strides + eps)), dim=1)


def assign_targets(
    cls_logits: torch.Tensor,
    pred_boxes: torch.Tensor,
    obj_logits: torch.Tensor,
    offsets: torch.Tensor,
    cell_strides: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    gt_classes: Sequence[torch.Tensor],
    *,
    center_radius: float = 2.5,
    iou_cost_weight: float = 3.0,
    dynamic_k_candidates: int = 10,
) -> List[SimOTAResult]:
    """SimOTA on every image of the batch, without gradient.

    Args:
        cls_logits: (N, R, K) class logits.
        pred_boxes: (N, R, 4) decoded XYXY boxes, pixels.
        obj_logits: (N, R) objectness logits.
        offsets, cell_strides: (R, 2) cell indices and (R,) strides (:func:`grid_points`).
        gt_boxes: N (G_n, 4) XYXY GT boxes in network-input pixels.
        gt_classes: N (G_n,) int64 classes in [0, K).
        center_radius, iou_cost_weight, dynamic_k_candidates: MODEL.YOLOX.CENTER_RADIUS,
            IOU_COST_WEIGHT and DYNAMIC_K_CANDIDATES (SimOTA's radius, iou_weight and
            top_candidates).

    Returns:
        N :class:`SimOTAResult`, one per image (A = R anchors).
    """
    with torch.no_grad():
        centers = anchor_centers(offsets.float(), cell_strides.float())
        strides = cell_strides.float()
        cls_probs = cls_logits.detach().float().sigmoid()
        obj_probs = obj_logits.detach().float().sigmoid()
        boxes = pred_boxes.detach().float()
        return [
            simota_assign(
                cls_probs[i],
                obj_probs[i],
                boxes[i],
                centers,
                strides,
                gt_boxes[i].float(),
                gt_classes[i],
                radius=center_radius,
                top_candidates=dynamic_k_candidates,
                iou_weight=iou_cost_weight,
            )
            for i in range(len(gt_boxes))
        ]


def yolox_losses(
    cls_logits: torch.Tensor,
    box_preds: torch.Tensor,
    obj_logits: torch.Tensor,
    offsets: torch.Tensor,
    cell_strides: torch.Tensor,
    gt_boxes: Sequence[torch.Tensor],
    gt_classes: Sequence[torch.Tensor],
    *,
    iou_loss_type: str = "iou",
    iou_loss_weight: float = 5.0,
    use_l1_loss: bool = False,
    center_radius: float = 2.5,
    iou_cost_weight: float = 3.0,
    dynamic_k_candidates: int = 10,
) -> Dict[str, torch.Tensor]:
    """YOLOX's losses for a batch (module docstring).

    Args:
        cls_logits: (N, R, K) class logits.
        box_preds: (N, R, 4) raw box values (dx, dy, tw, th) in strides.
        obj_logits: (N, R) objectness logits.
        offsets, cell_strides: (R, 2) cell indices (i, j) and (R,) strides in pixels
            (:func:`~.decode.grid_points`, same flattened order as the predictions).
        gt_boxes: N (G_n, 4) XYXY GT boxes in network-input pixels (G_n may be 0).
        gt_classes: N (G_n,) int64 classes in [0, K).
        iou_loss_type: "iou" or "giou" (MODEL.YOLOX.IOU_LOSS_TYPE).
        iou_loss_weight: factor of loss_iou (MODEL.YOLOX.IOU_LOSS_WEIGHT, YOLOX: 5.0).
        use_l1_loss: add "loss_l1" (MODEL.YOLOX.USE_L1_LOSS).
        center_radius, iou_cost_weight, dynamic_k_candidates: SimOTA's settings
            (:func:`assign_targets`).

    Returns:
        {"loss_iou", "loss_obj", "loss_cls"} (+ "loss_l1"), scalar float32 tensors, each
        divided by max(number of foreground anchors in the batch, 1). Records
        "num_fg_per_image" in the current EventStorage, if any.
    """
    check_iou_loss_type(iou_loss_type)
    num_images, num_anchors, num_classes = cls_logits.shape
    if len(gt_boxes) != num_images or len(gt_classes) != num_images:
        raise ValueError(
            f"yolox_losses: {num_images} images of predictions but {len(gt_boxes)} gt_boxes "
            f"and {len(gt_classes)} gt_classes entries; give one per image."
        )
    for i, classes in enumerate(gt_classes):
        if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
            raise ValueError(
                f"Image {i} has gt_classes in [{int(classes.min())}, {int(classes.max())}] but "
                f"MODEL.YOLOX.NUM_CLASSES = {num_classes}: classes must be in [0, NUM_CLASSES); "
                "set it to the dataset's number of classes."
            )

    cls_logits = cls_logits.float()
    box_preds = box_preds.float()
    obj_logits = obj_logits.float()
    offsets = offsets.float()
    cell_strides = cell_strides.float()
    pred_boxes = decode_boxes(box_preds, offsets, cell_strides)  # (N, R, 4), with gradient

    results = assign_targets(
        cls_logits, pred_boxes, obj_logits, offsets, cell_strides, gt_boxes, gt_classes,
        center_radius=center_radius,
        iou_cost_weight=iou_cost_weight,
        dynamic_k_candidates=dynamic_k_candidates,
    )
    fg_mask = torch.stack([r.fg_mask for r in results])  # (N, R)
    obj_target = torch.stack([r.obj_target for r in results])  # (N, R)
    # Foreground rows in the order of ``tensor[fg_mask]``: image by image, anchor order.
    fg_gt_boxes = torch.cat(
        [boxes.float()[r.matched_gt[r.fg_mask]] for boxes, r in zip(gt_boxes, results)]
    )  # (F, 4)
    cls_target = torch.cat([r.cls_target[r.fg_mask] for r in results])  # (F, K)
    num_fg = sum(r.num_fg for r in results)
    put_scalars_if_recording(num_fg_per_image=num_fg / num_images)
    normalizer = float(max(num_fg, 1))

    loss_iou = iou_loss(pred_boxes[fg_mask], fg_gt_boxes, iou_loss_type).sum()
    loss_obj = F.binary_cross_entropy_with_logits(obj_logits, obj_target, reduction="sum")
    loss_cls = F.binary_cross_entropy_with_logits(
        cls_logits[fg_mask], cls_target, reduction="sum"
    )
    losses = {
        "loss_iou": iou_loss_weight * loss_iou / normalizer,
        "loss_obj": loss_obj / normalizer,
        "loss_cls": loss_cls / normalizer,
    }
    if use_l1_loss:
        fg_offsets = offsets.expand(num_images, num_anchors, 2)[fg_mask]
        fg_strides = cell_strides.expand(num_images, num_anchors)[fg_mask]
        target = l1_targets(fg_gt_boxes, fg_offsets, fg_strides)
        losses["loss_l1"] = (box_preds[fg_mask] - target).abs().sum() / normalizer
    return losses
