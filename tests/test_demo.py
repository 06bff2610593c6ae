import json

import pytest

from emq.cli.main import main


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["demo", "--out", str(out), "--generations", "4", "--population", "24", "--json"])
    assert code == 0
    s = json.loads(capsys.readouterr().out)
    methods = [a["method"] for a in s["allocations"]]
    assert methods[:3] == ["evolved", "hawq-v2", "ompq"]
    assert "uniform 3-bit" in methods and "best bench config (oracle)" in methods
    for a in s["allocations"]:
        assert a["avg_bits"] <= 3.0 + 1e-9
        assert 10 < a["top1"] <= 100 and a["kl"] >= 0
    assert s["best_expression"] and -1 <= s["best_heldout_spearman"] <= 1
    for name in ("summary.json", "allocations.png", "search/best_proxy.json", "search/hall_of_fame.csv", "search/log.jsonl"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["budget_avg_bits"] == 3.0
    assert any(p.suffix == ".tex" for p in (out / "proxy").iterdir())
