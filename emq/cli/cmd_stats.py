"""`emq stats`: per-layer network statistics (the proxies' inputs), with time per statistic."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..api import NEGATIVE_TRACE_POLICIES, EmqError, StatsSettings, convergence_summary, save_stats, stats, summarize
from .commands import COMMANDS
from .common import (
    add_device_arg,
    add_model_args,
    check_out_dir,
    emit_json,
    markdown_table,
    parse_bits,
)


def register(sub: argparse._SubParsersAction) -> None:
    d = StatsSettings()
    p = sub.add_parser("stats", help=COMMANDS["stats"])
    add_model_args(p)
    p.add_argument(
        "--bits-allowed", default="2,3,4", help="weight bit-widths to compute Q_b(W) and its noise for (default 2,3,4)"
    )
    # PTQ's --bn and its calibration size do not apply here, so add_ptq_args is not used
    p.add_argument(
        "--act-bits",
        type=int,
        default=d.act_bits,
        help=f"activation bits of the activation noise (default {d.act_bits}; 32 = none)",
    )
    p.add_argument(
        "--symmetric", action="store_true", help="symmetric weight quantization (default: asymmetric, as in PTQ)"
    )
    p.add_argument("--calib-size", type=int, default=d.calib_size, help=f"calibration images (default {d.calib_size})")
    p.add_argument(
        "--calib-seed", type=int, default=d.calib_seed, help=f"seed of the calibration draw (default {d.calib_seed})"
    )
    p.add_argument(
        "--batch-size", type=int, default=d.batch_size, help=f"batch size of the gradient pass (default {d.batch_size})"
    )
    p.add_argument(
        "--hessian-images",
        type=int,
        default=d.hessian_images,
        help=f"calibration images used for Hessian work (default {d.hessian_images})",
    )
    p.add_argument(
        "--hessian-batch-size",
        type=int,
        default=d.hessian_batch_size,
        help=f"Hessian batch size; smaller saves memory, costs time (default {d.hessian_batch_size})",
    )
    p.add_argument(
        "--hessian-samples",
        type=int,
        default=d.hessian_max_probes,
        help=f"maximum Hutchinson probes (default {d.hessian_max_probes})",
    )
    p.add_argument(
        "--hessian-min-samples",
        type=int,
        help=f"minimum Hutchinson probes (default {d.hessian_min_probes}, capped at --hessian-samples)",
    )
    p.add_argument(
        "--hessian-tol",
        type=float,
        default=d.hessian_tol,
        help=f"relative change of the per-layer traces that stops the probes (default {d.hessian_tol})",
    )
    p.add_argument(
        "--eig-iters",
        type=int,
        default=d.eig_iters,
        help=f"power-iteration steps for the top eigenvalue per layer (default {d.eig_iters}; 0 skips)",
    )
    p.add_argument(
        "--eig-tol",
        type=float,
        default=d.eig_tol,
        help=f"relative change of a layer's top eigenvalue that stops its power iteration (default {d.eig_tol})",
    )
    p.add_argument(
        "--negative-trace",
        choices=NEGATIVE_TRACE_POLICIES,
        default=d.negative_trace,
        help=f"what to do with negative trace estimates (default {d.negative_trace})",
    )
    p.add_argument(
        "--act-cap", type=int, default=d.act_cap, help=f"samples of activations stored per layer (default {d.act_cap})"
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the Hessian probes (default {d.seed})")
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


def settings_from_args(args: argparse.Namespace) -> StatsSettings:
    d = StatsSettings()
    max_probes = args.hessian_samples
    min_probes = (
        args.hessian_min_samples if args.hessian_min_samples is not None else min(d.hessian_min_probes, max_probes)
    )
    return StatsSettings(
        calib_size=args.calib_size,
        calib_seed=args.calib_seed,
        batch_size=args.batch_size,
        hessian_images=args.hessian_images,
        hessian_batch_size=args.hessian_batch_size,
        hessian_min_probes=min_probes,
        hessian_max_probes=max_probes,
        hessian_tol=args.hessian_tol,
        eig_iters=args.eig_iters,
        eig_tol=args.eig_tol,
        seed=args.seed,
        act_bits=args.act_bits,
        weight_symmetric=args.symmetric,
        act_cap=args.act_cap,
        negative_trace=args.negative_trace,
    )


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.out is not None and args.out.is_dir():
        raise EmqError(f"--out {args.out}: is a directory; give the file to write the statistics to")
    check_out_dir(args.out.parent if args.out is not None else None)
    check_out_dir(args.cache_dir, "--cache-dir")
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
    )
    if args.out:
        save_stats(ns, args.out)
    summary = summarize(ns)
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
        f"\nHessian: {h.get('probes')} probes on {h.get('images')} images (converged: {h.get('converged')}); negative traces ({h.get('negative_policy')}): {', '.join(h.get('negative_layers') or []) or 'none'}"
    )
    print(convergence_summary(ns))
    print(
        "seconds: "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["seconds"].items())
        + (" (loaded from cache)" if cache.get("hit") else "")
    )
    if args.out:
        print(f"statistics written to {args.out}")
    return 0
