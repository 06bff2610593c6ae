"""The same seed gives the same campaign in separate processes, with 1 or 2 workers.

In-process comparisons cannot catch nondeterminism that comes from memory addresses (the
iteration order of a set of classes, as in DEAP's own crossover), so each campaign here is
its own `emq search` process.
"""

import json
import subprocess
import sys

import pytest

TIMING = {"seconds", "evals_per_s"}


def _campaign(out, workers: int) -> dict[str, str]:
    cmd = [sys.executable, "-m", "emq.cli.main", "search", "--bench", "default", "--generations", "6", "--population", "16",
           "--seed", "5", "--workers", str(workers), "--out", str(out), "--json"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    log = [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in (out / "log.jsonl").read_text().splitlines()]
    return {"best": (out / "best_proxy.json").read_text(), "hof": (out / "hall_of_fame.csv").read_text(), "log": json.dumps(log, sort_keys=True)}


@pytest.mark.slow
def test_same_seed_same_campaign_across_processes_and_workers(tmp_path):
    from emq.bench import Bench
    from emq.search_space.stats import compute_stats
    from emq.target import resolve_target

    compute_stats(resolve_target("default"), bits=Bench.open("default").bits)  # warm the shared test cache once
    runs = [_campaign(tmp_path / f"run{i}", w) for i, w in enumerate((1, 1, 2))]
    for key in ("best", "hof", "log"):
        assert all(r[key] == runs[0][key] for r in runs[1:]), key
