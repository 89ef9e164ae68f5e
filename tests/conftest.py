"""Shared test set-up: deterministic Hypothesis profile and seeds.

The torch thread count, the temporary cache folder and the ``data`` marker are set up in the
repository's ``conftest.py``, which the doctests share.
"""

import os

import numpy as np
import pytest
import torch
from hypothesis import settings

# Property tests are deterministic by default, so a CI run is reproducible; set
# HYPOTHESIS_PROFILE=explore to search new random examples locally.
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", max_examples=300, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
