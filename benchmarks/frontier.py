"""The cost-quality frontier of the docs (issue 23): for every network held out in turn, the
held-out x report Spearman of the fixed best hand-made proxy, `layer-kl`, an evolved proxy that
never saw the network (optional), ridge on one-hot (slot, bit) and ridge on the proxies' scores
fitted on k measured configurations (k in 0, 10, 25, 50, 100, 200; 5 seeded draws), and the
whole-configuration KL, against each one's cost in PTQ-equivalent evaluations; the crossover k
per network.

    python benchmarks/frontier.py [--benches default,vgg-digits,...] [--transfer DIR] [--warm]
                                  [--out benchmarks/results/frontier]

`--transfer DIR` takes each bench's evolved proxy from a leave-one-out `emq transfer` study in
DIR (the campaign that held that bench out, seed 0); with `--warm`, that campaign's hall of fame
also seeds a short campaign on each draw of k configurations (`evolved-warm`, in the study's
search space). Default benches: one per network among the shipped benches that are installed.

Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from emq.bench.bundles import BUNDLES
from emq.frontier import BUDGETS, DRAWS, FrontierStudy
from emq.search_space.pset import make_space
from emq.transfer import Campaign


def _held_out_by(transfer: Path, benches: list[str], folder: str, suffix: str) -> dict[str, Path]:
    """Each bench's file in `folder` of the leave-one-out campaign that held it out (seed 0)."""
    doc = json.loads((transfer / "transfer.json").read_text())
    out = {}
    for cell in doc["cells"]:
        if cell["protocol"] == "leave-one-out" and cell["seed"] == 0 and cell["test"] in benches:
            tag = Campaign(cell["protocol"], tuple(cell["train"]), (cell["test"],), cell["seed"]).tag
            out[cell["test"]] = transfer / folder / f"{tag}{suffix}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = [n for n, b in BUNDLES.items() if n != "stratified" and b.path.is_file()]
    ap.add_argument("--benches", default=",".join(default))
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--draws", type=int, default=DRAWS)
    ap.add_argument("--whole-limit", type=int, default=20)
    ap.add_argument("--transfer", type=Path, default=None)
    ap.add_argument("--warm", action="store_true", help="warm-started campaigns (needs --transfer)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/frontier"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    benches = args.benches.split(",")
    evolved = _held_out_by(args.transfer, benches, "proxies", ".json") if args.transfer else {}
    warm, space = {}, None
    if args.warm:
        if not args.transfer:
            ap.error("--warm needs --transfer DIR")
        warm = _held_out_by(args.transfer, benches, "campaigns", "")
        space = make_space(json.loads((args.transfer / "transfer.json").read_text())["settings"]["space"])
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    study = FrontierStudy(
        benches,
        budgets=[int(k) for k in args.budgets.split(",")],
        draws=args.draws,
        evolved=evolved,
        warm=warm,
        space=space,
        whole_limit=args.whole_limit,
    )
    result = study.run()
    result.settings["seconds"] = time.perf_counter() - t0
    result.settings["load_average"] = [load0, os.getloadavg()[0]]
    paths = result.save(args.out)
    print(result.to_markdown())
    print(f"{result.settings['seconds']:.0f} s, load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print("wrote", ", ".join(map(str, paths)))


if __name__ == "__main__":
    main()
