"""Box coding: boxes <-> regression deltas.

Detectron2 path: ``detectron2.modeling.box_regression``.

``Box2BoxTransform`` is the R-CNN parameterisation used by RPN and the ROI box heads;
``Box2BoxTransformLinear`` the FCOS-style distances to the four sides. Their boxes are XYXY in
absolute pixels; widths are ``x1 - x0`` (no ``+ 1``). ``Box2BoxTransformRotated`` codes rotated
boxes (cx, cy, w, h, angle_degrees) for RRPN and the rotated box head.
"""

import math
from typing import List, Sequence, Tuple, Union

import torch
from torch.nn import functional as F

from ..layers import cat, ciou_loss, diou_loss, giou_loss, smooth_l1_loss
from ..structures import Boxes

__all__ = [
    "Box2BoxTransform",
    "Box2BoxTransformLinear",
    "Box2BoxTransformRotated",
    "_dense_box_regression_loss",
    "check_box_reg_loss_type",
]

_DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)
"""Largest dw / dh applied: enough to turn a 16 px box into a 1000 px one."""


def _check_pairs(src: torch.Tensor, target: torch.Tensor, name: str) -> None:
    for what, t in (("src_boxes", src), ("target_boxes", target)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(
                f"{name}.get_deltas: {what} must be an (N, 4) XYXY tensor, got {shape}."
            )
    if src.shape[0] != target.shape[0]:
        raise ValueError(
            f"{name}.get_deltas: src_boxes and target_boxes need the same number of rows, got "
            f"{src.shape[0]} and {target.shape[0]}."
        )


def _check_apply(deltas: torch.Tensor, boxes: torch.Tensor, name: str) -> int:
    """Validate apply_deltas inputs (outside TorchScript); return k, the number of boxes per
    row of ``deltas``."""
    if not torch.jit.is_scripting():
        if deltas.dim() != 2 or deltas.shape[1] % 4 != 0:
            raise ValueError(
                f"{name}.apply_deltas: deltas must have shape (N, k*4), got "
                f"{tuple(deltas.shape)}."
            )
        if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != deltas.shape[0]:
            raise ValueError(
                f"{name}.apply_deltas: boxes must have shape ({deltas.shape[0]}, 4) to match "
                f"deltas {tuple(deltas.shape)}, got {tuple(boxes.shape)}."
            )
    # A Python int even while tracing (k is fixed by the model): the ONNX export of a traced
    # k turns reshape(n, k, 4) into reshape(n, -1, 4), which fails on zero boxes.
    return int(deltas.shape[1]) // 4


def _compute_dtype(deltas: torch.Tensor) -> torch.dtype:
    # Decoding in half precision loses pixels on large images: work in at least float32.
    return torch.promote_types(deltas.dtype, torch.float32)


class Box2BoxTransform:
    """The R-CNN box transform with deltas (dx, dy, dw, dh).

    For a source box with width ``w``, height ``h`` and centre ``(cx, cy)`` and a target with
    ``w', h', cx', cy'``: ``dx = wx * (cx' - cx) / w``, ``dy = wy * (cy' - cy) / h``,
    ``dw = ww * log(w' / w)``, ``dh = wh * log(h' / h)``. Centres are ``x0 + 0.5 * w``.
    """

    def __init__(
        self,
        weights: Tuple[float, float, float, float],
        scale_clamp: float = _DEFAULT_SCALE_CLAMP,
    ):
        """Args:
            weights: (wx, wy, ww, wh) multiplying the deltas: (1, 1, 1, 1) for RPN,
                (10, 10, 5, 5) for the ROI box head (MODEL.*.BBOX_REG_WEIGHTS).
            scale_clamp: dw and dh are clamped to at most this before ``exp`` when decoding
                (default log(1000 / 16)).
        """
        if not torch.jit.is_scripting():  # (TorchScript compiles this class for inference)
            if len(weights) != 4:
                raise ValueError(
                    "Box2BoxTransform: weights must be 4 numbers (wx, wy, ww, wh), got "
                    f"{repr(weights)}."
                )
            weights = tuple([float(w) for w in weights])
        self.weights = weights
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Deltas that turn each source box into its target (the inverse of ``apply_deltas``
        unless dw / dh exceed ``scale_clamp``).

        Args:
            src_boxes: (N, 4) XYXY boxes, e.g. anchors or proposals, with positive width and
                height.
            target_boxes: (N, 4) XYXY boxes, e.g. the matched ground truth.

        Returns:
            (N, 4) deltas (dx, dy, dw, dh) in the inputs' dtype.
        """
        if not torch.jit.is_scripting():
            _check_pairs(src_boxes, target_boxes, "Box2BoxTransform")
            if src_boxes.device.type == "cpu" and not bool(
                (src_boxes[:, 2:] > src_boxes[:, :2]).all()
            ):
                # Checked on the CPU only, where it costs no device synchronisation.
                raise ValueError(
                    "Box2BoxTransform.get_deltas: every src box needs x1 > x0 and y1 > y0; got "
                    "empty or inverted source boxes (filter them out before encoding)."
                )
        src_w = src_boxes[:, 2] - src_boxes[:, 0]
        src_h = src_boxes[:, 3] - src_boxes[:, 1]
        src_cx = src_boxes[:, 0] + 0.5 * src_w
        src_cy = src_boxes[:, 1] + 0.5 * src_h
        tgt_w = target_boxes[:, 2] - target_boxes[:, 0]
        tgt_h = target_boxes[:, 3] - target_boxes[:, 1]
        tgt_cx = target_boxes[:, 0] + 0.5 * tgt_w
        tgt_cy = target_boxes[:, 1] + 0.5 * tgt_h

        wx, wy, ww, wh = self.weights
        dx = wx * (tgt_cx - src_cx) / src_w
        dy = wy * (tgt_cy - src_cy) / src_h
        dw = ww * torch.log(tgt_w / src_w)
        dh = wh * torch.log(tgt_h / src_h)
        return torch.stack((dx, dy, dw, dh), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Decode deltas relative to boxes.

        Args:
            deltas: (N, k*4) deltas; row i holds k (e.g. class-specific) transforms
                (dx, dy, dw, dh) of ``boxes[i]``.
            boxes: (N, 4) XYXY reference boxes.

        Returns:
            (N, k*4) XYXY boxes, computed and returned in ``deltas``' dtype (float16 / bfloat16
            are decoded in float32).
        """
        k = _check_apply(deltas, boxes, "Box2BoxTransform")
        n = deltas.shape[0]
        dtype = _compute_dtype(deltas)
        d = deltas.to(dtype).reshape(n, k, 4)
        boxes = boxes.to(dtype)

        widths = boxes[:, 2] - boxes[:, 0]
        heights = boxes[:, 3] - boxes[:, 1]
        ctr_x = boxes[:, 0] + 0.5 * widths
        ctr_y = boxes[:, 1] + 0.5 * heights

        wx, wy, ww, wh = self.weights
        dx = d[:, :, 0] / wx
        dy = d[:, :, 1] / wy
        dw = torch.clamp(d[:, :, 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(d[:, :, 3] / wh, max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]

        pred = torch.stack(
            (
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w,
                pred_ctr_y + 0.5 * pred_h,
            ),
            dim=2,
        )
        return pred.reshape(n, k * 4)


class Box2BoxTransformLinear:
    """FCOS-style box coding: distances (l, t, r, b) from the source box's centre to the four
    sides of the target, optionally divided by the source box's width/height.

    Decoding applies ReLU to the deltas first, so every decoded box contains the source centre
    (Sec. 2.1 of https://arxiv.org/abs/2006.09214).
    """

    def __init__(self, normalize_by_size: bool = True):
        """Args:
            normalize_by_size: divide l, r by the source width and t, b by its height (the
                source boxes are then usually stride-sized "anchor points").
        """
        self.normalize_by_size = normalize_by_size

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Args:
            src_boxes: (N, 4) XYXY source boxes (only their centres, and sizes when
                normalising, are used).
            target_boxes: (N, 4) XYXY targets.

        Returns:
            (N, 4) deltas (l, t, r, b): ``cx - x0'``, ``cy - y0'``, ``x1' - cx``, ``y1' - cy``,
            divided by (w, h, w, h) of the source when ``normalize_by_size``.
        """
        if not torch.jit.is_scripting():
            _check_pairs(src_boxes, target_boxes, "Box2BoxTransformLinear")
        ctr_x = 0.5 * (src_boxes[:, 0] + src_boxes[:, 2])
        ctr_y = 0.5 * (src_boxes[:, 1] + src_boxes[:, 3])
        deltas = torch.stack(
            (
                ctr_x - target_boxes[:, 0],
                ctr_y - target_boxes[:, 1],
                target_boxes[:, 2] - ctr_x,
                target_boxes[:, 3] - ctr_y,
            ),
            dim=1,
        )
        if self.normalize_by_size:
            w = src_boxes[:, 2] - src_boxes[:, 0]
            h = src_boxes[:, 3] - src_boxes[:, 1]
            deltas = deltas / torch.stack((w, h, w, h), dim=1)
        return deltas

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Args:
            deltas: (N, k*4) deltas (l, t, r, b) per box; negative values are treated as 0.
            boxes: (N, 4) XYXY source boxes.

        Returns:
            (N, k*4) XYXY boxes in ``deltas``' dtype (at least float32).
        """
        k = _check_apply(deltas, boxes, "Box2BoxTransformLinear")
        n = deltas.shape[0]
        dtype = _compute_dtype(deltas)
        d = F.relu(deltas.to(dtype)).reshape(n, k, 4)
        boxes = boxes.to(dtype)
        ctr_x = 0.5 * (boxes[:, 0] + boxes[:, 2])
        ctr_y = 0.5 * (boxes[:, 1] + boxes[:, 3])
        if self.normalize_by_size:
            w = boxes[:, 2] - boxes[:, 0]
            h = boxes[:, 3] - boxes[:, 1]
            d = d * torch.stack((w, h, w, h), dim=1)[:, None, :]
        pred = torch.stack(
            (
                ctr_x[:, None] - d[:, :, 0],
                ctr_y[:, None] - d[:, :, 1],
                ctr_x[:, None] + d[:, :, 2],
                ctr_y[:, None] + d[:, :, 3],
            ),
            dim=2,
        )
        return pred.reshape(n, k * 4)


def _normalize_degrees(angle: torch.Tensor) -> torch.Tensor:
    """Angles in degrees brought into [-180, 180)."""
    return (angle + 180.0) % 360.0 - 180.0


class Box2BoxTransformRotated:
    """The RRPN box transform of rotated boxes, with deltas (dx, dy, dw, dh, da).

    For a source box (cx, cy, w, h, a) and a target (cx', cy', w', h', a'), angles in degrees:
    ``dx = wx * (cx' - cx) / w``, ``dy = wy * (cy' - cy) / h`` (offsets along the image axes,
    not the box's), ``dw = ww * log(w' / w)``, ``dh = wh * log(h' / h)`` and
    ``da = wa * radians(a' - a)`` with ``a' - a`` first brought into [-180, 180). Decoded
    angles are brought into [-180, 180) too.
    """

    def __init__(
        self,
        weights: Tuple[float, float, float, float, float],
        scale_clamp: float = _DEFAULT_SCALE_CLAMP,
    ):
        """Args:
            weights: (wx, wy, ww, wh, wa) multiplying the deltas: (1, 1, 1, 1, 1) for RRPN,
                (10, 10, 5, 5, 1) for the rotated box head (MODEL.*.BBOX_REG_WEIGHTS).
            scale_clamp: dw and dh are clamped to at most this before ``exp`` when decoding
                (default log(1000 / 16)).
        """
        if len(weights) != 5:
            raise ValueError(
                f"Box2BoxTransformRotated: weights must be 5 numbers (wx, wy, ww, wh, wa), got "
                f"{weights!r}; set MODEL.RPN.BBOX_REG_WEIGHTS / "
                "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS to 5 values for rotated boxes."
            )
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def get_deltas(self, src_boxes: torch.Tensor, target_boxes: torch.Tensor) -> torch.Tensor:
        """Deltas that turn each source box into its target (the inverse of ``apply_deltas``
        up to angle normalisation, unless dw / dh exceed ``scale_clamp``).

        Args:
            src_boxes: (N, 5) rotated boxes (cx, cy, w, h, angle_degrees), e.g. anchors or
                proposals, with positive width and height.
            target_boxes: (N, 5) rotated boxes, e.g. the matched ground truth.

        Returns:
            (N, 5) deltas (dx, dy, dw, dh, da), da in (weighted) radians, inputs' dtype.
        """
        for what, t in (("src_boxes", src_boxes), ("target_boxes", target_boxes)):
            if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != 5:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(
                    f"Box2BoxTransformRotated.get_deltas: {what} must be an (N, 5) tensor of "
                    f"(cx, cy, w, h, angle) rows, got {shape}."
                )
        if src_boxes.shape[0] != target_boxes.shape[0]:
            raise ValueError(
                "Box2BoxTransformRotated.get_deltas: src_boxes and target_boxes need the same "
                f"number of rows, got {src_boxes.shape[0]} and {target_boxes.shape[0]}."
            )
        if src_boxes.device.type == "cpu" and not bool((src_boxes[:, 2:4] > 0).all()):
            raise ValueError(
                "Box2BoxTransformRotated.get_deltas: every src box needs w > 0 and h > 0; got "
                "empty source boxes (filter them out before encoding)."
            )
        src_x, src_y, src_w, src_h, src_a = src_boxes.unbind(dim=1)
        tgt_x, tgt_y, tgt_w, tgt_h, tgt_a = target_boxes.unbind(dim=1)
        wx, wy, ww, wh, wa = self.weights
        dx = wx * (tgt_x - src_x) / src_w
        dy = wy * (tgt_y - src_y) / src_h
        dw = ww * torch.log(tgt_w / src_w)
        dh = wh * torch.log(tgt_h / src_h)
        # Angle deltas are radians (a natural scale for the regression), box angles degrees.
        da = _normalize_degrees(tgt_a - src_a) * (wa * math.pi / 180.0)
        return torch.stack((dx, dy, dw, dh, da), dim=1)

    def apply_deltas(self, deltas: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Decode deltas relative to rotated boxes.

        Args:
            deltas: (N, k*5) deltas; row i holds k (e.g. class-specific) transforms
                (dx, dy, dw, dh, da) of ``boxes[i]``.
            boxes: (N, 5) reference rotated boxes (cx, cy, w, h, angle_degrees).

        Returns:
            (N, k*5) rotated boxes with angles in [-180, 180), in ``deltas``' dtype (float16 /
            bfloat16 are decoded in float32).
        """
        if deltas.dim() != 2 or deltas.shape[1] % 5 != 0:
            raise ValueError(
                "Box2BoxTransformRotated.apply_deltas: deltas must have shape (N, k*5), got "
                f"{tuple(deltas.shape)}."
            )
        if boxes.dim() != 2 or boxes.shape[1] != 5 or boxes.shape[0] != deltas.shape[0]:
            raise ValueError(
                f"Box2BoxTransformRotated.apply_deltas: boxes must have shape "
                f"({deltas.shape[0]}, 5) to match deltas {tuple(deltas.shape)}, got "
                f"{tuple(boxes.shape)}."
            )
        n, k = deltas.shape[0], deltas.shape[1] // 5
        dtype = _compute_dtype(deltas)
        d = deltas.to(dtype).reshape(n, k, 5)
        ctr_x, ctr_y, widths, heights, angles = (v[:, None] for v in boxes.to(dtype).unbind(1))
        wx, wy, ww, wh, wa = self.weights
        dw = torch.clamp(d[:, :, 2] / ww, max=self.scale_clamp)
        dh = torch.clamp(d[:, :, 3] / wh, max=self.scale_clamp)
        pred = torch.stack(
            (
                d[:, :, 0] / wx * widths + ctr_x,
                d[:, :, 1] / wy * heights + ctr_y,
                torch.exp(dw) * widths,
                torch.exp(dh) * heights,
                _normalize_degrees(d[:, :, 4] / wa * (180.0 / math.pi) + angles),
            ),
            dim=2,
        )
        return pred.reshape(n, k * 5)


_IOU_LOSSES = {"giou": giou_loss, "diou": diou_loss, "ciou": ciou_loss}


def check_box_reg_loss_type(name: str, key: str) -> str:
    """Return ``name`` if it is a box-regression loss of :func:`_dense_box_regression_loss`
    ("smooth_l1", "giou", "diou", "ciou"); else raise ValueError naming the config ``key``."""
    if name != "smooth_l1" and name not in _IOU_LOSSES:
        raise ValueError(
            f"{key} = {name!r} is not a box regression loss; use one of "
            f"{['smooth_l1', *_IOU_LOSSES]}."
        )
    return name


def _dense_box_regression_loss(
    anchors: List[Union[Boxes, torch.Tensor]],
    box2box_transform: Union[Box2BoxTransform, Box2BoxTransformLinear],
    pred_anchor_deltas: List[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    fg_mask: torch.Tensor,
    box_reg_loss_type: str = "smooth_l1",
    smooth_l1_beta: float = 0.0,
) -> torch.Tensor:
    """Box-regression loss of dense detectors (RPN, RetinaNet), summed over foreground anchors.

    Args:
        anchors: one ``Boxes`` / ``RotatedBoxes`` (or (Ai, B) tensor) per level, Ai = Hi * Wi * A
            anchors in the anchor generator's order; R = sum(Ai); B = 4 (5 for rotated boxes,
            with "smooth_l1" only).
        box2box_transform: the box coding the deltas use.
        pred_anchor_deltas: one (N, Ai, B) tensor of predicted deltas per level (N images).
        gt_boxes: N tensors (R, B): the ground-truth box matched to each anchor of each image.
        fg_mask: (N, R) bool, the anchors that contribute.
        box_reg_loss_type: "smooth_l1" (on deltas: ``get_deltas(anchor, gt)`` vs the
            prediction), or "giou" / "diou" / "ciou" (on the decoded boxes vs the gt boxes).
        smooth_l1_beta: beta of the smooth-L1 loss; 0 is plain L1.

    Returns:
        scalar tensor, the SUM of the loss over all foreground anchors (callers normalise).
    """
    check_box_reg_loss_type(
        box_reg_loss_type, "box_reg_loss_type (e.g. MODEL.RPN.BBOX_REG_LOSS_TYPE)"
    )
    if isinstance(anchors[0], Boxes):  # Boxes or RotatedBoxes
        anchors = type(anchors[0]).cat(list(anchors)).tensor
    else:
        anchors = cat(list(anchors))
    pred = cat(list(pred_anchor_deltas), dim=1)  # (N, R, 4)
    gt = torch.stack(list(gt_boxes)) if not isinstance(gt_boxes, torch.Tensor) else gt_boxes
    if fg_mask.shape != pred.shape[:2] or gt.shape != pred.shape:
        raise ValueError(
            "_dense_box_regression_loss: expected fg_mask (N, R), gt_boxes (N, R, 4) and "
            f"concatenated deltas (N, R, 4) with R = {anchors.shape[0]} anchors; got fg_mask "
            f"{tuple(fg_mask.shape)}, gt_boxes {tuple(gt.shape)}, deltas {tuple(pred.shape)}."
        )
    # Only foreground rows matter; select them first (the same rows, in the same order, as
    # encoding every image and masking afterwards).
    fg_anchors = anchors.unsqueeze(0).expand(pred.shape[0], -1, -1)[fg_mask]
    fg_pred = pred[fg_mask]
    fg_gt = gt[fg_mask]
    if box_reg_loss_type == "smooth_l1":
        target = box2box_transform.get_deltas(fg_anchors, fg_gt)
        return smooth_l1_loss(fg_pred, target, beta=smooth_l1_beta, reduction="sum")
    decoded = box2box_transform.apply_deltas(fg_pred, fg_anchors)
    return _IOU_LOSSES[box_reg_loss_type](decoded, fg_gt, reduction="sum")
