"""Build a bench: plan configurations, PTQ-evaluate them, store records, measure reliability.

The plan is a pure function of the build arguments and is stored in the file before any
evaluation, so a restarted build (`resume=True`) evaluates exactly the configurations that
have no record yet. Records, each with its per-image outcomes, are written one transaction
each as results arrive. Every configuration is calibrated on one half of the calibration
sources; a sample is re-evaluated on the other half (an independent repeat) to measure the
calibration noise, and the test images are split by source into a fit and a report pool.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from emq._version import __version__ as emq_version
from emq.data import DataSplits
from emq.errors import EmqError
from emq.executors import Executor, TaskFailure, check_workers, executor_for
from emq.hashing import state_dict_digest, tensor_digest
from emq.quant import PTQSettings
from emq.specs import DEFAULT_BITS, METRIC_ORIENTATION, ParameterError, config_text

from . import store
from .evaluation import EvalSpec, engine_for, evaluate_config, target_for
from .lock import claimed
from .outcomes import restrict
from .pools import TestPools
from .query import Bench, bench_info
from .reliability import default_metric, reliability, sample_for_retest
from .sampling import plan_configs
from .space import ConfigSpace

log = logging.getLogger(__name__)

# metadata keys that must match for a resume to continue the same build
BUILD_KEYS = (
    "model",
    "weights_hash",
    "data_fingerprint",
    "ptq_settings",
    "space",
    "seed",
    "sampler",
    "configs_requested",
    "user_configs",
    "noise_samples",
)


def _split_digests(engine: Any) -> dict[str, str]:
    test = engine.data.test
    tensors = getattr(test, "tensors", None)
    return {
        "calibration": tensor_digest(engine.calib),
        "test": tensor_digest(tensors) if tensors is not None else f"{type(test).__name__}:{len(test)}",
    }


def _test_pools(engine: Any) -> TestPools:
    """The fit / report split of this engine's test images (sources from the data, else one per image)."""
    labels = torch.cat([y for _, y in engine.data.test_batches(engine.settings.batch_size)]).numpy()
    sources = engine.data.test_sources
    return TestPools.split(sources.numpy() if sources is not None else np.arange(labels.shape[0]), labels)


def _build_meta(
    spec: EvalSpec,
    space: ConfigSpace,
    *,
    seed: int,
    sampler: str,
    configs: int,
    user: list[str],
    noise_samples: int,
) -> dict[str, Any]:
    engine = engine_for(spec)
    lm = engine.layer_map
    fp = engine.evaluate_fp()
    return {
        "schema_version": store.SCHEMA_VERSION,
        "kind": "ptq-build",
        "model": spec.model_name,
        "user_module": not isinstance(spec.model, str),
        "weights_hash": state_dict_digest(target_for(spec).model),
        "data": spec.data_name,
        "data_fingerprint": engine.data.fingerprint,
        "split_hashes": _split_digests(engine),
        "test_limit": spec.test_limit,
        "ptq_settings": spec.settings.to_json(),
        "space": space.to_json(),
        "slots": [{"name": s.name, "modules": list(s.modules), "params": s.params, "macs": s.macs} for s in lm.slots],
        "allowed_bits": list(space.bits),
        "act_bits": space.act_bits,
        "fp_size_bytes": lm.fp_size_bytes,
        "fp_reference": {"top1": fp.top1, "loss": fp.loss},
        "seed": seed,
        "sampler": sampler,
        "configs_requested": configs,
        "user_configs": user,
        "noise_samples": noise_samples,
        "metric_orientation": METRIC_ORIENTATION,
        "test_pools": _test_pools(engine).to_json(),
        "reliability": None,
        "default_metric": "top1",
        "versions": {"emq": emq_version, "torch": torch.__version__, "python": platform.python_version()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _comparable(meta: Mapping[str, Any], key: str) -> Any:
    """meta[key], with stored PTQ settings completed by the defaults of fields added since
    (e.g. weight_quantizer), so a bench built before such a field can still be resumed."""
    value = meta.get(key)
    if key == "ptq_settings" and isinstance(value, dict):
        try:
            return PTQSettings(**value).to_json()
        except TypeError:
            return value
    return value


def _check_resume(path: Path, stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> None:
    if int(stored.get("schema_version", 1)) != store.SCHEMA_VERSION:
        raise EmqError(
            f"{path}: bench format {stored.get('schema_version', 1)} cannot be resumed by this emq "
            f"(format {store.SCHEMA_VERSION}); build into a new file"
        )
    if stored.get("kind") != "ptq-build":
        raise EmqError(f"{path}: not a PTQ-built bench (kind {stored.get('kind')!r}); it cannot be resumed")
    diff = [k for k in BUILD_KEYS if _comparable(stored, k) != _comparable(wanted, k)]
    if diff:
        raise EmqError(
            f"{path}: was built with different {', '.join(diff)}; resume with the original arguments or choose "
            "another --out"
        )


def _prepare_rounding(spec: EvalSpec, bits: Sequence[int], progress: bool) -> dict[str, Any]:
    """Round every layer at every allowed bit-width once, in this process, before the workers
    start (they then load it from the cache instead of each computing it)."""
    engine = engine_for(spec)
    seconds = engine.prepare_rounding(bits, progress)
    return {
        **engine.rounding.describe(),
        "seconds": round(seconds, 2),
        "computed": engine.rounding.misses,
        "from_cache": engine.rounding.hits,
    }


def _run(
    executor: Executor,
    spec: EvalSpec,
    todo: list[tuple[int, str, str]],
    *,
    desc: str,
    progress: bool,
    write: Callable[[dict, int, str], None],
    fail: Callable[[TaskFailure], None],
) -> int:
    """Evaluate `todo` (idx, config, source) and hand each result to `write` as it arrives, each
    configuration that kept failing to `fail`; returns how many failed."""
    info = {cfg: (idx, src) for idx, cfg, src in todo}
    failed = 0
    with tqdm(total=len(todo), desc=desc, unit="cfg", disable=not progress or not todo) as bar:
        for res in executor.map(
            evaluate_config, [cfg for _, cfg, _ in todo], context=spec, ordered=False, failures=True
        ):
            if isinstance(res, TaskFailure):
                log.warning(
                    "%s: configuration %s failed after %d attempt(s): %s", desc, res.task, res.attempts, res.error
                )
                fail(res)
                failed += 1
                bar.set_postfix(failed=failed)
            else:
                write(res, *info[res["config"]])
            bar.update(1)
    return failed


@claimed  # creates `out` atomically and locks it before any model work
def bench_build(
    out: Path | str,
    *,
    model: str | nn.Module = "default",
    configs: int = 1000,
    seed: int = 0,
    workers: int = 1,
    resume: bool = False,
    bits: Sequence[int] = DEFAULT_BITS,
    pinned: Mapping[int | str, int] | None = None,
    sampler: str = "stratified",
    user_configs: Sequence[Sequence[int] | str] = (),
    user_labels: Sequence[str] | None = None,
    data: str | DataSplits | None = None,
    weights: Path | str | None = None,
    input_size: int | None = None,
    num_classes: int | None = None,
    settings: PTQSettings | None = None,
    noise_samples: int = 100,
    test_limit: int | None = None,
    progress: bool = True,
    executor: Executor | str | None = None,
    name: str | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Build (or resume) a bench file; returns `bench_info` of the finished file.

    `configs` is the total number of configurations, the uniform ones and the user's
    included. Each is calibrated on half `settings.calib_half` (default 0) of the calibration
    sources; the calibration test-retest re-evaluates `noise_samples` of them on the other
    half. `test_limit` evaluates on the first N test images only (smoke tests).

    `model` is a name or your own nn.Module (labelled `name`, default its class name) and
    `data` a `--data` string or a DataSplits; a user module needs its data. Reconstruction
    rounding (GPTQ, AdaRound) is prepared once here, before any configuration, and cached.
    `device` is where every worker runs the network (emq.device): recorded in the build's log
    entry, not part of the bench's identity, so a build may be resumed on another device.
    `user_labels` name the user's configurations in errors (e.g. a file and its line numbers).
    """
    out = Path(out)
    if not isinstance(model, (str, nn.Module)):
        raise ParameterError(
            "model", type(model).__name__, "give a model name ('default', 'resnet18', ...) or an nn.Module"
        )
    if isinstance(model, nn.Module) and data is None:
        raise ParameterError("data", None, "a user module needs its data: pass data= a DataSplits (or a --data string)")
    if data is not None and not isinstance(data, (str, DataSplits)):
        raise ParameterError(
            "data",
            type(data).__name__,
            "give a DataSplits or a --data string ('default', 'fashion-mnist', a directory)",
        )
    check_workers(workers)  # before any model work
    if out.exists():  # a file that is no bench, or holds schema objects emq never creates, is refused before any work
        store.connect(out, readonly=True).close()
    settings = settings or PTQSettings()
    if settings.calib_half is None:
        settings = replace(settings, calib_half=0)
    spec = EvalSpec(
        model=model,
        data=data,
        weights=str(weights) if weights else None,
        input_size=input_size,
        num_classes=num_classes,
        settings=settings,
        test_limit=test_limit,
        name=name,
        device=str(device),
    )
    lm = engine_for(spec).layer_map
    space = ConfigSpace.for_layer_map(lm, bits, pinned, settings.act_bits)
    labels = (
        list(user_labels)
        if user_labels is not None
        else [f"user configuration #{i + 1}" for i in range(len(user_configs))]
    )
    if len(labels) != len(user_configs):
        raise ParameterError("user_labels", len(labels), f"give one label per user configuration ({len(user_configs)})")
    user = [config_text(space.validate(c, what)) for c, what in zip(user_configs, labels, strict=True)]
    plan = [
        (config_text(c), src)
        for c, src in plan_configs(
            space,
            n=configs,
            seed=seed,
            params=lm.params,
            sampler=sampler,
            user=[tuple(map(int, u.split(","))) for u in user],
        )
    ]
    wanted = _build_meta(
        spec, space, seed=seed, sampler=sampler, configs=configs, user=user, noise_samples=noise_samples
    )
    with closing(store.connect(out)) as con:
        stored = store.init_bench(con, wanted, plan)
        _check_resume(out, stored, json.loads(json.dumps(wanted)))
        stored_plan = store.read_plan(con)
        done = store.done_configs(con)
        todo = [row for row in stored_plan if row[1] not in done]
        log.info("%s: %d planned, %d done, %d to evaluate", out, len(stored_plan), len(done), len(todo))

        def write_record(res: dict, idx: int, source: str) -> None:
            store.insert_record(con, {**res, "idx": idx, "seed": settings.calib_seed, "source": source})

        noise_spec = replace(
            spec, settings=replace(settings, calib_seed=settings.calib_seed + 1, calib_half=1 - settings.calib_half)
        )
        noise_cfgs = sample_for_retest([c for _, c, _ in stored_plan], noise_samples, seed)
        done_rep = store.done_configs(con, "repeats")
        todo_rep = [(-1, c, "") for c in noise_cfgs if c not in done_rep]

        pools = stored.get("test_pools")
        report = TestPools.from_json(pools).mask("report") if pools else None  # all a retest's outcomes serve

        def write_repeat(res: dict, idx: int, source: str) -> None:
            if report is not None and res.get("outcomes") is not None:
                res = {**res, "outcomes": restrict(res["outcomes"], report, f"{out}: retest {res['config']}")}
            store.insert_repeat(con, res["config"], res, noise_spec.settings.calib_seed)

        # only a stage with evaluations to run prepares (or loads) its rounding;
        # its record replaces that stage's earlier one
        rounding = {
            stage: _prepare_rounding(sp, space.bits, progress)
            for stage, sp, work in (("build", spec, todo), ("retest", noise_spec, todo_rep))
            if work
        }

        def fail(stage: str) -> Callable[[TaskFailure], None]:
            return lambda f: store.insert_failure(con, f.task, stage, error=f.error, attempts=f.attempts)

        with executor_for(executor, workers) as pool:
            t0 = time.perf_counter()
            failed = _run(pool, spec, todo, desc="bench", progress=progress, write=write_record, fail=fail("build"))
            failed += _run(
                pool,
                noise_spec,
                todo_rep,
                desc="calibration retest",
                progress=progress,
                write=write_repeat,
                fail=fail("retest"),
            )
            elapsed = time.perf_counter() - t0
            used = {"workers": pool.workers, "executor": getattr(pool, "name", type(pool).__name__)}
        failures = store.read_failures(con)
        if failures and not store.done_configs(con):  # nothing to keep: a new file is removed, so say so
            raise _failed(out, failures, stored=False)
        bench = Bench.from_connection(out, con)
        rel = reliability(bench)
        entry = (
            {
                "evaluated": len(todo) + len(todo_rep) - failed,
                "failed": failed,
                "seconds": round(elapsed, 2),
                **used,
                "device": spec.device,
            }
            if todo or todo_rep
            else None
        )
        items = {
            "reliability": rel,
            "retest_settings": noise_spec.settings.to_json(),
            "retest_configs": len(bench.repeats),
            "default_metric": default_metric(rel),
        }
        if rounding:  # the rounding that served this run's evaluations (a no-op resume changes nothing)
            items["rounding"] = {**(stored.get("rounding") or {}), **rounding}
        store.write_meta(con, items, log_entry=entry)
    store.compact(out)
    if failures:
        raise _failed(out, failures, stored=True)
    return bench_info(out)


def _failed(out: Path, failures: list[dict[str, Any]], stored: bool) -> EmqError:
    """The error a build ends with when evaluations kept failing, naming the first of them."""
    first = failures[0]
    example = f"e.g. {first['config']} ({first['stage']}, {first['attempts']} attempt(s)): {first['error']}"
    if not stored:
        return EmqError(f"{out}: every configuration failed, nothing was stored; {example}")
    return EmqError(
        f"{out}: {len(failures)} evaluation(s) failed and are recorded with their errors (`emq bench info {out}` "
        f"lists them), {example}; the rest is stored: fix the cause and run the same command with --resume to "
        "evaluate them"
    )
