"""Proposal-generator registry (Detectron2 path: detectron2.modeling.proposal_generator.build)."""

from ..registries import PROPOSAL_GENERATOR_REGISTRY  # noqa: F401
