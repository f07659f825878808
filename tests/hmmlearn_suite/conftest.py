"""hmmlearn's suite seeds NumPy's global generator once per session from a random seed (its
conftest.py); here each test starts from the same seed, so a run is reproducible."""

import random

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seeded():
    np.random.seed(0)
    random.seed(0)
