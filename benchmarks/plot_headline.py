"""The README's headline picture: leave one network out, the evolved proxy of each seed against the
best hand-made proxy of the held-out bench (held-out configurations x report pool, KL, 95 % bootstrap
intervals), drawn from the stored study so that it measures nothing and needs no bench.

    python benchmarks/plot_headline.py [--study benchmarks/results/transfer_loo.json]
                                       [--out docs/img/headline_transfer.png] [--also layer-kl]

`--also NAME` draws another reference proxy of the study beside the best hand-made one (e.g. the
measured sensitivity `layer-kl` of the zoo study, benchmarks/results/transfer_zoo.json).

A seed's point is filled green where its paired interval against the best hand-made proxy of the
held-out bench (the study's paired baseline, drawn as a square) lies above zero, red where it lies
below, and hollow where it contains zero (a tie).

Needs only emq's core dependencies (no extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from emq.fileio import atomic_write  # noqa: E402

# colours of the extra reference proxies: none of the seed outcome colours (green, blue, red)
ALSO_COLORS = ("tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
PRETTY = {"fisher": "Fisher", "hawq-v2": "HAWQ-V2", "hawq-v1": "HAWQ-V1", "ompq": "OMPQ", "snip": "SNIP"}


def _outcome(cell: dict) -> str:
    """better / worse / tie: where the seed's paired interval against the best hand-made proxy lies."""
    low, high = cell["paired"]["low"], cell["paired"]["high"]
    return "better" if low > 0 else "worse" if high < 0 else "tie"


def draw(study: dict, out: Path, also: tuple[str, ...] = ()) -> None:
    """Draw the per-seed evolved intervals beside each bench's best hand-made interval and ceiling."""
    cells = [c for c in study["cells"] if c["protocol"] == "leave-one-out"]
    benches = list(dict.fromkeys(c["test"] for c in cells))
    seeds = sorted({c["seed"] for c in cells})
    style = {
        "better": dict(color="tab:green", mfc="tab:green"),
        "worse": dict(color="tab:red", mfc="tab:red"),
        "tie": dict(color="tab:blue", mfc="white"),
    }
    fig, ax = plt.subplots(figsize=(max(8.0, 0.75 * len(benches)), 4.2))
    width = 0.13
    for i, bench in enumerate(benches):
        for k, seed in enumerate(seeds):
            c = next(c for c in cells if c["test"] == bench and c["seed"] == seed)
            x = i - 0.3 + k * width
            s = style[_outcome(c)]
            ax.errorbar(
                x, c["rho"], yerr=[[c["rho"] - c["low"]], [c["high"] - c["rho"]]], fmt="o", ms=6, capsize=2, **s
            )
        ref = study["references"][bench]
        row = next(r for r in ref["rows"] if r["name"] == ref["best_handmade"])
        x = i + 0.25
        ax.errorbar(
            x,
            row["rho"],
            yerr=[[row["rho"] - row["low"]], [row["high"] - row["rho"]]],
            fmt="s",
            ms=6,
            capsize=2,
            color="0.35",
        )
        ax.annotate(
            PRETTY.get(row["name"], row["name"]),
            (x, row["low"]),
            textcoords="offset points",
            xytext=(0, -11),
            ha="center",
            fontsize=7,
            color="0.35",
        )
        for j, name in enumerate(also):
            extra = next((r for r in ref["rows"] if r["name"] == name), None)
            if extra is not None:
                ax.errorbar(
                    x + 0.12 * (j + 1),
                    extra["rho"],
                    yerr=[[extra["rho"] - extra["low"]], [extra["high"] - extra["rho"]]],
                    fmt="D",
                    ms=5,
                    capsize=2,
                    color=ALSO_COLORS[j % len(ALSO_COLORS)],
                )
        if ref.get("ceiling") is not None:
            ax.hlines(ref["ceiling"], i - 0.42, i + 0.38, colors="0.6", linestyles=":", lw=1.2)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color="tab:green", mfc="tab:green", label="evolved seed: better"),
        plt.Line2D([], [], marker="o", ls="", color="tab:blue", mfc="white", label="evolved seed: tie"),
        plt.Line2D([], [], marker="o", ls="", color="tab:red", mfc="tab:red", label="evolved seed: worse"),
        plt.Line2D([], [], marker="s", ls="", color="0.35", label="best hand-made proxy of the bench"),
        plt.Line2D([], [], ls=":", color="0.6", label="bench ceiling"),
    ] + [
        plt.Line2D([], [], marker="D", ls="", color=ALSO_COLORS[j % len(ALSO_COLORS)], label=name)
        for j, name in enumerate(also)
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower left", ncol=2, framealpha=0.9)
    ax.set_xticks(
        range(len(benches)),
        benches,
        fontsize=8,
        rotation=30 if len(benches) > 6 else 0,
        ha="right" if len(benches) > 6 else "center",
    )
    ax.set_xlabel("held-out network (campaigns evolved on the other networks' benches)", fontsize=8)
    ax.set_ylabel("Spearman ρ, held-out configs × report pool\n(KL, 95 % bootstrap interval)", fontsize=8)
    settings = study["settings"]
    ax.set_title(
        f"Leave one network out: evolved proxy (seeds {', '.join(map(str, seeds))}, aggregate "
        f"{settings['aggregate']}) vs best hand-made proxy",
        fontsize=9,
    )
    ax.set_ylim(min(0.4, *(c["low"] for c in cells)), 1.0)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="benchmarks/results/transfer_loo.json")
    ap.add_argument("--out", default="docs/img/headline_transfer.png")
    ap.add_argument("--also", action="append", default=[], help="another reference proxy to draw (repeatable)")
    args = ap.parse_args()
    study = json.loads(Path(args.study).read_text(encoding="utf-8"))
    draw(study, Path(args.out), tuple(args.also))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
