"""Rewrite the per-image outcomes of bench files built by an older emq as emq stores them now
(emq.bench.outcomes): every blob in the current format (byte planes, LZMA2), and the calibration
retests with their report pool only (the retest reliability reads nothing else). Lossless for every
figure: each record's decoded outcomes are checked equal to the original's, and every reliability.

    python scripts/compact_outcomes.py [BENCH ...]       (default: every shipped bench that is built)

Each file is held as a build holds it (a bench being built is refused), rewritten in a copy beside it
that replaces it only when complete and checked. Idempotent. Needs only the bench files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from contextlib import closing
from pathlib import Path

import numpy as np

from emq.bench import Bench, store
from emq.bench.bundles import BUNDLES
from emq.bench.lock import claim
from emq.bench.outcomes import Outcomes, decode, encode, restrict
from emq.bench.reliability import reliability

log = logging.getLogger("compact_outcomes")


def _fields(out: Outcomes) -> dict[str, np.ndarray]:
    return {"correct": out.correct, "loss": out.loss, "kl": out.kl}


def _check_same(a: Outcomes, b: Outcomes, where: str) -> None:
    if not all(np.array_equal(x, y, equal_nan=True) for x, y in zip(_fields(a).values(), _fields(b).values())):
        raise SystemExit(f"compact_outcomes: {where}: the rewritten outcomes differ; the file is left as it was")


def compact_file(path: Path) -> tuple[int, int]:
    """Rewrite one bench file's outcomes in place (through a copy); its sizes before and after.
    Holds the file as a build would, so a bench being built is refused, not rewritten under it."""
    with claim(path, resume=True):
        return _compact(path)


def _compact(path: Path) -> tuple[int, int]:
    bench = Bench.open(path)
    if bench.pools is None:
        raise SystemExit(f"compact_outcomes: {path}: has no per-image outcomes (no test pools); nothing to do")
    before_rel = json.dumps(reliability(bench), sort_keys=True)
    before = path.stat().st_size
    tmp = path.with_name(f".{path.name}.compact")
    shutil.copyfile(path, tmp)
    try:
        with closing(store.connect(tmp)) as con:
            report = Bench.from_connection(tmp, con).pools.mask("report")
            with store.transaction(con):
                for config, blob in store.read_outcomes(con, "records").items():
                    if blob is not None:
                        out = decode(blob, f"{path}: {config}")
                        new = encode(_fields(out))
                        _check_same(out, decode(new), f"{path}: {config}")
                        con.execute("UPDATE records SET outcomes = ? WHERE config = ?", (new, config))
                for config, blob in store.read_outcomes(con, "repeats").items():
                    if blob is not None:
                        new = restrict(blob, report, f"{path}: retest {config}")
                        con.execute("UPDATE repeats SET outcomes = ? WHERE config = ?", (new, config))
        store.compact(tmp)
        if json.dumps(reliability(Bench.open(tmp)), sort_keys=True) != before_rel:
            raise SystemExit(f"compact_outcomes: {path}: the reliability changed; the file is left as it was")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return before, path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benches", nargs="*", help="shipped bench names or bench files (default: every built bundle)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    total = [0, 0]
    for name in args.benches or [n for n, b in BUNDLES.items() if b.path.is_file()]:
        path = BUNDLES[name].path if name in BUNDLES else Path(name)
        if not path.is_file():
            raise SystemExit(f"compact_outcomes: {name}: no such bench file (see `emq bench list`)")
        before, after = compact_file(path)
        total = [total[0] + before, total[1] + after]
        log.info("%s: %.2f MB -> %.2f MB, reliability unchanged", path, before / 1e6, after / 1e6)
    log.info("all: %.1f MB -> %.1f MB", total[0] / 1e6, total[1] / 1e6)


if __name__ == "__main__":
    main()
