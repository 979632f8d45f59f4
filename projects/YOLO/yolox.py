"""YOLOX (Ge et al., "YOLOX: Exceeding YOLO Series in 2021"): the ``YOLOX`` meta-architecture,
registered as "YOLOX" in META_ARCH_REGISTRY.

backbone (``build_yolox_pafpn_backbone``: CSPDarknet + PAFPN, outputs p3 / p4 / p5) ->
:class:`~.head.YOLOXHead` (decoupled class / box + objectness branches, one prediction per
grid cell) -> :func:`~.decode.decode`.

Preprocessing is every segtron detector's: ``(image - MODEL.PIXEL_MEAN) / MODEL.PIXEL_STD``,
zero padding (bottom / right) to a multiple of 32. YOLOX feeds 0..255 BGR images without
normalisation (mean 0, std 1); the data loader does the resizing.

Inference, as YOLOX's COCO evaluation: each box takes its best class, with score
``sigmoid(obj) * max_c sigmoid(cls_c)``; boxes scoring >= MODEL.YOLOX.SCORE_THRESH_TEST (0.01)
are kept (at most TOPK_CANDIDATES_TEST of them, -1: all), then NMS per class at
NMS_THRESH_TEST (0.65), then the TEST.DETECTIONS_PER_IMAGE best (-1: all). Detections are
rescaled to each input's "height" x "width" (``detector_postprocess``, which also clips them
to the image, as YOLOX does not).

Training (:meth:`YOLOX.losses`, :func:`~.losses.yolox_losses`): SimOTA assigns the grid cells
of each image to its ``gt_boxes`` (XYXY in network-input pixels: the resized image, before the
bottom / right padding, which moves no coordinate) and ``gt_classes``; the losses are
"loss_iou" (MODEL.YOLOX.IOU_LOSS_WEIGHT x IoU loss), "loss_obj", "loss_cls" and, with
MODEL.YOLOX.USE_L1_LOSS (or ``model.use_l1_loss = True``, YOLOX's last 15 epochs), "loss_l1",
each divided by the batch's number of foreground cells.
"""

import logging
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from segtron.config import configurable
from segtron.layers import batched_nms_topk
from segtron.modeling import META_ARCH_REGISTRY
from segtron.modeling.backbone import Backbone, build_backbone
from segtron.modeling.feature_names import check_in_features
from segtron.modeling.meta_arch.dense_detector import DenseDetector, check_num_classes
from segtron.structures import Boxes, ImageList, Instances

from .decode import decode, flatten_predictions, grid_points
from .head import YOLOXHead
from .losses import check_iou_loss_type, yolox_losses

__all__ = ["YOLOX"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class YOLOX(DenseDetector):
    """YOLOX: backbone + PAFPN -> :class:`YOLOXHead` -> decode, best class per box, per-class
    NMS (module docstring).

    ``forward(list[dict])`` as every segtron detector: "image" (C, H, W) 0..255 in
    INPUT.FORMAT, optional "height" / "width"; in eval returns ``[{"instances":
    Instances(pred_boxes (XYXY), scores, pred_classes in [0, K))}]`` in each input's output
    size. In training, with "instances" (``gt_boxes``, ``gt_classes``) in every input, returns
    {"loss_iou", "loss_obj", "loss_cls"} (+ "loss_l1" while ``use_l1_loss``).

    ``use_l1_loss`` is a plain attribute (MODEL.YOLOX.USE_L1_LOSS at build time) that a
    training hook may switch on for the last epochs, as YOLOX does when it stops mosaic.
    """

    _in_features_key = "MODEL.YOLOX.HEAD_IN_FEATURES"

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: nn.Module,
        head_in_features: Sequence[str],
        strides: Sequence[int],
        num_classes: int,
        test_score_thresh: float = 0.01,
        test_nms_thresh: float = 0.65,
        test_topk_candidates: int = -1,
        max_detections_per_image: int = 100,
        iou_loss_type: str = "iou",
        iou_loss_weight: float = 5.0,
        use_l1_loss: bool = False,
        center_radius: float = 2.5,
        iou_cost_weight: float = 3.0,
        dynamic_k_candidates: int = 10,
        pixel_mean: Sequence[float] = (0.0, 0.0, 0.0),
        pixel_std: Sequence[float] = (1.0, 1.0, 1.0),
        vis_period: int = 0,
        input_format: str = "BGR",
        channels_last: bool = False,
        winograd_conv: bool = False,
    ):
        """Args:
            backbone: e.g. ``build_yolox_pafpn_backbone``.
            head: maps the selected features to (class logits, box values, objectness
                logits) lists, e.g. :class:`YOLOXHead`.
            head_in_features: backbone outputs given to the head, finest first.
            strides: their strides; must equal the backbone's.
            num_classes: K.
            test_score_thresh: inference keeps boxes with obj x best-class score >= this.
            test_nms_thresh: IoU threshold of the per-class NMS.
            test_topk_candidates: at most this many best boxes enter NMS (-1: all).
            max_detections_per_image: detections kept per image (-1: all).
            iou_loss_type: "iou" (1 - IoU^2) or "giou" box loss.
            iou_loss_weight: factor of "loss_iou" (YOLOX: 5.0).
            use_l1_loss: add "loss_l1" on the raw box values (YOLOX: last 15 epochs only).
            center_radius, iou_cost_weight, dynamic_k_candidates: SimOTA's centre radius
                (strides), IoU-cost weight and number of IoUs summed for the dynamic k.
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
        self.num_classes = check_num_classes(num_classes, "MODEL.YOLOX.NUM_CLASSES")
        shapes = backbone.output_shape()
        actual = [shapes[name].stride for name in self.head_in_features]
        if [int(s) for s in strides] != actual:
            raise ValueError(
                f"MODEL.YOLOX.STRIDES = {list(strides)} but the backbone's "
                f"{self.head_in_features} have strides {actual}; set MODEL.YOLOX.STRIDES to "
                f"{actual}."
            )
        self.strides = actual
        if not 0 <= test_score_thresh < 1:
            raise ValueError(
                f"MODEL.YOLOX.SCORE_THRESH_TEST = {test_score_thresh}: must be in [0, 1) "
                "(YOLOX evaluates at 0.01)."
            )
        if not 0 < test_nms_thresh <= 1:
            raise ValueError(
                f"MODEL.YOLOX.NMS_THRESH_TEST = {test_nms_thresh}: must be in (0, 1] "
                "(YOLOX: 0.65)."
            )
        if int(test_topk_candidates) != test_topk_candidates or not (
            test_topk_candidates >= 1 or test_topk_candidates == -1
        ):
            raise ValueError(
                f"MODEL.YOLOX.TOPK_CANDIDATES_TEST = {test_topk_candidates}: must be an integer "
                ">= 1, or -1 for no limit."
            )
        if int(max_detections_per_image) != max_detections_per_image or not (
            max_detections_per_image >= 1 or max_detections_per_image == -1
        ):
            raise ValueError(
                f"TEST.DETECTIONS_PER_IMAGE = {max_detections_per_image}: must be an integer "
                ">= 1, or -1 to keep every detection after NMS."
            )
        self.iou_loss_type = check_iou_loss_type(iou_loss_type)
        if not iou_loss_weight >= 0:
            raise ValueError(
                f"MODEL.YOLOX.IOU_LOSS_WEIGHT = {iou_loss_weight}: must be >= 0 (YOLOX: 5.0)."
            )
        if not center_radius > 0:
            raise ValueError(
                f"MODEL.YOLOX.CENTER_RADIUS = {center_radius}: must be > 0 strides (YOLOX: 2.5)."
            )
        if not iou_cost_weight >= 0:
            raise ValueError(
                f"MODEL.YOLOX.IOU_COST_WEIGHT = {iou_cost_weight}: must be >= 0 (YOLOX: 3.0)."
            )
        if int(dynamic_k_candidates) != dynamic_k_candidates or dynamic_k_candidates < 1:
            raise ValueError(
                f"MODEL.YOLOX.DYNAMIC_K_CANDIDATES = {dynamic_k_candidates}: must be an integer "
                ">= 1 (YOLOX: 10)."
            )
        self.iou_loss_weight = float(iou_loss_weight)
        self.use_l1_loss = bool(use_l1_loss)
        self.center_radius = float(center_radius)
        self.iou_cost_weight = float(iou_cost_weight)
        self.dynamic_k_candidates = int(dynamic_k_candidates)
        self.test_score_thresh = float(test_score_thresh)
        self.test_nms_thresh = float(test_nms_thresh)
        self.test_topk_candidates = int(test_topk_candidates)
        self.max_detections_per_image = int(max_detections_per_image)

    @classmethod
    def from_config(cls, cfg):
        """Backbone from MODEL.BACKBONE.NAME; head and settings from MODEL.YOLOX.*;
        TEST.DETECTIONS_PER_IMAGE, MODEL.PIXEL_MEAN / STD, MODEL.CHANNELS_LAST,
        MODEL.WINOGRAD_CONV, VIS_PERIOD, INPUT.FORMAT."""
        yolox = cfg.MODEL.YOLOX
        check_num_classes(yolox.NUM_CLASSES, "MODEL.YOLOX.NUM_CLASSES")
        backbone = build_backbone(cfg)
        shapes = check_in_features(
            yolox.HEAD_IN_FEATURES, backbone.output_shape(), "MODEL.YOLOX.HEAD_IN_FEATURES"
        )
        return {
            "backbone": backbone,
            "head": YOLOXHead(cfg, shapes),
            "head_in_features": list(yolox.HEAD_IN_FEATURES),
            "strides": list(yolox.STRIDES),
            "num_classes": yolox.NUM_CLASSES,
            "test_score_thresh": yolox.SCORE_THRESH_TEST,
            "test_nms_thresh": yolox.NMS_THRESH_TEST,
            "test_topk_candidates": yolox.TOPK_CANDIDATES_TEST,
            "iou_loss_type": yolox.IOU_LOSS_TYPE,
            "iou_loss_weight": yolox.IOU_LOSS_WEIGHT,
            "use_l1_loss": yolox.USE_L1_LOSS,
            "center_radius": yolox.CENTER_RADIUS,
            "iou_cost_weight": yolox.IOU_COST_WEIGHT,
            "dynamic_k_candidates": yolox.DYNAMIC_K_CANDIDATES,
            **cls._common_config(cfg),
        }

    # -- training -----------------------------------------------------------------------------

    def forward_training(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]],
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """Flatten the predictions, lay out the grid and return :meth:`losses`. ``images`` and
        ``features`` are not needed: the ground truth is already in network-input pixels."""
        cls_logits, box_preds, obj_logits = flatten_predictions(*predictions)
        offsets, cell_strides = grid_points(
            [tuple(x.shape[-2:]) for x in predictions[1]], self.strides, box_preds.device,
            torch.float32,
        )
        return self.losses(
            cls_logits, box_preds, obj_logits, offsets, cell_strides, gt_instances
        )

    def losses(
        self,
        cls_logits: torch.Tensor,
        box_preds: torch.Tensor,
        obj_logits: torch.Tensor,
        offsets: torch.Tensor,
        cell_strides: torch.Tensor,
        gt_instances: List[Instances],
    ) -> Dict[str, torch.Tensor]:
        """The training losses: SimOTA per image, then :func:`~.losses.yolox_losses`.

        Args:
            cls_logits: (N, R, K) class logits.
            box_preds: (N, R, 4) raw box values; ``decode.decode_boxes(box_preds, offsets,
                cell_strides)`` gives the XYXY boxes.
            obj_logits: (N, R) objectness logits.
            offsets: (R, 2) cell indices (i, j); SimOTA's cell centres are
                ``(offsets + 0.5) * cell_strides[:, None]``.
            cell_strides: (R,) each cell's stride.
            gt_instances: per image, ``gt_boxes`` (XYXY, network-input pixels) and
                ``gt_classes`` in [0, K).

        Returns:
            {"loss_iou" (IOU_LOSS_WEIGHT x IoU loss), "loss_obj", "loss_cls" (binary
            cross-entropies)} and "loss_l1" while ``self.use_l1_loss``, each divided by the
            number of foreground cells in the batch (at least 1). Records
            "num_fg_per_image" when training.
        """
        for i, inst in enumerate(gt_instances):
            if not (inst.has("gt_boxes") and inst.has("gt_classes")):
                raise ValueError(
                    f"YOLOX training: the instances of image {i} need 'gt_boxes' and "
                    f"'gt_classes' (has {sorted(inst.get_fields())})."
                )
        return yolox_losses(
            cls_logits,
            box_preds,
            obj_logits,
            offsets,
            cell_strides,
            [inst.gt_boxes.tensor for inst in gt_instances],
            [inst.gt_classes for inst in gt_instances],
            iou_loss_type=self.iou_loss_type,
            iou_loss_weight=self.iou_loss_weight,
            use_l1_loss=self.use_l1_loss,
            center_radius=self.center_radius,
            iou_cost_weight=self.iou_cost_weight,
            dynamic_k_candidates=self.dynamic_k_candidates,
        )

    # -- inference ----------------------------------------------------------------------------

    def forward_inference(
        self,
        images: ImageList,
        features: List[torch.Tensor],
        predictions: Tuple[List[torch.Tensor], List[torch.Tensor], List[torch.Tensor]],
    ) -> List[Instances]:
        """One ``Instances`` (pred_boxes, scores, pred_classes) per image, in network-input
        pixels (``detector_postprocess`` rescales them)."""
        boxes, scores = decode(*predictions, self.strides)
        return [
            self.inference_single_image(boxes[i], scores[i], image_size)
            for i, image_size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self, boxes: torch.Tensor, scores: torch.Tensor, image_size: Tuple[int, int]
    ) -> Instances:
        """Detections of one image.

        Args:
            boxes: (R, 4) decoded XYXY boxes.
            scores: (R, K) obj x class scores.
            image_size: (h, w) of the network input (before padding).

        Returns:
            ``Instances`` by decreasing score: each box with its best class, kept when that
            score is >= ``test_score_thresh`` (the ``test_topk_candidates`` best, if set),
            after per-class NMS, at most ``max_detections_per_image`` of them.
        """
        best, classes = scores.max(dim=1)
        keep = torch.nonzero(best >= self.test_score_thresh).squeeze(1)
        if 0 < self.test_topk_candidates < keep.numel():
            keep = keep[best[keep].topk(self.test_topk_candidates).indices]
        boxes, best, classes = boxes[keep], best[keep], classes[keep]
        kept = batched_nms_topk(
            boxes, best, classes, self.test_nms_thresh, self.max_detections_per_image
        )
        return Instances(
            image_size,
            pred_boxes=Boxes(boxes[kept]),
            scores=best[kept],
            pred_classes=classes[kept],
        )
