"""CUDA-graph replay of the static-shape part of R-CNN inference (TEST.CUDA_GRAPHS).

For a given input size, the backbone, the RPN head, the anchors, the box decoding and each
level's top-k candidates (``RPN.top_candidates``) run the same kernels on tensors of the same
shapes every time; only what follows (filtering, NMS, the ROI heads) depends on the data. On a
GPU that static part can be captured once per input size and replayed with one launch, which
removes most of the per-kernel CPU work that bounds small-batch inference. A replay runs the
captured kernels, so the detections equal eager inference's.

On a CPU, in training, while tracing, or with a proposal generator that has no
``top_candidates`` / ``proposals_from_candidates``, nothing is captured: the model runs as
usual (on a CPU through the same two RPN steps, which give the eager proposals).
"""

from typing import Dict, List, Tuple

import torch
from torch import nn

from ...structures import ImageList, Instances
from ...utils.cuda_graphs import CudaGraphRunner

__all__ = ["StaticDenseGraphs", "cuda_graphs_property"]


def _dense_forward(model: nn.Module, images: torch.Tensor):
    """Backbone features and the RPN's top candidates of one padded batch (static shapes)."""
    features = model.backbone(images)
    return features, model.proposal_generator.top_candidates(features)


class StaticDenseGraphs:
    """The CUDA graphs of one ``GeneralizedRCNN`` (kept outside its state dict).

    Args:
        max_shapes: input sizes (padded batch shapes) captured at most; later sizes run
            eagerly.

    Captured graphs are dropped when the model's parameters move (``.to()``), by
    :meth:`reset`, and on copy or pickling (a copy captures its own).
    """

    def __init__(self, max_shapes: int = 8):
        if int(max_shapes) < 1:
            raise ValueError(
                f"TEST.CUDA_GRAPHS.MAX_SHAPES must be >= 1, got {max_shapes}; it is how many "
                "input sizes get their own CUDA graph."
            )
        self.max_shapes = int(max_shapes)
        self._runner = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_runner"] = None  # graphs and their buffers belong to one model instance
        return state

    def reset(self) -> None:
        """Forget every captured graph (the next inference captures again)."""
        self._runner = None

    def applies(self, model: nn.Module) -> bool:
        """Whether ``model``'s inference should go through :meth:`features_and_proposals`."""
        if not model.cuda_graphs or model.training or torch.jit.is_tracing():
            return False
        generator = model.proposal_generator
        return hasattr(generator, "top_candidates") and hasattr(
            generator, "proposals_from_candidates"
        )

    def features_and_proposals(
        self, model: nn.Module, images: ImageList
    ) -> Tuple[Dict[str, torch.Tensor], List[Instances]]:
        """Backbone features and RPN proposals of ``images``, the static part replayed from a
        graph when the batch is on a GPU.

        Returns:
            features: name -> (N, C, Hi, Wi), as ``model.backbone(images.tensor)``;
            proposals: N ``Instances``, as ``model.proposal_generator(images, features)``.
        """
        if self._runner is None:

            def dense_part(tensor: torch.Tensor):
                return _dense_forward(model, tensor)

            # Named in the runner's messages (e.g. a capture that fails).
            dense_part.__qualname__ = (
                f"{type(model).__name__}.backbone + "
                f"{type(model.proposal_generator).__name__}.top_candidates"
            )
            self._runner = CudaGraphRunner(dense_part, max_graphs=self.max_shapes, watch=model)
        features, candidates = self._runner(images.tensor)
        proposals = model.proposal_generator.proposals_from_candidates(
            candidates, images.image_sizes
        )
        return features, proposals


# The getter is compiled with the model when it is scripted (the graphs themselves never are).
def _get_cuda_graphs(self) -> bool:
    return self._cuda_graphs


@torch.jit.unused
def _set_cuda_graphs(self, value: bool) -> None:
    self._cuda_graphs = bool(value)


cuda_graphs_property = property(
    _get_cuda_graphs,
    _set_cuda_graphs,
    doc="Whether inference replays the static part from CUDA graphs (TEST.CUDA_GRAPHS.ENABLED). "
    "Turning it off keeps the graphs captured so far (``dense_graphs.reset()`` frees them).",
)
