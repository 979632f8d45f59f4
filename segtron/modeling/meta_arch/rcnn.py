"""R-CNN meta-architectures: backbone + proposal generator (+ ROI heads).

Detectron2 path: ``detectron2.modeling.meta_arch.rcnn``.

Both models take Detectron2's batched inputs: a list with one dict per image holding

- ``"image"``: (C, H, W) tensor in ``INPUT.FORMAT`` channel order (uint8 or float, 0..255),
  already resized by the data loader;
- ``"height"``, ``"width"`` (optional): the size wanted for the outputs, usually the original
  image size; defaults to the network input size;
- ``"instances"`` (training): ground truth ``Instances`` (``gt_boxes``, ``gt_classes``, ...);
- ``"proposals"`` (with precomputed proposals): ``Instances`` with ``proposal_boxes`` and
  ``objectness_logits``.
"""

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...config import configurable
from ...data.detection_utils import convert_image_to_rgb
from ...layers.execution import features_for_roi_pooling
from ...structures import ImageList, Instances
from ...utils.events import get_event_storage
from ..backbone import Backbone, build_backbone
from ..postprocessing import detector_postprocess
from ..proposal_generator import build_proposal_generator
from ..registries import META_ARCH_REGISTRY
from ..roi_heads import build_roi_heads
from .model_inputs import (
    batch_images,
    device_property,
    input_config,
    normalize_and_batch,
    output_size,
    register_pixel_stats,
    winograd_conv_property,
)
from .static_graphs import StaticDenseGraphs, cuda_graphs_property

__all__ = ["GeneralizedRCNN", "ProposalNetwork"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class GeneralizedRCNN(nn.Module):
    """Backbone -> proposal generator -> ROI heads (Faster / Mask / Keypoint R-CNN, ...).

    Training: ``forward(batched_inputs) -> dict`` of losses (proposal generator's and ROI
    heads'). Inference (``eval()``): ``forward(batched_inputs) -> list[{"instances":
    Instances}]`` in each input's "height" x "width".
    """

    VIS_MAX_PROPOSALS = 20  # proposals drawn by visualize_training

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: Optional[nn.Module],
        roi_heads: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: Optional[str] = None,
        vis_period: int = 0,
        channels_last: bool = False,
        winograd_conv: bool = False,
        cuda_graphs: bool = False,
        cuda_graphs_max_shapes: int = 8,
    ):
        """Args:
            backbone: maps the (N, C, H, W) normalised batch to named feature maps.
            proposal_generator: ``(images, features, gt_instances) -> (proposals, losses)``;
                None to read precomputed proposals from the inputs' "proposals".
            roi_heads: ``(images, features, proposals, gt_instances) -> (results, losses)``.
            pixel_mean, pixel_std: per-channel normalisation ``(x - mean) / std``.
            input_format: channel order of the input images (e.g. "BGR"); used to draw them
                in RGB for the training visualisation.
            vis_period: every this many training iterations, put a picture of the first
                image's ground truth and top proposals into the event storage
                (:meth:`visualize_training`); 0: never.
            channels_last: feed the backbone channels-last (NHWC) batches, which run faster on
                CPU; results then differ from Detectron2's by float rounding (MODEL.CHANNELS_LAST).
            winograd_conv: on CPU, run the FPN, RPN and ROI-head convolutions with NNPACK's
                Winograd kernels (3x3) and as matrix products (1x1), writing NCHW maps; the
                bottom-up network is unchanged (MODEL.WINOGRAD_CONV, ``layers/winograd.py``).
                A settable attribute, like ``channels_last``.
            cuda_graphs: in inference on a GPU, replay the backbone and the RPN's static part
                (head, anchors, decoding, per-level top-k) as one CUDA graph per input size
                (TEST.CUDA_GRAPHS.ENABLED; ``static_graphs.py``); same outputs. A settable
                attribute. Needs an RPN-style proposal generator (``top_candidates``).
            cuda_graphs_max_shapes: input sizes captured at most; others run eagerly
                (TEST.CUDA_GRAPHS.MAX_SHAPES).
        """
        super().__init__()
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.roi_heads = roi_heads
        self.channels_last = bool(channels_last)
        self.winograd_conv = winograd_conv
        self.input_format = input_format
        self.vis_period = int(vis_period)
        if self.vis_period > 0 and input_format is None:
            raise ValueError(
                "GeneralizedRCNN: vis_period (VIS_PERIOD) > 0 needs input_format (INPUT.FORMAT) "
                "to draw the images."
            )
        register_pixel_stats(self, pixel_mean, pixel_std)
        self.dense_graphs = StaticDenseGraphs(cuda_graphs_max_shapes)
        self._cuda_graphs = bool(cuda_graphs)

    @classmethod
    def from_config(cls, cfg):
        """Backbone, proposal generator and ROI heads from their registries; MODEL.PIXEL_MEAN /
        PIXEL_STD, MODEL.CHANNELS_LAST, MODEL.WINOGRAD_CONV, INPUT.FORMAT, VIS_PERIOD and
        TEST.CUDA_GRAPHS."""
        backbone = build_backbone(cfg)
        output_shape = backbone.output_shape()
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, output_shape),
            "roi_heads": build_roi_heads(cfg, output_shape),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "cuda_graphs": cfg.TEST.CUDA_GRAPHS.ENABLED,
            "cuda_graphs_max_shapes": cfg.TEST.CUDA_GRAPHS.MAX_SHAPES,
            **input_config(cfg),
        }

    winograd_conv = winograd_conv_property
    device = device_property
    cuda_graphs = cuda_graphs_property

    def visualize_training(self, batched_inputs: List[Dict], proposals: List[Instances]) -> None:
        """Put one picture into the event storage, as Detectron2 does every VIS_PERIOD
        iterations: the first image of the batch with its ground-truth boxes (left) next to the
        same image with its ``VIS_MAX_PROPOSALS`` highest-scoring proposals (right).

        Args:
            batched_inputs: the training batch; its first "image" (CHW, ``input_format``) and
                "instances" (``gt_boxes``) are drawn.
            proposals: the proposal generator's output for the batch, one ``Instances`` per
                image with ``proposal_boxes`` sorted by decreasing objectness.

        The picture is an RGB uint8 (3, H, 2 * W) tensor, named "Left: GT bounding boxes;  Right:
        Predicted proposals" (``EventStorage.put_image``).
        """
        from ...utils.visualizer import Visualizer  # matplotlib: only when drawing

        image = batched_inputs[0]["image"]
        image = convert_image_to_rgb(image.permute(1, 2, 0), self.input_format)
        gt_boxes = batched_inputs[0]["instances"].gt_boxes.tensor.detach().cpu().numpy()
        gt_picture = Visualizer(image, None).overlay_instances(boxes=gt_boxes).get_image()
        boxes = proposals[0].proposal_boxes.tensor[: self.VIS_MAX_PROPOSALS]
        proposal_picture = Visualizer(image, None).overlay_instances(
            boxes=boxes.detach().cpu().numpy()
        ).get_image()
        picture = np.concatenate((gt_picture, proposal_picture), axis=1).transpose(2, 0, 1)
        get_event_storage().put_image(
            "Left: GT bounding boxes;  Right: Predicted proposals",
            torch.from_numpy(np.ascontiguousarray(picture)),
        )

    def _features_for_roi_heads(self, features: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The maps the ROI heads pool from, in the layout ``features_for_roi_pooling`` picks
        for this model's CHANNELS_LAST / WINOGRAD_CONV."""
        return features_for_roi_pooling(features, self.channels_last, self.winograd_conv)

    def preprocess_image(self, batched_inputs: List[Dict[str, torch.Tensor]]) -> ImageList:
        """Move each input's "image" to the model's device, normalise it with
        ``(x - pixel_mean) / pixel_std`` and pad them into one batch (bottom/right zero padding
        to the backbone's size divisibility / padding constraints)."""
        return batch_images(
            batched_inputs, self.pixel_mean, self.pixel_std, self.backbone.size_divisibility,
            self.backbone.padding_constraints, self.channels_last,
        )

    def forward(self, batched_inputs: List[Dict[str, torch.Tensor]]):
        """Args:
            batched_inputs: one dict per image, see the module docstring.

        Returns:
            in training, a dict of scalar losses; in eval, what :meth:`inference` returns.
        """
        if not self.training:
            return self.inference(batched_inputs)

        images = self.preprocess_image(batched_inputs)
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        else:
            gt_instances = None
        features = self.backbone(images.tensor)

        if self.proposal_generator is not None:
            proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        else:
            proposals = self._precomputed_proposals(batched_inputs)
            proposal_losses = {}

        features = self._features_for_roi_heads(features)
        _, detector_losses = self.roi_heads(images, features, proposals, gt_instances)
        if self.vis_period > 0:
            storage = get_event_storage()
            if storage.iter % self.vis_period == 0:
                self.visualize_training(batched_inputs, proposals)

        losses = {}
        losses.update(detector_losses)
        losses.update(proposal_losses)
        return losses

    def _precomputed_proposals(
        self, batched_inputs: List[Dict[str, torch.Tensor]]
    ) -> List[Instances]:
        if "proposals" not in batched_inputs[0]:
            raise KeyError(
                "The model has no proposal generator (MODEL.PROPOSAL_GENERATOR.NAME = "
                "'PrecomputedProposals'), so each input needs precomputed 'proposals'; enable "
                "DATASETS.PROPOSAL_FILES_* / MODEL.LOAD_PROPOSALS or use the RPN."
            )
        return [x["proposals"].to(self.device) for x in batched_inputs]

    def inference(
        self,
        batched_inputs: List[Dict[str, torch.Tensor]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        """Run inference.

        Args:
            batched_inputs: one dict per image, see the module docstring.
            detected_instances: if given, one ``Instances`` per image with known boxes
                (``pred_boxes``, ``pred_classes``); only the remaining heads (e.g. masks) run
                on them, through ``roi_heads.forward_with_given_boxes``.
            do_postprocess: rescale the results to each input's "height" x "width".

        Returns:
            with ``do_postprocess``, a list of ``{"instances": Instances}``; else the raw
            ``Instances`` per image in the network input's resolution.
        """
        if self.training:
            raise RuntimeError("GeneralizedRCNN.inference needs eval mode; call model.eval().")
        images = self.preprocess_image(batched_inputs)
        if not torch.jit.is_scripting():  # (a block TorchScript skips)
            if detected_instances is None and self.dense_graphs.applies(self):
                return self._inference_with_graphs(batched_inputs, images, do_postprocess)
        features = self.backbone(images.tensor)

        if detected_instances is None:
            if self.proposal_generator is not None:
                proposals, _ = self.proposal_generator(images, features, None)
            else:
                proposals = self._precomputed_proposals(batched_inputs)
            features = self._features_for_roi_heads(features)
            results, _ = self.roi_heads(images, features, proposals, None)
        else:
            detected_instances = [x.to(self.device) for x in detected_instances]
            results = self.roi_heads.forward_with_given_boxes(features, detected_instances)
        return self._finish_inference(results, batched_inputs, images, do_postprocess)

    @torch.jit.unused
    def _inference_with_graphs(
        self, batched_inputs: List[Dict[str, torch.Tensor]], images: ImageList,
        do_postprocess: bool,
    ):
        """``inference`` with the static part from CUDA graphs (TEST.CUDA_GRAPHS)."""
        features, proposals = self.dense_graphs.features_and_proposals(self, images)
        features = self._features_for_roi_heads(features)
        results, _ = self.roi_heads(images, features, proposals, None)
        return self._finish_inference(results, batched_inputs, images, do_postprocess)

    def _finish_inference(
        self,
        results: List[Instances],
        batched_inputs: List[Dict[str, torch.Tensor]],
        images: ImageList,
        do_postprocess: bool,
    ):
        """``inference``'s return value: the results resized per input, or as they are."""
        if do_postprocess:
            if not torch.jit.is_scripting():
                return GeneralizedRCNN._postprocess(results, batched_inputs, images.image_sizes)
            raise RuntimeError(
                "A scripted GeneralizedRCNN returns raw detections: call "
                "inference(inputs, do_postprocess=False), then detector_postprocess in Python."
            )
        return results

    @staticmethod
    def _postprocess(
        instances: List[Instances],
        batched_inputs: List[Dict[str, torch.Tensor]],
        image_sizes: List[Tuple[int, int]],
    ) -> List[Dict[str, Instances]]:
        """Rescale each image's results from the network input size (``image_sizes``) to the
        input's "height" x "width"; returns ``[{"instances": Instances}, ...]``."""
        processed = []
        for result, item, image_size in zip(instances, batched_inputs, image_sizes):
            height, width = output_size(item, image_size)
            processed.append({"instances": detector_postprocess(result, height, width)})
        return processed


@META_ARCH_REGISTRY.register()
class ProposalNetwork(nn.Module):
    """Backbone + proposal generator only (e.g. an RPN-only model).

    Training: ``forward -> dict`` of proposal losses. Inference: ``forward -> list[{"proposals":
    Instances}]`` rescaled to each input's "height" x "width".
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        proposal_generator: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        channels_last: bool = False,
        winograd_conv: bool = False,
    ):
        """Args:
            backbone: maps the normalised batch to named feature maps.
            proposal_generator: ``(images, features, gt_instances) -> (proposals, losses)``.
            pixel_mean, pixel_std: per-channel normalisation ``(x - mean) / std``.
            channels_last: feed the backbone NHWC batches (see ``GeneralizedRCNN``).
            winograd_conv: Winograd/GEMM convolutions on CPU (see ``GeneralizedRCNN``).
        """
        super().__init__()
        if proposal_generator is None:
            raise ValueError(
                "ProposalNetwork needs a proposal generator; MODEL.PROPOSAL_GENERATOR.NAME = "
                "'PrecomputedProposals' leaves it nothing to do. Use e.g. 'RPN'."
            )
        self.backbone = backbone
        self.proposal_generator = proposal_generator
        self.channels_last = bool(channels_last)
        self.winograd_conv = winograd_conv
        register_pixel_stats(self, pixel_mean, pixel_std)

    @classmethod
    def from_config(cls, cfg):
        """Backbone and proposal generator from their registries; MODEL.PIXEL_MEAN / STD,
        MODEL.CHANNELS_LAST and MODEL.WINOGRAD_CONV."""
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            **input_config(cfg),
        }

    winograd_conv = winograd_conv_property
    device = device_property

    def preprocess_image(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and batch the inputs' images, as ``GeneralizedRCNN.preprocess_image``."""
        return normalize_and_batch(self, batched_inputs, self.backbone)

    def forward(self, batched_inputs: List[Dict]):
        """Args:
            batched_inputs: one dict per image (see the module docstring); "instances" needed
                in training.

        Returns:
            in training, the proposal losses; in eval, ``[{"proposals": Instances}, ...]``.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        if "instances" in batched_inputs[0]:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
        else:
            gt_instances = None
        proposals, proposal_losses = self.proposal_generator(images, features, gt_instances)
        if self.training:
            return proposal_losses

        processed = []
        for result, item, image_size in zip(proposals, batched_inputs, images.image_sizes):
            height, width = output_size(item, image_size)
            processed.append({"proposals": detector_postprocess(result, height, width)})
        return processed
