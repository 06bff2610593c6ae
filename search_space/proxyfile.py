"""The proxy file format ("emq-proxy/1") and the evolved proxy as an emq.proxy.SeparableProxy.

A proxy file is JSON: the tree in nested form ({"op": name, "args": [...]}, {"term": name},
{"const": number}), the orientation, the aggregation (sum of per-layer terms over layers),
the evaluation settings that change its value (act_samples), its fitness and provenance.
Files are parsed structurally (never eval/pickle); unknown primitives, ill-typed trees and
missing fields are rejected with an EmqError naming the file and the field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emq.errors import EmqError
from emq.fileio import atomic_write_text
from emq.proxy import ProxyContext, SeparableProxy
from emq.sensitivity import (
    ensure_measured,
    measured_terminals,
    measurements_cost,
    missing_measurements,
    uses_measured,
)
from emq.specs import ParameterError

from .evaluate import TableEvaluator, Token, tree_terminals
from .primitives import OPS, TERMINALS
from .pset import SearchSpace, canonical, flatten, make_space, nested, token_types, tree_string
from .terminals import DEFAULT_ACT_SAMPLES

FORMAT = "emq-proxy/1"
AGGREGATION = "sum"
MAX_NODES = 500
# Bounds checked at load, so a hostile or broken file fails with one line instead of a
# RecursionError, an OverflowError or an infinite proxy table. JSON nesting: two levels per
# tree level (node object, args list) plus the top object; evolved trees are far shallower.
MAX_JSON_DEPTH = 200
MAX_NUMBER_DIGITS = 20  # integers longer than this (10^20) are refused before Python converts them
MAX_CONST = 1e6  # search constants are small (pset.CONSTANTS); 1e308 would only overflow tables
MAX_ACT_SAMPLES = 1_000_000


def universe() -> SearchSpace:
    """Every terminal and operation emq knows (what a proxy file may use)."""
    return make_space(terminals=list(TERMINALS), include_ops=list(OPS))


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: Any) -> str:
    """A proxy name becomes a file stem and text in generated code: only a plain slug is
    accepted (letters, digits, '_', '-', '.'; no path separators, no leading dot)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ParameterError(
            "name", name, "a proxy name must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
        )
    return name


class EvolvedProxy(SeparableProxy):
    """A proxy tree p(layer, b); its table is P[S, B] = sum over each slot's layers."""

    def __init__(
        self,
        tokens: Sequence[Token],
        orientation: int = 1,
        *,
        name: str = "evolved",
        act_samples: int = DEFAULT_ACT_SAMPLES,
        meta: dict[str, Any] | None = None,
    ) -> None:
        space = universe()
        self.tokens = [(str(k), float(v) if k == "c" else str(v)) for k, v in tokens]
        token_types(space, self.tokens)
        if orientation not in (1, -1):
            raise EmqError(f"proxy orientation {orientation!r}: use 1 or -1")
        self.prims = space.prims
        self.name = check_name(name)
        self.orientation = int(orientation)
        self.act_samples = int(act_samples)
        self.meta = dict(meta or {})
        self.expression = tree_string(self.tokens, self.prims)
        self.description = f"evolved proxy {self.expression}"
        # a tree over a measured sensitivity (MKL, MDL, MNSR, MKLM) needs the network's data unless the statistics
        # carry it
        terminals = tree_terminals(self.tokens)
        self.needs_data = uses_measured(terminals)
        # whether the table reads the computed statistics too (their shared cost is then part of this proxy's; the
        # structural terminals, MACs or channels, count: emq computes them with the statistics)
        self.reads_statistics = len(set(terminals) - set(measured_terminals(terminals))) > 0
        self.cost = (
            ("statistics and " if self.reads_statistics else "") + "the measured sensitivity"
            if self.needs_data
            else "statistics only"
        )

    @property
    def key(self) -> str:
        return canonical(self.tokens, self.prims)

    def needs_data_for(self, ctx: ProxyContext) -> bool:
        """Data only where the statistics do not carry the sensitivity `table` reads (theirs, at their bits)."""
        if not self.needs_data:
            return False
        return bool(missing_measurements(ctx.stats, ctx.settings, tree_terminals(self.tokens)))

    def setup_cost(self, ctx: ProxyContext) -> dict[str, Any] | None:
        """The measured sensitivity the tree reads is this proxy's own cost on a network (every table it reads,
        summed; emq.ranking adds the shared statistics where `reads_statistics`); a statistics-only tree has none
        of its own."""
        return measurements_cost(ctx, tree_terminals(self.tokens)) if self.needs_data else None

    def stats_table(self, stats: Any) -> torch.Tensor:
        """P[S, B] in the statistics' own bit order."""
        ev = TableEvaluator(
            stats,
            sorted(tree_terminals(self.tokens)),
            self.prims,
            act_samples=self.act_samples,
            probe_layers=1,
            memo_entries=0,
        )  # one tree: a memo would cost more to allocate than it saves
        with torch.no_grad():
            return ev.table(self.tokens)

    def table(self, ctx: ProxyContext) -> np.ndarray:
        if ctx.stats is None:
            raise EmqError(
                f"proxy {self.name}: the context has no statistics; compute them first "
                "(emq.search_space.stats.compute_stats)"
            )
        key = ("evolved-table", self.key, self.act_samples)
        if key not in ctx.cache:
            stats = ctx.stats
            if self.needs_data:  # on a copy: the caller's statistics stay as they were
                stats = ensure_measured(
                    replace(stats, meta=dict(stats.meta)),
                    ctx.target,
                    ctx.settings,
                    ctx.device,
                    terminals=tree_terminals(self.tokens),
                )
            full = self.stats_table(stats).cpu().numpy()
            bits = list(ctx.stats.bits)
            missing = [b for b in ctx.bits if b not in bits]
            if missing:
                raise EmqError(f"proxy {self.name}: bits {missing} have no statistics (statistics bits: {bits})")
            ctx.cache[key] = full[:, [bits.index(b) for b in ctx.bits]]
        return ctx.cache[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "name": self.name,
            "expression": self.expression,
            "tree": nested(self.tokens, self.prims),
            "orientation": self.orientation,
            "aggregation": AGGREGATION,
            "act_samples": self.act_samples,
            **self.meta,
        }


def _check_node(node: Any, where: str, budget: list[int]) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise EmqError(f"{where}: tree has more than {MAX_NODES} nodes")
    if not isinstance(node, dict):
        raise EmqError(f"{where}: every tree node must be an object, got {type(node).__name__}")
    if "op" in node:
        if not isinstance(node["op"], str) or not isinstance(node.get("args"), list):
            raise EmqError(f"{where}: an operation node needs a string 'op' and a list 'args'")
        for i, a in enumerate(node["args"]):
            _check_node(a, f"{where}.args[{i}]", budget)
    elif "term" in node:
        if not isinstance(node["term"], str):
            raise EmqError(f"{where}: 'term' must be a string")
    elif "const" in node:
        c = node["const"]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or abs(c) > MAX_CONST:
            raise EmqError(f"{where}: 'const' must be a finite number of magnitude at most {MAX_CONST:g}")
    else:
        raise EmqError(f"{where}: a node needs one of 'op', 'term' or 'const'")


def proxy_from_json(obj: Any, source: str = "proxy") -> EvolvedProxy:
    """Validate and build a proxy from parsed JSON (no eval)."""
    if not isinstance(obj, dict):
        raise EmqError(f"{source}: the top level must be a JSON object")
    if obj.get("format") != FORMAT:
        raise EmqError(f"{source}: field 'format' is {obj.get('format')!r}; expected {FORMAT!r}")
    for f in ("tree", "orientation"):
        if f not in obj:
            raise EmqError(f"{source}: field {f!r} is missing")
    if obj.get("aggregation", AGGREGATION) != AGGREGATION:
        raise EmqError(f"{source}: field 'aggregation' is {obj['aggregation']!r}; only {AGGREGATION!r} is supported")
    _check_node(obj["tree"], f"{source}: tree", [MAX_NODES])
    space = universe()
    for node in _walk(obj["tree"]):
        if "op" in node:
            if node["op"] not in space.prims:
                raise EmqError(f"{source}: tree uses unknown primitive {node['op']!r}")
            if len(node["args"]) != space.prims[node["op"]].op.arity:
                raise EmqError(
                    f"{source}: primitive {node['op']!r} takes {space.prims[node['op']].op.arity} argument(s), "
                    f"got {len(node['args'])}"
                )
        elif "term" in node and node["term"] not in TERMINALS:
            raise EmqError(f"{source}: tree uses unknown terminal {node['term']!r}")
    tokens = flatten(obj["tree"])
    try:
        token_types(space, tokens)
    except EmqError as e:
        raise EmqError(f"{source}: {e}") from e
    act = obj.get("act_samples", DEFAULT_ACT_SAMPLES)
    if isinstance(act, bool) or not isinstance(act, int) or not 1 <= act <= MAX_ACT_SAMPLES:
        raise EmqError(f"{source}: field 'act_samples' must be an integer from 1 to {MAX_ACT_SAMPLES:,}")
    orientation = obj["orientation"]
    if orientation not in (1, -1) or isinstance(orientation, bool):
        raise EmqError(f"{source}: field 'orientation' must be 1 or -1")
    known = {"format", "name", "expression", "tree", "orientation", "aggregation", "act_samples"}
    meta = {k: v for k, v in obj.items() if k not in known}
    try:
        name = check_name(obj.get("name", "evolved"))
    except ParameterError as e:
        raise EmqError(f"{source}: field 'name' {e.problem} (got {obj.get('name')!r})") from e
    return EvolvedProxy(tokens, orientation, name=name, act_samples=act, meta=meta)


def _walk(node: dict) -> list[dict]:
    out = [node]
    for a in node.get("args", []):
        out.extend(_walk(a))
    return out


def load_proxy(path: str | Path) -> EvolvedProxy:
    """Read a proxy file; malformed or unknown content raises EmqError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise EmqError(f"proxy file {path}: cannot be read ({e.strerror})") from e
    except UnicodeDecodeError as e:
        raise EmqError(
            f"proxy file {path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "give an emq-proxy/1 JSON file, e.g. a run's best_proxy.json"
        ) from e
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise EmqError(f"proxy file {path}: nested {depth} levels deep; a proxy file has at most {MAX_JSON_DEPTH}")
    try:
        obj = json.loads(text, parse_int=_bounded_int, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise EmqError(f"proxy file {path}: not valid JSON ({e.msg} at line {e.lineno})") from e
    except ValueError as e:
        raise EmqError(f"proxy file {path}: {e}") from e
    return proxy_from_json(obj, f"proxy file {path}")


def json_depth(text: str) -> int:
    """Deepest nesting of objects and arrays in JSON text, brackets inside strings ignored
    (measured before parsing: json.loads would raise RecursionError first)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(
            f"integer {text[:12]}... has {len(text.lstrip('-'))} digits; numbers in a proxy file have at "
            f"most {MAX_NUMBER_DIGITS}"
        )
    return int(text)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a proxy file may hold")


def save_proxy(proxy: EvolvedProxy, path: str | Path) -> Path:
    """Write a proxy file atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(proxy.to_json(), indent=2) + "\n")
    return path
