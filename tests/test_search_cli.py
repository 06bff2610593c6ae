"""`emq search` end to end on the shipped default bench, and its input errors."""

import json
import shutil

from emq.bench.query import shipped_bench_path
from emq.cli.main import main


def test_search_cli_json_and_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    bench = tmp_path / "default.sqlite"  # a snapshot: the campaign and its resume see the same bench
    shutil.copyfile(shipped_bench_path(), bench)
    args = ["search", "--bench", str(bench), "--generations", "2", "--population", "8", "--seed", "1", "--out", str(out), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"best_heldout_spearman", "best_search_spearman", "evaluations", "seconds", "handmade", "noise_ceiling"} <= set(summary)
    for name in ("best_proxy.json", "hall_of_fame.csv", "log.jsonl", "fitness.png", "diversity.png", "checkpoint.npz"):
        assert (out / name).is_file(), name
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
