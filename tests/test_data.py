import os
import subprocess
import sys

import pytest
import torch

from emq.data import DEFAULT_RENDERS, default_data, default_split_sources, load_data
from emq.errors import EmqError

# the README's figures: source digits per split and test images
README_SOURCES = {"train": 1097, "calib": 200, "test": 500}
README_TEST_IMAGES = 3000


def test_split_sources_are_disjoint_and_cover_the_digits():
    """Renders of one source digit never appear in two splits; every digit is used once."""
    parts = default_split_sources()
    assert {k: len(v) for k, v in parts.items()} == README_SOURCES
    sets = {k: set(v.tolist()) for k, v in parts.items()}
    assert sum(len(s) for s in sets.values()) == len(set.union(*sets.values())) == 1797
    assert default_split_sources(1)["test"].tolist() != parts["test"].tolist()


def test_default_splits_are_rendered_from_their_own_sources():
    from sklearn.datasets import load_digits

    target = torch.tensor(load_digits().target)
    d = default_data()
    x, y = d.test.tensors
    assert x.shape == (README_TEST_IMAGES, 1, 24, 24) and d.num_classes == 10
    parts = default_split_sources()
    assert torch.equal(y, target[parts["test"]].repeat_interleave(DEFAULT_RENDERS["test"]))
    assert torch.equal(d.calib_pool[1], target[parts["calib"]].repeat_interleave(DEFAULT_RENDERS["calib"]))
    # renders of one source differ (random warp and noise) but keep its label
    assert not torch.equal(x[0], x[1])
    counts = torch.bincount(y, minlength=10)
    assert counts.min() >= 0.07 * len(y) and counts.max() <= 0.13 * len(y)


def test_default_data_is_deterministic_across_calls_and_processes():
    d = default_data()
    default_data.cache_clear()
    again = default_data()
    assert again is not d and torch.equal(again.test.tensors[0], d.test.tensors[0])
    code = (
        "from emq.data import default_data, default_split_sources as s; print(default_data().fingerprint, "
        "s()['test'][:5].tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "123"},
    ).stdout
    assert out.split(" ", 1) == [d.fingerprint, f"{default_split_sources()['test'][:5].tolist()}\n"]


def test_calibration_draws_are_seeded():
    d = default_data()
    a, _ = d.calibration(64, seed=0)
    b, _ = d.calibration(64, seed=0)
    c, _ = d.calibration(64, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (64, 1, 24, 24)


def test_load_data_errors(tmp_path):
    with pytest.raises(EmqError, match="no such directory"):
        load_data(str(tmp_path / "missing"))
    with pytest.raises(EmqError, match="ImageFolder"):
        load_data(str(tmp_path))
