"""The typed DEAP primitive set, weighted tree generation, tree <-> token conversion.

`SearchSpace` is the user-facing choice of terminals and operations (restrict: a preset
such as ``weights-only`` or ``no-hessian``, or explicit exclusions; extend: opt-in ops such
as ``tanh``). Trees are DEAP `PrimitiveTree`s for variation, and plain prefix token lists
(see evaluate.py) everywhere else: evaluation, caching, files, worker processes.

Generation honours sampling priorities (DEAP's own generators pick uniformly), which raises
the share of sensible trees (reductions of noise tensors, products of scalars).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from deap import gp

from emq.errors import EmqError

from .evaluate import Token
from .primitives import (
    OPS,
    PRESETS,
    PRIMITIVES,
    TERMINALS,
    TYPE_NAMES,
    PrimSpec,
    Scalar,
    typed_primitives,
)

CONSTANTS = (0.5, 1.0, 2.0, 3.0, 4.0, 8.0)
CONST_PRIORITY = 0.6
EPHEMERAL_NAME = "emq_const"


def draw_constant() -> float:
    """Ephemeral constant generator (module level so DEAP individuals pickle)."""
    return random.choice(CONSTANTS)


# The forms, inside the space, of the hand-made proxies that have one: the one home of these
# token lists. Keys are the proxies' registry names (emq.baselines names each key in its
# proxy's `formula`, and refuses to import if a key here belongs to no proxy); the order is
# the order they seed an initial population in (every campaign seeds every form its space
# can express, `SearchSpace.handmade`; a registry proxy gets seeded by adding its entry here).
# Each form is its registry proxy's per-layer row up to a positive constant factor, so it
# ranks configurations exactly as the proxy does (tests/test_handmade_forms.py, on every
# shipped bench); constant factors are left out (size: b * params, not / 8; bitops: MACs * b,
# the activation bits are the same for every layer; qe: 2x the entropy; emq-published: the
# mean over layers). Tied layers: the space is per layer and a slot's row is the sum of its
# layers' rows, exactly as the registry sums its per-layer rows (slot_table); only bitsum
# counts slots, so its form divides by the layer's share of its slot (`tied`).
#
# Registry proxies without a form here, and why:
# - ompq: each layer's importance comes from its CKA similarity to every other layer's outputs
#   and a mean over the layers after it in forward order; the space's network ops normalize
#   one per-layer scalar over the layers, and no op compares two layers' tensors.
# - kl, seam, gmpq: whole-configuration proxies (they quantize the network per configuration),
#   not separable, so no per-layer form exists.
# - fisher-batch, synflow-signed: variants, not the published methods (faithful = False); the
#   space expresses them (sum_w(mul_w(square_w(G), square_w(E))), mul_s(l1_w(mul_w(VG, W)), b))
#   but they are not seeded.
_TWO_PI_E = 2 * math.pi * math.e
HANDMADE: dict[str, tuple[str, list[Token]]] = {
    "hawq-v1": (
        "HAWQ: lambda_max * ||Q_b(W) - W||^2",
        [("p", "mul_s"), ("t", "eig"), ("p", "sum_w"), ("p", "square_w"), ("t", "E")],
    ),
    "hawq-v2": (
        "HAWQ-V2: Tr(H)/n * ||Q_b(W) - W||^2",
        [("p", "mul_s"), ("p", "div_s"), ("t", "trace"), ("t", "params"), ("p", "square_s"), ("p", "l2_w"), ("t", "E")],
    ),
    "fisher": (
        "empirical Fisher: sum(F_d * (Q_b(W) - W)^2)",
        [("p", "sum_w"), ("p", "mul_w"), ("t", "FD"), ("p", "square_w"), ("t", "E")],
    ),
    "snip": (
        "SNIP, bit-weighted: sum|G * W| * b",
        [("p", "mul_s"), ("p", "l1_w"), ("p", "mul_w"), ("t", "G"), ("t", "W"), ("t", "b")],
    ),
    "synflow": (
        "Synflow, bit-weighted: sum| |W| * G_s | * b",
        [("p", "mul_s"), ("p", "l1_w"), ("p", "mul_w"), ("t", "SG"), ("p", "abs_w"), ("t", "W"), ("t", "b")],
    ),
    "qe": (
        "QE, bit-weighted: log(2 pi e Var(A)) * b (2x the Gaussian entropy)",
        [("p", "mul_s"), ("p", "log_s"), ("p", "mul_s"), ("c", _TWO_PI_E), ("t", "varA"), ("t", "b")],
    ),
    "bitsum": ("sum of slot bit-widths: b * (layer's share of its slot)", [("p", "mul_s"), ("t", "b"), ("t", "tied")]),
    "size": ("model size: b * params", [("p", "mul_s"), ("t", "b"), ("t", "params")]),
    "bitops": (
        "BitOps: MACs * b (times the activation bits, the same for every layer)",
        [("p", "mul_s"), ("t", "macs"), ("t", "b")],
    ),
    "emq-published": (
        "EMQ's published genotype: mean(sqrt(relu(Q_b(W)))) / C_out (its gradient half is exactly 1/C_out)",
        [("p", "div_s"), ("p", "mean_w"), ("p", "sqrt_w"), ("p", "relu_w"), ("t", "Q"), ("t", "out_channels")],
    ),
    # measured sensitivity (seeded where the space holds the measured terminals, preset "measured"); never
    # the "best hand-made" of a campaign, which is chosen among the statistics-only forms (Proxy.statistics_only)
    "layer-kl": ("measured sensitivity: single-slot KL, the layer's share", [("t", "MKL")]),
    "layer-loss": ("measured sensitivity: single-slot loss change, the layer's share", [("t", "MDL")]),
    "layer-sqnr": ("measured sensitivity: single-slot output NSR, the layer's share", [("t", "MNSR")]),
    "layer-kl-mid": (
        "measured sensitivity in context (the others at the middle bit-width): single-slot KL, the layer's share",
        [("t", "MKLM")],
    ),
}


@dataclass
class SearchSpace:
    """The terminals and typed primitives a search may use."""

    terminals: tuple[str, ...]
    prims: dict[str, PrimSpec]
    constants: bool = True
    terminal_ratio: float = 0.35  # chance to stop growing early in "grow" trees
    _pset: gp.PrimitiveSetTyped | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {"terminals": list(self.terminals), "primitives": sorted(self.prims), "constants": self.constants}

    def __reduce__(self) -> tuple:
        """Pickled by names (primitives hold lambdas): executors ship spaces to spawned workers."""
        return (_space_from_names, (self.terminals, tuple(self.prims), self.constants, self.terminal_ratio))

    @property
    def pset(self) -> gp.PrimitiveSetTyped:
        if self._pset is None:
            ps = gp.PrimitiveSetTyped("proxy", [], Scalar)
            for name, p in self.prims.items():
                ps.addPrimitive(p.op.fn, list(p.in_types), p.out_type, name=name)
            for name in self.terminals:
                ps.addTerminal(name, TERMINALS[name].type, name=name)
            if self.constants:
                ps.addEphemeralConstant(EPHEMERAL_NAME, draw_constant, Scalar)
            self._pset = ps
        return self._pset

    def handmade(self) -> dict[str, tuple[str, list[Token]]]:
        """The hand-made proxies expressible in this space."""
        return {k: v for k, v in HANDMADE.items() if all(self.has(t) for t in v[1])}

    def has(self, tok: Token) -> bool:
        if tok[0] == "p":
            return tok[1] in self.prims
        if tok[0] == "t":
            return tok[1] in self.terminals
        return self.constants


def _space_from_names(
    terminals: tuple[str, ...], prims: tuple[str, ...], constants: bool, terminal_ratio: float
) -> SearchSpace:
    return SearchSpace(terminals, {name: PRIMITIVES[name] for name in prims}, constants, terminal_ratio)


def make_space(
    preset: str = "full",
    *,
    terminals: Iterable[str] | None = None,
    exclude_terminals: Iterable[str] = (),
    include_ops: Iterable[str] = (),
    exclude_ops: Iterable[str] = (),
    constants: bool = True,
) -> SearchSpace:
    """Restrict or extend the search space; unknown names raise EmqError."""
    if preset not in PRESETS:
        raise EmqError(f"search space preset {preset!r}: use one of {', '.join(PRESETS)}")
    include_ops, exclude_ops, exclude_terminals = list(include_ops), list(exclude_ops), list(exclude_terminals)
    names = list(terminals) if terminals is not None else list(PRESETS[preset])
    for n in [*names, *exclude_terminals]:
        if n not in TERMINALS:
            raise EmqError(f"terminal {n!r} is unknown: choose from {', '.join(TERMINALS)}")
    for o in [*include_ops, *exclude_ops]:
        if o not in OPS:
            raise EmqError(f"operation {o!r} is unknown: choose from {', '.join(OPS)}")
    names = [n for n in names if n not in exclude_terminals]
    if not any(TERMINALS[n].bit_dependent for n in names):
        raise EmqError(
            "the search space has no bit-dependent terminal (b, pow2b, Q or E): no proxy could rank bit configurations"
        )
    ops = {k: v for k, v in OPS.items() if (v.default or k in include_ops) and k not in exclude_ops}
    if not any(o.kind == "reduce" for o in ops.values()) and any(TERMINALS[n].type is not Scalar for n in names):
        raise EmqError("the search space keeps tensor terminals but no reduction: add mean, sum, l1, l2, ...")
    present = {TERMINALS[n].type for n in names} | {Scalar}
    prims = {k: p for k, p in typed_primitives(ops).items() if set(p.in_types) <= present and p.out_type in present}
    return SearchSpace(tuple(names), prims, constants)


def _weights(space: SearchSpace, nodes: Sequence) -> list[float]:
    out = []
    for n in nodes:
        if isinstance(n, gp.Primitive):
            out.append(space.prims[n.name].op.priority)
        elif isinstance(n, type):  # the ephemeral constant class
            out.append(CONST_PRIORITY)
        else:
            out.append(TERMINALS[n.value].priority)
    return out


def generate(space: SearchSpace, min_: int, max_: int, *, full: bool, type_: type = Scalar) -> list:
    """A random typed expression (DEAP nodes), grown or full, with weighted node choice."""
    pset = space.pset
    height = random.randint(min_, max_)
    expr: list = []
    stack = [(0, type_)]
    while stack:
        depth, t = stack.pop()
        prims, terms = pset.primitives.get(t, []), pset.terminals.get(t, [])
        stop = depth >= height or (not full and depth >= min_ and random.random() < space.terminal_ratio)
        if (stop and terms) or not prims:
            node = random.choices(terms, _weights(space, terms))[0]
            expr.append(node() if isinstance(node, type) else node)
        else:
            node = random.choices(prims, _weights(space, prims))[0]
            expr.append(node)
            stack.extend((depth + 1, a) for a in reversed(node.args))
    return expr


def gen_half_and_half(space: SearchSpace, min_: int, max_: int, type_: type = Scalar) -> list:
    """Ramped half-and-half, used for initialisation, DPS challengers and subtree mutation."""
    return generate(space, min_, max_, full=random.random() < 0.5, type_=type_)


def to_tokens(tree: Iterable) -> list[Token]:
    out: list[Token] = []
    for node in tree:
        if isinstance(node, gp.Primitive):
            out.append(("p", node.name))
        elif isinstance(node.value, str):
            out.append(("t", node.value))
        else:
            out.append(("c", float(node.value)))
    return out


def from_tokens(space: SearchSpace, tokens: Sequence[Token]) -> list:
    """DEAP nodes of a token list, type-checked by the caller (`token_types`; proxy files are
    checked by `proxyfile.proxy_from_json`)."""
    pset = space.pset
    nodes = []
    for kind, v in tokens:
        if kind == "c":  # an ephemeral instance holding v, made without drawing a new value
            const = object.__new__(pset.mapping[EPHEMERAL_NAME])
            gp.Terminal.__init__(const, float(v), False, Scalar)
            nodes.append(const)
        else:
            nodes.append(pset.mapping[str(v)])
    return nodes


def token_types(space: SearchSpace, tokens: Sequence[Token]) -> None:
    """Type-check a token list against the space (raise EmqError naming the problem)."""
    need: list[type] = [Scalar]
    for i, (kind, v) in enumerate(tokens):
        if not need:
            raise EmqError(f"tree token {i} ({v}) is left over after a complete expression")
        want = need.pop()
        if kind == "p":
            if v not in space.prims:
                raise EmqError(f"tree token {i}: primitive {v!r} is not in the search space")
            p = space.prims[str(v)]
            got = p.out_type
            need.extend(reversed(p.in_types))
        elif kind == "t":
            if v not in space.terminals:
                raise EmqError(f"tree token {i}: terminal {v!r} is not in the search space")
            got = TERMINALS[str(v)].type
        else:
            if not space.constants:
                raise EmqError(f"tree token {i}: constants are not allowed in this search space")
            got = Scalar
        if got is not want:
            raise EmqError(f"tree token {i} ({v}) is a {TYPE_NAMES[got]} where a {TYPE_NAMES[want]} is needed")
    if need:
        raise EmqError(f"tree is incomplete: {len(need)} argument(s) missing")


def nested(tokens: Sequence[Token], prims: dict[str, PrimSpec]) -> object:
    """Prefix tokens -> nested (op, args) form; the JSON layout of a tree."""
    it = iter(tokens)

    def rec() -> object:
        kind, v = next(it)
        if kind == "p":
            return {"op": v, "args": [rec() for _ in range(prims[str(v)].op.arity)]}
        return {"term": v} if kind == "t" else {"const": float(v)}

    return rec()


def flatten(node: object) -> list[Token]:
    """Nested form -> prefix tokens (structure validated by `proxyfile.proxy_from_json`)."""
    assert isinstance(node, dict)
    if "op" in node:
        out: list[Token] = [("p", node["op"])]
        for a in node["args"]:
            out.extend(flatten(a))
        return out
    return [("t", node["term"])] if "term" in node else [("c", float(node["const"]))]


def canonical(tokens: Sequence[Token], prims: dict[str, PrimSpec]) -> str:
    """A structural key: equal for trees that differ only in the order of commutative args."""
    it = iter(tokens)

    def rec() -> str:
        kind, v = next(it)
        if kind == "p":
            p = prims[str(v)]
            args = [rec() for _ in range(p.op.arity)]
            if p.op.commutative:
                args.sort()
            return f"{v}({','.join(args)})"
        return str(v) if kind == "t" else f"{float(v):.6g}"

    return rec()


def tree_string(tokens: Sequence[Token], prims: dict[str, PrimSpec]) -> str:
    """Readable prefix form, e.g. mul_s(b, params)."""
    it = iter(tokens)

    def rec() -> str:
        kind, v = next(it)
        if kind == "p":
            return f"{v}({', '.join(rec() for _ in range(prims[str(v)].op.arity))})"
        return str(v) if kind == "t" else f"{float(v):g}"

    return rec()
