"""Write the statistics of shipped benches into their bundles (emq/bench/data/*.stats.pt), so
`emq search` / `emq score --bench NAME` use them instead of computing them (emq.search_space.shipped),
and run where the bench's data is not installed.

    python scripts/bundle_stats.py [NAME ...]                       (default: every bundle with statistics)
    python scripts/bundle_stats.py default --omit-activations       (the default and stratified benches' file)
    python scripts/bundle_stats.py --restamp [NAME ...]             (only record what existing files came from)
    python scripts/bundle_stats.py --add-sensitivity [NAME ...]     (measure and add only the sensitivity tables)

Needs the bench's data (e.g. `apt-get install dataset-fashion-mnist` for resnet20-fashion),
except with --restamp. The statistics are computed with the bench's own settings, exactly as
`emq score` would; `--act-cap` (stored activation samples per layer, default 8: OMPQ and QE use all of them)
is first written into the bench's `stats_settings`, so a run that has the data computes the
same statistics. `--omit-activations` keeps the bench's settings and leaves out the
activation-shaped fields, recomputed from the data (which must ship with emq) in a second.
Every file leaves out the fields the model alone determines (W, VG, SG: recomputed exactly from the
shipped weights when the file is used), records in meta["source"] the bench's weights digest, data
fingerprint and layers, and is written in the compact format (float16 with a scale per tensor, LZMA-
packed, E derived as Q - W; see emq.search_space.netstats), which `benchmarks/stats_compaction.py`
checks moves no proxy's correlation by more than 0.002. `--rewrite-only` rewrites existing files in
that format without recomputing them. Every file also carries the network's measured per-slot
sensitivity (emq.sensitivity, at the bench's bits and PTQ settings, on calibration images), with the
other slots at 8 bits and in context (at the middle bit-width), so `layer-kl`, `layer-loss`, `layer-sqnr`,
`layer-kl-mid` and the terminals MKL, MDL, MNSR, MKLM score without the data; `--add-sensitivity` measures
and adds only those tables to an existing file.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import closing

from emq.bench import Bench, store
from emq.bench.bundles import BUNDLES
from emq.bench_setup import BenchSetup, ptq_settings
from emq.datasplits import base_fingerprint
from emq.search_space.netstats import ACTIVATION_FIELDS, MODEL_FIELDS, load_stats, omit_fields, save_stats
from emq.search_space.shipped import source_of
from emq.search_space.stats import StatsSettings, compute_stats
from emq.sensitivity import attach_sensitivity, in_context, measure_sensitivity
from emq.target import ModelSpec, resolve_target

log = logging.getLogger("bundle_stats")


def _source(bench: Bench) -> dict:
    target = resolve_target(bench.meta["model"], need_data=False)
    data = base_fingerprint(str(bench.meta.get("data_fingerprint") or ""))
    return source_of(str(bench.meta["weights_hash"]), data, target.layer_map)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=[n for n, b in BUNDLES.items() if b.stats and b.path.is_file()])
    ap.add_argument(
        "--act-cap", type=int, default=8, help="activation samples stored per layer (keeps a bundle small; default 8)"
    )
    ap.add_argument(
        "--rewrite-only",
        action="store_true",
        help="rewrite the bundle's existing statistics in the current (compact) format without recomputing them",
    )
    ap.add_argument("--omit-activations", action="store_true", help="keep the bench's settings; leave out A, Y, GY, AE")
    ap.add_argument("--restamp", action="store_true", help="only record meta['source'] in the existing files")
    ap.add_argument(
        "--add-sensitivity",
        action="store_true",
        help="measure the sensitivity tables and add them to the existing file",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.names:
        bundle = BUNDLES[name]
        if bundle.stats_path is None:
            raise SystemExit(f"bundle {name} ships no statistics")
        bench = Bench.open(bundle.path)
        if args.restamp or args.rewrite_only:
            ns = load_stats(bundle.stats_path, partial=True)
            if args.restamp:
                ns.meta["source"] = _source(bench)
            save_stats(omit_fields(ns, MODEL_FIELDS), bundle.stats_path, compact=True)
            log.info("%s: rewrote %s (%.1f MB)", name, bundle.stats_path, bundle.stats_path.stat().st_size / 1e6)
            continue
        if not (args.omit_activations or args.add_sensitivity):
            settings = StatsSettings.from_ptq(ptq_settings(bench), act_cap=args.act_cap)
            with closing(store.connect(bundle.path)) as con:
                store.write_meta(con, {"stats_settings": settings.to_json()})
            bench = Bench.open(bundle.path)
        setup = BenchSetup.of(
            bench, ModelSpec(bench.meta["model"], data=bench.meta["data"])
        )  # with the data: never the bundle's own file
        if args.add_sensitivity:
            ns = load_stats(bundle.stats_path, partial=True)
        else:
            ns = compute_stats(setup.target, bits=setup.bits, settings=setup.stats, use_cache=False)
            ns.meta.pop("cache", None)  # this machine's cache path means nothing in a bundle
            ns.meta["source"] = _source(bench)
        for settings in (None, in_context(setup.bits)):  # every measurement statistics carry
            attach_sensitivity(ns, measure_sensitivity(setup.target, bits=setup.bits, ptq=setup.ptq, settings=settings))
        omit = MODEL_FIELDS + (ACTIVATION_FIELDS if args.omit_activations else ())
        save_stats(omit_fields(ns, omit), bundle.stats_path, compact=True)
        log.info("%s: wrote %s (%.1f MB)", name, bundle.stats_path, bundle.stats_path.stat().st_size / 1e6)


if __name__ == "__main__":
    main()
