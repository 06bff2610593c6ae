"""Transfer: does an evolved proxy rank the configurations of a network it was never searched on?

Benches are grouped by network (two benches of one model are one group: holding out one
while searching on the other would not be transfer). Three protocols:

- leave one network out: evolve on every other group's benches (multi-bench fitness), report
  on each bench of the held-out group;
- leave one task out: the same with the benches grouped by task (data set), so the held-out
  networks are also on images no campaign saw;
- single bench: evolve on bench X, report on every bench Y (the diagonal is within-bench).

Every reported number is held-out configurations x report pool of the bench it is reported
on, with its seeded bootstrap interval. The evolved proxy is compared, each with a paired
interval and each method's cost on the new network in PTQ-equivalent evaluations, with:

- *fixed*: the best statistics-only hand-made proxy chosen by the campaign on its training
  benches (what a user without a bench would pick);
- *oracle*: the best statistics-only hand-made proxy chosen on the reported bench's own
  search configurations (needs that bench);
- *layer-kl*: the measured per-slot sensitivity (L x B single-slot PTQ runs on calibration images);
- *layer-kl-mid*: emq's variant of it, measured with the other slots at the middle bit-width (same cost);
- *ridge*: ridge on one-hot (slot, bit) fitted on the bench's search configurations;
- *whole-kl*: the whole-configuration KL proxy (one PTQ run per configuration ranked).

A campaign is only ever given its training benches (`campaigns()` runs without touching the
others; tests poison a held-out bench and get the identical campaign).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EmqError
from .evolution.engine import TRANSFER_CAMPAIGN
from .executors import Executor
from .fileio import atomic_write_text, ensure_dir
from .search_space.pset import make_space
from .specs import ParameterError
from .uncertainty import DEFAULT_RESAMPLES

log = logging.getLogger(__name__)

WHOLE_CONFIG = ("kl", "gmpq", "seam")
PROTOCOLS = ("leave-one-out", "leave-one-task-out", "single")
DEFAULT_PROTOCOLS = ("leave-one-out", "single")
# what the evolved proxy is compared with on a reported bench: label -> (registry name or role, cost on the new network)
COMPARISONS = ("fixed", "oracle", "layer-kl", "layer-kl-mid", "ridge", "whole-kl")
VARIANTS = ("layer-kl-mid",)  # scored beside the faithful separable proxies (never the best hand-made: not faithful)
REFERENCES_VERSION = 4  # stored references are recomputed when their layout changes
SEEDS = (0, 1, 2)  # campaign seeds per cell
WHOLE_LIMIT = 20  # configurations per split the whole-configuration references quantize


@dataclass(frozen=True)
class Campaign:
    """One planned campaign: which benches it searches on, which it is reported on."""

    protocol: str  # "leave-one-out" or "single"
    train: tuple[str, ...]
    test: tuple[str, ...]
    seed: int

    @property
    def tag(self) -> str:
        return f"{self.protocol}__{'+'.join(_short(t) for t in self.train)}__s{self.seed}"


def _short(name: str) -> str:
    return Path(name).stem if ("/" in name or name.endswith(".sqlite")) else name


def bench_groups(benches: Sequence[str]) -> dict[str, list[str]]:
    """Benches grouped by network (meta model and weights hash), in the given order."""
    from .bench import Bench

    groups: dict[str, list[str]] = {}
    for name in benches:
        meta = Bench.open(name).meta
        groups.setdefault(f"{meta.get('model')}:{meta.get('weights_hash')}", []).append(name)
    return groups


def bench_task(meta: dict[str, Any]) -> str:
    """A bench's task: its data set's name (a data spec 'NAME:DIR' is the task NAME)."""
    return str(meta.get("data") or "default").split(":", 1)[0]


def task_groups(benches: Sequence[str]) -> dict[str, list[str]]:
    """Benches grouped by task, in the given order."""
    from .bench import Bench

    groups: dict[str, list[str]] = {}
    for name in benches:
        groups.setdefault(bench_task(Bench.open(name).meta), []).append(name)
    return groups


def _leave_out(protocol: str, groups: list[list[str]], seed: int, what: str) -> list[Campaign]:
    if len(groups) < 2:
        raise ParameterError(
            "benches", ",".join(b for g in groups for b in g), f"{protocol} needs benches of at least two {what}"
        )
    return [
        Campaign(protocol, tuple(b for g in groups if g is not held for b in g), tuple(held), seed) for held in groups
    ]


def plan(benches: Sequence[str], seeds: Sequence[int], protocols: Sequence[str] = DEFAULT_PROTOCOLS) -> list[Campaign]:
    """The campaigns of a transfer study, in a fixed order."""
    if len(set(benches)) != len(benches):
        raise ParameterError("benches", ",".join(benches), "a bench is named twice")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ParameterError(
            "protocols", ",".join(protocols), f"unknown {', '.join(unknown)}; use {', '.join(PROTOCOLS)}"
        )
    out = []
    for seed in seeds:
        if "leave-one-out" in protocols:
            out += _leave_out("leave-one-out", list(bench_groups(benches).values()), seed, "networks")
        if "leave-one-task-out" in protocols:
            out += _leave_out("leave-one-task-out", list(task_groups(benches).values()), seed, "tasks")
        if "single" in protocols:
            out += [Campaign("single", (b,), tuple(benches), seed) for b in benches]
    return out


@dataclass
class TransferResult:
    """Every campaign's proxy on every bench it is reported on, and the references."""

    cells: list[dict[str, Any]] = field(default_factory=list)  # one per (campaign, test bench)
    references: dict[str, dict[str, Any]] = field(default_factory=dict)  # bench -> hand-made, whole-config, ridge rows
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "cells": self.cells,
            "references": self.references,
            "summary": self.summary(),
        }

    def summary(self) -> list[dict[str, Any]]:
        """Per (protocol, train, test): mean and spread over seeds of the evolved rho, the
        paired difference to the best hand-made proxy, and how many seeds beat it."""
        rows: dict[tuple, list[dict]] = {}
        for c in self.cells:
            rows.setdefault((c["protocol"], "+".join(c["train"]), c["test"]), []).append(c)
        out = []
        for (protocol, train, test), cs in rows.items():
            rho = np.array([c["rho"] for c in cs], dtype=float)
            diff = np.array([c["paired"]["estimate"] if c.get("paired") else np.nan for c in cs], dtype=float)
            out.append(
                {
                    "protocol": protocol,
                    "train": train,
                    "test": test,
                    "seeds": len(cs),
                    "rho_mean": float(np.nanmean(rho)),
                    "rho_sd": float(np.nanstd(rho)),
                    "cost_ptq_evals": _mean_cost([c.get("cost_ptq_evals") for c in cs]),
                    "intervals": [[c["low"], c["high"]] for c in cs],
                    "best_handmade": cs[0].get("best_handmade"),
                    "best_handmade_rho": cs[0].get("best_handmade_rho"),
                    "best_handmade_interval": cs[0].get("best_handmade_interval"),
                    "paired_mean": float(np.nanmean(diff)) if np.isfinite(diff).any() else None,
                    "paired_intervals": [
                        [c["paired"]["low"], c["paired"]["high"]] if c.get("paired") else None for c in cs
                    ],
                    "seeds_better": int(sum(1 for c in cs if c.get("paired") and c["paired"]["low"] > 0)),
                    "seeds_worse": int(sum(1 for c in cs if c.get("paired") and c["paired"]["high"] < 0)),
                    "formulas": [c["formula"] for c in cs],
                    "versus": _versus_summary(cs),
                }
            )
        return out

    def to_csv(self) -> str:
        head = [
            "protocol",
            "train",
            "test",
            "seeds",
            "rho_mean",
            "rho_sd",
            "cost_ptq_evals",
            "best_handmade",
            "best_handmade_rho",
            "paired_mean",
            "seeds_better",
            "seeds_worse",
        ]
        extra = [f"{label}_{k}" for label in COMPARISONS for k in ("name", "rho", "cost_ptq_evals", "better", "worse")]
        lines = [",".join(head + extra)]
        for r in self.summary():
            flat = {
                f"{label}_{k}": ";".join(v[k]) if k == "name" else v[k]
                for label, v in r["versus"].items()
                for k in ("name", "rho", "cost_ptq_evals", "better", "worse")
            }
            lines.append(
                ",".join(
                    "" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
                    for v in [r[h] for h in head] + [flat.get(h) for h in extra]
                )
            )
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        from .tables import markdown_table

        def iv(pair: Sequence[float] | None) -> str:
            return "n/a" if not pair else f"[{pair[0]:.3f}, {pair[1]:.3f}]"

        rows = []
        for r in self.summary():
            seeds = "; ".join(f"{c[0]:.3f}–{c[1]:.3f}" for c in r["intervals"])
            paired = "; ".join(iv(p) for p in r["paired_intervals"])
            hm = r["best_handmade_rho"]
            rows.append(
                [
                    r["protocol"],
                    r["train"],
                    r["test"],
                    f"{r['rho_mean']:.3f} ± {r['rho_sd']:.3f}",
                    seeds,
                    f"{r['best_handmade']} {hm:.3f} {iv(r['best_handmade_interval'])}" if hm is not None else "n/a",
                    paired,
                    f"{r['seeds_better']} / {r['seeds_worse']} of {r['seeds']}",
                ]
            )
        lines = [
            markdown_table(
                [
                    "protocol",
                    "searched on",
                    "reported on",
                    "evolved ρ (mean ± sd over seeds)",
                    "95 % intervals per seed",
                    "best hand-made (chosen on search×fit) [95 %]",
                    "Δρ vs it per seed [95 %]",
                    "seeds better / worse",
                ],
                rows,
            )
        ]
        fair = []
        for r in self.summary():
            cells = []
            for label in COMPARISONS:
                v = r["versus"].get(label)
                per = " per configuration" if label == "whole-kl" else ""
                cost = "" if not v or v["cost_ptq_evals"] is None else f", {v['cost_ptq_evals']:.0f} evals{per}"
                cells.append(
                    "n/a"
                    if not v
                    else f"{'/'.join(v['name'])} {v['rho']:.3f}{cost}: {v['better']} / {v['worse']} of {r['seeds']}"
                )
            own = "" if r.get("cost_ptq_evals") is None else f", {r['cost_ptq_evals']:.0f} evals"
            fair.append([r["protocol"], r["train"], r["test"], f"{r['rho_mean']:.3f}{own}", *cells])
        lines += [
            "",
            "the evolved proxy against each comparison (each one's ρ and cost on the new network in "
            "PTQ-equivalent evaluations; seeds whose paired interval lies above / below 0):",
            markdown_table(
                ["protocol", "searched on", "reported on", "evolved ρ, cost", *COMPARISONS],
                fair,
            ),
        ]
        lines += ["", "references on each bench (held-out configurations x report pool):"]
        ref_rows = []
        for bench, ref in self.references.items():
            for row in ref["rows"]:
                ref_rows.append(
                    [
                        bench,
                        row["name"],
                        row["kind"],
                        f"{row['rho']:.3f} {iv([row['low'], row['high']])}",
                        row["n"],
                        f"{row['seconds_per_config']:.2g}" if row["seconds_per_config"] is not None else "n/a",
                    ]
                )
            ref_rows.append(
                [bench, "ceiling", "", f"{ref['ceiling']:.3f}" if ref.get("ceiling") is not None else "n/a", "", ""]
            )
        lines.append(markdown_table(["bench", "proxy", "kind", "ρ [95 %]", "configurations", "s / config"], ref_rows))
        return "\n".join(lines)

    def save(self, out: str | Path) -> list[Path]:
        """transfer.json, transfer.csv and transfer.png (heat map of the mean evolved rho)."""
        out = ensure_dir(out)
        paths = [out / "transfer.json", out / "transfer.csv", out / "transfer.png"]
        doc, csv = json.dumps(self.to_json(), indent=1) + "\n", self.to_csv()  # all of it before any file
        self._heatmap(paths[2])
        atomic_write_text(paths[1], csv)
        atomic_write_text(paths[0], doc)
        return paths

    def _heatmap(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summary = self.summary()
        benches = [_short(b) for b in self.settings.get("benches", [])]

        def row(r: dict[str, Any]) -> str:
            """A campaign by what it left out (a zoo's training lists are too long to read)."""
            train = [_short(b) for b in r["train"].split("+")]
            left_out = [b for b in benches if b not in train]
            if r["protocol"] == "single" or not left_out:
                return f"{r['protocol']}: {'+'.join(train)}"
            return f"{r['protocol']}: all but {'+'.join(left_out)}"

        trains = list(dict.fromkeys(row(r) for r in summary))
        tests = list(dict.fromkeys(r["test"] for r in summary))
        grid = np.full((len(trains), len(tests)), np.nan)
        for r in summary:
            grid[trains.index(row(r)), tests.index(r["test"])] = r["rho_mean"]
        fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(tests), 1.0 + 0.5 * len(trains)))
        im = ax.imshow(grid, cmap="viridis", vmin=np.nanmin(grid) if np.isfinite(grid).any() else 0, vmax=1)
        ax.set_xticks(range(len(tests)), [_short(t) for t in tests], rotation=30, ha="right")
        ax.set_yticks(range(len(trains)), [t.replace(".sqlite", "") for t in trains], fontsize=7)
        for i in range(len(trains)):
            for j in range(len(tests)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w", fontsize=7)
        ax.set_title("held-out x report Spearman of the evolved proxy (mean over seeds)", fontsize=8)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        tmp = path.with_name(path.name + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        plt.close(fig)
        tmp.replace(path)


class TransferStudy:
    """A transfer study: plan, run its campaigns, then report every proxy where it is reported."""

    def __init__(
        self,
        benches: Sequence[str],
        *,
        seeds: Sequence[int] = SEEDS,
        generations: int = TRANSFER_CAMPAIGN.generations,
        population: int = TRANSFER_CAMPAIGN.population,
        protocols: Sequence[str] = DEFAULT_PROTOCOLS,
        aggregate: str = TRANSFER_CAMPAIGN.aggregate,
        whole_config: Sequence[str] = WHOLE_CONFIG,
        whole_limit: int = WHOLE_LIMIT,
        resamples: int = DEFAULT_RESAMPLES,
        space: str = "full",
        out_dir: str | Path | None = None,
        progress: bool = False,
        executor: Executor | str | None = None,
        workers: int = 1,
    ) -> None:
        if len(benches) < 2:
            raise ParameterError("benches", ",".join(benches), "a transfer study needs at least two benches")
        self.benches = list(benches)
        self.seeds = list(seeds)
        self.generations, self.population = generations, population
        self.protocols = tuple(protocols)
        self.aggregate = aggregate
        self.whole_config = tuple(whole_config)
        self.whole_limit = whole_limit
        self.resamples = resamples
        self.space = space  # a search-space preset; "measured" adds the measured sensitivity (and seeds its forms)
        make_space(space)  # an unknown preset fails here, before any campaign
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.progress = progress
        self.executor, self.workers = (
            executor,
            workers,
        )  # campaign fitness, their statistics and the whole-configuration references
        self.plan = plan(self.benches, self.seeds, self.protocols)

    def run_campaign(self, c: Campaign) -> dict[str, Any]:
        """Evolve on `c.train` only; returns the best proxy and the campaign's own summary."""
        from .evolution.estimator import ProxySearch

        out = self.out_dir / "campaigns" / c.tag if self.out_dir is not None else None
        kwargs: dict[str, Any] = {"aggregate": self.aggregate} if len(c.train) > 1 else {}
        done = out is not None and (out / "checkpoint.npz").exists()  # a rerun continues (or just reloads) the campaign
        est = ProxySearch(
            self.generations,
            self.population,
            random_state=c.seed,
            space=make_space(self.space),
            out_dir=out,
            warm_start=done,
            executor=self.executor,
            workers=self.workers,
            **kwargs,
        )
        est.fit(list(c.train) if len(c.train) > 1 else c.train[0])
        return {"campaign": c, "proxy": est.best_proxy_, "summary": est.summary_, "log": est.log_}

    def campaigns(self) -> list[dict[str, Any]]:
        return [self.run_campaign(c) for c in self.plan]

    def references(self) -> dict[str, dict[str, Any]]:
        """Every bench's references (computed once, then read back from `out_dir`)."""
        return {b: self._references(b) for b in self.benches}

    def _references(self, bench: str) -> dict[str, Any]:
        """The bench's reference rows, kept in `out_dir/references/` so a rerun (or a resumed
        study) reuses them: whole-configuration proxies quantize the network per configuration."""
        from .bench import Bench

        key = {
            "version": REFERENCES_VERSION,
            "bench": str(Bench.open(bench).path),
            "whole_config": list(self.whole_config),
            "whole_limit": self.whole_limit,
            "resamples": self.resamples,
        }
        path = self.out_dir / "references" / f"{_short(bench)}.json" if self.out_dir is not None else None
        if path is not None and path.is_file():
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["references"]
        refs = self._score_references(bench)
        if path is not None:
            ensure_dir(path.parent)
            atomic_write_text(path, json.dumps({"key": key, "references": refs}, indent=1) + "\n")
        return refs

    def _score_references(self, bench: str) -> dict[str, Any]:
        """Every faithful separable proxy (statistics-only and measured) and the compared variants, ridge and
        the whole-configuration proxies on the bench, each row with its scores (for paired intervals against
        any campaign's proxy later) and its cost on this network."""
        from .baselines.registry import PROXIES
        from .ranking import score
        from .search_space.proxyfile import EvolvedProxy

        # a registry proxy evolved on the shipped benches (emq-zoo saw every zoo bench) is no reference on any of them
        separable = [
            n for n, cls in PROXIES.items() if cls.separable and cls.faithful and not issubclass(cls, EvolvedProxy)
        ] + list(VARIANTS)
        rep = score(bench, proxies=separable, resamples=self.resamples)  # the oracle: chosen on search x fit
        skipped = dict(rep.skipped)
        scored = list(rep.proxies)
        if self.whole_config:
            whole = score(
                bench,
                proxies=list(self.whole_config),
                limit=self.whole_limit,
                resamples=self.resamples,
                reference=False,
                executor=self.executor,
                workers=self.workers,
            )
            scored += whole.proxies
            skipped.update(whole.skipped)
        return {
            "rows": [
                _row(p) | _cost(p, scored) | {"rows": p.rows.tolist(), "scores": p.scores.tolist()} for p in scored
            ],
            "best_handmade": rep.best_handmade,
            "ceiling": rep.ceiling,
            "skipped": skipped,
        }

    def evaluate(self, runs: list[dict[str, Any]]) -> TransferResult:
        from .ranking import score
        from .search_space.proxyfile import save_proxy

        result = TransferResult(
            settings={
                "benches": self.benches,
                "seeds": self.seeds,
                "generations": self.generations,
                "population": self.population,
                "aggregate": self.aggregate,
                "space": self.space,
                "whole_limit": self.whole_limit,
                "resamples": self.resamples,
                "groups": list(bench_groups(self.benches).values()),
            }
        )
        tested = {b for r in runs for b in r["campaign"].test}
        result.references = {b: self._references(b) for b in self.benches if b in tested}
        for r in runs:
            c: Campaign = r["campaign"]
            work = ensure_dir((self.out_dir or Path.cwd() / "emq_transfer") / "proxies")
            path = save_proxy(r["proxy"], work / f"{c.tag}.json")
            fixed = _registry_name(r["summary"].get("best_handmade"))
            for test in c.test:
                refs = result.references[test]
                rep = score(test, proxies=[], proxy_files=[path], resamples=self.resamples, reference=False)
                mine = rep.proxies[0]
                versus = _versus(rep, mine, refs, fixed)
                row = _row(mine)
                cost = _evolved_cost(r["proxy"], refs, fixed)
                oracle = versus.get("oracle")
                result.cells.append(
                    {
                        "protocol": c.protocol,
                        "train": list(c.train),
                        "test": test,
                        "seed": c.seed,
                        "formula": r["proxy"].expression,
                        "rho": row["rho"],
                        "low": row["low"],
                        "high": row["high"],
                        "cost_ptq_evals": cost,
                        "within": test in c.train,
                        "paired": oracle["paired"] if oracle else None,
                        "best_handmade": refs["best_handmade"],
                        "best_handmade_rho": oracle["rho"] if oracle else None,
                        "best_handmade_interval": [oracle["low"], oracle["high"]] if oracle else None,
                        "versus": versus,
                        "campaign_fitness": r["summary"].get("best_fitness"),
                    }
                )
        return result

    def run(self) -> TransferResult:
        result = self.evaluate(self.campaigns())
        if self.out_dir is not None:
            result.save(self.out_dir)
        return result


def _registry_name(form: str | None) -> str | None:
    """The registry proxy whose search-space form a campaign named as its best hand-made."""
    from .baselines.registry import PROXIES

    return next((n for n, cls in PROXIES.items() if form and cls.formula == form), None)


def _cost(p: Any, scored: Sequence[Any]) -> dict[str, Any]:
    """What the proxy costs on a network that has no bench, in PTQ-equivalent evaluations:
    statistics-only and measured proxies their one-off measured cost, a whole-configuration
    proxy one evaluation per configuration it ranks (so 1.0), ridge (and the per-bench oracle) the
    search configurations it was fitted on."""
    from .supervised import NAME as RIDGE_NAME

    if p.name == RIDGE_NAME:
        return {"cost_ptq_evals": p.n.get("search_fit"), "cost": "one PTQ evaluation per fitted configuration"}
    if p.kind == "whole-config":
        return {"cost_ptq_evals": 1.0, "cost": "one PTQ evaluation per configuration ranked"}
    setup = p.setup or {}
    return {"cost_ptq_evals": setup.get("ptq_equivalents"), "cost": p.cost}


def _stored_score(row: dict[str, Any]) -> Any:
    """A stored reference row as a ProxyScore carrying what a paired interval needs."""
    from .ranking import ProxyScore

    return ProxyScore(
        name=row["name"],
        description="",
        kind=row["kind"],
        orientation=1,
        cost=row.get("cost", ""),
        n={},
        correlations={},
        seconds_per_config=row["seconds_per_config"] or 0.0,
        rows=np.asarray(row["rows"], dtype=np.int64),
        scores=np.asarray(row["scores"], dtype=np.float64),
    )


def _versus(rep: Any, mine: Any, refs: dict[str, Any], fixed: str | None) -> dict[str, dict[str, Any]]:
    """The evolved proxy against each comparison on one bench, each with its paired interval."""
    from .ranking import paired_difference
    from .supervised import NAME as RIDGE_NAME

    names = {
        "fixed": fixed,
        "oracle": refs["best_handmade"],
        "layer-kl": "layer-kl",
        "layer-kl-mid": "layer-kl-mid",
        "ridge": RIDGE_NAME,
        "whole-kl": "kl",
    }
    by_name = {row["name"]: row for row in refs["rows"]}
    out = {}
    for label in COMPARISONS:
        row = by_name.get(names[label] or "")
        if row is None:
            continue
        cost = row["cost_ptq_evals"]
        if label == "oracle":  # chosen on the bench's search configurations: it needs them measured
            cost = by_name.get(RIDGE_NAME, {}).get("cost_ptq_evals")
        out[label] = {
            "name": row["name"],
            "rho": row["rho"],
            "low": row["low"],
            "high": row["high"],
            "cost_ptq_evals": cost,
            "paired": paired_difference(rep, mine, _stored_score(row)),
        }
    return out


def _mean_cost(costs: Sequence[float | None]) -> float | None:
    known = [c for c in costs if c is not None]
    return float(np.mean(known)) if known else None


def _evolved_cost(proxy: Any, refs: dict[str, Any], fixed: str | None) -> float | None:
    """The evolved proxy's cost on the held-out network, in its references' unit: the measured tables its tree
    reads (the `layer-kl` and `layer-kl-mid` rows' costs) and, where it reads a statistic, the statistics (the
    fixed statistics-only proxy's row); None where one of those is unknown."""
    from .baselines.measured import table_proxies
    from .search_space.evaluate import tree_terminals

    by = {row["name"]: row.get("cost_ptq_evals") for row in refs["rows"]}
    parts = table_proxies(tree_terminals(proxy.tokens))
    if proxy.reads_statistics:
        parts.append(fixed)
    costs = [by.get(name) if name else None for name in parts]
    return None if any(c is None for c in costs) else float(sum(costs))


def _versus_summary(cells: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per comparison over a summary row's seeds: its name(s), mean rho and cost, and how many
    seeds' paired intervals lie above (better) or below (worse) zero."""
    out: dict[str, dict[str, Any]] = {}
    for label in COMPARISONS:
        vs = [c["versus"][label] for c in cells if label in c.get("versus", {})]
        if not vs:
            continue
        paired = [v["paired"] for v in vs if v["paired"]]
        costs = [v["cost_ptq_evals"] for v in vs if v["cost_ptq_evals"] is not None]
        out[label] = {
            "name": list(dict.fromkeys(v["name"] for v in vs)),
            "rho": float(np.mean([v["rho"] for v in vs])),
            "cost_ptq_evals": float(np.mean(costs)) if costs else None,
            "paired_mean": float(np.mean([p["estimate"] for p in paired])) if paired else None,
            "better": sum(1 for p in paired if p["low"] > 0),
            "worse": sum(1 for p in paired if p["high"] < 0),
        }
    return out


def _row(p: Any) -> dict[str, Any]:
    """A ProxyScore's held-out x report rho with its interval."""
    if p.interval is None:
        raise EmqError(f"proxy {p.name}: no held-out x report interval (fewer than 3 held-out configurations scored)")
    return {
        "name": p.name,
        "kind": p.kind,
        "rho": p.correlations.get("spearman_heldout_report"),
        "low": p.interval["low"],
        "high": p.interval["high"],
        "n": p.n.get("heldout_report"),
        "seconds_per_config": p.seconds_per_config,
    }
