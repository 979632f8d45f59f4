"""PathManager: model-zoo prefixes map to Detectron2's https storage; local files open as usual."""

import pytest
from iopath.common.file_io import HTTPURLHandler

from segtron.utils.file_io import Detectron2Handler, PathHandler, PathManager

D2_URL = "https://dl.fbaipublicfiles.com/detectron2/"
ZOO_PATH = "ImageNetPretrained/MSRA/R-50.pkl"


def test_handlers_registered():
    handlers = PathManager._path_handlers
    assert isinstance(handlers["detectron2://"], Detectron2Handler)
    assert handlers["segtron://"] is handlers["detectron2://"]
    assert isinstance(handlers["https://"], HTTPURLHandler)
    assert any(prefix.startswith("onedrive") or "1drv" in prefix for prefix in handlers)
    assert issubclass(Detectron2Handler, PathHandler)


@pytest.mark.parametrize("prefix", ["detectron2://", "segtron://"])
def test_model_zoo_url_mapping(prefix):
    handler = PathManager._path_handlers[prefix]
    assert handler.to_url(prefix + ZOO_PATH) == D2_URL + ZOO_PATH
    with pytest.raises(ValueError, match="model-zoo"):
        handler.to_url("http://example.com/x.pkl")


@pytest.mark.parametrize("prefix", ["detectron2://", "segtron://"])
def test_model_zoo_resolves_through_http_handler(prefix, monkeypatch, tmp_path):
    """get_local_path/open go to the HTTP handler with the https URL (no download here)."""
    cached = tmp_path / "R-50.pkl"
    cached.write_bytes(b"weights")
    requested = []

    def fake_local_path(self, path, force=False, **kwargs):
        requested.append(path)
        return str(cached)

    def fake_open(self, path, mode="r", buffering=-1, **kwargs):
        requested.append(path)
        return open(cached, mode)

    monkeypatch.setattr(HTTPURLHandler, "_get_local_path", fake_local_path)
    monkeypatch.setattr(HTTPURLHandler, "_open", fake_open)
    assert PathManager.get_local_path(prefix + ZOO_PATH) == str(cached)
    with PathManager.open(prefix + ZOO_PATH, "rb") as f:
        assert f.read() == b"weights"
    assert requested == [D2_URL + ZOO_PATH, D2_URL + ZOO_PATH]


def test_local_files(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    PathManager.mkdirs(str(path.parent))
    with PathManager.open(str(path), "w") as f:
        f.write("hello")
    assert PathManager.exists(str(path)) and PathManager.isfile(str(path))
    assert PathManager.get_local_path(str(path)) == str(path)
    with PathManager.open(str(path)) as f:
        assert f.read() == "hello"
    assert PathManager.ls(str(path.parent)) == ["a.txt"]
