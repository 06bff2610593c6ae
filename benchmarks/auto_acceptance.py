"""Issue 23 acceptance: `--proxy auto` on every zoo network held out, verified by real PTQ.

For each network of the zoo's frontier (benchmarks/results/frontier_zoo), the rule of `auto`
(which strategy from which budget) is recomputed by `emq.frontier.recommend` from the *other*
networks' frontiers only, then, at one average-bit budget (default 3.0), these allocations are quantized for real and
their KL to full precision is measured on the bench's report pool of test images:

- `auto` with 0 evaluations against Fisher, and `auto` with 100 evaluations against `layer-kl`
  (the acceptance: no worse on at least two thirds of the networks);
- for information, ridge on one-hot (slot, bit) fitted on 100 of the bench's search
  configurations (fit pool, seeded): the other fitted model at that budget.

"No worse" = the paired 95 % interval of mean KL (auto - other), bootstrapped over report-pool
sources, does not lie above 0; the point estimates are reported too. Ridge and auto are fitted
on fit-pool images only, so the report pool judges them on images they never saw. A network
already in the output JSON is not redone (a killed run resumes).

    python benchmarks/auto_acceptance.py [--benches A,B] [--budget 3.0] [--evaluations 100]
                                        [--out benchmarks/results/auto_acceptance.json] [--methods A,B]

`--methods layer-kl,layer-kl-mid,ridge-onehot,ridge-proxies` checks the rule with the in-context
sensitivity among the candidates (benchmarks/results/auto_acceptance_mid.json): that rule picks
`layer-kl-mid` at every budget below 200, so "auto (K = 100)" there is `layer-kl-mid` itself.

Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from emq.allocation import Allocator
from emq.allocation.auto import STRATEGIES, AutoProxy
from emq.baselines import get_proxy
from emq.bench import Bench
from emq.bench_setup import BenchSetup
from emq.fileio import atomic_write_text
from emq.frontier import recommend
from emq.proxy import ProxyContext, SeparableProxy
from emq.specs import oriented
from emq.supervised import OneHotRidge

RESAMPLES, SEED = 1000, 0


class _Table(SeparableProxy):
    """A fixed fitted table (ridge on the bench's own configurations), oriented: higher = better."""

    orientation = 1
    cost = "fitted on measured configurations"

    def __init__(self, name: str, table: np.ndarray) -> None:
        self.name, self.description, self._table = name, name, table

    def table(self, ctx: ProxyContext) -> np.ndarray:
        return self._table


def _ridge_on_bench(bench: Bench, k: int, seed: int) -> np.ndarray:
    """Ridge on one-hot (slot, bit) fitted on k seeded search configurations' fit-pool KL, as a table."""
    configs, metrics = bench.arrays("search", metrics=["kl"], pool="fit")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(configs), size=k, replace=False)
    return OneHotRidge(bench.bits).fit(configs[picked], oriented("kl", metrics["kl"][picked])).table()


def _paired(kl_a: np.ndarray, kl_b: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    """Mean KL(a) - KL(b) over report-pool images with a percentile interval over sources."""
    _, pos = np.unique(sources, return_inverse=True)
    n = pos.max() + 1
    sums = np.bincount(pos, weights=kl_a - kl_b, minlength=n)
    counts = np.bincount(pos, minlength=n).astype(np.float64)
    w = np.random.default_rng(SEED).multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES).astype(np.float64)
    reps = (w @ sums) / (w @ counts)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"estimate": float(sums.sum() / counts.sum()), "low": float(lo), "high": float(hi)}


def network(bench_name: str, rows: list[dict[str, Any]], args: argparse.Namespace, store: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    rule = recommend(rows, exclude=[bench_name], **({"methods": args.methods} if args.methods else {}))
    bench = Bench.open(bench_name)
    setup = BenchSetup.of(bench)
    stats = setup.network_stats(progress=False)
    allocator = Allocator(setup.target, setup.ptq, stats=stats, stats_settings=setup.stats)
    problem = allocator.problem({"avg-bits": args.budget}, bits_allowed=bench.bits)
    proxies = {
        "auto (K = 0)": AutoProxy(0, rule=rule),
        "fisher": get_proxy("fisher"),
        f"auto (K = {args.evaluations})": AutoProxy(
            args.evaluations, store / f"{bench_name}-auto{args.evaluations}.sqlite", rule=rule
        ),
        "layer-kl": get_proxy("layer-kl"),
        f"ridge-onehot on {args.evaluations} bench configurations": _Table(
            "ridge", _ridge_on_bench(bench, args.evaluations, SEED)
        ),
    }
    report = bench.pools.mask("report")
    sources = bench.pools.sources[report]
    measured: dict[tuple[int, ...], np.ndarray] = {}
    out: dict[str, Any] = {"rule_without_this_network": [list(step) for step in rule], "allocations": {}}
    for label, proxy in proxies.items():
        alloc = allocator.allocate(proxy, problem)
        if alloc.bits not in measured:
            r = allocator.engine().evaluate(alloc.bits)
            if r.per_image["kl"].shape[0] != report.shape[0]:
                raise RuntimeError(
                    f"{bench_name}: {r.per_image['kl'].shape[0]} images, the bench has {report.shape[0]}"
                )
            measured[alloc.bits] = r.per_image["kl"][report]
        out["allocations"][label] = {
            "bits": list(alloc.bits),
            "avg_bits": alloc.avg_bits,
            "kl_report": float(measured[alloc.bits].mean()),
            "setup": alloc.proxy_setup,
        }
    kl = {label: measured[tuple(a["bits"])] for label, a in out["allocations"].items()}
    k = args.evaluations
    out["checks"] = {
        "auto0_vs_fisher": _paired(kl["auto (K = 0)"], kl["fisher"], sources),
        f"auto{k}_vs_layer-kl": _paired(kl[f"auto (K = {k})"], kl["layer-kl"], sources),
        f"ridge{k}_vs_layer-kl": _paired(kl[f"ridge-onehot on {k} bench configurations"], kl["layer-kl"], sources),
    }
    out["report_images"], out["report_sources"] = int(report.sum()), int(len(np.unique(sources)))
    out["seconds"] = time.perf_counter() - t0
    return out


def summary(doc: dict[str, Any]) -> str:
    lines = []
    for check in next(iter(doc["networks"].values()))["checks"]:
        d = [n["checks"][check] for n in doc["networks"].values()]
        no_worse = sum(1 for x in d if x["low"] <= 0)
        point = sum(1 for x in d if x["estimate"] <= 0)
        better = sum(1 for x in d if x["high"] < 0)
        lines.append(
            f"{check}: no worse (interval) on {no_worse}/{len(d)}, point estimate <= 0 on {point}/{len(d)}, "
            f"better (interval below 0) on {better}/{len(d)}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frontier", type=Path, default=Path("benchmarks/results/frontier_zoo/frontier.json"))
    ap.add_argument("--benches", default=None, help="default: every network of the frontier")
    ap.add_argument("--budget", type=float, default=3.0)
    ap.add_argument("--evaluations", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/auto_acceptance.json"))
    ap.add_argument(
        "--methods",
        default=None,
        help="the rule's candidate strategies, comma-separated (default: emq.frontier.recommend's, as auto ships)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    frontier = json.loads(args.frontier.read_text())
    rows = frontier["rows"]
    benches = args.benches.split(",") if args.benches else frontier["settings"]["benches"]
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc.setdefault("settings", {"budget_avg_bits": args.budget, "evaluations": args.evaluations})
    args.methods = args.methods.split(",") if args.methods else None
    unknown = sorted(set(args.methods or ()) - set(STRATEGIES))
    if unknown:
        ap.error(f"--methods {','.join(unknown)}: not a strategy of auto; choose among {', '.join(STRATEGIES)}")
    if doc["settings"].setdefault("methods", args.methods) != args.methods:
        started = doc["settings"]["methods"]
        ap.error(f"--methods: {args.out} was started with {started}; give the same, or another --out")
    doc.setdefault("networks", {})
    store = args.out.with_suffix("")  # auto's measured configurations, kept (and resumed)
    store.mkdir(parents=True, exist_ok=True)
    for name in benches:
        if name in doc["networks"]:
            continue
        load0 = os.getloadavg()[0]
        doc["networks"][name] = network(name, rows, args, store)
        doc["networks"][name]["load_average"] = [load0, os.getloadavg()[0]]
        atomic_write_text(args.out, json.dumps(doc, indent=1) + "\n")
        c = doc["networks"][name]["checks"]
        print(name, json.dumps({k: round(v["estimate"], 5) for k, v in c.items()}), flush=True)
    print(summary(doc))


if __name__ == "__main__":
    main()
