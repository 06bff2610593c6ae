"""Executors: run evaluation tasks serially or in a local process pool.

The builder only calls `executor.imap(fn, tasks)` and consumes results as they finish,
so a distributed engine (Ray, Dask) plugs in by implementing the same one method.
Each worker process builds its PTQ engine once (`engine_for`) and reuses it, with its
per-(layer, bits) cache of quantized weights, for every task it receives.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.utils.data import Subset, TensorDataset

from emq.data import DataSplits
from emq.errors import EmqError
from emq.quant import PTQEngine, PTQSettings
from emq.target import Target, resolve_target


@dataclass(frozen=True)
class EvalSpec:
    """Everything a worker needs to rebuild the same engine (picklable, hashable)."""

    model: str
    data: str | None
    weights: str | None
    input_size: int | None
    num_classes: int | None
    settings: PTQSettings
    test_limit: int | None = None  # evaluate on the first N test images only (quick benches)

    def with_calib_seed(self, seed: int) -> EvalSpec:
        return replace(self, settings=replace(self.settings, calib_seed=seed))


_ENGINES: dict[EvalSpec, PTQEngine] = {}
_TARGETS: dict[tuple, Target] = {}


def limit_test(data: DataSplits, n: int) -> DataSplits:
    """The same data with only the first n test images (its fingerprint says so)."""
    if n < 1:
        raise EmqError(f"--test-limit {n}: must be >= 1")
    tensors = getattr(data.test, "tensors", None)
    test = TensorDataset(*(t[:n] for t in tensors)) if tensors is not None else Subset(data.test, range(min(n, len(data.test))))
    return replace(data, test=test, fingerprint=f"{data.fingerprint}|test[:{n}]")


def target_for(spec: EvalSpec) -> Target:
    """This process's model, layer map and data for `spec` (shared by all its settings)."""
    key = (spec.model, spec.data, spec.weights, spec.input_size, spec.num_classes, spec.test_limit)
    target = _TARGETS.get(key)
    if target is None:
        target = resolve_target(
            spec.model, spec.data, weights=Path(spec.weights) if spec.weights else None, num_classes=spec.num_classes, input_size=spec.input_size
        )
        if spec.test_limit is not None:
            target = replace(target, data=limit_test(target.require_data(), spec.test_limit))
        _TARGETS[key] = target
    return target


def engine_for(spec: EvalSpec) -> PTQEngine:
    """This process's engine for `spec`, built on first use."""
    engine = _ENGINES.get(spec)
    if engine is None:
        target = target_for(spec)
        engine = PTQEngine(target.model, target.layer_map, target.require_data(), spec.settings)
        _ENGINES[spec] = engine
    return engine


def evaluate_task(task: tuple[EvalSpec, str]) -> dict[str, Any]:
    """PTQ-evaluate one configuration (canonical text); returns its metrics."""
    spec, config = task
    res = engine_for(spec).evaluate([int(b) for b in config.split(",")])
    return {"config": config, **res.to_json()}


class Executor(Protocol):
    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """Yield fn(task) for every task, in any order, as each finishes."""
        ...  # pragma: no cover

    def close(self) -> None: ...  # pragma: no cover


class SerialExecutor:
    """Runs tasks one after another in this process."""

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        for task in tasks:
            yield fn(task)

    def close(self) -> None:
        return None


def _worker_init() -> None:
    # one intra-op thread per worker: W workers share the cores instead of oversubscribing them
    torch.set_num_threads(1)


class ProcessExecutor:
    """A local pool of `workers` spawned processes (spawn: safe with torch's thread pools)."""

    def __init__(self, workers: int) -> None:
        self.pool = mp.get_context("spawn").Pool(workers, initializer=_worker_init)

    def imap(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        yield from self.pool.imap_unordered(fn, tasks, chunksize=1)

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def make_executor(workers: int) -> Executor:
    """Serial for one worker, a process pool for more."""
    return SerialExecutor() if workers <= 1 else ProcessExecutor(workers)
