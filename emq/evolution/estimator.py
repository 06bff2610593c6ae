"""`ProxySearch`: a proxy-search campaign as an estimator, in the style of gplearn and PySR.

Parameters go to the constructor, `fit(bench)` runs the campaign, and the results are
fitted attributes with a trailing underscore (`best_proxy_`, `hall_of_fame_`, `log_`, ...).
The campaign draws from its own seeded generator (`random_state`) and never reseeds the
caller's global generators; the executor that evaluates fitness is passed in (or named), so
a process pool or a cluster serves the same campaign unchanged. `warm_start=True` continues
the previous `fit` (or the checkpoint in `out_dir`) instead of starting again.

`fit` takes one bench or several: with several, every candidate is scored on each bench
with that bench's own statistics and its fitness aggregates them (`aggregate`); everything
chosen during the campaign sees only each bench's search configurations x fit pool, and the
held-out x report numbers of every bench are measured afterwards. `parsimony` > 0 makes
selection prefer smaller formulas (fitness - parsimony * size).

`search()` is the one-call convenience over it, with the CLI's names.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sklearn.base import BaseEstimator

from emq.search_space.netstats import NetworkStats
from emq.search_space.proxyfile import EvolvedProxy
from emq.search_space.pset import SearchSpace, make_space
from emq.sensitivity import measured_terminals

from ..errors import EmqError
from ..executors import Executor, executor_for
from ..fileio import remove_stale_temps
from ..fitness import FitnessData
from ..specs import ParameterError
from .dps import DPSConfig
from .engine import Campaign, SearchConfig
from .evaluator import Outcome, aggregate, as_tuple
from .halloffame import HallOfFame, bench_labels, json_safe, pareto_mask, tokens_row

log = logging.getLogger(__name__)

# constructor parameters named otherwise than their SearchConfig field
_PARAM_OF_FIELD = {"seed": "random_state"}


@dataclass
class SearchResult:
    """What a campaign produced: the best proxy, the hall of fame, the hand-made proxies of
    the space scored the same way, a summary and the per-generation log."""

    best: EvolvedProxy
    hall_of_fame: HallOfFame
    baselines: HallOfFame
    summary: dict[str, Any]
    log: list[dict[str, Any]]
    out_dir: Path | None

    def to_json(self) -> dict[str, Any]:
        return self.summary

    def save(self, out_dir: str | Path) -> list[Path]:
        """best_proxy.json, hall_of_fame.csv, summary.json, fitness.png and diversity.png into
        `out_dir` (a campaign run with an out_dir writes them there itself); returns their paths."""
        from .runfiles import write_result_files

        return write_result_files(Path(out_dir), self)

    def to_markdown(self, top: int = 5) -> str:
        table = HallOfFame(
            list(self.hall_of_fame)[:top] + [r | {"rank": f"hand-made: {r['name']}"} for r in self.baselines]
        )
        s = self.summary
        lines = [
            table.to_markdown(),
            "",
            "Pareto front of the hall of fame (size in nodes against fitness on search x fit):",
            self.hall_of_fame.pareto().to_markdown(),
            "",
            f"{s['evaluations']} evaluations of {s['candidates']} candidates in {s['seconds']:.1f} s "
            f"({s['screening']['saved_share']:.0%} saved by screening and the cache)",
        ]
        if len(s["benches"]) > 1:
            lines.append(
                f"fitness = {_aggregate_text(s)} of the per-bench Spearman on search x fit; one orientation for "
                "all benches"
            )
        for label, b in s["benches"].items():
            lines.append(_bench_line(label if len(s["benches"]) > 1 else "", b))
        lines.append(
            "search = search configurations x fit pool (all a campaign sees); held-out = held-out configurations x "
            "report pool; intervals: emq score"
        )
        if self.out_dir is not None:
            lines.append(
                f"run directory: {self.out_dir} (best_proxy.json, hall_of_fame.csv, log.jsonl, fitness.png, "
                "diversity.png)"
            )
        return "\n".join(lines)


def _aggregate_text(s: dict[str, Any]) -> str:
    return f"mean - {s['aggregate_k']:g} x std" if s["aggregate"] == "mean-std" else s["aggregate"]


def _bench_line(label: str, b: dict[str, Any]) -> str:
    """A bench's ceiling and ridge reference, in words."""
    parts = []
    if b.get("ceiling") is not None:
        parts.append(f"held-out ceiling {b['ceiling']:.3f} (sqrt of the report pool's reliability)")
    ref = b.get("supervised_reference") or {}
    if ref.get("heldout_spearman") is not None:
        parts.append(
            "within-bench supervised reference (ridge on one-hot slot/bit, fitted on search x fit): held-out x "
            f"report rho {ref['heldout_spearman']:.3f}"
        )
    return (f"bench {label}: " if label else "") + "; ".join(parts)


class ProxySearch(BaseEstimator):
    """Evolve separable proxy formulas whose scores rank a bench's configurations.

    With several benches, `aggregate` turns the per-bench oriented Spearmans into the
    fitness: "mean-std" (mean - aggregate_k x std, the default), "mean" or "min". mean-std is
    the default because `benchmarks/aggregation.py` (leave one network out, 3 seeds) found it
    best on held-out networks: the spread term keeps a campaign from buying a high mean with
    one bench it fits badly, which is how proxies fail on a network they never saw.
    `parsimony` C >= 0 makes selection use fitness - C x size (nodes); 0 = no size pressure.
    `device` (cpu, cuda, cuda:N) is where fitness tables and any statistics that are not
    cached yet are computed; it is not part of the campaign (a checkpoint resumes anywhere).

    The campaign parameters' defaults are `SearchConfig`'s (`seed` is `random_state`, `dps`
    a bool or a DPSConfig); scikit-learn's BaseEstimator gives `get_params`/`set_params`.
    """

    def __init__(
        self,
        generations: int = SearchConfig.generations,
        population: int = SearchConfig.population,
        *,
        metric: str | None = None,
        space: SearchSpace | None = None,
        dps: bool | DPSConfig = DPSConfig.enabled,
        max_evaluations: int | None = SearchConfig.max_evaluations,
        random_state: int = SearchConfig.seed,
        executor: str | Executor | None = None,
        workers: int = SearchConfig.workers,
        out_dir: str | Path | None = None,
        warm_start: bool = False,
        checkpoint_every: int = SearchConfig.checkpoint_every,
        progress: bool = False,
        cx_prob: float = SearchConfig.cx_prob,
        mut_prob: float = SearchConfig.mut_prob,
        tournament: int = SearchConfig.tournament,
        init_min: int = SearchConfig.init_min,
        init_max: int = SearchConfig.init_max,
        max_height: int = SearchConfig.max_height,
        max_size: int = SearchConfig.max_size,
        hof_size: int = SearchConfig.hof_size,
        seed_handmade: bool = SearchConfig.seed_handmade,
        seed_trees: Sequence[Sequence[Any]] = (),
        act_samples: int = SearchConfig.act_samples,
        device: str = SearchConfig.device,
        threads: int = SearchConfig.threads,
        aggregate: str = SearchConfig.aggregate,
        aggregate_k: float = SearchConfig.aggregate_k,
        parsimony: float = SearchConfig.parsimony,
    ) -> None:
        params = dict(locals())
        params.pop("self")
        for name, value in params.items():
            setattr(self, name, value)

    def set_params(self, **params: Any) -> ProxySearch:
        """BaseEstimator's, with an unknown name refused as a ParameterError (a user's error)."""
        valid = self.get_params(deep=False)
        for name, value in params.items():
            if name not in valid:
                raise ParameterError(name, value, f"not a ProxySearch parameter; use one of {', '.join(valid)}")
        return super().set_params(**params)

    def config(self) -> SearchConfig:
        """The validated campaign settings these parameters describe."""
        values = {f.name: getattr(self, _PARAM_OF_FIELD.get(f.name, f.name)) for f in fields(SearchConfig)}
        if not isinstance(self.dps, DPSConfig):
            values["dps"] = DPSConfig(enabled=bool(self.dps))
        return SearchConfig(**values)

    # fitting --------------------------------------------------------------------------
    def fit(
        self,
        bench: Any | Sequence[Any] = "default",
        model: Any = None,
        stats: NetworkStats | Sequence[NetworkStats] | None = None,
    ) -> ProxySearch:
        """Run (or, with warm_start, continue) the campaign on `bench`, or on several benches
        given as a list or tuple (their order is part of the campaign).

        A bench is a path, a shipped bench's name ('default'), an opened Bench or a
        FitnessData. The statistics are those of each bench's model with the bench's settings
        (`emq.bench_setup`), unless `stats` is given (one per bench); `model` (a name,
        nn.Module or Target; one per bench with several) overrides the bench's model and
        must match its weights.
        """
        cfg = self.config()
        benches = as_tuple(bench)
        if not benches:
            raise ParameterError("bench", list(benches), "give at least one bench")
        models, given = _per_bench(model, len(benches), "model"), _per_bench(stats, len(benches), "stats")
        loaded = [load_fitness_data(b, self.metric) for b in benches]
        data = [d for d, _ in loaded]
        out_dir = Path(self.out_dir) if self.out_dir is not None else None
        ckpt = out_dir / "checkpoint.npz" if out_dir is not None else None
        space = self.space or make_space()
        camp = getattr(self, "_campaign", None) if self.warm_start else None
        same = camp is not None and [d.fingerprint for d in camp.data] == [d.for_campaign().fingerprint for d in data]
        if not same:  # refused before an executor (perhaps a Ray cluster) starts
            if ckpt is not None and ckpt.exists() and not self.warm_start:
                raise ParameterError(
                    "out_dir",
                    str(out_dir),
                    "already holds a campaign: continue it with warm_start=True or choose another directory",
                )
            if self.warm_start and (ckpt is None or not ckpt.exists()):
                raise ParameterError(
                    "warm_start",
                    True,
                    f"nothing to continue: no earlier fit and no checkpoint in {out_dir}; start with warm_start=False",
                )
        with executor_for(self.executor, self.workers) as executor:
            if same:
                camp.continue_with(cfg)
            else:
                camp = Campaign(
                    _all_statistics(
                        executor, given, models, loaded, device=cfg.device, measured=measured_terminals(space.terminals)
                    ),
                    data,
                    space,
                    cfg,
                    out_dir=out_dir,
                    progress=self.progress,
                )
                if self.warm_start:
                    camp.restore(ckpt)
                    removed = remove_stale_temps(out_dir)  # left by a writer killed mid-write
                    if removed:
                        log.info("removed %d stale temp files from %s", len(removed), out_dir)
            camp.run(executor)
        self._campaign = camp
        self._collect(camp, data, out_dir)
        return self

    def _collect(self, camp: Campaign, data: list[FitnessData], out_dir: Path | None) -> None:
        """Report the finished campaign: its choices (made on search x fit only) measured on
        held-out configurations x report pool of every bench as well."""
        if not camp.hof:
            raise EmqError(
                "no valid proxy was found (every candidate was screened out): enlarge the search space or the budget"
            )
        cfg, labels = camp.config, bench_labels(data)
        provenance = _provenance(camp, data)
        hof = []
        for rank, key in enumerate(camp.hof, 1):
            o = camp.cache[key]
            row = tokens_row(
                rank,
                f"evolved_{rank}",
                camp.tokens[key],
                stats=camp.stats,
                data=data,
                act_samples=cfg.act_samples,
                orientation=o.orientation,
                labels=labels,
            )
            row["fitness"] = o.fitness
            row["proxy"].meta = {
                "fitness": _fitness_meta(o, row, data=data, labels=labels, cfg=cfg),
                "provenance": provenance,
            }
            hof.append(row)
        for row, on_front in zip(hof, pareto_mask([r["size"] for r in hof], [r["fitness"] for r in hof]), strict=True):
            row["pareto"] = on_front
        baselines = [
            tokens_row("-", name, toks, stats=camp.stats, data=data, act_samples=cfg.act_samples, labels=labels)
            for name, (_, toks) in camp.space.handmade().items()
        ]
        for row in baselines:
            row["fitness"] = aggregate(
                [b["search_spearman"] for b in row["benches"].values()], cfg.aggregate, cfg.aggregate_k
            )
            row["pareto"] = False  # not a member of the hall of fame
        self.hall_of_fame_ = HallOfFame(hof)
        self.handmade_ = HallOfFame(baselines)
        self.best_proxy_ = hof[0]["proxy"]
        self.log_ = camp.log
        self.n_generations_ = camp.generation
        self.n_evaluations_ = camp.evaluations
        self.summary_ = _summary(camp, data, labels=labels, hof=hof, baselines=baselines, out_dir=out_dir)
        self.result_ = SearchResult(
            best=self.best_proxy_,
            hall_of_fame=self.hall_of_fame_,
            baselines=self.handmade_,
            summary=self.summary_,
            log=self.log_,
            out_dir=out_dir,
        )
        if out_dir is not None:
            from .runfiles import write_run_files

            write_run_files(out_dir, self.result_, camp)


def _per_bench(value: Any, n: int, param: str) -> list[Any]:
    """`model` or `stats` as one entry per bench: None for all, the value itself for one bench, else a list of n."""
    if value is None:
        return [None] * n
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ParameterError(param, f"{len(value)} entries", f"give one per bench ({n})")
        return list(value)
    if n != 1:
        raise ParameterError(param, type(value).__name__, f"with {n} benches give a list with one per bench")
    return [value]


def _provenance(camp: Campaign, data: list[FitnessData]) -> dict[str, Any]:
    """Where the proxy comes from: bench, metric, statistics and bits (per bench with several)."""

    def one(stats: NetworkStats, d: FitnessData, **seed: int) -> dict[str, Any]:
        return {
            "bench": d.source,
            "metric": d.metric,
            **seed,
            "stats_key": (stats.meta.get("cache") or {}).get("key"),
            "bits": list(d.bits),
        }

    cfg = camp.config
    if len(data) == 1:
        return one(camp.stats[0], data[0], seed=cfg.seed)
    return {
        "benches": [one(s, d) for s, d in zip(camp.stats, data, strict=True)],
        "aggregate": cfg.aggregate,
        "aggregate_k": cfg.aggregate_k,
        "seed": cfg.seed,
    }


def _fitness_meta(
    o: Outcome, row: dict[str, Any], *, data: list[FitnessData], labels: list[str], cfg: SearchConfig
) -> dict[str, Any]:
    """The proxy file's fitness record: search x fit as the campaign measured it, held-out x report after it."""
    if len(data) == 1:
        return {"search_spearman": o.rho_search, "heldout_spearman": row["heldout_spearman"], "pools": data[0].pools}
    per = {
        label: {"search_spearman": rho, "heldout_spearman": row["benches"][label]["heldout_spearman"], "pools": d.pools}
        for label, rho, d in zip(labels, o.per_bench, data, strict=True)
    }
    return {"fitness": o.fitness, "aggregate": cfg.aggregate, "aggregate_k": cfg.aggregate_k, "benches": per}


def load_fitness_data(bench: Any, metric: str | None, bits: tuple[int, ...] | None = None) -> tuple[FitnessData, Any]:
    """The fitness splits of a bench given as a path, 'default', an opened Bench or a FitnessData."""
    if isinstance(bench, FitnessData):
        return bench, None
    if isinstance(bench, (str, Path)):
        from emq.bench import Bench

        bench = Bench.open(bench)
    return FitnessData.from_bench(bench, metric, bits), bench


def _statistics(
    bench: Any, model: Any, data: FitnessData, *, device: str = "cpu", measured: tuple[str, ...] = ()
) -> NetworkStats:
    """The bench model's statistics with the bench's settings (or defaults for bare arrays), computed on `device`;
    `measured`: the space's terminals that read a measured sensitivity, attached for them (emq.sensitivity)."""
    from emq.search_space.stats import compute_stats
    from emq.sensitivity import ensure_measured

    if bench is None:
        if model is None:
            raise ParameterError(
                "stats", None, "a bench given as FitnessData needs `stats` or a `model` to compute them on"
            )
        from emq.target import Target, resolve_target

        target = model if isinstance(model, Target) else resolve_target(model)
        ns = compute_stats(target, bits=data.bits, device=device)
        return ensure_measured(ns, target, None, device, terminals=measured)
    from ..bench_setup import BenchSetup

    setup = BenchSetup.of(bench, model)
    ns = setup.network_stats(device=device)
    return ensure_measured(ns, setup.target, setup.ptq, device, terminals=measured)


def _statistics_task(_: Any, job: tuple[Any, Any, FitnessData, str, bool]) -> NetworkStats:
    bench, model, data, device, measured = job
    return _statistics(bench, model, data, device=device, measured=measured)


def _all_statistics(
    executor: Executor,
    given: list[Any],
    models: list[Any],
    loaded: list[tuple[FitnessData, Any]],
    *,
    device: str,
    measured: tuple[str, ...] = (),
) -> list[NetworkStats]:
    """Every bench's statistics: the given ones, the rest computed, one model per worker when
    the executor has several (a multi-bench campaign on a cluster)."""
    jobs = [(b, m, d, device, measured) for s, m, (d, b) in zip(given, models, loaded, strict=True) if s is None]
    if executor.workers > 1 and len(jobs) > 1:
        computed = iter(executor.map(_statistics_task, jobs))
    else:
        computed = (_statistics_task(None, job) for job in jobs)
    return [s if s is not None else next(computed) for s in given]


def _ridge_reference(data: FitnessData) -> dict[str, Any] | None:
    """The within-bench ridge reference on the same cells as the campaign's numbers."""
    from ..supervised import OneHotRidge

    model = OneHotRidge(data.bits).fit(data.search.configs, data.search.target)
    out: dict[str, Any] = {"model": "ridge on one-hot (slot, bit), fitted on search x fit", "alpha": model.alpha_}
    if data.heldout is not None:
        out["heldout_spearman"] = float(data.heldout.spearman(model.predict(data.heldout.configs)))
    return out


def _bench_summary(
    label: str,
    d: FitnessData,
    *,
    best: dict[str, Any],
    best_base: dict[str, Any] | None,
    baselines: list[dict[str, Any]],
) -> dict[str, Any]:
    """One bench's part of the summary: the best proxy's and the hand-made proxies' numbers there."""
    cells = best["benches"][label]
    return {
        "bench": d.source,
        "best_search_spearman": cells["search_spearman"],
        "best_heldout_spearman": cells["heldout_spearman"],
        "best_correlations": cells["correlations"],
        "best_handmade_heldout_spearman": best_base["benches"][label]["heldout_spearman"] if best_base else None,
        "handmade": {
            b["name"]: {
                "expression": b["expression"],
                "heldout_spearman": b["benches"][label]["heldout_spearman"],
                "search_spearman": b["benches"][label]["search_spearman"],
            }
            for b in baselines
        },
        "ceiling": d.ceiling,
        "pools": d.pools,
        "supervised_reference": _ridge_reference(d),
        "metric": d.metric,
        "search_configs": len(d.search),
        "heldout_configs": len(d.heldout) if d.heldout is not None else 0,
    }


def _summary(
    camp: Campaign,
    data: list[FitnessData],
    *,
    labels: list[str],
    hof: list[dict[str, Any]],
    baselines: list[dict[str, Any]],
    out_dir: Path | None,
) -> dict[str, Any]:
    """The campaign in numbers. With one bench its numbers are top-level keys (as ever); with
    several they are under `benches` only (always present)."""
    from ..rendering import to_latex

    cfg, best = camp.config, hof[0]
    # the best hand-made proxy is chosen on search x fit (aggregated over benches), like everything else in a campaign,
    # among the statistics-only forms: what a user without a bench or an evaluation budget would pick
    best_base = max(
        (b for b in baselines if not math.isnan(b["fitness"]) and b["proxy"].statistics_only),
        key=lambda b: b["fitness"],
        default=None,
    )
    benches = {
        label: _bench_summary(label, d, best=best, best_base=best_base, baselines=baselines)
        for label, d in zip(labels, data, strict=True)
    }
    single = {k: v for k, v in next(iter(benches.values())).items() if k != "bench"} if len(benches) == 1 else {}
    front = [
        {
            "rank": r["rank"],
            "size": r["size"],
            "fitness": r["fitness"],
            "expression": r["expression"],
            "heldout_spearman": {label: c["heldout_spearman"] for label, c in r["benches"].items()},
        }
        for r in HallOfFame(hof).pareto()
    ]
    return json_safe(
        {
            "best_expression": best["expression"],
            "best_latex": to_latex(best["proxy"].tokens, best["proxy"].prims),
            "best_orientation": best["orientation"],
            "best_size": best["size"],
            "best_fitness": best["fitness"],
            **single,
            "best_handmade": best_base["name"] if best_base else None,
            "benches": benches,
            "aggregate": cfg.aggregate,
            "aggregate_k": cfg.aggregate_k,
            "parsimony": cfg.parsimony,
            "pareto": front,
            "generations": camp.generation,
            "evaluations": camp.evaluations,
            "candidates": camp.counts["seen"],
            "seconds": camp.seconds,
            "candidates_per_s": camp.counts["seen"] / camp.seconds if camp.seconds > 0 else None,
            "screening": camp.counts.summary(),
            "final_diversity": {k: camp.log[-1][k] for k in ("unique_forms", "mean_abs_corr")},
            "seed": cfg.seed,
            "dps": cfg.dps.enabled,
            "out_dir": str(out_dir) if out_dir else None,
        }
    )


def search(
    bench: Any | Sequence[Any] = "default",
    *,
    model: Any = None,
    stats: NetworkStats | Sequence[NetworkStats] | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    **params: Any,
) -> SearchResult:
    """Evolve proxies on a bench or a list of benches; `emq search`. `params` are `ProxySearch`
    parameters (generations, population, workers, metric, space, dps, max_evaluations,
    aggregate, aggregate_k, parsimony, ...);
    `seed`, `out` and `resume` are its `random_state`, `out_dir` and `warm_start`."""
    est = ProxySearch(random_state=seed, out_dir=out, warm_start=resume)
    est.set_params(**params)
    return est.fit(bench, model=model, stats=stats).result_


__all__ = ["ProxySearch", "SearchResult", "search"]
