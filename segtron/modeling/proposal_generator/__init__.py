"""Proposal generators (Detectron2 path: ``detectron2.modeling.proposal_generator``): the RPN,
the rotated RRPN and the RPN heads, built through ``PROPOSAL_GENERATOR_REGISTRY`` /
``RPN_HEAD_REGISTRY``."""

from .build import PROPOSAL_GENERATOR_REGISTRY, build_proposal_generator
from .proposal_utils import add_ground_truth_to_proposals, find_top_rpn_proposals
from .rpn import RPN, RPN_HEAD_REGISTRY, StandardRPNHead, build_rpn_head
from .rrpn import RRPN

__all__ = [
    "PROPOSAL_GENERATOR_REGISTRY",
    "build_proposal_generator",
    "RPN_HEAD_REGISTRY",
    "build_rpn_head",
    "RPN",
    "RRPN",
    "StandardRPNHead",
    "find_top_rpn_proposals",
    "add_ground_truth_to_proposals",
]
