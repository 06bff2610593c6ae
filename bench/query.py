"""Query a bench: the EMQAPI interface of MQ-Bench-101 plus array access, filters and export.

A bench file is small (thousands of rows), so `Bench.open` reads it whole into numpy
arrays; every query afterwards is in memory. Positional indices 0..len-1 follow the
records' build order, as EMQAPI's indices do.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Iterator, Sequence
from contextlib import closing
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from emq.errors import EmqError
from emq.fileio import atomic_write_text
from emq.proxy import linear_cost
from emq.specs import METRICS, ParameterError

from . import store
from .bundles import BUNDLES, build_hint, resolve_bench_path
from .outcomes import Outcomes, decode, max_blob_size
from .pools import TestPools
from .space import ConfigSpace, config_text, is_heldout, parse_config

SPLITS = ("all", "search", "heldout")
ARRAY_METRICS = ("top1", "loss", "kl", "size_bytes", "bitops", "seconds")


class Bench:
    """A bench in memory: configurations [N, S], metrics, metadata, EMQAPI queries."""

    def __init__(
        self,
        path: Path,
        meta: dict[str, Any],
        rows: list[tuple],
        *,
        outcomes: dict[str, bytes | None] | None = None,
        repeats: dict[str, dict[str, float | None]] | None = None,
        repeat_outcomes: dict[str, bytes | None] | None = None,
    ) -> None:
        self.path = path
        self.meta = meta
        self._blobs = outcomes or {}
        self.repeats = repeats or {}
        self._repeat_blobs = repeat_outcomes or {}
        self._decoded: dict[tuple, dict[str, np.ndarray]] = {}
        self._pool_metrics: dict[tuple[str, str], np.ndarray] = {}
        if not rows:
            raise EmqError(
                f"bench {path}: has no records (an empty or unfinished build; "
                "resume it with `emq bench build ... --resume`)"
            )
        cols = list(zip(*rows, strict=True))
        get = {c: cols[i] for i, c in enumerate(store.RECORD_COLUMNS)}
        self.config_texts: list[str] = list(get["config"])
        self.configs = _configs(path, get["idx"], self.config_texts)
        self.metrics = {m: _column(path, m, get["idx"], get[m]) for m in ARRAY_METRICS}
        self.sources: list[str] = list(get["source"])
        self.heldout = np.array([is_heldout(c) for c in self.config_texts], dtype=bool)
        self._index = {tuple(int(b) for b in c.split(",")): i for i, c in enumerate(self.config_texts)}
        self._index_by_text = {c: i for i, c in enumerate(self.config_texts)}
        self.failures: list[dict[str, Any]] = []  # configurations that kept failing in the build (store.read_failures)

    @classmethod
    def open(cls, path: str | Path = "default") -> Bench:
        """Open a bench file, or the shipped one with 'default'."""
        p = resolve_bench_path(path)
        with closing(store.connect(p, readonly=True)) as con:
            return cls.from_connection(p, con)

    @classmethod
    def from_connection(cls, path: Path, con: Any) -> Bench:
        """The bench behind an open connection (the builder reads its own file this way)."""
        meta = store.read_meta(con, path)
        if "space" not in meta:
            raise EmqError(f"bench {path}: has no metadata (not a bench file, or its build never started)")
        version = int(meta.get("schema_version", 1))
        if version != store.SCHEMA_VERSION:
            raise EmqError(
                f"bench {path}: bench format {version}, this emq reads format {store.SCHEMA_VERSION} (per-image "
                "outcomes and test pools); rebuild it with `emq bench build` and the arguments in its build_log, "
                "or use an emq version of its format"
            )
        pools = meta.get("test_pools")
        limit = max_blob_size(len(pools["sources"])) if isinstance(pools, dict) and "sources" in pools else None
        bench = cls(
            path,
            meta,
            store.read_records(con),
            outcomes=store.read_outcomes(con, max_bytes=limit, path=path),
            repeats=store.read_repeats(con),
            repeat_outcomes=store.read_outcomes(con, "repeats", max_bytes=limit, path=path),
        )
        bench.failures = store.read_failures(con)
        return bench

    # -- description ---------------------------------------------------------------
    @property
    def bits(self) -> tuple[int, ...]:
        return tuple(self.meta["space"]["bits"])

    @property
    def space(self) -> ConfigSpace:
        return ConfigSpace.from_json(self.meta["space"])

    @property
    def slot_names(self) -> list[str]:
        return list(self.meta["space"]["slot_names"])

    @property
    def reliability(self) -> dict[str, dict[str, Any]]:
        """Per metric on the report pool: split-half, calibration test-retest, combined, ceiling
        (stored at build time; computed from the records for a bench built without it)."""
        stored = self.meta.get("reliability")
        if stored is None:
            from .reliability import reliability

            stored = self.meta["reliability"] = reliability(self)
        return stored

    @property
    def ceiling(self) -> dict[str, float | None]:
        """{metric: sqrt(combined reliability)}: about the best rho a perfect predictor reaches."""
        return {m: (r or {}).get("ceiling") for m, r in self.reliability.items()}

    @property
    def default_metric(self) -> str:
        return self.meta.get("default_metric", "top1")

    @cached_property
    def pools(self) -> TestPools | None:
        """The fit / report split of the test images; None for benches without per-image outcomes."""
        obj = self.meta.get("test_pools")
        return TestPools.from_json(obj) if obj and self.has_outcomes else None

    @cached_property
    def has_outcomes(self) -> bool:
        return bool(self._blobs) and all(self._blobs.get(c) is not None for c in self.config_texts)

    def has_repeat_outcomes(self, configs: Sequence[str]) -> bool:
        return all(self._repeat_blobs.get(c) is not None for c in configs)

    def outcomes(self, config: str, repeat: bool = False) -> Outcomes:
        """Per-image outcomes of one configuration (of its calibration repeat with `repeat`)."""
        blob = (self._repeat_blobs if repeat else self._blobs).get(config)
        if blob is None:
            raise EmqError(
                f"bench {self.path}: no per-image outcomes "
                f"for {'the repeat of ' if repeat else ''}configuration {config}"
            )
        return decode(blob, f"bench {self.path}, configuration {config}")

    def check_outcomes(self) -> None:
        """Decode every stored per-image blob (records and repeats), so a damaged one is refused
        here, as `emq score` would refuse it, instead of being summarised."""
        if self.pools is None:
            return
        for repeat, blobs in ((False, self._blobs), (True, self._repeat_blobs)):
            for config, blob in blobs.items():
                if blob is not None and len(self.outcomes(config, repeat)) != self.pools.n_images:
                    raise EmqError(
                        f"bench {self.path}, configuration {config}: per-image outcomes for "
                        f"{len(self.outcomes(config, repeat))} images, the bench has {self.pools.n_images} test images"
                    )

    def per_image(self, metric: str, configs: Sequence[str] | None = None, repeat: bool = False) -> np.ndarray:
        """[N, images] per-image values of a metric (top1 as 0/100) for records (or repeats).
        Each blob is decoded once, for all three metrics."""
        texts = tuple(self.config_texts if configs is None else configs)
        key = (texts, repeat)
        cached = self._decoded.get(key)
        if cached is None:
            if self.pools is None:
                raise EmqError(
                    f"bench {self.path}: has no per-image outcomes, so test pools cannot be formed (rebuild it "
                    "with `emq bench build`)"
                )
            n = self.pools.n_images
            cached = {m: np.empty((len(texts), n), dtype=np.float32) for m in METRICS}
            for i, c in enumerate(texts):
                out = self.outcomes(c, repeat)
                if len(out) != n:
                    raise EmqError(
                        f"bench {self.path}, configuration {c}: {len(out)} per-image outcomes for {n} test images"
                    )
                for m in METRICS:
                    cached[m][i] = out.metric(m)
            self._decoded[key] = cached
        return cached[metric]

    def source_table(
        self, metric: str, pool: str = "all", configs: Sequence[str] | None = None, repeat: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per-configuration per-source sums S [N, K] of a metric over a test pool, and the
        per-source image counts c [K]: the pool's metric is S.sum(1) / c.sum()."""
        values = self.per_image(metric, configs, repeat)
        idx, pos = self.pools.source_index(pool)  # type: ignore[union-attr]  # per_image checked pools
        k = int(pos.max()) + 1
        onehot = np.zeros((idx.size, k))
        onehot[np.arange(idx.size), pos] = 1.0
        return values[:, idx].astype(np.float64) @ onehot, onehot.sum(0)

    def pool_metric(self, metric: str, pool: str = "all") -> np.ndarray:
        """A metric of every record measured on one test pool ('all' = the stored value)."""
        if pool == "all" or metric not in METRICS:
            return self.metrics[metric]
        if (metric, pool) not in self._pool_metrics:
            sums, counts = self.source_table(metric, pool)
            self._pool_metrics[metric, pool] = sums.sum(1) / counts.sum()
        return self._pool_metrics[metric, pool]

    # -- arrays ----------------------------------------------------------------------
    def mask(
        self,
        split: str = "all",
        *,
        max_size_bytes: float | None = None,
        min_size_bytes: float | None = None,
        max_bitops: float | None = None,
        min_bitops: float | None = None,
    ) -> np.ndarray:
        """Boolean row mask for a split and budget filters."""
        if split not in SPLITS:
            raise EmqError(f"split {split!r}: use one of {', '.join(SPLITS)}")
        keep = np.ones(len(self), dtype=bool)
        if split == "search":
            keep &= ~self.heldout
        elif split == "heldout":
            keep &= self.heldout
        size, ops = self.metrics["size_bytes"], self.metrics["bitops"]
        for arr, lo, hi in ((size, min_size_bytes, max_size_bytes), (ops, min_bitops, max_bitops)):
            if lo is not None:
                keep &= arr >= lo
            if hi is not None:
                keep &= arr <= hi
        return keep

    def arrays(
        self, split: str = "all", metrics: Sequence[str] | None = None, pool: str = "all", **budget: float | None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(configs int [N, S], {metric: float [N]}) for a split, optionally within a budget;
        accuracy metrics measured on test `pool` ('fit', 'report' or 'all' images)."""
        names = list(metrics) if metrics is not None else list(ARRAY_METRICS)
        bad = [m for m in names if m not in ARRAY_METRICS]
        if bad:
            raise EmqError(f"metric {bad[0]!r}: use one of {', '.join(ARRAY_METRICS)}")
        keep = self.mask(split, **budget)
        return self.configs[keep], {m: self.pool_metric(m, pool)[keep] for m in names}

    # -- EMQAPI ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.config_texts)

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, {'bit_cfg': "[4, 3, ...]", 'acc': top-1}) like EMQAPI's dict items."""
        for i in range(len(self)):
            yield i, {"bit_cfg": self.fix_bit_cfg(i), "acc": float(self.metrics["top1"][i])}

    def _check_idx(self, idx: int) -> int:
        if not 0 <= int(idx) < len(self):
            raise EmqError(f"index {idx}: out of range, the bench has {len(self)} records (0..{len(self) - 1})")
        return int(idx)

    def random_index(self) -> int:
        return random.randrange(len(self))

    def fix_bit_cfg(self, idx: int) -> str:
        """The configuration of record `idx` as EMQAPI's string, e.g. "[4, 3, 2]"."""
        return str(self.configs[self._check_idx(idx)].tolist())

    def random_bit_cfg(self) -> str:
        return self.fix_bit_cfg(self.random_index())

    def query_by_idx(self, idx: int, metric: str = "top1") -> float:
        if metric not in ARRAY_METRICS:
            raise EmqError(f"metric {metric!r}: use one of {', '.join(ARRAY_METRICS)}")
        return float(self.metrics[metric][self._check_idx(idx)])

    def get_idx_by_cfg(self, bit_cfg: str | Sequence[int]) -> int:
        cfg = parse_config(bit_cfg)
        if cfg not in self._index:
            raise EmqError(f"configuration {config_text(cfg)}: not in bench {self.path}")
        return self._index[cfg]

    def query_by_cfg(self, bit_cfg: str | Sequence[int], metric: str = "top1") -> float:
        """Metric of a configuration given as tuple, list or string ("[4, 3, 2]" or "4,3,2")."""
        return self.query_by_idx(self.get_idx_by_cfg(bit_cfg), metric)

    # -- export ------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        out = []
        for i, c in enumerate(self.config_texts):
            row: dict[str, Any] = {
                "index": i,
                "config": c,
                "split": "heldout" if self.heldout[i] else "search",
                "source": self.sources[i],
            }
            row.update({m: (None if np.isnan(v) else float(v)) for m in ARRAY_METRICS for v in [self.metrics[m][i]]})
            out.append(row)
        return out

    def to_csv_text(self) -> str:
        buf = io.StringIO()
        rows = self.rows()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        return buf.getvalue()

    def to_json_obj(self) -> dict[str, Any]:
        return {"meta": self.meta, "records": self.rows()}


def _damaged(path: Path, what: str) -> EmqError:
    return EmqError(f"bench {path}: {what}; the file is damaged: rebuild it with `emq bench build` or restore a copy")


def _configs(path: Path, idx: Sequence[int], texts: Sequence[str]) -> np.ndarray:
    """[N, S] bit-widths of the records' configuration texts ("4,3,2"), all of one length."""
    rows = []
    for i, text in zip(idx, texts, strict=True):
        try:
            rows.append([int(b) for b in text.split(",")])
        except (AttributeError, ValueError):
            raise _damaged(path, f"record {i} has configuration {text!r:.80}, not comma-separated integers") from None
        if len(rows[-1]) != len(rows[0]):
            raise _damaged(path, f"record {i} has {len(rows[-1])} bit-widths, record {idx[0]} has {len(rows[0])}")
    return np.array(rows, dtype=np.int64)


def _column(path: Path, name: str, idx: Sequence[int], values: Sequence[Any]) -> np.ndarray:
    """One metric column as float64 (NULL = NaN); a value that is not a number is refused."""
    for i, v in zip(idx, values, strict=True):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise _damaged(path, f"record {i} has {name} {v!r:.80}, not a number")
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def trivial_baselines(b: Bench) -> dict[str, dict[str, float | None]]:
    """Oriented Spearman of two proxies no discovered proxy should lose to: sum of bits, model size.

    They are the hand-made proxies bitsum and size, which are costs of the configuration
    (`emq.proxy.linear_cost`): sum_bits is that cost with unit slot weights, size_bytes the
    bench's stored size (LayerMap.size_bytes: the size proxy plus constant biases, the same
    ranking). Oriented: +1 means the proxy ranks configurations exactly as the metric does
    (for loss and KL, where lower is better, the sign is flipped).
    """
    orient = b.meta.get("metric_orientation", {"top1": 1, "loss": -1, "kl": -1})
    proxies = {"sum_bits": linear_cost(b.configs, np.ones(b.configs.shape[1])), "size_bytes": b.metrics["size_bytes"]}
    out: dict[str, dict[str, float | None]] = {}
    for name, score in proxies.items():
        out[name] = {}
        for m, sign in orient.items():
            y = b.metrics[m]
            ok = np.isfinite(y)
            rho = spearmanr(score[ok], y[ok]).statistic if ok.sum() > 2 and np.ptp(y[ok]) > 0 else float("nan")
            out[name][m] = None if np.isnan(rho) else float(sign * rho)
    return out


def bench_info(path: str | Path = "default") -> dict[str, Any]:
    """Summary of a bench: records, slots, bits, test pools, reliability, metric distributions."""
    b = Bench.open(path)
    b.check_outcomes()
    metrics = {}
    for m in ("top1", "loss", "kl", "size_bytes", "bitops"):
        v = b.metrics[m][np.isfinite(b.metrics[m])]
        if v.size:
            q = np.percentile(v, [0, 5, 25, 50, 75, 95, 100])
            metrics[m] = {
                "min": q[0],
                "p5": q[1],
                "p25": q[2],
                "median": q[3],
                "p75": q[4],
                "p95": q[5],
                "max": q[6],
                "mean": float(v.mean()),
                "std": float(v.std()),
            }
            metrics[m] = {k: float(x) for k, x in metrics[m].items()}
    meta = b.meta
    return {
        "path": str(b.path),
        "model": meta.get("model"),
        "records": len(b),
        "planned": meta.get("configs_requested"),
        "search_records": int((~b.heldout).sum()),
        "heldout_records": int(b.heldout.sum()),
        "slots": b.slot_names,
        "allowed_bits": list(b.bits),
        "pinned": meta["space"].get("pinned", {}),
        "act_bits": meta["space"].get("act_bits"),
        "test_pools": b.pools.summary() if b.pools is not None else None,
        "reliability": b.reliability,
        "ceiling": b.ceiling,
        "default_metric": b.default_metric,
        "metric_orientation": meta.get("metric_orientation"),
        "fp_reference": meta.get("fp_reference"),
        "metrics": metrics,
        "trivial_baselines": trivial_baselines(b),
        "ptq_settings": meta.get("ptq_settings"),
        "rounding": meta.get("rounding"),
        "provenance": meta.get("provenance"),
        "data": meta.get("data"),
        "weights_hash": meta.get("weights_hash"),
        "data_fingerprint": meta.get("data_fingerprint"),
        "versions": meta.get("versions"),
        "build_log": meta.get("build_log", []),
        "failures": b.failures,
    }


def bench_list() -> list[dict[str, Any]]:
    """The shipped bundles: records, model, data, PTQ method, default metric and its reliability, size."""
    from emq.models import EMBEDDED_MODELS
    from emq.resources import asset_path

    out = []
    for bundle in BUNDLES.values():
        embedded = EMBEDDED_MODELS[bundle.model]
        row: dict[str, Any] = {
            "name": bundle.name,
            "summary": bundle.summary,
            "model": bundle.model,
            "family": embedded.family,
            "task": embedded.data,
            "installed": bundle.path.is_file(),
        }
        if not row["installed"]:
            row["note"] = build_hint(bundle)
        else:
            b = Bench.open(bundle.path)
            metric = b.default_metric
            rel = b.reliability.get(metric) or {}
            files = [bundle.path, bundle.stats_path, asset_path(embedded.weights)]
            slots = b.meta.get("slots") or []
            row.update(
                {
                    "records": len(b),
                    "slots": len(slots),
                    "params": int(sum(s.get("params", 0) for s in slots)),
                    "fp_top1": (b.meta.get("fp_reference") or {}).get("top1"),
                    "test_images": b.pools.n_images if b.pools is not None else None,
                    "data": b.meta.get("data"),
                    "ptq_method": (b.meta.get("ptq_settings") or {}).get("weight_quantizer", "mse"),
                    "default_metric": metric,
                    "split_half_corrected": (rel.get("split_half") or {}).get("corrected"),
                    "combined_reliability": rel.get("combined"),
                    "ceiling": rel.get("ceiling"),
                    "bundled_stats": bundle.stats_path is not None and bundle.stats_path.is_file(),
                    "megabytes": round(sum(f.stat().st_size for f in files if f is not None and f.is_file()) / 1e6, 2),
                }
            )
        out.append(row)
    return out


def bench_export(path: str | Path, to: str = "csv", out: str | Path | None = None) -> Path:
    """Export records (with split and metrics) to CSV or JSON; returns the written path."""
    if to not in ("csv", "json"):
        raise ParameterError("to", to, "use csv or json")
    b = Bench.open(path)
    dest = (
        Path(out)
        if out
        else (Path.cwd() / f"default.{to}" if str(path) == "default" else Path(path).with_suffix(f".{to}"))
    )
    text = b.to_csv_text() if to == "csv" else json.dumps(b.to_json_obj(), indent=1) + "\n"
    atomic_write_text(dest, text)
    return dest
