"""`emq demo` end to end: what it reports must agree with the bench, `emq score` and its files."""

import csv
import json

import numpy as np
import pytest

from emq.bench import Bench
from emq.cli.main import main
from emq.target import resolve_target

BUDGETS = (2.5, 3.0, 3.5)  # the demo's default average weight bits


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    # --evaluations 0: auto's measured-configuration branches are tested in test_auto.py (50 PTQ runs here)
    args = ["demo", "--out", str(out), "--generations", "4", "--population", "24", "--evaluations", "0"]
    code = main([*args, "--json"])
    assert code == 0
    s = json.loads(capsys.readouterr().out)
    assert json.loads((out / "summary.json").read_text()) == s
    assert [b["budget_avg_bits"] for b in s["budgets"]] == list(BUDGETS)

    # the files the README promises: the search's outputs, the exported formula, the plot
    for name in (
        "summary.json",
        "allocations.png",
        "search/best_proxy.json",
        "search/hall_of_fame.csv",
        "search/log.jsonl",
        "search/fitness.png",
    ):
        assert (out / name).is_file(), name
    assert set(s["exported"]) == {"json", "sympy", "latex", "python", "dot", "png"}
    assert all(
        p.startswith(str(out / "proxy")) and (out / "proxy").joinpath(p.rsplit("/", 1)[1]).is_file()
        for p in s["exported"].values()
    )
    assert (out / "allocations.png").read_bytes()[:4] == b"\x89PNG"

    # every allocation respects its budget, by the layer map's own parameter counts
    lm = resolve_target("default").layer_map
    bench = Bench.open("default")
    configs, metrics = bench.arrays("all")
    # configurations the bench holds are re-measured to within two test images (PTQ is
    # deterministic on one machine; another CPU's float reductions can flip an image), the
    # oracle is the best bench configuration in budget, and FP accuracy is the bench's
    two_images = 2 * 100.0 / bench.per_image("top1").shape[1]

    def recorded(bits):
        (row,) = np.flatnonzero((configs == np.array(bits)).all(1))
        return metrics["top1"][row]

    for b in s["budgets"]:
        budget = b["budget_avg_bits"]
        methods = {a["method"]: a for a in b["allocations"]}
        assert list(methods)[:5] == ["evolved", "emq-zoo", "fisher", "hawq-v2", "auto, 0 evaluations"]
        assert len(methods) == 7
        for a in b["allocations"]:
            bits = np.array(a["bits"])
            assert len(bits) == lm.num_slots and set(bits) <= set(bench.bits)
            avg = float(bits @ lm.params / lm.params.sum())
            assert avg <= budget + 1e-9 and a["avg_bits"] == pytest.approx(avg, abs=1e-12)
            assert a["size_bytes"] == pytest.approx(float(lm.size_bytes(bits[None])[0]))
        uniform = f"uniform {int(budget)}-bit"
        assert methods[uniform]["bits"] == [int(budget)] * lm.num_slots
        assert methods[uniform]["top1"] == pytest.approx(recorded(methods[uniform]["bits"]), abs=two_images)
        inside = configs @ lm.params / lm.params.sum() <= budget + 1e-9
        oracle = methods["best bench config (oracle)"]
        assert recorded(oracle["bits"]) == metrics["top1"][inside].max()
        assert oracle["top1"] == pytest.approx(recorded(oracle["bits"]), abs=two_images)
        assert b["bench_configs_in_budget"] == int(inside.sum())
    assert s["fp_top1"] == bench.meta["fp_reference"]["top1"]
    # a looser budget never leaves the oracle worse off (the bench configurations within it only grow)
    oracles = [next(a for a in b["allocations"] if a["method"].endswith("(oracle)")) for b in s["budgets"]]
    assert [recorded(o["bits"]) for o in oracles] == sorted(recorded(o["bits"]) for o in oracles)

    # the evolved proxy's figures are the ones its files give and `emq score` computes
    best = json.loads((out / "search" / "best_proxy.json").read_text())
    top = next(csv.DictReader((out / "search" / "hall_of_fame.csv").open()))
    assert best["expression"] == top["expression"] == s["best_expression"]
    assert float(top["heldout_spearman"]) == pytest.approx(s["best_heldout_spearman"], abs=1e-12)
    assert (
        main(
            [
                "score",
                "--bench",
                "default",
                "--proxies",
                "none",
                "--proxy",
                str(out / "search" / "best_proxy.json"),
                "--metric",
                s["metric"],
                "--json",
            ]
        )
        == 0
    )
    scored, ridge = json.loads(capsys.readouterr().out)["proxies"]
    assert scored["kind"] == "evolved" and ridge["kind"] == "supervised"
    assert scored["spearman_heldout_report"] == pytest.approx(s["best_heldout_spearman"], abs=1e-12)
    assert scored["spearman_search_fit"] == pytest.approx(s["best_search_spearman"], abs=1e-12)
