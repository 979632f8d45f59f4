"""Fixtures for the tools' tests."""

import logging

import pytest


@pytest.fixture
def restore_logging():
    """A tool's main() calls setup_logger("segtron"); put that logger back as it was."""
    logger = logging.getLogger("segtron")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
