import os
import random
import tempfile

import numpy as np
import pytest
import torch

# statistics caches of the test session live in a fresh folder, not the user's ~/.cache
os.environ["EMQ_CACHE_DIR"] = tempfile.mkdtemp(prefix="emq-test-cache-")


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so the suite is deterministic."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield
