"""RPN-head registry (Detectron2 path: detectron2.modeling.proposal_generator.rpn)."""

from ..registries import RPN_HEAD_REGISTRY  # noqa: F401
