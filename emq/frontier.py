"""The cost-quality frontier: what should a user measure on a network that has no bench?

For each network of a study (held out in turn) and each budget k of configurations measured on
it, this compares, on its held-out configurations x report pool with seeded bootstrap intervals:

- choices that need no measured configuration: the *fixed* best statistics-only hand-made proxy
  (the best mean search x fit rho over the *other* networks' benches), an evolved proxy that
  never saw the network (a proxy file per bench, e.g. a leave-one-out campaign's),
  `layer-kl` (the measured per-slot sensitivity, at its cost of L x B single-slot runs) and
  `layer-kl-mid` (emq's variant, the other slots at the middle bit-width, at the same cost);
- models fitted on k configurations drawn (seeded, `draws` times) from the network's *search*
  configurations, with their fit-pool metric: ridge on one-hot (slot, bit) features, ridge
  on the proxies' scores (the statistics proxies, `layer-kl` and model size as features), and
  (given `warm`) a short evolution campaign on those k configurations whose initial population
  holds the hall of fame of a campaign that never saw the network;
- the whole-configuration KL proxy, at one PTQ evaluation per configuration it ranks.

Costs are in PTQ-equivalent evaluations on the network (one = quantize one configuration and
evaluate its test split): k for a fitted model, plus the one-off cost of the statistics and the
sensitivity its features read, converted by their measured seconds. The *crossover* of a fitted
model is the smallest k at which at least half of its draws beat the best zero-configuration
choice (paired interval above 0); that choice (fixed hand-made, `layer-kl` or `layer-kl-mid`) is made by mean
search x fit rho on the other networks' benches, never by looking at the held-out network.
The held-out configurations and the report pool are never drawn from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EmqError
from .evolution.engine import WARM_CAMPAIGN
from .fileio import atomic_write, atomic_write_text, ensure_dir
from .specs import ParameterError
from .supervised import OneHotRidge, ScoreRidge
from .uncertainty import DEFAULT_RESAMPLES

log = logging.getLogger(__name__)

BUDGETS = (0, 10, 25, 50, 100, 200)
DRAWS = 5
MEASURED = "layer-kl"
IN_CONTEXT = "layer-kl-mid"  # the same measurement with the other slots at the middle bit-width (not a feature)
FITTED = ("ridge-onehot", "ridge-proxies")
WARM = "evolved-warm"
WARM_FIELDS = ("generations", "population", "hof_size")  # of WARM_CAMPAIGN; the rest are ProxySearch's defaults
FEATURE_FREE = ("size",)  # proxy features that cost nothing to compute


@dataclass
class FrontierResult:
    """Every method's held-out x report rho per network, budget and draw, and the crossovers."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)  # bench -> choice, crossover, costs
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "networks": self.networks, "rows": self.rows}

    def to_csv(self) -> str:
        head = [
            "bench",
            "method",
            "k",
            "draw",
            "cost_ptq_evals",
            "rho",
            "low",
            "high",
            "vs",
            "delta",
            "delta_low",
            "delta_high",
        ]
        lines = [",".join(head)]
        for r in self.rows:
            p = r.get("paired") or {}
            vals = [r["bench"], r["method"], r["k"], r["draw"], r["cost_ptq_evals"], r["rho"], r["low"], r["high"]]
            vals += [p.get("baseline"), p.get("estimate"), p.get("low"), p.get("high")]
            lines.append(",".join("" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in vals))
        return "\n".join(lines) + "\n"

    def to_markdown(self) -> str:
        from .tables import markdown_table

        out = []
        for bench, net in self.networks.items():
            rows = []
            for method in net["methods"]:
                pts = [r for r in self.rows if r["bench"] == bench and r["method"] == method]
                for k in sorted({r["k"] for r in pts}):
                    at = [r for r in pts if r["k"] == k]
                    rho = np.array([r["rho"] for r in at])
                    cost = float(
                        np.mean([r["cost_ptq_evals"] for r in at if r["cost_ptq_evals"] is not None] or [np.nan])
                    )
                    better = sum(1 for r in at if r.get("paired") and r["paired"]["low"] > 0)
                    worse = sum(1 for r in at if r.get("paired") and r["paired"]["high"] < 0)
                    iv = (
                        f"[{at[0]['low']:.3f}, {at[0]['high']:.3f}]"
                        if len(at) == 1
                        else f"{rho.min():.3f}–{rho.max():.3f}"
                    )
                    rows.append(
                        [
                            method,
                            k,
                            f"{cost:.0f}" if np.isfinite(cost) else "n/a",
                            f"{rho.mean():.3f}",
                            iv,
                            f"{better} / {worse} of {len(at)}",
                        ]
                    )
            out.append(
                f"**{bench}**: best choice without measured configurations: {net['choice']} "
                f"(chosen on the other networks' search x fit); crossover: "
                + "; ".join(f"{m} at k = {c['k']}" if c else f"{m} never" for m, c in net["crossover"].items())
            )
            out.append(
                markdown_table(
                    [
                        "method",
                        "k measured",
                        "cost (PTQ evals)",
                        "ρ held-out×report (mean)",
                        "95 % interval / range over draws",
                        f"draws better / worse than {net['choice']}",
                    ],
                    rows,
                )
            )
            out.append("")
        return "\n".join(out)

    def save(self, out: str | Path) -> list[Path]:
        """frontier.json, frontier.csv, one frontier_<bench>.png per network and frontier.png (all)."""
        out = ensure_dir(out)
        paths = [out / "frontier.json", out / "frontier.csv"]
        atomic_write_text(paths[0], json.dumps(self.to_json(), indent=1) + "\n")
        atomic_write_text(paths[1], self.to_csv())
        for bench in self.networks:
            paths.append(self._plot([bench], out / f"frontier_{_safe(bench)}.png"))
        paths.append(self._plot(list(self.networks), out / "frontier.png"))
        return paths

    def _plot(self, benches: list[str], path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = len(benches)
        cols = min(n, 3)
        fig, axes = plt.subplots(
            (n + cols - 1) // cols, cols, figsize=(4.2 * cols, 3.2 * ((n + cols - 1) // cols)), squeeze=False
        )
        for ax, bench in zip(axes.flat, benches, strict=False):
            net = self.networks[bench]
            for method in net["methods"]:
                pts = [
                    r
                    for r in self.rows
                    if r["bench"] == bench and r["method"] == method and r["cost_ptq_evals"] is not None
                ]
                if not pts:
                    continue
                ks = sorted({r["k"] for r in pts})
                x = [np.mean([r["cost_ptq_evals"] for r in pts if r["k"] == k]) for k in ks]
                y = [np.mean([r["rho"] for r in pts if r["k"] == k]) for k in ks]
                lo = [min(r["low"] for r in pts if r["k"] == k) for k in ks]
                hi = [max(r["high"] for r in pts if r["k"] == k) for k in ks]
                if method in (*FITTED, WARM):
                    ax.plot(x, y, marker="o", label=method)
                    ax.fill_between(x, lo, hi, alpha=0.15)
                else:
                    ax.errorbar(x, y, yerr=[np.subtract(y, lo), np.subtract(hi, y)], fmt="s", capsize=3, label=method)
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlabel("cost on the network (PTQ-equivalent evaluations)")
            ax.set_ylabel("held-out x report Spearman")
            ax.set_title(bench, fontsize=9)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
        plt.close(fig)
        return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).stem) or "bench"


class FrontierStudy:
    """Plan and run the frontier over benches of different networks (each held out in turn)."""

    def __init__(
        self,
        benches: Sequence[str],
        *,
        budgets: Sequence[int] = BUDGETS,
        draws: int = DRAWS,
        seed: int = 0,
        evolved: Mapping[str, str | Path] | None = None,
        warm: Mapping[str, str | Path] | None = None,
        space: Any = None,
        whole_config: bool = True,
        whole_limit: int = 20,
        resamples: int = DEFAULT_RESAMPLES,
    ) -> None:
        if len(benches) < 2 or len(set(benches)) != len(benches):
            raise ParameterError(
                "benches", ",".join(benches), "give at least two different benches (each is held out in turn)"
            )
        if any(int(k) != k or k < 0 for k in budgets):
            raise ParameterError("budgets", ",".join(map(str, budgets)), "use non-negative integers")
        if draws < 1:
            raise ParameterError("draws", draws, "use at least 1")
        self.benches = list(benches)
        self.budgets = sorted({int(k) for k in budgets})
        self.draws, self.seed = int(draws), int(seed)
        self.evolved = {b: Path(p) for b, p in (evolved or {}).items()}
        self.warm = {b: Path(p) for b, p in (warm or {}).items()}
        for param, given in (("evolved", self.evolved), ("warm", self.warm)):
            unknown = [b for b in given if b not in self.benches]
            if unknown:
                raise ParameterError(param, ",".join(unknown), "given for a bench not in the study")
        self.space = space  # of the warm-started campaigns (None: the default space)
        self.whole_config, self.whole_limit, self.resamples = whole_config, whole_limit, resamples

    def _reports(self) -> dict[str, Any]:
        """Every bench's statistics-only hand-made proxies, layer-kl, layer-kl-mid and its evolved proxy, scored
        once."""
        from .allocation.auto import feature_proxies
        from .ranking import score

        names = [*feature_proxies(), IN_CONTEXT]
        out = {}
        for b in self.benches:
            files = [self.evolved[b]] if b in self.evolved else []
            out[b] = score(b, proxies=names, proxy_files=files, resamples=self.resamples, reference=False)
        return out

    def run(self) -> FrontierResult:
        reports = self._reports()
        result = FrontierResult(
            settings={
                "benches": self.benches,
                "budgets": self.budgets,
                "draws": self.draws,
                "seed": self.seed,
                "evolved": {b: str(p) for b, p in self.evolved.items()},
                "warm": {b: str(p) for b, p in self.warm.items()},
                "warm_campaign": {k: getattr(WARM_CAMPAIGN, k) for k in WARM_FIELDS} if self.warm else None,
                "whole_limit": self.whole_limit if self.whole_config else None,
                "resamples": self.resamples,
            }
        )
        for i, bench in enumerate(self.benches):
            rows, network = self._network(i, bench, reports)
            result.rows += rows
            result.networks[bench] = network
        return result

    def _network(self, i: int, bench: str, reports: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One held-out network's frontier rows and its summary (choice, crossovers, costs)."""
        from .bench import Bench
        from .ranking import ReportCells, score

        rows: list[dict[str, Any]] = []
        rep = reports[bench]
        others = [reports[o] for o in self.benches if o != bench]
        measured = (MEASURED, IN_CONTEXT)
        fixed = _best_on(others, [p.name for p in rep.proxies if p.kind == "separable" and p.name not in measured])
        choice = _best_on(others, [fixed, *measured])
        b = Bench.open(bench)
        cells = ReportCells(b, rep.metric, self.resamples)
        by = {p.name: p for p in rep.proxies}
        base = by[choice]
        held = base.rows[cells.split["heldout"][base.rows]]
        boot = cells.bootstrap(held)
        pos = {r: j for j, r in enumerate(base.rows)}
        at_held = np.array([pos[r] for r in held])
        stats_cost = (by[fixed].setup or {}).get("ptq_equivalents")
        sens_cost = (by[MEASURED].setup or {}).get("ptq_equivalents")

        def measured_cost(names: Sequence[str]) -> float:
            return sum((by[m].setup or {}).get("ptq_equivalents") or 0.0 for m in names)

        def add(method: str, scores: np.ndarray, *, k: int, draw: int, cost: float | None) -> None:
            iv = boot.interval(scores)
            row = {"bench": bench, "method": method, "k": k, "draw": draw, "cost_ptq_evals": cost}
            row |= {"rho": float(iv.estimate), "low": float(iv.low), "high": float(iv.high), "paired": None}
            if method != choice:
                d = boot.paired(scores, base.scores[at_held])
                row["paired"] = {
                    "baseline": choice,
                    "estimate": float(d.estimate),
                    "low": float(d.low),
                    "high": float(d.high),
                }
            rows.append(row)

        methods = [fixed, *measured]
        add(fixed, by[fixed].scores[at_held], k=0, draw=0, cost=stats_cost)
        for name in measured:
            add(name, by[name].scores[at_held], k=0, draw=0, cost=(by[name].setup or {}).get("ptq_equivalents"))
        evolved = next((p for p in rep.proxies if p.kind == "evolved"), None)
        if evolved is not None:
            methods.append("evolved")
            # its setup: the statistics and the measured tables its tree reads (emq.ranking)
            add("evolved", evolved.scores[at_held], k=0, draw=0, cost=(evolved.setup or {}).get("ptq_equivalents"))
        features = np.stack(  # [rows, F], oriented: auto's features (emq.allocation.auto.feature_proxies)
            [p.scores for p in rep.proxies if p.kind == "separable" and p.name != IN_CONTEXT], axis=1
        )
        search_rows = base.rows[cells.split["search"][base.rows]]
        fit_values = cells.values["fit"]
        warm = _WarmStart(self.warm[bench], b, rep.metric, self.space) if bench in self.warm else None
        for k in self.budgets:
            if k == 0:
                continue
            if k > len(search_rows):
                log.warning(
                    "%s: %d search configurations, fewer than the budget %d: skipped", bench, len(search_rows), k
                )
                continue
            for draw in range(self.draws):
                rng = np.random.default_rng([self.seed, i, k, draw])
                picked = rng.choice(search_rows, size=k, replace=False)
                y = fit_values[picked]
                onehot = OneHotRidge(b.bits).fit(b.configs[picked], y)
                add("ridge-onehot", onehot.predict(b.configs[held]), k=k, draw=draw, cost=float(k))
                model = ScoreRidge().fit(features[np.array([pos[r] for r in picked])], y)
                cost = k + (stats_cost or 0.0) + (sens_cost or 0.0)
                add("ridge-proxies", model.predict(features[at_held]), k=k, draw=draw, cost=cost)
                if warm is not None:
                    cost = k + (stats_cost or 0.0) + measured_cost(warm.reads)
                    add(WARM, warm.scores(picked, held, seed=draw), k=k, draw=draw, cost=cost)
        methods += list(FITTED) + ([WARM] if warm is not None else [])
        if self.whole_config:
            whole = score(bench, proxies="kl", limit=self.whole_limit, resamples=self.resamples, reference=False)
            kl = whole.proxies[0] if whole.proxies else None
            if kl is not None and kl.interval is not None:
                rows.append(
                    {
                        "bench": bench,
                        "method": "whole-kl",
                        "k": 0,
                        "draw": 0,
                        "cost_ptq_evals": float(kl.n.get("heldout_report") or 0),
                        "rho": kl.correlations["spearman_heldout_report"],
                        "low": kl.interval["low"],
                        "high": kl.interval["high"],
                        "paired": None,
                        "note": "scored on a seeded sample of held-out configurations; cost = configurations ranked",
                    }
                )
                methods.append("whole-kl")
        network = {
            "fixed": fixed,
            "choice": choice,
            "methods": methods,
            "statistics_cost_ptq_evals": stats_cost,
            "sensitivity_cost_ptq_evals": sens_cost,
            "crossover": {m: _crossover(rows, bench, m, self.draws) for m in methods if m in (*FITTED, WARM)},
        }
        return rows, network


class _WarmStart:
    """Short campaigns on k measured configurations of one network, warm-started from the hall
    of fame of a campaign that never saw it (`FrontierStudy.warm`)."""

    def __init__(self, campaign: Path, bench: Any, metric: str, space: Any) -> None:
        """`campaign`: the run directory (or checkpoint) whose hall of fame seeds the campaigns."""
        from emq.search_space.pset import make_space

        from .baselines.measured import table_proxies
        from .bench_setup import BenchSetup
        from .evolution.checkpoint import hall_of_fame
        from .sensitivity import ensure_measured

        self.bench, self.metric = bench, metric
        self.trees = hall_of_fame(campaign / "checkpoint.npz" if campaign.is_dir() else campaign)
        self.space = space or make_space()
        setup = BenchSetup.of(bench)
        self.stats = setup.network_stats(progress=False)
        self.reads = table_proxies(self.space.terminals)  # measured tables the campaigns read (and pay for)
        if self.reads:
            self.stats = ensure_measured(self.stats, setup.target, setup.ptq, terminals=self.space.terminals)
        self.raw = bench.pool_metric(metric, "fit" if bench.pools is not None else "all")

    def scores(self, picked: np.ndarray, held: np.ndarray, seed: int) -> np.ndarray:
        """The campaign's best proxy's oriented scores of the held-out configurations."""
        from .evolution import ProxySearch
        from .fitness import FitnessData
        from .proxy import table_scores

        b = self.bench
        data = FitnessData.from_arrays(b.bits, (b.configs[picked], self.raw[picked]), None, metric=self.metric)
        est = ProxySearch(
            **{k: getattr(WARM_CAMPAIGN, k) for k in WARM_FIELDS},
            space=self.space,
            random_state=seed,
            seed_trees=self.trees,
            metric=self.metric,
        ).fit(data, stats=self.stats)
        proxy = est.best_proxy_
        table = proxy.stats_table(self.stats).cpu().numpy()
        bits = list(self.stats.bits)
        idx = np.vectorize(bits.index)(b.configs[held])
        return proxy.orientation * table_scores(table, idx)


def _best_on(reports: Sequence[Any], names: Sequence[str]) -> str:
    """The name with the highest mean search x fit rho over these (other networks') reports."""

    def mean(name: str) -> float:
        vals = [p.correlations.get("spearman_search_fit") for r in reports for p in r.proxies if p.name == name]
        vals = [v for v in vals if v is not None]
        return float(np.mean(vals)) if vals else -np.inf

    if not names:
        raise EmqError("no statistics-only proxy could be scored on these benches")
    return max(names, key=mean)


def recommend(
    rows: Sequence[Mapping[str, Any]],
    *,
    methods: Sequence[str] = (MEASURED, *FITTED),
    exclude: Sequence[str] = (),
) -> tuple[tuple[int, str], ...]:
    """What to use for a network *not* among the study's, by budget: steps (from k, method).

    At each studied k (one every network reached), the method with the highest held-out rho
    averaged over draws and then over the networks (leaving out `exclude`); a zero-budget
    method (`layer-kl`, or `layer-kl-mid` where `methods` names it) competes at every k with its own rho,
    and a tie goes to the method named first. This maximizes the expected rho of a network drawn like the
    study's. `--proxy auto` ships this rule on the zoo's frontier (emq.allocation.auto.RULE);
    benchmarks/auto_acceptance.py recomputes it with each network left out. `layer-kl-mid` is not a default
    candidate: it has the higher rho, but as auto's choice its allocations failed that check by real PTQ
    (worse than `layer-kl`'s on 6 of 13 networks, better on 2; benchmarks/results/auto_acceptance_mid.json)."""
    benches = sorted({r["bench"] for r in rows} - set(exclude))
    by: dict[tuple[str, str, int], list[float]] = {}
    for r in rows:
        if r["bench"] in benches and r["method"] in methods:
            by.setdefault((r["method"], r["bench"], int(r["k"])), []).append(r["rho"])
    zero = {m for m, _, k in by if k == 0}

    def expected(method: str, k: int) -> float | None:
        at = 0 if method in zero else k
        means = [np.mean(by[(method, b, at)]) for b in benches if (method, b, at) in by]
        return float(np.mean(means)) if len(means) == len(benches) else None

    steps: list[tuple[int, str]] = []
    for k in sorted({k for _, _, k in by}):
        scored = [(v, -i, m) for i, m in enumerate(methods) if (v := expected(m, k)) is not None]
        if scored:
            best = max(scored)[2]
            if not steps or steps[-1][1] != best:
                steps.append((k, best))
    return tuple(steps)


def _crossover(rows: list[dict[str, Any]], bench: str, method: str, draws: int) -> dict[str, Any] | None:
    """The smallest k at which at least half the draws' paired intervals lie above 0, with the
    median draw's difference and interval there; None when no budget reaches it."""
    for k in sorted({r["k"] for r in rows if r["bench"] == bench and r["method"] == method}):
        at = [r for r in rows if r["bench"] == bench and r["method"] == method and r["k"] == k and r["paired"]]
        if 2 * sum(1 for r in at if r["paired"]["low"] > 0) >= draws:
            mid = sorted(at, key=lambda r: r["paired"]["estimate"])[len(at) // 2]
            return {"k": k, "draws_better": sum(1 for r in at if r["paired"]["low"] > 0), "median": mid["paired"]}
    return None
