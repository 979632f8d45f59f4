"""Fixtures for the engine tests."""

import logging

import pytest


@pytest.fixture
def engine_log(caplog, monkeypatch):
    """caplog at INFO for segtron loggers, whatever an earlier setup_logger did to propagation."""
    for name in ("segtron", "segtron.engine", "segtron.utils.events"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.INFO, logger="segtron")
    return caplog
