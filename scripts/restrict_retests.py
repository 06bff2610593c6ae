"""Keep only the report pool's images in the calibration-retest outcomes of bench files built before
emq stored them that way (emq.bench.outcomes.restrict): the retest reliability reads nothing else,
so every figure stays as it was, and the retests take half the space.

    python scripts/restrict_retests.py [BENCH ...]       (default: every shipped bench that is built)

Each file is held as a build holds it (a bench being built is refused), rewritten in a copy beside it
that replaces it only when complete, after checking that the reliability recomputed from the
rewritten file equals the one computed from the original. Idempotent. Needs only the bench files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
from contextlib import closing
from pathlib import Path

from emq.bench import Bench, store
from emq.bench.bundles import BUNDLES
from emq.bench.lock import claim
from emq.bench.outcomes import restrict
from emq.bench.reliability import reliability

log = logging.getLogger("restrict_retests")


def restrict_file(path: Path) -> tuple[int, int]:
    """Rewrite one bench file's retest outcomes in place (through a copy); its sizes before and after.
    Holds the file as a build would, so a bench being built is refused, not rewritten under it."""
    with claim(path, resume=True):
        return _restrict(path)


def _restrict(path: Path) -> tuple[int, int]:
    bench = Bench.open(path)
    if bench.pools is None:
        raise SystemExit(f"restrict_retests: {path}: has no per-image outcomes (no test pools); nothing to do")
    before_rel = json.dumps(reliability(bench), sort_keys=True)
    before = path.stat().st_size
    tmp = path.with_name(f".{path.name}.restrict")
    shutil.copyfile(path, tmp)
    try:
        with closing(store.connect(tmp)) as con:
            report = Bench.from_connection(tmp, con).pools.mask("report")
            with store.transaction(con):
                for config, blob in store.read_outcomes(con, "repeats").items():
                    if blob is not None:
                        new = restrict(blob, report, f"{path}: retest {config}")
                        con.execute("UPDATE repeats SET outcomes = ? WHERE config = ?", (new, config))
        store.compact(tmp)
        if json.dumps(reliability(Bench.open(tmp)), sort_keys=True) != before_rel:
            raise SystemExit(f"restrict_retests: {path}: the reliability changed; the file is left as it was")
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
            raise SystemExit(f"restrict_retests: {name}: no such bench file (see `emq bench list`)")
        before, after = restrict_file(path)
        total = [total[0] + before, total[1] + after]
        log.info("%s: %.2f MB -> %.2f MB, reliability unchanged", path, before / 1e6, after / 1e6)
    log.info("all: %.1f MB -> %.1f MB", total[0] / 1e6, total[1] / 1e6)


if __name__ == "__main__":
    main()
