"""`emq demo`: the whole pipeline on the embedded default model and bench."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import (
    DEMO_BUDGETS,
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
    budgets = ",".join(f"{b:g}" for b in DEMO_BUDGETS)
    p.add_argument(
        "--budget-avg-bits",
        default=budgets,
        help=f"average weight bits of the allocation budgets, comma-separated (default {budgets})",
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
    budgets = _budgets(args.budget_avg_bits, bench.bits)
    s = demo(
        args.out,
        args.bench,
        generations=args.generations,
        population=args.population,
        seed=args.seed,
        budgets=budgets,
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
    for b in s["budgets"]:
        _print_budget(b, s["fp_top1"])
    print(
        "\n(`auto, 0 evaluations` is the measured sensitivity layer-kl; random baseline: the bench's configurations "
        "near each budget; the oracle is the best of all those within it)"
    )
    sec = s["seconds"]
    print(
        f"\nrun directory: {s['run_dir']}  ({sec['total']:.0f} s: statistics {sec['statistics']:.0f} s, "
        f"search {sec['search']:.0f} s, allocation+PTQ {sec['allocation+PTQ']:.0f} s)"
    )
    return 0


def _budgets(text: str, bits: list[int]) -> list[float]:
    """--budget-avg-bits as numbers within the bench's bit-widths."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise EmqError(f"--budget-avg-bits {text}: give comma-separated numbers, e.g. 2.5,3,3.5") from e
    bad = [v for v in values if not min(bits) <= v <= max(bits)]
    if not values or bad:
        raise EmqError(f"--budget-avg-bits {text}: use values from {min(bits)} to {max(bits)}, the bench's bit-widths")
    return values


def _print_budget(b: dict, fp_top1: float) -> None:
    print(f"\nallocations at {b['budget_avg_bits']:g} average weight bits (full precision top-1 {fp_top1:.2f} %):\n")
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
        for a in b["allocations"]
    ]
    if "median_random_top1" in b:
        lo, hi = b["random_band_avg_bits"]
        rows.append(
            [
                f"median bench config, avg bits in ({lo:g}, {hi:g}] (n={b['random_configs']})",
                "",
                "",
                f"{b['median_random_top1']:.2f}",
                "",
                "",
                "",
            ]
        )
    print(markdown_table(["method", "avg bits", "size (bytes)", "top-1 %", "loss", "KL", "bits"], rows))
