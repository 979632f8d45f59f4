"""``PicklableWrapper``: make closures and lambdas survive pickling (data-loader workers)."""

import pickle
from typing import Any

__all__ = ["PicklableWrapper"]

try:
    import cloudpickle as _cloudpickle
except ImportError:  # optional: without it only objects plain pickle handles can be wrapped
    _cloudpickle = None


def _restore(payload: bytes) -> Any:
    """Unpickle what ``PicklableWrapper.__reduce__`` produced (the wrapped object)."""
    return (_cloudpickle or pickle).loads(payload)


class PicklableWrapper:
    """Wrap ``obj`` (typically a closure or lambda used as a dataset ``map_func``) so that
    pickling it works: with ``cloudpickle`` installed it serializes by value what plain
    ``pickle`` refuses. The wrapper forwards calls and attribute access to ``obj``; wrapping a
    wrapper does not nest. Unpickling gives back ``obj`` itself (not a wrapper), as in
    Detectron2.

    Without ``cloudpickle`` only objects plain ``pickle`` accepts can be pickled; others raise
    a ``pickle.PicklingError`` naming the object and the fix (``pip install cloudpickle``).
    """

    def __init__(self, obj: Any) -> None:
        while isinstance(obj, PicklableWrapper):
            obj = obj._obj
        self._obj = obj

    def __reduce__(self):
        if _cloudpickle is not None:
            return _restore, (_cloudpickle.dumps(self._obj),)
        try:
            payload = pickle.dumps(self._obj)
        except (pickle.PicklingError, TypeError, AttributeError) as e:
            raise pickle.PicklingError(
                f"PicklableWrapper cannot pickle {self._obj!r} ({e}). Install cloudpickle "
                "(pip install cloudpickle) to pickle closures and lambdas, or pass a "
                "module-level function / class instance instead."
            ) from e
        return _restore, (payload,)

    def __call__(self, *args, **kwargs):
        return self._obj(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "_obj":  # not set yet (e.g. during unpickling of a subclass): no recursion
            raise AttributeError(name)
        return getattr(self._obj, name)
