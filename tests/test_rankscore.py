"""The compiled scoring pass gives what SplitTarget and the numpy ranking give: the same scores, the same
signature, rho to the last bits; a split's scores are summed slot by slot in slot order."""

import numpy as np
import pytest
import torch

from emq.evolution.rankscore import CONSTANT, NONFINITE, REASONS, score_split
from emq.fitness import SplitTarget, average_ranks


def _split(n: int = 300, slots: int = 7, seed: int = 0) -> SplitTarget:
    rng = np.random.default_rng(seed)
    configs = rng.choice([2, 3, 4], size=(n, slots))
    return SplitTarget.build("search", configs, rng.normal(size=n), "top1", bits=(2, 3, 4))


def _numpy_signature(scores: np.ndarray, idx: np.ndarray, sign: int) -> np.ndarray:
    ranks = average_ranks(sign * scores[idx])
    d = ranks - ranks.mean()
    norm = float(np.sqrt((d * d).sum()))
    return d / norm if norm > 0 else d


def _run(split: SplitTarget, table: torch.Tensor, idx: np.ndarray) -> tuple[int, float, np.ndarray, np.ndarray]:
    scores, sig = np.empty(len(split)), np.empty(len(idx))
    status, rho = score_split(table.numpy().reshape(-1), split.slot_idx, split.target_rank_z, idx, scores, sig)
    return status, rho, scores, sig


@pytest.mark.parametrize("ties", [False, True])
def test_compiled_scoring_equals_the_numpy_path(ties):
    split = _split()
    rng = np.random.default_rng(1)
    idx = rng.permutation(len(split))[:128]
    for _ in range(20):
        table = torch.from_numpy(rng.normal(size=(7, 3)) * 10.0 ** rng.uniform(0 if ties else -8, 8))
        if ties:
            table = table.round()  # many equal scores: average ranks matter
        status, rho, scores, sig = _run(split, table, idx)
        expected = split.scores(table)
        assert status == 0
        np.testing.assert_array_equal(scores, expected)
        assert rho == pytest.approx(split.spearman(expected), abs=1e-13)
        np.testing.assert_allclose(sig, _numpy_signature(expected, idx, 1), rtol=0, atol=1e-15)
        # the other orientation: reflected ranks, so the centred values change sign exactly
        np.testing.assert_array_equal(-sig, _numpy_signature(expected, idx, -1))


def test_split_scores_sum_slot_by_slot_in_slot_order():
    split = _split(n=200, slots=12)
    rng = np.random.default_rng(2)
    signs = rng.choice([-1.0, 1.0], size=(12, 3))
    table = torch.from_numpy(signs * 10.0 ** rng.uniform(-3, 16, size=(12, 3)))  # sums that depend on their order
    flat = table.numpy().reshape(-1)
    by_hand = np.zeros(len(split))
    for s in range(12):
        by_hand = by_hand + flat[split.slot_idx[s]]
    np.testing.assert_array_equal(split.scores(table), by_hand)


def test_overflowing_and_constant_scores_are_reported():
    split = _split(n=40, slots=3)
    idx = np.arange(10)
    huge = torch.full((3, 3), 1e308, dtype=torch.float64)
    assert _run(split, huge, idx)[0] == NONFINITE and REASONS[NONFINITE] == "nonfinite_scores"
    flat = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [0.5, 0.5, 0.5]], dtype=torch.float64)  # all score 3.5
    status, rho, _, _ = _run(split, flat, idx)
    assert status == CONSTANT and np.isnan(rho) and REASONS[CONSTANT] == "constant_scores"


def test_no_signature_and_no_slot():
    """An evaluator may ask for no signature (signature_size=0); a split without slots scores every
    configuration the same."""
    split = _split(n=30, slots=3)
    status, rho, _, sig = _run(split, torch.rand(3, 3, dtype=torch.float64), np.arange(0))
    assert status == 0 and np.isfinite(rho) and sig.shape == (0,)
    empty = np.zeros((0, 30), dtype=np.int64)
    out = score_split(np.zeros(0), empty, split.target_rank_z, np.arange(5), np.empty(30), np.empty(5))
    assert out[0] == CONSTANT
