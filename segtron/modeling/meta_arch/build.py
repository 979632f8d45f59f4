"""Meta-architecture registry (Detectron2 path: detectron2.modeling.meta_arch.build)."""

from ..registries import META_ARCH_REGISTRY  # noqa: F401
