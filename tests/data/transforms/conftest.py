"""Fixtures for the transform tests: a fixed numpy seed for every test."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_numpy():
    """Augmentations draw from the global numpy generator; make each test reproducible."""
    state = np.random.get_state()
    np.random.seed(1234)
    yield
    np.random.set_state(state)
