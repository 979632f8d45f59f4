"""EventStorage: scalar histories, smoothing, name scopes, iteration, images/histograms."""

import pytest
import torch

from segtron.utils.events import (
    EventStorage,
    EventStorageError,
    get_event_storage,
    has_event_storage,
)


def test_get_event_storage_outside_context():
    with pytest.raises(AssertionError, match=r"with EventStorage\(\.\.\.\)"):
        get_event_storage()
    assert issubclass(EventStorageError, AssertionError)


def test_context_stack():
    with EventStorage() as outer:
        assert get_event_storage() is outer
        with EventStorage(5) as inner:
            assert get_event_storage() is inner and inner.iter == 5
        assert get_event_storage() is outer
    with pytest.raises(AssertionError):
        get_event_storage()


def test_history_and_latest():
    with EventStorage(start_iter=10) as storage:
        storage.put_scalar("loss", torch.tensor(2.0))
        storage.step()
        storage.put_scalar("loss", 1.0)
        storage.put_scalars(lr=0.1, time=0.5, smoothing_hint=False)
        history = storage.history("loss")
        assert history.values() == [(2.0, 10), (1.0, 11)]
        assert storage.latest() == {"loss": (1.0, 11), "lr": (0.1, 11), "time": (0.5, 11)}
        assert set(storage.histories()) == {"loss", "lr", "time"}
        assert storage.smoothing_hints() == {"loss": True, "lr": False, "time": False}
        assert isinstance(storage.latest()["loss"][0], float)


def test_history_unknown_name_lists_known():
    storage = EventStorage()
    storage.put_scalar("loss_cls", 1.0)
    with pytest.raises(KeyError, match="loss_cls"):
        storage.history("loss_box")


def test_cur_iter_override():
    storage = EventStorage(3)
    storage.put_scalar("metric", 7, cur_iter=100)
    storage.put_scalars(a=1, cur_iter=50)
    assert storage.latest() == {"metric": (7.0, 100), "a": (1.0, 50)}
    assert storage.iter == 3


def test_latest_with_smoothing_hint():
    storage = EventStorage()
    for i, value in enumerate([1.0, 100.0, 2.0, 3.0, 50.0]):
        storage.iter = i
        storage.put_scalar("smoothed", value)
        storage.put_scalar("raw", value, smoothing_hint=False)
    result = storage.latest_with_smoothing_hint(window_size=3)
    assert result["smoothed"] == (3.0, 4)  # median of [2, 3, 50]
    assert result["raw"] == (50.0, 4)
    assert storage.latest_with_smoothing_hint(window_size=20)["smoothed"] == (3.0, 4)


def test_conflicting_smoothing_hint():
    storage = EventStorage()
    storage.put_scalar("x", 1.0, smoothing_hint=True)
    with pytest.raises(ValueError, match="'x'"):
        storage.put_scalar("x", 2.0, smoothing_hint=False)


def test_name_scope():
    storage = EventStorage()
    with storage.name_scope("val/"):
        storage.put_scalar("AP", 40.0)
        with storage.name_scope("test"):  # replaces the outer prefix, as Detectron2 does
            storage.put_scalar("AP", 41.0)
        storage.put_scalar("AP50", 60.0)
    storage.put_scalar("AP", 1.0)
    assert set(storage.latest()) == {"val/AP", "test/AP", "val/AP50", "AP"}

    with pytest.raises(RuntimeError):
        with storage.name_scope("boom"):
            raise RuntimeError("inside scope")
    storage.put_scalar("after", 0.0)
    assert "after" in storage.latest()


def test_step_and_iter_setter():
    storage = EventStorage(start_iter=7)
    assert storage.iter == 7 and storage.iteration == 7
    storage.step()
    storage.step()
    assert storage.iter == 9
    storage.iter = 20.0
    assert storage.iter == 20 and isinstance(storage.iter, int)


def test_images_and_histograms():
    storage = EventStorage(start_iter=4)
    image = torch.rand(3, 8, 8)
    storage.put_image("vis", image)
    assert storage.vis_data == [("vis", image, 4)] and storage._vis_data is storage.vis_data
    storage.clear_images()
    assert storage.vis_data == []

    values = torch.tensor([[0.0, 1.0], [1.0, 3.0]])
    storage.put_histogram("weights", values, bins=3)
    (hist,) = storage._histograms
    assert hist["tag"] == "weights" and hist["global_step"] == 4
    assert hist["min"] == 0.0 and hist["max"] == 3.0 and hist["num"] == 4
    assert hist["sum"] == 5.0 and hist["sum_squares"] == 11.0
    assert hist["bucket_limits"] == pytest.approx([1.0, 2.0, 3.0])
    assert hist["bucket_counts"] == [1.0, 2.0, 1.0]
    storage.clear_histograms()
    assert storage._histograms == []



def test_has_event_storage():
    assert not has_event_storage()
    with EventStorage():
        assert has_event_storage()
        with EventStorage():
            assert has_event_storage()
        assert has_event_storage()
    assert not has_event_storage()


def test_writers_are_exported_from_events_as_in_detectron2():
    from segtron.utils import event_writers, events

    for name in ("JSONWriter", "TensorboardXWriter", "CommonMetricPrinter"):
        assert name in events.__all__
        assert getattr(events, name) is getattr(event_writers, name)
