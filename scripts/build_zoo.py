"""Rebuild a zoo bench from scratch with one command, or resume one that was stopped.

    python scripts/build_zoo.py NAME [NAME ...]      (or --all: every zoo bundle, in order)

For each bundle of emq.bench.bundles.BUNDLES that has a build recipe, three resumable stages:

1. train: `python scripts/train_model.py --model MODEL` if the weights are not in emq/assets
   (`--retrain` trains again); a network below 50 % test top-1 stops the script (it did not learn);
2. build: `emq bench build --model MODEL --out emq/bench/data/NAME.sqlite <the bundle's recipe>`,
   with `--resume` when the file exists, so a killed build loses at most the configurations in
   flight;
3. bundle (when the file is missing or the bench was built in this run, since a rebuilt bench records
   its statistics settings anew): `python scripts/bundle_stats.py NAME`, the statistics that let `emq search/score
   --bench NAME` run without the data set (`--omit-activations` where the data ships with emq,
   emq.data.SHIPPED_DATA: the activation fields are recomputed from it in seconds, and the bundle
   stays small).

Each stage runs as its own process under `nice`, the same commands a user would type; a finished
stage is skipped on a rerun. Needs the bench's data (Fashion-MNIST: `apt-get install
dataset-fashion-mnist`; the shapes task is generated).
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from emq.bench import Bench
from emq.bench.bundles import BUNDLES
from emq.data import SHIPPED_DATA
from emq.models import EMBEDDED_MODELS
from emq.resources import asset_path

log = logging.getLogger("build_zoo")
ROOT = Path(__file__).resolve().parents[1]
MIN_TOP1 = 50.0  # % test top-1 below which a trained network is not benched (the zoo's tasks have 10 classes)


def run(cmd: list[str]) -> None:
    log.info("$ %s", shlex.join(cmd))
    code = subprocess.call(["nice", "-n", "10", *cmd], cwd=ROOT)
    if code != 0:
        raise SystemExit(f"build_zoo: `{shlex.join(cmd)}` exited with {code}; fix it and run this script again")


def finished(path: Path, configs: int) -> bool:
    """The bench exists and holds every configuration its recipe asks for, with no failures left."""
    if not path.is_file():
        return False
    bench = Bench.open(path)
    return len(bench) >= configs and not bench.failures


def check_recipe(path: Path, test_limit: int) -> None:
    """Refuse a bench file built with another test set than the recipe asks for: a resume would be
    refused, and counting its records would call it finished."""
    built_on = Bench.open(path).meta.get("test_limit") if path.is_file() else test_limit
    if built_on != test_limit:
        raise SystemExit(
            f"build_zoo: {path} was built on {built_on} test images, the recipe asks for {test_limit}: move the "
            "file away to rebuild it"
        )


def build(name: str, retrain: bool) -> None:
    bundle = BUNDLES[name]
    model = EMBEDDED_MODELS[bundle.model]
    if retrain or not asset_path(model.weights).is_file():
        run([sys.executable, "scripts/train_model.py", "--model", bundle.model])
    record = asset_path(model.weights).with_suffix(".train.json")
    top1 = json.loads(record.read_text())["test_top1"] if record.is_file() else MIN_TOP1
    if top1 < MIN_TOP1:
        raise SystemExit(
            f"build_zoo: {bundle.model} reached only {top1:.1f} % test top-1 "
            f"(below {MIN_TOP1} %): a network that did not learn makes a meaningless bench; train it with another "
            "recipe (scripts/train_model.py --lr/--steps) and run this script again"
        )
    recipe = list(bundle.build)
    configs = int(recipe[recipe.index("--configs") + 1])
    check_recipe(bundle.path, int(recipe[recipe.index("--test-limit") + 1]))
    built = not finished(bundle.path, configs)
    if built:
        cmd = [
            sys.executable,
            "-m",
            "emq.cli.main",
            "bench",
            "build",
            "--model",
            bundle.model,
            "--out",
            str(bundle.path),
        ]
        run(cmd + recipe + (["--resume"] if bundle.path.is_file() else []))
    if bundle.stats_path is not None and (built or not bundle.stats_path.is_file()):  # a rebuilt bench: its own
        omit = ["--omit-activations"] if model.data in SHIPPED_DATA else []
        run([sys.executable, "scripts/bundle_stats.py", name, *omit])
    log.info("%s: done (%s)", name, bundle.path)


def main() -> None:
    zoo = [n for n, b in BUNDLES.items() if b.build]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help=f"zoo bundles ({', '.join(zoo)})")
    ap.add_argument("--all", action="store_true", help="every zoo bundle, in order")
    ap.add_argument("--retrain", action="store_true", help="train the network again even if its weights exist")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = zoo if args.all else args.names
    unknown = [n for n in names if n not in zoo]
    if not names or unknown:
        ap.error(
            f"name zoo bundles ({', '.join(zoo)}) or use --all"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
        )
    for name in names:
        build(name, args.retrain)


if __name__ == "__main__":
    main()
