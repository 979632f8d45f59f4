"""Training engine: the training loop, hooks and (from other modules) launching and the
default trainer, with Detectron2's names.

Each line below star-imports one module's ``__all__``; further modules are added by appending
a line (``from .launch import *``, ``from .defaults import *``).
"""

from .train_loop import *  # noqa: F401,F403
from .hooks import *  # noqa: F401,F403
from .launch import *  # noqa: F401,F403
from .defaults import *  # noqa: F401,F403
from .model_ema import *  # noqa: F401,F403
from .training_plugins import *  # noqa: F401,F403
