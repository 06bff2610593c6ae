"""`emq bench`: build, inspect, import and export MQ-Bench files."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import (
    DEFAULT_ACT_BITS,
    DEFAULT_BITS_TEXT,
    IMPORT_FORMATS,
    SAMPLERS,
    EmqError,
    Executor,
    PTQSettings,
    bench_build,
    bench_export,
    bench_import,
    bench_info,
    bench_list,
    parse_config,
)
from .commands import COMMANDS
from .common import (
    add_device_arg,
    add_executor_args,
    add_model_args,
    add_ptq_args,
    emit_json,
    executor_from_args,
    markdown_table,
    open_bench,
    parse_bits,
    ptq_settings,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help=COMMANDS["bench"])
    bsub = p.add_subparsers(dest="bench_command", metavar="ACTION")
    bsub.required = True

    b = bsub.add_parser("build", help="PTQ-evaluate sampled bit configurations into a bench file (resumable)")
    add_model_args(b)
    add_ptq_args(b)
    b.add_argument("--out", required=True, type=Path, help="bench file to write (SQLite)")
    b.add_argument(
        "--configs", type=int, default=1000, help="total configurations, uniform ones included (default 1000)"
    )
    b.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    add_executor_args(
        b, "workers evaluating configurations (default 1); records are identical with any executor and any number"
    )
    b.add_argument("--resume", action="store_true", help="continue an interrupted build of --out")
    b.add_argument(
        "--bits-allowed", default=DEFAULT_BITS_TEXT, help=f"allowed bit-widths per slot (default {DEFAULT_BITS_TEXT})"
    )
    b.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="SLOT=BITS",
        help="pin a slot (index or name) to a bit-width; repeatable",
    )
    b.add_argument(
        "--sampler",
        choices=SAMPLERS,
        default="stratified",
        help="how to sample configurations (default stratified by model size)",
    )
    b.add_argument("--configs-file", type=Path, help="text file of extra configurations to include, one per line")
    b.add_argument(
        "--noise-samples",
        type=int,
        default=200,
        help="configurations re-evaluated on the other half of the calibration sources, for the calibration "
        "test-retest reliability (default 200; 0 = none, else at least 4)",
    )
    b.add_argument("--test-limit", type=int, help="evaluate on the first N test images only (quick, noisier benches)")
    add_device_arg(b)
    b.add_argument("--json", action="store_true", help="print the finished bench's info as one JSON object")
    b.set_defaults(func=run_build)

    ls = bsub.add_parser(
        "list", help="the benches shipped with emq (bundles): records, model, data, PTQ method, reliability"
    )
    ls.add_argument("--json", action="store_true", help="print one JSON list")
    ls.set_defaults(func=run_list)

    i = bsub.add_parser("info", help="summarise a bench file (or a shipped bench's name)")
    i.add_argument("bench", help="bench file or 'default'")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=run_info)

    m = bsub.add_parser("import", help="import MQ-Bench-101 data (pickle or bit_cfg:acc text)")
    m.add_argument("source", type=Path, help="the MQ-Bench-101 file")
    m.add_argument("--format", required=True, choices=IMPORT_FORMATS, help="source format")
    m.add_argument(
        "--model", default="resnet18", help="model whose layer map the configurations follow (default resnet18)"
    )
    m.add_argument(
        "--bits-allowed", default=DEFAULT_BITS_TEXT, help=f"allowed bit-widths (default {DEFAULT_BITS_TEXT})"
    )
    m.add_argument(
        "--act-bits",
        type=int,
        default=DEFAULT_ACT_BITS,
        help=f"activation bits used for BitOps (default {DEFAULT_ACT_BITS})",
    )
    m.add_argument("--out", required=True, type=Path, help="bench file to write")
    m.add_argument("--json", action="store_true", help="print the new bench's info as one JSON object")
    m.set_defaults(func=run_import)

    e = bsub.add_parser("export", help="export a bench's records to CSV or JSON")
    e.add_argument("bench", help="bench file or 'default'")
    e.add_argument("--to", required=True, choices=["csv", "json"], help="output format")
    e.add_argument("--out", type=Path, help="output file (default: the bench path with the new suffix)")
    e.set_defaults(func=run_export)


def _pins(items: list[str]) -> dict[int | str, int]:
    out: dict[int | str, int] = {}
    for item in items:
        slot, sep, bits = item.partition("=")
        if not sep or not bits.strip().isdigit():
            raise EmqError(f"--pin {item!r}: use SLOT=BITS, e.g. --pin 0=8 or --pin fc=8")
        out[int(slot) if slot.strip().isdigit() else slot.strip()] = int(bits)
    return out


def _configs_file(path: Path | None) -> tuple[list[str], list[str]]:
    """The configurations of a --configs-file, and for each where it is ('FILE, line N') for errors."""
    if path is None:
        return [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EmqError(f"--configs-file {path}: cannot read ({e})") from e
    configs, labels = [], []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            where = f"--configs-file {path}, line {n}:"
            try:
                parse_config(text, "config")
            except EmqError:
                raise EmqError(f"{where} {text[:80]!r} is not comma-separated integers, e.g. 4,3,2") from None
            configs.append(text)
            labels.append(where)
    return configs, labels


def run_list(args: argparse.Namespace) -> int:
    rows = bench_list()
    if args.json:
        emit_json(rows)
        return 0
    table = [
        [
            r["name"],
            r["family"],
            r["task"],
            r.get("slots", ""),
            _f(r.get("fp_top1"), 2),
            r.get("records", "not built"),
            r.get("ptq_method", ""),
            r.get("default_metric", ""),
            _f(r.get("split_half_corrected")),
            _f(r.get("combined_reliability")),
            ("bundled" if r.get("bundled_stats") else "from data") if r["installed"] else "",
            r.get("megabytes", ""),
        ]
        for r in rows
    ]
    headers = [
        "bench",
        "family",
        "task",
        "slots",
        "FP top-1",
        "records",
        "PTQ",
        "default metric",
        "split-half (corr.)",
        "combined reliability",
        "statistics",
        "MB",
    ]
    print(markdown_table(headers, table))
    missing = [r["name"] for r in rows if not r["installed"]]
    if missing:
        print(f"not built in this installation: {', '.join(missing)} (`emq bench info NAME` says how to build one)")
    print(
        "use a name wherever a bench file goes, e.g. `emq score --bench vgg-digits`; `emq bench info NAME` for details"
    )
    return 0


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _print_info(info: dict) -> None:
    print(
        f"bench {info['path']}: model {info['model']}, {info['records']} records ({info['search_records']} search "
        f"/ {info['heldout_records']} held out)"
    )
    print(
        f"slots {len(info['slots'])}, allowed bits {info['allowed_bits']}, activation bits {info['act_bits']}, "
        f"pinned {info['pinned'] or 'none'}"
    )
    pools = info.get("test_pools")
    if pools:
        print(
            f"test pools ({pools['method']}): fit {pools['fit']['images']} images / {pools['fit']['sources']} "
            f"sources, report {pools['report']['images']} / {pools['report']['sources']}"
        )
    else:
        print("test pools: none (no per-image outcomes); fit and report numbers share test images")
    rel_rows = []
    for m, r in (info.get("reliability") or {}).items():
        half, rt = r.get("split_half") or {}, r.get("test_retest") or {}
        rel_rows.append(
            [
                m,
                _f(half.get("raw")),
                _f(half.get("corrected")),
                _f(rt.get("rho")),
                _f(r.get("combined")),
                _f(r.get("ceiling")),
            ]
        )
    if rel_rows:
        print(
            "reliability on the report pool (split-half by source, Spearman-Brown corrected; calibration retest on "
            "disjoint calibration sources):"
        )
        print(
            markdown_table(
                ["metric", "split-half", "corrected", "calib. retest", "combined", "ceiling = sqrt(combined)"], rel_rows
            )
        )
    print(f"default metric {info['default_metric']}")
    rounding = (info.get("rounding") or {}).get("build")
    if rounding:
        opts = ", ".join(f"{k} {v}" for k, v in rounding["options"].items()) or "no options"
        print(
            f"weight rounding {rounding['method']} ({opts}): prepared in {rounding['seconds']} s, "
            f"{rounding['computed']} (layer, bits) computed, {rounding['from_cache']} from the cache"
        )
    prov = info.get("provenance")
    if prov:
        ptq = prov["ptq"]
        print(
            f"provenance: {prov['bench']}, {prov['network']}; {prov['data']}; {ptq['method']}, {ptq['iterations']} "
            f"iterations, {ptq['calibration_images']} calibration images, {ptq['act_bits']}-bit "
            f"activations; {'complete' if prov['complete'] else 'INCOMPLETE'} ({info['records']} "
            f"of {prov['configurations']} configurations)"
        )
    base = info.get("trivial_baselines") or {}
    if base:
        print(
            "trivial baselines (oriented Spearman): "
            + "; ".join(
                f"{p}: " + ", ".join(f"{m} {v:.3f}" for m, v in r.items() if v is not None) for p, r in base.items()
            )
        )
    rows = [
        [m, s["min"], s["p25"], s["median"], s["p75"], s["max"], s["mean"], s["std"]]
        for m, s in info["metrics"].items()
    ]
    print(markdown_table(["metric", "min", "p25", "median", "p75", "max", "mean", "std"], rows))
    if info.get("failures"):
        print(f"{len(info['failures'])} evaluation(s) failed (a resume tries them again):")
        print(
            markdown_table(
                ["configuration", "stage", "attempts", "error"],
                [[f["config"], f["stage"], f["attempts"], f["error"]] for f in info["failures"]],
            )
        )


# below this many pairs a Spearman correlation takes only a handful of values (with 2 it is
# always +1 or -1), so a calibration retest of fewer repeats would look measured but mean nothing
MIN_NOISE_SAMPLES = 4
# sampled configurations a bench needs beyond the uniform ones: a rank correlation needs 3
MIN_SAMPLED_CONFIGS = 3


def _check_build_sizes(args: argparse.Namespace, bits: list[int]) -> None:
    """Refuse, before any model work, benches too small to measure anything."""
    least = len(bits) + MIN_SAMPLED_CONFIGS
    if args.configs < least:
        raise EmqError(
            f"--configs {args.configs}: a bench needs at least {least} configurations: the {len(bits)} uniform "
            f"ones (one per bit-width in --bits-allowed) and {MIN_SAMPLED_CONFIGS} or more to rank; one in five is "
            "held out, so a bench for `emq search` or `emq score` needs a few dozen"
        )
    if args.noise_samples != 0 and not MIN_NOISE_SAMPLES <= args.noise_samples:
        raise EmqError(
            f"--noise-samples {args.noise_samples}: use 0 (no calibration retest) or at least {MIN_NOISE_SAMPLES}; "
            "the retest reliability is the Spearman correlation of repeated evaluations, which means nothing over "
            f"fewer than {MIN_NOISE_SAMPLES} pairs"
        )
    if args.test_limit is not None and args.test_limit < 1:  # --workers: executor_from_args, before any file too
        raise EmqError(f"--test-limit {args.test_limit}: use 1 or more")


def run_build(args: argparse.Namespace) -> int:
    settings = ptq_settings(args)
    bits = parse_bits(args.bits_allowed, "bits_allowed")
    _check_build_sizes(args, bits)
    user = _configs_file(args.configs_file)
    with executor_from_args(args) as executor:
        info = _build(args, settings=settings, bits=bits, user=user, executor=executor)
    emit_json(info) if args.json else _print_info(info)
    return 0


def _build(
    args: argparse.Namespace, *, settings: PTQSettings, bits: list[int], user: tuple[list, list], executor: Executor
) -> dict:
    user_configs, user_labels = user
    return bench_build(
        args.out,
        model=args.model,
        configs=args.configs,
        seed=args.seed,
        executor=executor,
        resume=args.resume,
        bits=bits,
        pinned=_pins(args.pin),
        sampler=args.sampler,
        user_configs=user_configs,
        user_labels=user_labels,
        data=args.data,
        weights=args.weights,
        input_size=args.input_size,
        num_classes=args.num_classes,
        settings=settings,
        noise_samples=args.noise_samples,
        test_limit=args.test_limit,
        device=args.device,
    )


def run_info(args: argparse.Namespace) -> int:
    open_bench(args.bench, "bench")
    info = bench_info(args.bench)
    emit_json(info) if args.json else _print_info(info)
    return 0


def run_import(args: argparse.Namespace) -> int:
    info = bench_import(
        args.source,
        args.format,
        args.out,
        model=args.model,
        bits=tuple(parse_bits(args.bits_allowed, "bits_allowed")),
        act_bits=args.act_bits,
    )
    emit_json(info) if args.json else _print_info(info)
    return 0


def run_export(args: argparse.Namespace) -> int:
    open_bench(args.bench, "bench")
    dest = bench_export(args.bench, args.to, args.out)
    print(f"wrote {dest}")
    return 0
