"""Does compacting a bundle's statistics change any figure? Proxy correlations before and after.

    python benchmarks/stats_compaction.py --reference DIR [--names vgg-digits,...] [--out FILE]

DIR holds the bundles' statistics files as they were before compaction (e.g. float32 with 8
activation samples, or a compact file before the model's own fields were left out: `git show
REV:bench/data/NAME.stats.pt > DIR/NAME.stats.pt`). Both files are read as emq reads a bundle (a
partial one completed from the model and, for activation fields, the data). For every bundle, every
separable registry proxy is scored (held-out configurations x report pool, the bench's default
metric, `emq.score`) once with the reference statistics and once with the shipped compact ones;
the script prints both rho, the largest |difference| (target <= 0.002), the files' sizes, and
the bench's reliability, which compaction cannot change (the per-image outcomes are not touched).

Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emq.baselines import PROXIES, get_proxy
from emq.bench import Bench
from emq.bench.bundles import BUNDLES
from emq.bench_setup import BenchSetup
from emq.ranking import score
from emq.search_space.netstats import load_stats, select_bits
from emq.search_space.stats import complete_stats

TARGET = 0.002


def completed(name: str, path: Path):
    """A statistics file as `emq score` uses a bundle: cut to the bench's bits, left-out fields recomputed
    (from the model, and the activation fields from the data). Files from before bundles recorded their
    source are read too, so the bench's settings and bits are all that is checked."""
    setup = BenchSetup.of(Bench.open(name))
    t = setup.target
    ns = select_bits(load_stats(path, partial=True), setup.bits)
    if ns.needs_data and t.data is None:
        raise SystemExit(f"{path}: leaves out activation fields, and the data of {name} is not installed")
    x, y = t.data.calibration(setup.stats.calib_size, setup.stats.calib_seed) if ns.needs_data else (None, None)
    return complete_stats(ns, t.model, t.layer_map, x=x, y=y, settings=setup.stats, device=torch.device("cpu"))


def heldout_rhos(name: str, stats) -> dict[str, float]:
    separable = [n for n in PROXIES if get_proxy(n).separable]
    report = score(name, proxies=separable, stats=stats, resamples=200, reference=False)
    rhos = {p.name: p.correlations.get("spearman_heldout_report") for p in report.proxies}
    return {k: v for k, v in rhos.items() if v is not None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="folder of the uncompacted NAME.stats.pt files")
    ap.add_argument("--names", default=",".join(n for n, b in BUNDLES.items() if b.stats and b.path.is_file()))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "stats_compaction.json")
    args = ap.parse_args()
    result, worst = {}, 0.0
    for name in args.names.split(","):
        bundle = BUNDLES[name]
        ref_file = args.reference / bundle.stats
        before = heldout_rhos(name, completed(name, ref_file))
        after = heldout_rhos(name, completed(name, bundle.stats_path))
        diffs = {p: after[p] - before[p] for p in before if p in after}
        big = max(abs(d) for d in diffs.values())
        worst = max(worst, big)
        bench = Bench.open(name)
        rel = (bench.reliability.get(bench.default_metric) or {}).get("split_half") or {}
        result[name] = {
            "before": before,
            "after": after,
            "max_abs_difference": big,
            "megabytes": [ref_file.stat().st_size / 1e6, bundle.stats_path.stat().st_size / 1e6],
            "reliability_split_half_corrected": rel.get("corrected"),
        }
        print(
            f"\n{name}: statistics {ref_file.stat().st_size / 1e6:.1f} MB "
            f"-> {bundle.stats_path.stat().st_size / 1e6:.1f} MB; reliability (split-half corrected, outcomes "
            f"untouched) {rel.get('corrected'):.3f}"
        )
        print("proxy | rho before | rho after | difference")
        for p in sorted(diffs):
            print(f"{p} | {before[p]:.4f} | {after[p]:.4f} | {diffs[p]:+.4f}")
    print(
        f"\nlargest |difference| over all bundles and proxies: {worst:.4f} (target <= {TARGET}): "
        f"{'met' if worst <= TARGET else 'MISSED'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bundles": result, "max_abs_difference": worst, "target": TARGET}, indent=2) + "\n")


if __name__ == "__main__":
    main()
