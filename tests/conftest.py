"""Shared test set-up: deterministic Hypothesis profile and seeds.

The torch thread count, the temporary cache folder and the ``data`` marker are set up in the
repository's ``conftest.py``, which the doctests share.
"""

import importlib
import os
import sys
from pathlib import Path

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


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def example_module():
    """``load(name)``: the module ``examples/<name>.py`` (imported with ``examples/`` on the path)."""
    def load(name: str):
        if str(EXAMPLES) not in sys.path:
            sys.path.insert(0, str(EXAMPLES))
        pytest.importorskip("skorch")
        return importlib.import_module(name)
    return load
