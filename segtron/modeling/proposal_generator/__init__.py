"""Proposal generators (Detectron2 path: ``detectron2.modeling.proposal_generator``): the RPN and
its heads, built through ``PROPOSAL_GENERATOR_REGISTRY`` / ``RPN_HEAD_REGISTRY``."""

from .build import PROPOSAL_GENERATOR_REGISTRY, build_proposal_generator
from .proposal_utils import add_ground_truth_to_proposals, find_top_rpn_proposals
from .rpn import RPN, RPN_HEAD_REGISTRY, StandardRPNHead, build_rpn_head

__all__ = [
    "PROPOSAL_GENERATOR_REGISTRY",
    "build_proposal_generator",
    "RPN_HEAD_REGISTRY",
    "build_rpn_head",
    "RPN",
    "StandardRPNHead",
    "find_top_rpn_proposals",
    "add_ground_truth_to_proposals",
]
