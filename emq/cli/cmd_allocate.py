"""`emq allocate`: per-slot bits from a proxy under size / BitOps / average-bit budgets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..allocation import Allocator, Budget, parse_sweep, save_bitmap, sweep
from ..allocation.budgets import KINDS
from ..allocation.pareto import plot_png, write_csv
from ..errors import EmqError
from ..fileio import atomic_write_text
from ..quant import PTQSettings
from ..target import resolve_target
from .common import add_model_args, add_ptq_args, emit_json, markdown_table, parse_bits


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("allocate", help="choose per-slot bit-widths with a proxy under budgets (ILP or constrained search)")
    add_model_args(p)
    p.add_argument("--proxy", required=True, help="proxy JSON file (from `emq search`) or a proxy name (see `emq baselines`)")
    p.add_argument("--budget-size", help="model size limit: bytes, or with a unit: 200KB, 1.5MiB (weights at their bits + 32-bit biases)")
    p.add_argument("--budget-bitops", help="BitOps limit, e.g. 1.2G (MACs x weight bits x --act-bits)")
    p.add_argument("--budget-avg-bits", help="parameter-weighted average weight bits, e.g. 3.0 (= weight size in bits / weight count)")
    p.add_argument("--budget-frac8", help="fraction of the all-8-bit model size, e.g. 0.4")
    p.add_argument("--bits-allowed", default="2,3,4", help="bit-widths a slot may take (default 2,3,4)")
    p.add_argument("--pin", action="append", default=[], metavar="SLOT=BITS", help="fix a slot (index, slot or module name) to a bit-width, e.g. conv1=8; repeatable")
    p.add_argument("--slot-bits", action="append", default=[], metavar="SLOT=B,B", help="restrict one slot's allowed bits, e.g. fc=3,4; repeatable")
    p.add_argument("--tie", action="append", default=[], metavar="SLOT,SLOT", help="force slots to share one bit-width; repeatable")
    p.add_argument("--evaluate", action="store_true", help="PTQ-quantize the result(s) and measure top-1, loss and KL")
    p.add_argument("--sweep", metavar="A:B:N", help="allocate at N budgets from A to B (of --sweep-kind) and write CSV + PNG to --out")
    p.add_argument("--sweep-kind", choices=KINDS, default="avg-bits", help="budget swept by --sweep (default avg-bits); other budgets stay fixed")
    p.add_argument("--baseline", action="append", default=[], help="with --sweep: also allocate with this proxy (name or JSON) for comparison; repeatable")
    p.add_argument("--search-evals", type=int, default=200, help="proxy evaluations for whole-configuration proxies (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the constrained search (default 0)")
    p.add_argument("--out", type=Path, help="directory for bitmap.json / allocation.json (or sweep.csv / sweep.png)")
    add_ptq_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or not key or not val:
            raise EmqError(f"{what} {item!r}: use SLOT=VALUE, e.g. conv1=8")
        out[key.strip()] = val.strip()
    return out


def _budgets(args: argparse.Namespace) -> list[Budget]:
    given = {"size": args.budget_size, "bitops": args.budget_bitops, "avg-bits": args.budget_avg_bits, "frac8": args.budget_frac8}
    return [Budget.parse(k, v) for k, v in given.items() if v is not None]


def run(args: argparse.Namespace) -> int:
    settings = PTQSettings(act_bits=args.act_bits, weight_symmetric=args.symmetric, bn=args.bn, calib_size=args.calib_size, calib_seed=args.calib_seed)
    budgets = _budgets(args)
    bits_allowed = parse_bits(args.bits_allowed, "bits_allowed")
    pins = {k: _as_int(v, f"--pin {k}={v}") for k, v in _pairs(args.pin, "--pin").items()}
    slot_bits = {k: parse_bits(v, "slot_bits") for k, v in _pairs(args.slot_bits, "--slot-bits").items()}
    ties = [[t for t in tie.split(",") if t] for tie in args.tie]
    if args.sweep and args.out is None:
        raise EmqError("--sweep writes sweep.csv and sweep.png: give --out DIR")
    if not args.sweep and not budgets:
        raise EmqError("give at least one budget: --budget-size, --budget-bitops, --budget-avg-bits or --budget-frac8")
    if args.baseline and not args.sweep:
        raise EmqError("--baseline compares proxies along a sweep: add --sweep A:B:N")
    need_data = args.evaluate or args.data is not None or args.model == "default"
    target = resolve_target(args.model, args.data, weights=args.weights, num_classes=args.num_classes, input_size=args.input_size, need_data=need_data)
    allocator = Allocator(target, settings)
    if args.sweep:
        return _run_sweep(args, allocator, budgets, bits_allowed, pins)
    problem = allocator.problem(budgets, bits_allowed, pins, slot_bits, ties)
    alloc = allocator.allocate(args.proxy, problem, args.evaluate, search_evaluations=args.search_evals, seed=args.seed)
    doc = alloc.to_json()
    if args.out is not None:
        save_bitmap(args.out / "bitmap.json", target.layer_map, alloc.bits, settings.act_bits,
                    {"proxy": str(args.proxy), "method": alloc.method, "predicted": alloc.predicted, "budgets": alloc.budgets, "ptq": settings.to_json()})
        atomic_write_text(args.out / "allocation.json", json.dumps(doc, indent=2) + "\n")
    if args.json:
        emit_json(doc | ({"bitmap": str(args.out / "bitmap.json")} if args.out else {}))
        return 0
    rows = [[i, name, b] for i, (name, b) in enumerate(zip(alloc.slot_names, alloc.bits))]
    print(markdown_table(["slot", "name", "bits"], rows))
    measured = f"; PTQ top-1 {alloc.top1:.2f} %, loss {alloc.loss:.4f}, KL {alloc.kl:.4f}" if alloc.top1 is not None else ""
    print(f"\n{alloc.method} with {alloc.proxy}: size {alloc.size_bytes:,.0f} bytes, {alloc.bitops:.4g} BitOps (act {alloc.act_bits} bits), "
          f"avg {alloc.avg_bits:.3f} bits, predicted {alloc.predicted:.6g}, solved in {alloc.solve_seconds * 1000:.1f} ms{measured}")
    if args.out is not None:
        print(f"bit map: {args.out / 'bitmap.json'}")
    return 0


def _as_int(text: str, what: str) -> int:
    if not text.isdigit():
        raise EmqError(f"{what}: the bit-width must be an integer")
    return int(text)


def _run_sweep(args: argparse.Namespace, allocator: Allocator, budgets: list[Budget], bits_allowed: list[int], pins: dict) -> int:
    values = parse_sweep(args.sweep, args.sweep_kind)
    fixed = [b for b in budgets if b.kind != args.sweep_kind]
    res = sweep(allocator, args.proxy, args.sweep_kind, values, fixed, args.baseline, True, args.evaluate, bits_allowed, pins, args.search_evals, args.seed)
    if not any(a.method != "uniform" for a in res.points):
        raise EmqError(f"--sweep {args.sweep}: no budget in the range is feasible ({res.skipped[0][2] if res.skipped else 'nothing allocated'})")
    csv_path, png_path = args.out / "sweep.csv", args.out / "sweep.png"
    write_csv(csv_path, res)
    plot_png(png_path, res, f"{allocator.layer_map.model}: {res.points[0].proxy} over {args.sweep_kind}")
    if args.json:
        emit_json({"kind": res.kind, "points": [a.to_json() for a in res.points], "skipped": [{"series": s, "budget": v, "reason": r} for s, v, r in res.skipped],
                   "csv": str(csv_path), "png": str(png_path)})
        return 0
    rows = [[r["series"], r["budget"], r["size_bytes"], r["avg_bits"], r["predicted"], "" if r["top1"] is None else r["top1"]] for r in res.rows()]
    print(markdown_table(["series", f"budget ({res.kind})", "size (bytes)", "avg bits", "predicted", "top-1 %"], rows))
    if res.skipped:
        print(f"\n{len(res.skipped)} infeasible budget value(s) skipped, e.g. {res.skipped[0][2]}")
    print(f"\nwrote {csv_path} and {png_path}")
    return 0
