"""Print the zoo table of docs/zoo.md from the shipped benches themselves (so no
figure is typed by hand): family, task, slots, weight parameters, FP top-1, the uniform 2/3/4-bit
KL, the default metric's corrected split-half and combined reliability, PTQ method, and the bench's
build time (its build log: wall seconds, summed over resumed runs) with its training's CPU time
(wall time where an older record has no CPU time).

    python scripts/zoo_table.py

Needs the benches only (no data set).
"""

from __future__ import annotations

import json

import numpy as np

from emq.bench import Bench, bench_list
from emq.bench.bundles import BUNDLES
from emq.models import EMBEDDED_MODELS
from emq.resources import asset_path


def _uniform_kl(b: Bench) -> str:
    out = []
    for bits in b.bits:
        rows = np.flatnonzero((b.configs == bits).all(1))
        out.append(f"{b.metrics['kl'][rows[0]]:.3f}" if len(rows) else "n/a")
    return " / ".join(out)


def _training(model: str) -> str:
    record = asset_path(EMBEDDED_MODELS[model].weights).with_suffix(".train.json")
    if not record.is_file():
        return "n/a"
    doc = json.loads(record.read_text())
    if doc.get("cpu_seconds"):
        return f"{doc['cpu_seconds'] / 60:.0f} min"
    if not doc.get("seconds"):
        return "n/a"
    load = doc.get("load_average_at_end")
    return f"{doc['seconds'] / 60:.0f} min wall" + (f" at load {load:.0f}" if load is not None else "")


def main() -> None:
    head = (
        "| bench | family | task | slots | params | FP top-1 | uniform 2 / 3 / 4-bit KL "
        "| reliability (split-half / combined) | PTQ | bench build (wall) / training (CPU) |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for row in bench_list():
        if not row["installed"]:
            print(f"| `{row['name']}` | {row['family']} | {row['task']} | not built yet | | | | | | |")
            continue
        if None in (row["params"], row["split_half_corrected"], row["combined_reliability"]):
            print(
                f"| `{row['name']}` | {row['family']} | {row['task']} | being built ({row['records']} records) "
                "| | | | | | |"
            )
            continue
        b = Bench.open(BUNDLES[row["name"]].path)
        seconds = sum(e.get("seconds", 0.0) for e in b.meta.get("build_log", []))
        print(
            f"| `{row['name']}` | {row['family']} | {row['task']} | {row['slots']} | {row['params'] / 1e6:.2f} M | "
            f"{row['fp_top1']:.2f} % | {_uniform_kl(b)} | {row['split_half_corrected']:.3f} / "
            f"{row['combined_reliability']:.3f} | {row['ptq_method']} | {seconds / 60:.0f} min / "
            f"{_training(row['model'])} |"
        )


if __name__ == "__main__":
    main()
