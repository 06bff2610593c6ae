"""`--proxy auto --evaluations K`: spend up to K PTQ evaluations on the user's network and use
what the cost-quality frontier (emq.frontier, docs/figures.md) recommends for that budget.

The rule (`RULE`) is fixed, read off the frontier of the 13 zoo networks (never off the user's
network) by `emq.frontier.recommend`: at each budget, the method among its default candidates with
the highest held-out rho averaged over those networks (`layer-kl-mid` ranks higher but is not a
candidate: its allocations failed the real-PTQ check, benchmarks/results/auto_acceptance_mid.json).
Below 50 evaluations that is the measured per-slot sensitivity
(`layer-kl`: L x B single-slot runs on calibration images, no configuration measured); from 50,
ridge on the proxies' scores (every faithful statistics-only separable proxy and `layer-kl`)
fitted on K measured configurations; from 200, ridge on one-hot (slot, bit) features. All are
separable tables, so the ILP allocates with them under any budget. The K configurations are
drawn uniformly (seeded) and measured by `emq bench build` into a bench file the user can
keep; an interrupted run resumes from it without re-evaluating what it holds. The models are
fitted on the fit pool of test images, as on the frontier, so the report pool stays free to
judge them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmqError
from ..fileio import cache_root
from ..hashing import state_dict_digest
from ..proxy import ProxyContext, SeparableProxy
from ..specs import ParameterError

log = logging.getLogger(__name__)

STRATEGIES = ("layer-kl", "layer-kl-mid", "ridge-proxies", "ridge-onehot")
MEASURED = ("layer-kl", "layer-kl-mid")  # strategies that measure no configuration: a measured sensitivity
# emq.frontier.recommend on benchmarks/results/frontier_zoo (tests/test_auto.py checks it)
RULE: tuple[tuple[int, str], ...] = ((0, "layer-kl"), (50, "ridge-proxies"), (200, "ridge-onehot"))
NAME = "auto"


def feature_proxies() -> list[str]:
    """The features of ridge-proxies, here and on the frontier: every faithful statistics-only
    separable proxy of the registry, and the measured sensitivity."""
    from ..baselines.registry import PROXIES

    return [n for n, c in PROXIES.items() if c.faithful and c.separable and not c.needs_data] + ["layer-kl"]


def check_rule(rule: Sequence[Sequence[Any]]) -> tuple[tuple[int, str], ...]:
    """A rule as steps (from K, strategy): starting at 0, increasing, known strategies."""
    try:
        steps = tuple((int(k), str(m)) for k, m in rule)
    except (TypeError, ValueError) as e:
        raise ParameterError("rule", rule, "give (evaluations, strategy) steps") from e
    ks = [k for k, _ in steps]
    if not steps or ks[0] != 0 or ks != sorted(set(ks)) or any(m not in STRATEGIES for _, m in steps):
        raise ParameterError(
            "rule", rule, f"give increasing steps from 0 evaluations, each to one of {', '.join(STRATEGIES)}"
        )
    return steps


class AutoProxy(SeparableProxy):
    """The frontier's recommendation for a budget of `evaluations` PTQ evaluations."""

    name = NAME
    orientation = 1  # the table is a predicted oriented metric: higher = better
    cost = "up to K PTQ evaluations on the network (K = --evaluations), or the measured sensitivity"
    needs_data = True

    def __init__(
        self,
        evaluations: int = 0,
        measurements: str | Path | None = None,
        seed: int = 0,
        *,
        rule: Sequence[Sequence[Any]] = RULE,
    ) -> None:
        """`rule`: (from K, strategy) steps (the frontier's; a study that leaves a network out
        passes the rule recomputed without it)."""
        if isinstance(evaluations, bool) or not isinstance(evaluations, (int, np.integer)) or evaluations < 0:
            raise ParameterError("evaluations", evaluations, "give a non-negative integer number of PTQ evaluations")
        self.evaluations, self.seed, self.rule = int(evaluations), int(seed), check_rule(rule)
        self.measurements = Path(measurements) if measurements is not None else None
        self.strategy = [m for k, m in self.rule if k <= self.evaluations][-1]
        self.description = f"auto with {self.evaluations} evaluations: {self.strategy}"
        self._setup: dict[str, Any] = {}

    def _why(self) -> str:
        steps = ", ".join(f"{m} from {k}" for k, m in self.rule)
        return (
            f"with {self.evaluations} evaluations {self.strategy} has the highest expected held-out rho on networks "
            f"without a bench (the zoo's frontier: {steps} evaluations)"
        )

    def table(self, ctx: ProxyContext) -> np.ndarray:
        t0 = time.perf_counter()
        if self.strategy in MEASURED:
            from ..sensitivity import context_sensitivity, in_context

            sens = context_sensitivity(ctx, in_context(ctx.bits) if self.strategy == "layer-kl-mid" else None)
            self._setup = {
                "strategy": self.strategy,
                "why": self._why(),
                "evaluations": 0,
                "single_slot_evaluations": sens.meta.get("single_slot_evaluations"),
                "ptq_equivalents": sens.meta.get("ptq_equivalents"),
                "seconds": time.perf_counter() - t0,
            }
            return -sens.table("kl")
        configs, values, path, spent = self._measure(ctx)
        if self.strategy == "ridge-onehot":
            table, alpha, extra = self._onehot(ctx, configs, values)
        else:
            table, alpha, extra = self._on_proxies(ctx, configs, values)
        self._setup = {
            "strategy": self.strategy,
            "why": self._why(),
            "evaluations": spent,
            "measurements": str(path),
            "alpha": alpha,
            **extra,
            "seconds": time.perf_counter() - t0,
        }
        return table

    @staticmethod
    def _onehot(ctx: ProxyContext, configs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float, dict]:
        from ..supervised import OneHotRidge

        model = OneHotRidge(ctx.bits).fit(configs, values)
        return model.table(), model.alpha_, {}

    @staticmethod
    def _on_proxies(ctx: ProxyContext, configs: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float, dict]:
        """Ridge on the standardized oriented scores of the feature proxies; a linear map of
        separable scores, so its table is the weighted sum of their tables."""
        from ..baselines import get_proxy
        from ..proxy import table_scores
        from ..supervised import ScoreRidge

        names = feature_proxies()
        tables = []
        for name in names:
            proxy = get_proxy(name)
            tables.append(proxy.orientation * np.asarray(proxy.table(ctx), dtype=np.float64))
        idx = ctx.bit_index(configs)
        model = ScoreRidge().fit(np.stack([table_scores(t, idx) for t in tables], axis=1), values)
        w, b = model.weights()
        table = sum(wi * t for wi, t in zip(w, tables, strict=True)) + b / ctx.target.layer_map.num_slots
        return table, model.alpha_, {"features": dict(zip(names, map(float, w), strict=True))}

    def setup_cost(self, ctx: ProxyContext) -> dict[str, Any] | None:
        return dict(self._setup) or None

    def _store(self, ctx: ProxyContext) -> Path:
        if self.measurements is not None:
            return self.measurements
        target = ctx.target
        key = {
            "weights": state_dict_digest(target.model),
            "data": target.require_data().fingerprint,
            "bits": list(ctx.bits),
            "ptq": (ctx.settings.to_json() if ctx.settings is not None else None),
            "evaluations": self.evaluations,
            "seed": self.seed,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        return cache_root() / "auto" / f"{target.name}-{digest}.sqlite"

    def _measure(self, ctx: ProxyContext) -> tuple[np.ndarray, np.ndarray, Path, int]:
        """K uniformly drawn configurations, measured (or resumed) into a bench file: configs and KL."""
        from ..bench import Bench, bench_build
        from ..specs import oriented

        target = ctx.target
        space = len(ctx.bits) ** target.layer_map.num_slots
        if self.evaluations > space:
            raise ParameterError(
                "evaluations", self.evaluations, f"the configuration space holds only {space} configurations"
            )
        path = self._store(ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        before = len(Bench.open(path)) if path.is_file() else 0
        log.info("auto: measuring %d configurations into %s (%d stored)", self.evaluations, path, before)
        bench_build(
            path,
            model=target.model,
            data=target.require_data(),
            configs=self.evaluations,
            seed=self.seed,
            resume=path.is_file(),
            bits=ctx.bits,
            sampler="uniform",
            settings=ctx.settings,
            noise_samples=0,
            progress=False,
            name=target.name,
        )
        bench = Bench.open(path)
        configs, metrics = bench.arrays("all", metrics=["kl"], pool="fit" if bench.pools is not None else "all")
        values = oriented("kl", metrics["kl"])
        keep = np.isfinite(values)
        if keep.sum() < 3:
            raise EmqError(f"{path}: fewer than 3 measured configurations have a KL value")
        return configs[keep], values[keep], path, len(bench) - before
