"""`emq demo`: the whole pipeline on the embedded default model and bench."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import (
    DEMO_CAMPAIGN,
    DEMO_EVALUATIONS,
    EmqError,
    SearchConfig,
    demo,
)
from .commands import COMMANDS
from .common import (
    add_device_arg,
    check_bench_for_search,
    check_out_dir,
    emit_json,
    markdown_table,
    open_bench,
)
from .fieldargs import add_field_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help=COMMANDS["demo"])
    p.add_argument("--out", type=Path, help="run directory (default: runs/demo-<time>)")
    p.add_argument("--bench", default="default", help="bench file (default: the shipped default bench)")
    add_field_args(p, DEMO_CAMPAIGN, ("generations", "population", "seed"))
    p.add_argument(
        "--budget-avg-bits", type=float, default=3.0, help="average weight bits of the allocation budget (default 3.0)"
    )
    p.add_argument(
        "--evaluations",
        type=int,
        default=DEMO_EVALUATIONS,
        help=f"PTQ evaluations `auto` may spend on the network for its second allocation (default {DEMO_EVALUATIONS}; "
        "0: only its zero-evaluation choice)",
    )
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_out_dir(args.out)
    bench = open_bench(args.bench)
    check_bench_for_search(
        bench, args.bench, "default", model_is_fixed=True
    )  # a bad bench is refused before the statistics
    SearchConfig(generations=args.generations, population=args.population)  # and so are bad search sizes
    if args.evaluations < 0:
        raise EmqError(f"--evaluations {args.evaluations}: use 0 or a positive number of PTQ evaluations")
    if not min(bench.bits) <= args.budget_avg_bits <= max(bench.bits):
        raise EmqError(
            f"--budget-avg-bits {args.budget_avg_bits:g}: use a value from {min(bench.bits)} to {max(bench.bits)}, "
            "the bench's bit-widths"
        )
    s = demo(
        args.out,
        args.bench,
        generations=args.generations,
        population=args.population,
        seed=args.seed,
        budget_avg_bits=args.budget_avg_bits,
        evaluations=args.evaluations,
        progress=not (args.json or args.quiet),
        device=args.device,
    )
    if args.json:
        emit_json(s)
        return 0
    print(f"evolved proxy: p_l(b) = {s['best_expression']}")
    ceiling = "not measured" if s["ceiling"] is None else f"{s['ceiling']:.3f}"
    print(
        f"  Spearman ({s['metric']}): search {s['best_search_spearman']:.3f}, "
        f"held-out {s['best_heldout_spearman']:.3f}; best hand-made in the space ({s['best_handmade']}) "
        f"held-out {s['best_handmade_heldout_spearman']:.3f}; held-out ceiling {ceiling}"
    )
    print(
        f"\nallocations at {s['budget_avg_bits']:g} average weight bits (full precision top-1 {s['fp_top1']:.2f} %):\n"
    )
    rows = [
        [
            a["method"],
            f"{a['avg_bits']:.3f}",
            int(a["size_bytes"]),
            f"{a['top1']:.2f}",
            f"{a['loss']:.4f}",
            f"{a['kl']:.4f}",
            ",".join(map(str, a["bits"])),
        ]
        for a in s["allocations"]
    ]
    if "median_random_top1" in s:
        lo, hi = s["random_band_avg_bits"]
        rows.append(
            [
                f"median bench config, avg bits in ({lo:g}, {hi:g}] (n={s['random_configs']})",
                "",
                "",
                f"{s['median_random_top1']:.2f}",
                "",
                "",
                "",
            ]
        )
    print(markdown_table(["method", "avg bits", "size (bytes)", "top-1 %", "loss", "KL", "bits"], rows))
    if "median_random_top1" in s:
        print(
            f"\n(random baseline: the bench's configurations near the budget, {s['random_configs']} of "
            f"the {s['bench_configs_in_budget']} within it; the oracle is the best of all those within it)"
        )
    sec = s["seconds"]
    print(
        f"\nrun directory: {s['run_dir']}  ({sec['total']:.0f} s: statistics {sec['statistics']:.0f} s, "
        f"search {sec['search']:.0f} s, allocation+PTQ {sec['allocation+PTQ']:.0f} s)"
    )
    return 0
