"""``@configurable``: build a class or call a function either from a config or from plain arguments.

Usage on a class (Detectron2's pattern)::

    class Head(nn.Module):
        @configurable
        def __init__(self, *, in_channels, num_classes=80): ...

        @classmethod
        def from_config(cls, cfg, input_shape):
            return {"in_channels": input_shape.channels,
                    "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES}

    Head(cfg, shape)                     # from a config: from_config gives the arguments
    Head(cfg, shape, num_classes=3)      # from a config, with an explicit override
    Head(in_channels=256, num_classes=3) # from plain arguments, no config involved

On a function, name the translator explicitly: ``@configurable(from_config=fn)``.
"""

import functools
import inspect
from typing import Any, Callable, Dict, Optional


def configurable(init_func: Optional[Callable] = None, *, from_config: Optional[Callable] = None):
    """Decorate a class ``__init__`` (bare) or a function (with ``from_config=``) as above.

    When called with a config as the first positional argument or as ``cfg=``, the config and
    the remaining arguments go to ``from_config``, which returns a dict of keyword arguments for
    the decorated callable; keyword arguments that ``from_config`` does not accept are passed
    through and override its result. Otherwise the decorated callable is called unchanged.
    """
    if init_func is not None:
        if not (inspect.isfunction(init_func) and init_func.__name__ == "__init__"):
            raise TypeError(
                "@configurable without arguments decorates a class's __init__; for a function "
                "write @configurable(from_config=<function cfg -> dict of arguments>)."
            )

        @functools.wraps(init_func)
        def wrapped_init(self, *args, **kwargs):
            translator = getattr(type(self), "from_config", None)
            if translator is None:
                raise AttributeError(
                    f"{type(self).__name__} uses @configurable but has no classmethod from_config."
                )
            if not inspect.ismethod(translator):
                raise TypeError(f"{type(self).__name__}.from_config must be a @classmethod.")
            if _called_with_cfg(*args, **kwargs):
                init_func(self, **_args_from_config(translator, *args, **kwargs))
            else:
                init_func(self, *args, **kwargs)

        return wrapped_init

    if from_config is None:
        raise TypeError("@configurable on a function needs from_config=<function>.")
    if not inspect.isfunction(from_config):
        raise TypeError("from_config must be a function taking the config (and other arguments).")

    def decorate(func):
        @functools.wraps(func)
        def wrapped(*args, **kwargs):
            if _called_with_cfg(*args, **kwargs):
                return func(**_args_from_config(from_config, *args, **kwargs))
            return func(*args, **kwargs)

        wrapped.from_config = from_config
        return wrapped

    return decorate


def _is_config(obj: Any) -> bool:
    from yacs.config import CfgNode as _YacsNode

    if isinstance(obj, _YacsNode):
        return True
    try:  # OmegaConf configs (LazyConfig users) count as configs too, when installed.
        from omegaconf import DictConfig
    except ImportError:
        return False
    return isinstance(obj, DictConfig)


def _called_with_cfg(*args, **kwargs) -> bool:
    if args and _is_config(args[0]):
        return True
    return _is_config(kwargs.get("cfg"))


def _args_from_config(translator: Callable, *args, **kwargs) -> Dict[str, Any]:
    """Call ``translator`` with the arguments it accepts; merge the rest into its result."""
    signature = inspect.signature(translator)
    params = signature.parameters
    first = next(iter(params), None)
    if first != "cfg":
        name = getattr(translator, "__qualname__", repr(translator))
        raise TypeError(f"{name}() must take 'cfg' as its first argument.")
    takes_any_kwargs = any(
        p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        for p in params.values()
    )
    if takes_any_kwargs:
        return translator(*args, **kwargs)
    accepted = {k: v for k, v in kwargs.items() if k in params}
    passthrough = {k: v for k, v in kwargs.items() if k not in params}
    result = translator(*args, **accepted)
    if not isinstance(result, dict):
        raise TypeError(
            f"{getattr(translator, '__qualname__', translator)}() must return a dict of arguments, "
            f"got {type(result).__name__}."
        )
    result.update(passthrough)
    return result
