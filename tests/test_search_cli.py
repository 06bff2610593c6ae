"""`emq search` end to end on the shipped default bench, and its input errors."""

import csv
import json
import shutil

import pytest

from emq.bench.bundles import shipped_bench_path
from emq.cli.main import main


def test_search_cli_json_and_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    bench = tmp_path / "default.sqlite"  # a snapshot: the campaign and its resume see the same bench
    shutil.copyfile(shipped_bench_path(), bench)
    args = [
        "search",
        "--bench",
        str(bench),
        "--generations",
        "2",
        "--population",
        "8",
        "--seed",
        "1",
        "--out",
        str(out),
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    for name in ("best_proxy.json", "hall_of_fame.csv", "log.jsonl", "fitness.png", "diversity.png", "checkpoint.npz"):
        assert (out / name).is_file(), name
    # the summary, the proxy file, the hall of fame and the log tell the same story
    best = json.loads((out / "best_proxy.json").read_text())
    top = next(csv.DictReader((out / "hall_of_fame.csv").open()))
    assert best["expression"] == top["expression"] == summary["best_expression"]
    for split in ("search", "heldout"):
        assert best["fitness"][f"{split}_spearman"] == pytest.approx(summary[f"best_{split}_spearman"], abs=1e-9)
        assert float(top[f"{split}_spearman"]) == pytest.approx(summary[f"best_{split}_spearman"], abs=1e-12)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["generation"] for r in log] == [0, 1, 2] and log[-1]["evaluations"] == summary["evaluations"]
    # the hand-made proxies seed the population, so the best is at least as good on the search split
    assert summary["best_search_spearman"] >= max(h["search_spearman"] for h in summary["handmade"].values()) - 1e-12
    assert main(args) == 2  # the directory holds a campaign: refuse to overwrite it
    assert "--resume" in capsys.readouterr().err
    assert main([*args[:4], "3", *args[5:], "--resume"]) == 0  # one more generation
    assert json.loads(capsys.readouterr().out)["generations"] == 3


def test_search_cli_rejects_bad_input(tmp_path, capsys):
    assert main(["search", "--terminals", "W,params", "--out", str(tmp_path / "a")]) == 2
    assert "bit-dependent" in capsys.readouterr().err
    assert main(["search", "--exclude-ops", "frobnicate", "--out", str(tmp_path / "b")]) == 2
    assert "unknown" in capsys.readouterr().err
    assert main(["search", "--bench", str(tmp_path / "missing.sqlite"), "--out", str(tmp_path / "c")]) == 2
    assert not (tmp_path / "c").exists()
