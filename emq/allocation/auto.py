"""`--proxy auto --evaluations K`: spend up to K PTQ evaluations on the user's network and use
what the cost-quality frontier (emq.frontier, docs/figures.md) recommends for that budget.

The rule is fixed, read off the frontier of the 13 zoo networks (never off the user's network)
by `emq.frontier.switch_budget`: below `FIT_FROM` evaluations the measured per-slot
sensitivity (`layer-kl`: L x B single-slot runs on calibration images, no configuration
measured) has the higher expected held-out rho; from `FIT_FROM` on, ridge on one-hot
(slot, bit) features fitted on K measured configurations has. Both are separable tables, so
the ILP allocates with them under any budget. The K configurations are drawn uniformly
(seeded) and measured by `emq bench build` into a bench file the user can keep; an
interrupted run resumes from it without re-evaluating what it holds. Ridge is fitted on the
fit pool of test images, as on the frontier, so the report pool stays free to judge it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmqError
from ..fileio import cache_root
from ..hashing import state_dict_digest
from ..proxy import ProxyContext, SeparableProxy
from ..specs import ParameterError

log = logging.getLogger(__name__)

# switch_budget on benchmarks/results/frontier_zoo (tests/test_auto.py checks it): the mean gain of
# ridge over layer-kl across the 13 networks is -0.008 at 100 evaluations and +0.027 at 200
FIT_FROM = 200
NAME = "auto"


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
        fit_from: int = FIT_FROM,
    ) -> None:
        """`fit_from`: the budget from which ridge is used (the frontier's rule; a study that
        leaves a network out passes the rule recomputed without it)."""
        for name, value in (("evaluations", evaluations), ("fit_from", fit_from)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ParameterError(name, value, "give a non-negative integer number of PTQ evaluations")
        self.evaluations, self.seed, self.fit_from = int(evaluations), int(seed), int(fit_from)
        self.measurements = Path(measurements) if measurements is not None else None
        self.strategy = "layer-kl" if self.evaluations < self.fit_from else "ridge-onehot"
        self.description = f"auto with {self.evaluations} evaluations: {self.strategy}"
        self._setup: dict[str, Any] = {}

    def table(self, ctx: ProxyContext) -> np.ndarray:
        t0 = time.perf_counter()
        if self.strategy == "layer-kl":
            from ..sensitivity import context_sensitivity

            sens = context_sensitivity(ctx)
            self._setup = {
                "strategy": "layer-kl",
                "why": f"{self.evaluations} < {self.fit_from} evaluations: below that budget the measured sensitivity "
                "has the higher expected rho on networks without a bench (the zoo's frontier)",
                "evaluations": 0,
                "single_slot_evaluations": sens.meta.get("single_slot_evaluations"),
                "ptq_equivalents": sens.meta.get("ptq_equivalents"),
                "seconds": time.perf_counter() - t0,
            }
            return -sens.table("kl")
        configs, values, path, spent = self._measure(ctx)
        from ..supervised import OneHotRidge

        model = OneHotRidge(ctx.bits).fit(configs, values)
        slots = ctx.target.layer_map.num_slots
        coef = model.model_.coef_.reshape(len(ctx.bits), slots).T  # features are [bit][slot] blocks
        self._setup = {
            "strategy": "ridge-onehot",
            "why": f"{self.evaluations} >= {self.fit_from} evaluations: from that budget on a model fitted on the "
            "network's own measurements has the higher expected rho (the zoo's frontier)",
            "evaluations": spent,
            "measurements": str(path),
            "alpha": model.alpha_,
            "seconds": time.perf_counter() - t0,
        }
        return coef + model.model_.intercept_ / slots

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
