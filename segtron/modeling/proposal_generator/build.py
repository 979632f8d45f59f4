"""Building the proposal generator named in the config.

Detectron2 path: ``detectron2.modeling.proposal_generator.build``.
"""

from typing import Dict, Optional

from torch import nn

from ...layers import ShapeSpec
from ..registries import PROPOSAL_GENERATOR_REGISTRY

__all__ = ["PROPOSAL_GENERATOR_REGISTRY", "build_proposal_generator"]


def build_proposal_generator(cfg, input_shape: Dict[str, ShapeSpec]) -> Optional[nn.Module]:
    """Build the proposal generator named by ``cfg.MODEL.PROPOSAL_GENERATOR.NAME``.

    Args:
        cfg: the config.
        input_shape: the backbone's output shapes, feature name -> ``ShapeSpec``.

    Returns:
        the module built as ``PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)``, or
        None when the name is ``"PrecomputedProposals"`` (proposals then come with the inputs,
        under the key ``"proposals"``).
    """
    name = cfg.MODEL.PROPOSAL_GENERATOR.NAME
    if name == "PrecomputedProposals":
        return None
    return PROPOSAL_GENERATOR_REGISTRY.get(name)(cfg, input_shape)
