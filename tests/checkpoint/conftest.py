"""Fixtures for checkpoint tests."""

import logging

import pytest


@pytest.fixture
def ckpt_log(caplog, monkeypatch):
    """caplog at INFO for segtron.checkpoint, whatever an earlier setup_logger did to propagation."""
    for name in ("segtron", "segtron.checkpoint"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)
    caplog.set_level(logging.INFO, logger="segtron.checkpoint")
    return caplog
