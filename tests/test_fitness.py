"""Spearman against precomputed ranks (ties, orientation), Kendall, Pearson, rho_s@k."""

import numpy as np
import pytest
import torch
from scipy import stats as sps

from emq.errors import EmqError
from emq.fitness import FitnessData, SplitTarget, correlations


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    configs = rng.choice([2, 3, 4], size=(200, 5))
    metric = np.round(configs.sum(1) + rng.normal(size=200), 1)  # ties in the target
    split = SplitTarget.build("search", configs, metric, "top1", bits=(2, 3, 4))
    table = torch.tensor(rng.normal(size=(5, 3)))
    scores = split.scores(table)
    want = np.array([sum(table[s, cfg[s] - 2].item() for s in range(5)) for cfg in configs])
    np.testing.assert_allclose(scores, want)
    rounded = np.round(scores, 1)  # ties in the scores too
    assert split.spearman(rounded) == pytest.approx(sps.spearmanr(rounded, metric).statistic, abs=1e-12)
    assert np.isnan(split.spearman(np.ones(200)))


def test_lower_is_better_metrics_are_oriented():
    rng = np.random.default_rng(1)
    configs = rng.choice([2, 4], size=(50, 3))
    loss = -configs.sum(1) + 0.01 * rng.normal(size=50)  # more bits, lower loss
    fd = FitnessData.from_arrays((2, 4), (configs, loss), (configs, loss), metric="loss")
    bits_table = torch.tensor([[2.0, 4.0]] * 3)
    assert fd.search.spearman(fd.search.scores(bits_table)) > 0.9  # ties in the scores cap it below 1
    rep = fd.report(bits_table, orientation=1)
    assert rep["heldout"]["spearman"] > 0.9 and rep["heldout"]["kendall"] > 0.8
    assert set(rep["search"]) == {"spearman", "kendall", "pearson", "spearman@20", "spearman@50"}


def test_top_k_uses_the_proxys_best_configurations():
    scores = np.arange(100, dtype=float)
    target = np.where(scores >= 80, scores, -scores)  # agree only in the proxy's top 20 %
    c = correlations(scores, target)
    assert c["spearman@20"] == pytest.approx(1.0) and c["spearman"] < 0.5


def test_bad_bench_arrays_are_rejected():
    configs = np.array([[2, 3], [3, 4], [4, 2]])
    with pytest.raises(EmqError, match="not among"):
        SplitTarget.build("search", np.array([[2, 8], [3, 4], [4, 2]]), np.array([1.0, 2, 3]), "top1", bits=(2, 3, 4))
    with pytest.raises(EmqError, match="constant"):
        SplitTarget.build("search", configs, np.ones(3), "top1", bits=(2, 3, 4))
    with pytest.raises(EmqError, match="metric"):
        FitnessData.from_arrays((2, 3, 4), (configs, np.arange(3.0)), (configs, np.arange(3.0)), metric="acc")


def test_average_ranks_are_scipys():
    from scipy.stats import rankdata

    from emq.fitness import average_ranks

    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        x = rng.integers(0, int(rng.integers(1, 12)), n).astype(float) if rng.random() < 0.5 else rng.normal(size=n)
        np.testing.assert_array_equal(average_ranks(x), rankdata(x))
