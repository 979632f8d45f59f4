"""Multi-step LR multipliers "1x", "2x", ... (Detectron2's common/coco_schedule.py)."""

from fvcore.common.param_scheduler import MultiStepParamScheduler

from segtron.config import LazyCall as L
from segtron.solver import WarmupParamScheduler


def default_X_scheduler(num_X):
    """The LR multiplier config of an "<num_X>x" schedule.

    One "x" is 90000 iterations at 16 images per iteration (1440k images, ~12 COCO epochs).
    The LR is divided by 10 twice near the end of training, as in "Rethinking ImageNet
    Pre-training" (Sec. 4), after a linear warmup over the first 1000 iterations.

    Args:
        num_X: a positive real number, the schedule length in "x".

    Returns:
        DictConfig: a ``WarmupParamScheduler`` LazyCall wrapping a
        ``MultiStepParamScheduler``.
    """
    # Total iterations at 16 images per iteration: 1440000 / 16 = 90000 per "x".
    total_steps_16bs = num_X * 90000

    if num_X <= 2:
        scheduler = L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01],
            # The scheduler is scale-invariant: same as milestones=[6, 8], num_updates=9.
            milestones=[60000, 80000],
            num_updates=90000,
        )
    else:
        scheduler = L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01],
            milestones=[total_steps_16bs - 60000, total_steps_16bs - 20000],
            num_updates=total_steps_16bs,
        )
    return L(WarmupParamScheduler)(
        scheduler=scheduler,
        warmup_length=1000 / total_steps_16bs,
        warmup_method="linear",
        warmup_factor=0.001,
    )


lr_multiplier_1x = default_X_scheduler(1)
lr_multiplier_2x = default_X_scheduler(2)
lr_multiplier_3x = default_X_scheduler(3)
lr_multiplier_6x = default_X_scheduler(6)
lr_multiplier_9x = default_X_scheduler(9)
