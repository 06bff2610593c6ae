"""Thread counts: the free cores, at least one; --threads / threads= override; the caller's count comes back."""

import pytest
import torch

from emq import threads
from emq.cli.main import main
from emq.specs import ParameterError


@pytest.fixture
def machine(monkeypatch):
    """Two usable cores whose busy share and load average the test sets."""
    state = {"busy": 0.0, "load": 0.0, "ticks": 0.0}

    def counters():
        state["ticks"] += 200.0
        return state["busy"] / 2 * state["ticks"], state["ticks"], 2

    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "_cpu_counters", counters)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "_MIN_SAMPLE_SECONDS", 0.0)
    monkeypatch.setattr(threads, "_own_cpu_seconds", lambda: 0.0)
    return state


@pytest.mark.parametrize(
    "busy, load, want",
    [(0.0, 0.0, 2), (0.2, 0.3, 2), (2.0, 0.0, 1), (0.0, 2.0, 1), (1.0, 0.5, 1), (4.0, 6.0, 1)],
)
def test_the_free_cores_set_the_count(machine, busy, load, want):
    machine.update(busy=busy, load=load)
    assert threads.auto_threads() == want


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_thread_count_is_a_whole_number_of_at_least_one(bad):
    with pytest.raises(ParameterError, match="threads"):
        threads.check_threads(bad)


def test_the_callers_count_comes_back():
    before = torch.get_num_threads()
    with threads.torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_the_cli_flag_is_checked_and_its_count_not_left_behind(capsys):
    before = torch.get_num_threads()
    assert main(["layers", "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert main(["layers", "--threads", "1"]) == 0
    assert torch.get_num_threads() == before


def _blas_threads(_context=None, _task=None) -> int:
    """The largest thread count of this process's BLAS pools (numpy's OpenBLAS)."""
    from threadpoolctl import threadpool_info

    return max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)


@pytest.fixture
def two_blas_threads():
    """BLAS at two threads while the test runs (its default on a 2-core machine), whatever ran before."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        if _blas_threads() < 2:
            pytest.skip("this BLAS runs one thread at most")
        yield


def test_the_native_pools_are_capped_and_given_back(two_blas_threads):
    caps = threads.cap_native_pools(1)
    assert _blas_threads() == 1
    caps.restore_original_limits()
    assert _blas_threads() == 2


def test_a_campaign_runs_its_native_pools_at_its_thread_count(two_blas_threads, tiny_setting, monkeypatch):
    """A spinning OpenBLAS thread beside the campaign's own took the core of a second worker."""
    from emq.evolution import ProxySearch, engine

    stats, data, _ = tiny_setting
    torch_before = torch.get_num_threads()
    seen = []
    evaluate = engine.evaluate_candidate

    def watched(ctx, tokens):
        seen.append(_blas_threads())
        return evaluate(ctx, tokens)

    monkeypatch.setattr(engine, "evaluate_candidate", watched)
    ProxySearch(generations=1, population=6, random_state=0).fit(data, stats=stats)
    assert seen and set(seen) == {1}
    assert _blas_threads() == 2 and torch.get_num_threads() == torch_before


def test_process_workers_run_one_thread_per_native_pool(two_blas_threads):
    from emq.executors import make_executor

    if threads.usable_cores() < 2:
        pytest.skip("a worker's BLAS runs one thread by default on one core")
    ex = make_executor("process", workers=1)
    try:
        assert list(ex.map(_blas_threads, [0], context=None)) == [1]
    finally:
        ex.close()
