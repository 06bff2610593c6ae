"""`emq stats`: per-layer network statistics (the proxies' inputs), with time per statistic."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from pathlib import Path

from ..api import (
    DEFAULT_BITS_TEXT,
    EmqError,
    StatsSettings,
    convergence_summary,
    default_cache_dir,
    in_context,
    save_stats,
    stats,
    summarize,
    writable_dir,
)
from .commands import COMMANDS
from .common import (
    add_device_arg,
    add_model_args,
    check_out_dir,
    emit_json,
    markdown_table,
    parse_bits,
)
from .fieldargs import add_field_args, field_values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help=COMMANDS["stats"])
    add_model_args(p)
    p.add_argument(
        "--bits-allowed",
        default=DEFAULT_BITS_TEXT,
        help=f"weight bit-widths to compute Q_b(W) and its noise for (default {DEFAULT_BITS_TEXT})",
    )
    # PTQ's --bn and its calibration size do not apply here, so add_ptq_args is not used
    add_field_args(p, StatsSettings())
    p.add_argument(
        "--sensitivity",
        action="store_true",
        help="also measure each slot's sensitivity (only that slot at b bits, the others at 8; KL, loss change and "
        "output SQNR on calibration images; PTQ with default settings, --act-bits and --symmetric), with its cost",
    )
    p.add_argument(
        "--sensitivity-in-context",
        action="store_true",
        help="also measure it in context: the others at the middle bit-width of --bits-allowed instead of 8 "
        "(layer-kl-mid, terminal MKLM)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="cache root; statistics go to <dir>/stats (default $EMQ_CACHE_DIR, else ~/.cache/emq)",
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument(
        "--out", type=Path, help="also write the full statistics here (torch file, loadable with weights_only=True)"
    )
    add_device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _check_flags(args: argparse.Namespace) -> None:
    """Flags whose library setting has another name, or whose NaN would pass a `< 0` check
    and then never stop an iteration: refused with the flag's own name."""
    if args.hessian_max_probes < 1:
        raise EmqError(f"--hessian-samples {args.hessian_max_probes}: use 1 or more Hutchinson probes")
    for flag, value in (("--hessian-tol", args.hessian_tol), ("--eig-tol", args.eig_tol)):
        if not (math.isfinite(value) and value >= 0):
            raise EmqError(f"{flag} {value}: must not be negative or NaN; give a finite tolerance >= 0, e.g. 0.01")


def settings_from_args(args: argparse.Namespace) -> StatsSettings:
    _check_flags(args)
    values = field_values(args, StatsSettings)
    if values["hessian_min_probes"] is None:  # the default minimum, capped at the maximum asked for
        values["hessian_min_probes"] = min(StatsSettings.hessian_min_probes, values["hessian_max_probes"])
    return StatsSettings(**values)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.out is not None and os.path.isdir(args.out):  # False for a name too long, refused next
        raise EmqError(f"--out {args.out}: is a directory; give the file to write the statistics to")
    check_out_dir(args.out.parent if args.out is not None else None)
    check_out_dir(args.cache_dir, "--cache-dir")
    if not args.no_cache:  # before minutes of computing, not when saving them
        cache = default_cache_dir(args.cache_dir)
        problem = writable_dir(cache)
        if problem is not None:
            where = f"--cache-dir {args.cache_dir}" if args.cache_dir is not None else "the statistics cache"
            raise EmqError(
                f"{where}: cannot write statistics into {cache} ({problem}); give a writable --cache-dir "
                "(or EMQ_CACHE_DIR), or --no-cache"
            )
    ns = stats(
        args.model,
        data=args.data,
        bits=parse_bits(args.bits_allowed, "bits_allowed"),
        settings=settings,
        weights=args.weights,
        input_size=args.input_size,
        num_classes=args.num_classes,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        device=args.device,
        threads=args.threads,
    )
    measured = _sensitivity(args, settings, ns, None) if args.sensitivity else None
    mid = _sensitivity(args, settings, ns, in_context(ns.bits)) if args.sensitivity_in_context else None
    if args.out:
        save_stats(ns, args.out)
    summary = summarize(ns)
    if measured is not None:
        summary["sensitivity"] = measured.summary()
    if mid is not None:
        summary["sensitivity_in_context"] = mid.summary()
    if args.out:
        summary["out"] = str(args.out)
    if args.json:
        emit_json(summary)
        return 0
    headers = ["layer", "slot", "params", "|W|", "|G|", "|VG|", "Tr(H)", "Tr(H)/n", "Tr change", "eig max", "eig iters"]
    headers += [f"|E_{b}|" for b in ns.bits] + ["|AE|"]
    rows = []
    for layer in summary["layers"]:
        rows.append(
            [
                layer["name"],
                layer["slot"],
                layer["params"],
                layer["weight_norm"],
                layer["grad_norm"],
                layer["virtual_grad_norm"],
                layer["hessian_trace"],
                layer["hessian_trace_per_param"],
                layer["hessian_trace_change"],
                layer["hessian_eig"],
                layer["hessian_eig_iterations"],
            ]
            + [layer["noise_norm"][str(b)] for b in ns.bits]
            + [layer["act_noise_norm"]]
        )
    print(markdown_table(headers, rows))
    h = summary["hessian"]
    cache = summary["cache"] or {}
    print(
        f"\nHessian: {h.get('probes')} probes on {h.get('images')} images (converged: {h.get('converged')}); "
        f"negative traces ({h.get('negative_policy')}): {', '.join(h.get('negative_layers') or []) or 'none'}"
    )
    print(convergence_summary(ns))
    print(
        "seconds: "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["seconds"].items())
        + (" (loaded from cache)" if cache.get("hit") else "")
    )
    for sens in (measured, mid):
        if sens is not None:
            print("\n" + _sensitivity_markdown(sens))
    if args.out:
        print(f"statistics written to {args.out}")
    return 0


def _sensitivity(args: argparse.Namespace, stats_settings: StatsSettings, ns, settings):
    """The measured sensitivity (with `settings`; None: the default ones) of the same model and data at the
    statistics' bits, under PTQ with the statistics' quantization (--act-bits, --symmetric) and otherwise
    default settings, attached to `ns`."""
    from ..api import PTQSettings, attach_sensitivity, measure_sensitivity, resolve_target  # lazily: torch-heavy

    target = resolve_target(
        args.model, data=args.data, weights=args.weights, num_classes=args.num_classes, input_size=args.input_size
    )
    quant = stats_settings.quant_spec()
    ptq = PTQSettings(**{f.name: getattr(quant, f.name) for f in dataclasses.fields(quant)})
    sens = measure_sensitivity(
        target,
        bits=ns.bits,
        ptq=ptq,
        settings=settings,
        cache_dir=args.cache_dir,
        use_cache=not args.no_cache,
        device=args.device,
    )
    attach_sensitivity(ns, sens)
    return sens


def _sensitivity_markdown(sens) -> str:
    s = sens.summary()
    headers = ["slot"] + [f"{m} {b}" for m in ("KL", "Δloss", "SQNR dB") for b in s["bits"]]
    rows = [
        [row["slot"]] + [row[k][str(b)] for k in ("kl", "loss", "sqnr_db") for b in s["bits"]] for row in s["slots"]
    ]
    rel = s["reliability"]
    eq = s["ptq_equivalents"]
    cached = " (loaded from cache; figures of the computation)" if (s["cache"] or {}).get("hit") else ""
    return "\n".join(
        [
            markdown_table(headers, rows),
            "",
            f"measured sensitivity: one slot at b bits, the others at {s['rest_bits']}; {s['images']} calibration "
            f"images, split-half reliability KL {rel['kl']}, loss {rel['loss']}, SQNR {rel['nsr']} "
            f"(target {rel['target']} for KL)",
            f"cost: {s['single_slot_evaluations']} single-slot evaluations (prefix reuse: {s['prefix_reuse']}) "
            f"in {s['seconds']:.1f} s (rounding {s['rounding_seconds']:.1f} s) "
            f"= {'n/a' if eq is None else f'{eq:.1f}'} PTQ evaluations of {s['ptq_evaluation_seconds']:.2f} s "
            f"each, rounding excluded{cached}",
        ]
    )
