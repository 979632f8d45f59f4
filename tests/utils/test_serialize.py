"""PicklableWrapper: forwards calls/attributes, does not nest, unpickles to the object."""

import pickle

import pytest

from segtron.utils import serialize
from segtron.utils.serialize import PicklableWrapper


def _double(x):
    return 2 * x


def test_wraps_calls_and_attributes_without_nesting():
    wrapped = PicklableWrapper(PicklableWrapper(_double))
    assert wrapped._obj is _double
    assert wrapped(4) == 8 and wrapped.__name__ == "_double"


def test_pickles_to_the_wrapped_object():
    restored = pickle.loads(pickle.dumps(PicklableWrapper(_double)))
    assert restored is _double


def test_closures_need_cloudpickle(monkeypatch):
    factor = 3
    closure = PicklableWrapper(lambda x: factor * x)
    if serialize._cloudpickle is not None:
        assert pickle.loads(pickle.dumps(closure))(2) == 6
    monkeypatch.setattr(serialize, "_cloudpickle", None)
    with pytest.raises(pickle.PicklingError, match="pip install cloudpickle"):
        pickle.dumps(closure)
