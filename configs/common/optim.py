"""Optimizers (Detectron2's common/optim.py).

``params.model`` is set to the model object before the optimizer is instantiated, e.g.
``cfg.optimizer.params.model = model; optimizer = instantiate(cfg.optimizer)``.
"""

import torch

from segtron.config import LazyCall as L
from segtron.solver.build import get_default_optimizer_params

SGD = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(
        # params.model is set to the model before instantiating the optimizer.
        weight_decay_norm=0.0
    ),
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
)


AdamW = L(torch.optim.AdamW)(
    params=L(get_default_optimizer_params)(
        # params.model is set to the model before instantiating the optimizer.
        base_lr="${..lr}",
        weight_decay_norm=0.0,
    ),
    lr=1e-4,
    betas=(0.9, 0.999),
    weight_decay=0.1,
)
