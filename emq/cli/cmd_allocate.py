"""`emq allocate`: per-slot bits from a proxy under size / BitOps / average-bit budgets."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..api import (
    DEFAULT_BITS_TEXT,
    WEIGHT_BITS_MAX,
    WEIGHT_BITS_MIN,
    Allocator,
    Budget,
    EmqError,
    ParameterError,
    allocator_for,
    auto_or,
    budget_kinds,
    get_kind,
    parse_sweep,
    resolve_proxy,
    sweep,
)
from .commands import COMMANDS
from .common import (
    add_device_arg,
    add_model_args,
    add_ptq_args,
    check_out_dir,
    emit_json,
    model_spec,
    open_bench,
    parse_bits,
    ptq_overrides,
    ptq_settings,
)


def _dest(kind: str) -> str:
    """argparse destination (and, via flag_for, the flag) of a kind's budget: budget_avg_bits."""
    return "budget_" + kind.replace("-", "_")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("allocate", help=COMMANDS["allocate"])
    add_model_args(p)
    p.set_defaults(model=None)  # 'default', or the bench's model with --bench
    p.add_argument(
        "--bench",
        help="bench file or 'default': use its model (checked by weights hash), data, PTQ and statistics settings; "
        "PTQ flags may only repeat the bench's",
    )
    p.add_argument(
        "--proxy",
        required=True,
        help="proxy JSON file (from `emq search`), a proxy name (`emq score --proxies all` lists them), or 'auto': "
        "what the cost-quality frontier recommends for --evaluations K",
    )
    p.add_argument(
        "--evaluations",
        type=int,
        help="with --proxy auto: PTQ evaluations it may spend on the network (default 0: the measured sensitivity)",
    )
    p.add_argument(
        "--measurements",
        type=Path,
        help="with --proxy auto: the bench file its measured configurations are stored in (resumed if present; "
        "default: in the cache)",
    )
    for kind in budget_kinds():
        p.add_argument(f"--budget-{kind}", dest=_dest(kind), help=get_kind(kind).help)
    p.add_argument(
        "--bits-allowed", default=DEFAULT_BITS_TEXT, help=f"bit-widths a slot may take (default {DEFAULT_BITS_TEXT})"
    )
    p.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="SLOT=BITS",
        help="fix a slot (index, slot or module name) to a bit-width, e.g. conv1=8; repeatable",
    )
    p.add_argument(
        "--slot-bits",
        action="append",
        default=[],
        metavar="SLOT=B,B",
        help="restrict one slot's allowed bits, e.g. fc=3,4; repeatable",
    )
    p.add_argument(
        "--tie", action="append", default=[], metavar="SLOT,SLOT", help="force slots to share one bit-width; repeatable"
    )
    p.add_argument("--evaluate", action="store_true", help="PTQ-quantize the result(s) and measure top-1, loss and KL")
    p.add_argument(
        "--sweep",
        metavar="A:B:N",
        help="allocate at N budgets from A to B (of --sweep-kind) and write CSV + PNG to --out",
    )
    p.add_argument(
        "--sweep-kind",
        choices=budget_kinds(),
        default="avg-bits",
        help="budget swept by --sweep (default avg-bits); other budgets stay fixed",
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="with --sweep: also allocate with this proxy (name or JSON) for comparison; repeatable",
    )
    p.add_argument(
        "--search-evals", type=int, default=200, help="proxy evaluations for whole-configuration proxies (default 200)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the constrained search (default 0)")
    p.add_argument("--out", type=Path, help="directory for bitmap.json / allocation.json (or sweep.csv / sweep.png)")
    add_ptq_args(p)
    add_device_arg(p)
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
    out = []
    for kind in budget_kinds():
        text = getattr(args, _dest(kind), None)
        if text is None:
            continue
        try:
            out.append(Budget.parse(kind, text))
        except ParameterError as e:
            raise ParameterError(_dest(kind), e.value, e.problem) from e
    return out


def run(args: argparse.Namespace) -> int:
    budgets = _budgets(args)
    bits_allowed = parse_bits(args.bits_allowed, "bits_allowed")
    pins = {k: _as_int(v, f"--pin {k}={v}") for k, v in _pairs(args.pin, "--pin").items()}
    slot_bits = {k: parse_bits(v, "slot_bits") for k, v in _pairs(args.slot_bits, "--slot-bits").items()}
    ties = [[t for t in tie.split(",") if t] for tie in args.tie]
    if args.search_evals < 1:
        raise EmqError(f"--search-evals {args.search_evals}: use 1 or more")
    if args.sweep and args.out is None:
        raise EmqError("--sweep writes sweep.csv and sweep.png: give --out DIR")
    if not args.sweep and not budgets:
        raise EmqError("give at least one budget: " + ", ".join(f"--budget-{k}" for k in budget_kinds()))
    if args.baseline and not args.sweep:
        raise EmqError("--baseline compares proxies along a sweep: add --sweep A:B:N")
    check_out_dir(args.out)
    proxy = auto_or(args.proxy, args.evaluations, args.measurements, args.seed)
    if args.bench:
        open_bench(args.bench)
    values = (
        parse_sweep(args.sweep, args.sweep_kind) if args.sweep else None
    )  # refuse a bad range before any model work
    if args.model not in (None, "default") and args.data is None and not args.bench:
        raise EmqError(
            f"--model {args.model} has no data: pass --data (an ImageFolder or CIFAR-10 directory); "
            "every proxy needs the model's statistics or PTQ runs, and nothing is downloaded"
        )
    _check_pins_need_no_new_statistics(pins, bits_allowed, [args.proxy, *args.baseline])
    settings = ptq_overrides(args) if args.bench else ptq_settings(args)
    allocator = allocator_for(
        model_spec(args), settings=settings, evaluate=args.evaluate, bench=args.bench, device=args.device
    )
    if values is not None:
        return _run_sweep(args, allocator, values, budgets=budgets, bits_allowed=bits_allowed, pins=pins, proxy=proxy)
    problem = allocator.problem(budgets, bits_allowed, pins=pins, slot_bits=slot_bits, ties=ties)
    alloc = allocator.allocate(
        proxy, problem, evaluate=args.evaluate, search_evaluations=args.search_evals, seed=args.seed
    )
    bitmap = alloc.save(args.out)[0] if args.out is not None else None
    if args.json:
        emit_json(alloc.to_json() | ({"bitmap": str(bitmap)} if bitmap else {}))
        return 0
    print(alloc.to_markdown())
    if bitmap:
        print(f"bit map: {bitmap}")
    return 0


def _check_pins_need_no_new_statistics(pins: dict[str, int], bits_allowed: list[int], proxies: list[str]) -> None:
    """A pin outside --bits-allowed adds a bit-width column to the problem, and a proxy built
    on statistics then needs statistics at that bit-width too: not in any bench's cache, so
    they would be computed silently for minutes. Refuse it at once and say how to ask for it."""
    extra = {k: b for k, b in pins.items() if b not in bits_allowed}
    if not extra:
        return
    needy = [p for p in proxies if resolve_proxy(p).cost.startswith("statistics")]
    if needy:
        slot, b = next(iter(extra.items()))
        allowed = ",".join(map(str, bits_allowed))
        raise EmqError(
            f"--pin {slot}={b}: {b} bits is outside --bits-allowed {allowed}, and proxy {needy[0]} would need "
            f"network statistics at {b} bits too (computed now, minutes on a large model); pin within {allowed}, "
            f"or add {b} to --bits-allowed and restrict the other slots with --slot-bits to accept that cost"
        )


def _as_int(text: str, what: str) -> int:
    try:
        bits = int(text)
    except ValueError:
        raise EmqError(f"{what}: the bit-width must be an integer, e.g. --pin conv1=8") from None
    if not WEIGHT_BITS_MIN <= bits <= WEIGHT_BITS_MAX:
        raise EmqError(f"{what}: {bits} is outside {WEIGHT_BITS_MIN}..{WEIGHT_BITS_MAX}; pin a bit-width in that range")
    return bits


def _run_sweep(
    args: argparse.Namespace,
    allocator: Allocator,
    values: np.ndarray,
    *,
    budgets: list[Budget],
    bits_allowed: list[int],
    pins: dict,
    proxy: object,
) -> int:
    fixed = [b for b in budgets if b.kind != args.sweep_kind]
    res = sweep(
        allocator,
        proxy,
        args.sweep_kind,
        values,
        fixed=fixed,
        baselines=args.baseline,
        uniform=True,
        evaluate=args.evaluate,
        bits_allowed=bits_allowed,
        pins=pins,
        search_evaluations=args.search_evals,
        seed=args.seed,
    )
    if not res.allocated:
        raise EmqError(
            f"--sweep {args.sweep}: no budget in the range is feasible "
            f"({res.skipped[0][2] if res.skipped else 'nothing allocated'})"
        )
    csv, png = res.save(args.out)
    if args.json:
        emit_json(res.to_json() | {"csv": str(csv), "png": str(png)})
        return 0
    print(res.to_markdown())
    print(f"\nwrote {csv} and {png}")
    return 0
