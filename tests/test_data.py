import pytest
import torch

from emq.data import DEFAULT_SPLIT_SOURCES, default_data, load_data
from emq.errors import EmqError


def test_default_splits_shapes_and_determinism():
    d = default_data()
    x, y = d.test.tensors
    assert x.shape[1:] == (1, 24, 24) and d.num_classes == 10
    assert x.shape[0] == DEFAULT_SPLIT_SOURCES["test"] * 6
    assert set(y.tolist()) == set(range(10))
    default_data.cache_clear()
    again = default_data()
    assert torch.equal(again.test.tensors[0], x) and again.fingerprint == d.fingerprint


def test_split_by_source_image():
    """Renders of one source digit never appear in two splits."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(2023))
    n_train, n_calib = DEFAULT_SPLIT_SOURCES["train"], DEFAULT_SPLIT_SOURCES["calib"]
    train = set(order[:n_train].tolist())
    calib = set(order[n_train : n_train + n_calib].tolist())
    test = set(order[n_train + n_calib :].tolist())
    assert not (train & calib) and not (train & test) and not (calib & test)
    assert len(train | calib | test) == images.shape[0]


def test_calibration_draws_are_seeded():
    d = default_data()
    a, _ = d.calibration(64, seed=0)
    b, _ = d.calibration(64, seed=0)
    c, _ = d.calibration(64, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_load_data_errors(tmp_path):
    with pytest.raises(EmqError, match="no such directory"):
        load_data(str(tmp_path / "missing"))
    with pytest.raises(EmqError, match="ImageFolder"):
        load_data(str(tmp_path))
