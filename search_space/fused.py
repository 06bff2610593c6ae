"""A reduction of an elementwise tensor expression, compiled once and run in one pass per layer.

The packed path (evaluate.py) applies a tree one operation at a time: every tensor operation is
a sweep over a [Bk, N] tensor that writes a fresh [Bk, N] temporary, and every one costs a
Python and torch dispatch. Over the zoo's packed tensors (millions of elements per network)
those sweeps bound a campaign's rate. Here the tensor subtree under a reduction (terminals,
unary and binary operations, `scale` by a per-layer scalar) becomes a small stack program, and
one numba kernel runs it over blocks of about a thousand elements of each layer: the temporaries
stay in the core's own caches, each terminal is read once per block (twice for var and std: a sweep
for the mean first), and the reduction accumulates as it goes. An empty layer gives NaN for a mean,
var or std and 0 for the sums, as numpy's error model does (division by zero is not an error).

Semantics are those of the torch operations (primitives.py), NaN and infinity included (e.g.
sign(NaN) = 0, as torch gives). Values can differ from the packed path's in the last bits:
a sum is accumulated in another order, and exp and log (vecmath.py: vectorized, within 1 ulp) and
libm's tanh are not SLEEF's. Layer
operations (normalize, minmax, softmax), whose output needs statistics of a whole layer, are
not compiled: a subtree holding one is evaluated by the packed path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numba
import numpy as np
import torch
from numba.typed import List as TypedList

from .primitives import EPS, EXP_CLAMP, LOG_EPS, TERMINALS, PrimSpec, Scalar
from .terminals import Packed
from .vecmath import vexp, vlog

if TYPE_CHECKING:
    from .evaluate import Token

# opcodes of the stack program: every unary, binary and reduce op has one (tests/test_fused.py checks it),
# with its case in _unary / _binary / _reduce; a subtree holding an op without one is left to the packed path
_LOAD, _SCALE, _COPY = 0, 1, 2
UNARY = {
    n: 10 + i
    for i, n in enumerate(
        ("abs", "square", "sqrt", "log", "exp", "relu", "sigmoid", "neg", "recip", "sign", "tanh", "cube")
    )
}
BINARY = {n: 40 + i for i, n in enumerate(("add", "sub", "mul", "div", "max", "min"))}
_MEAN, _SUM, _L1, _L2, _MAXABS, _VAR, _STD = range(7)
REDUCE = {"mean": _MEAN, "sum": _SUM, "l1": _L1, "l2": _L2, "maxabs": _MAXABS, "var": _VAR, "std": _STD}
BLOCK = 1024  # elements per row of a register (24 KB at 3 bits: a program's registers stay in the core's L2);
# faster than 256, 512 or 2048 on resnet18-fashion


@numba.njit(cache=True, inline="always", error_model="numpy")
def _unary(op: int, o: np.ndarray, n: int) -> None:
    """o[:n] = op(o[:n]), one loop per op so that each one vectorizes."""
    if op == 10:
        for i in range(n):
            o[i] = abs(o[i])
    elif op == 11:
        for i in range(n):
            o[i] = o[i] * o[i]
    elif op == 12:
        for i in range(n):
            o[i] = np.sqrt(abs(o[i]))
    elif op == 13:
        for i in range(n):
            o[i] = vlog(abs(o[i]) + LOG_EPS)
    elif op == 14:
        for i in range(n):
            x = o[i]
            o[i] = vexp(EXP_CLAMP if x > EXP_CLAMP else x)
    elif op == 15:
        for i in range(n):
            x = o[i]
            o[i] = 0.0 if x <= 0.0 else x
    elif op == 16:
        for i in range(n):
            o[i] = 1.0 / (1.0 + vexp(-o[i]))
    elif op == 17:
        for i in range(n):
            o[i] = -o[i]
    elif op == 18:
        for i in range(n):
            x = o[i]
            o[i] = x / (x * x + EPS)
    elif op == 19:
        for i in range(n):
            x = o[i]
            o[i] = 1.0 if x > 0.0 else (-1.0 if x < 0.0 else 0.0)
    elif op == 20:
        for i in range(n):
            o[i] = np.tanh(o[i])
    else:
        for i in range(n):
            x = o[i]
            o[i] = x * x * x


@numba.njit(cache=True, inline="always", error_model="numpy")
def _binary(op: int, o: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> None:
    """o[:n] = a[:n] op b[:n] (o may be a), NaN propagated by max and min as torch does."""
    if op == 40:
        for i in range(n):
            o[i] = a[i] + b[i]
    elif op == 41:
        for i in range(n):
            o[i] = a[i] - b[i]
    elif op == 42:
        for i in range(n):
            o[i] = a[i] * b[i]
    elif op == 43:
        for i in range(n):
            y = b[i]
            o[i] = a[i] * y / (y * y + EPS)
    elif op == 44:
        for i in range(n):
            x, y = a[i], b[i]
            o[i] = x if x >= y or x != x else y
    else:
        for i in range(n):
            x, y = a[i], b[i]
            o[i] = x if x <= y or x != x else y


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _run_block(code, terms, scal, layer, lo, n, regs):  # type: ignore[no-untyped-def]
    """Run the program over elements [lo, lo + n) of one layer; the value ends in regs[0]."""
    for k in range(code.shape[0]):
        op, dst, src, rows, rows_src = code[k, 0], code[k, 1], code[k, 2], code[k, 3], code[k, 4]
        out = regs[dst]
        if op == _LOAD:
            t = terms[src]
            for j in range(rows):
                o = out[j]
                tj = t[j, lo : lo + n]  # a view: indexing it from 0 lets the copy vectorize (2x)
                for i in range(n):
                    o[i] = tj[i]
        elif op == _COPY:
            for j in range(rows):
                o = out[j]
                r = regs[src, j]
                for i in range(n):
                    o[i] = r[i]
        elif op == _SCALE:  # regs[dst] (rows_dst) * scal[src] (rows_src) -> rows
            rows_dst = code[k, 5]
            for j in range(rows - 1, -1, -1):  # row 0 last: a broadcast reads it for every row
                s = scal[src, j if rows_src > 1 else 0, layer]
                a = out[j if rows_dst > 1 else 0]
                o = out[j]
                for i in range(n):
                    o[i] = a[i] * s
        elif op < 40:
            for j in range(rows):
                _unary(op, out[j], n)
        else:  # regs[dst] (rows_dst) op regs[src] (rows_src) -> regs[dst] (rows)
            rows_dst = code[k, 5]
            other = regs[src]
            for j in range(rows - 1, -1, -1):
                _binary(op, out[j], out[j if rows_dst > 1 else 0], other[j if rows_src > 1 else 0], n)


# reassoc: sums vectorize (no flag that drops NaN or inf); numpy's error model: x / 0 is inf or NaN, not an error
@numba.njit(cache=True, nogil=True, fastmath={"reassoc"}, error_model="numpy")
def _reduce(code, terms, scal, starts, lengths, red, rows, depth, out):  # type: ignore[no-untyped-def]
    """out[j, l] = the reduction `red` over layer l of row j of the program's value."""
    regs = np.empty((depth, rows, BLOCK))
    for layer in range(starts.shape[0]):
        start, length = starts[layer], lengths[layer]
        mean = np.zeros(rows)
        for sweep in range(2 if red >= _VAR else 1):  # var, std (the last two codes): the mean, then the deviations
            acc = np.zeros(rows)
            for lo in range(start, start + length, BLOCK):
                n = min(BLOCK, start + length - lo)
                _run_block(code, terms, scal, layer, lo, n, regs)
                for j in range(rows):
                    v = regs[0, j]
                    s = 0.0
                    if red == _MAXABS:  # NaN-propagating, as numpy's maximum.reduceat
                        for i in range(n):
                            x = abs(v[i])
                            if x != x:
                                s = x
                                break
                            if x > s:
                                s = x
                        if s != s or s > acc[j]:
                            acc[j] = s if acc[j] == acc[j] else acc[j]
                        continue
                    if red == _L1:
                        for i in range(n):
                            s += abs(v[i])
                    elif red == _L2:
                        for i in range(n):
                            s += v[i] * v[i]
                    elif red >= _VAR and sweep == 1:
                        m = mean[j]
                        for i in range(n):
                            d = v[i] - m
                            s += d * d
                    else:
                        for i in range(n):
                            s += v[i]
                    acc[j] += s
            for j in range(rows):
                if red >= _VAR and sweep == 0:
                    mean[j] = acc[j] / length
                elif red == _MEAN or red >= _VAR:
                    out[j, layer] = acc[j] / length
                elif red == _L2:
                    out[j, layer] = np.sqrt(acc[j])
                else:
                    out[j, layer] = acc[j]
        if red == _STD:
            for j in range(rows):
                out[j, layer] = np.sqrt(out[j, layer])


@dataclass(frozen=True)
class Program:
    """A compiled tensor subtree under a reduction: its code, the per-layer scalars it scales by (as
    token offsets, evaluated by the caller), and the shape of its value."""

    code: np.ndarray  # [ops, 6] int64: op, dst register, src register / terminal / scalar, rows, rows_src, rows_dst
    scalars: tuple[int, ...]  # where every `scale` op's scalar argument starts, in tokens after the reduction's
    reduce: int
    rows: int
    depth: int  # registers: the stack's depth, plus one per terminal loaded once


def compile_reduction(
    tokens: Sequence[Token],
    i: int,
    ends: Sequence[int],
    prims: dict[str, PrimSpec],
    term_index: dict[str, int],
    term_rows: dict[str, int],
    scalar_rows: Callable[[int], int],
) -> Program | None:
    """The program of the reduction at token i, or None where a node under it is not compiled (a layer
    operation, an op without an opcode). `scalar_rows(k)` gives the rows of the scalar subtree at k."""
    red = REDUCE.get(prims[str(tokens[i][1])].op.op)
    if red is None:
        return None
    code: list[tuple[int, int, int, int, int, int]] = []
    scalars: list[int] = []
    depth = 0

    def emit(k: int, sp: int) -> int | None:
        """Code for the subtree at k into register sp; its rows, or None if it cannot be compiled."""
        nonlocal depth
        depth = max(depth, sp + 1)
        kind, v = tokens[k]
        if kind == "t":
            name = str(v)
            if name not in term_index:
                return None
            code.append((_LOAD, sp, term_index[name], term_rows[name], 0, 0))
            return term_rows[name]
        if kind != "p":
            return None
        p = prims[str(v)]
        name = p.op.op
        if p.op.kind == "unary" and name in UNARY:
            rows = emit(k + 1, sp)
            if rows is not None:
                code.append((UNARY[name], sp, 0, rows, 0, 0))
            return rows
        if p.op.kind == "binary" and name in BINARY:
            a = emit(k + 1, sp)
            b = None if a is None else emit(ends[k + 1], sp + 1)
            if b is None:
                return None
            rows = max(a, b)
            code.append((BINARY[name], sp, sp + 1, rows, b, a))
            return rows
        if p.op.kind == "scale":
            a = emit(k + 1, sp)
            if a is None:
                return None
            s = scalar_rows(ends[k + 1])
            rows = max(a, s)
            code.append((_SCALE, sp, len(scalars), rows, s, a))
            scalars.append(ends[k + 1] - i)  # relative: the subtree recurs at other places in other trees
            return rows
        return None

    rows = emit(i + 1, 0)
    if rows is None:
        return None
    program, registers = _load_once(code, depth)
    return Program(program, tuple(scalars), red, rows, registers)


def _load_once(code: list[tuple[int, int, int, int, int, int]], depth: int) -> tuple[np.ndarray, int]:
    """(code, registers): each terminal read more than once is loaded once per block into a register of its
    own after the stack's, and copied from there (memory traffic, not arithmetic, bounds the kernel)."""
    loads = Counter(c[2] for c in code if c[0] == _LOAD)
    rows = {c[2]: c[3] for c in code if c[0] == _LOAD}  # a terminal has one row count
    home = {t: depth + k for k, t in enumerate(t for t, n in loads.items() if n > 1)}
    head = [(_LOAD, r, t, rows[t], 0, 0) for t, r in home.items()]
    body = [(_COPY, c[1], home[c[2]], c[3], 0, 0) if c[0] == _LOAD and c[2] in home else c for c in code]
    return np.asarray(head + body, dtype=np.int64).reshape(-1, 6), depth + len(home)


def terminal_list(arrays: Sequence[np.ndarray]) -> TypedList:
    """The packed terminals as numba sees them (built once per pack; the arrays are not copied)."""
    out = TypedList()
    for a in arrays:
        out.append(np.ascontiguousarray(a, dtype=np.float64))
    return out


def run(program: Program, terms: TypedList, scal: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The reduction's value [rows, layers]."""
    out = np.empty((program.rows, starts.shape[0]))
    _reduce(program.code, terms, scal, starts, lengths, program.reduce, program.rows, program.depth, out)
    return out


class FusedPack:
    """One pack's terminals as the kernel reads them, and the programs compiled on it (one per TableEvaluator pack)."""

    PROGRAMS = 16384  # compiled reductions kept per terminal layout (a few hundred bytes each)
    # shared by every pack of one terminal layout in the process (probe and full packs, all benches)
    _programs: ClassVar[dict[tuple, dict[tuple[Token, ...], Program | None]]] = {}

    def __init__(self, pk: Packed) -> None:
        self.pk = pk
        names = [n for n, spec in TERMINALS.items() if n in pk.values and spec.type is not Scalar]
        self.index = {n: k for k, n in enumerate(names)}
        self.rows = {n: int(pk.values[n].shape[0]) for n in names}
        self.terms = terminal_list([pk.values[n].numpy() for n in names])
        layout = (tuple(names), tuple(self.rows.values()), pk.num_bits)
        self.programs = self._programs.setdefault(layout, {})

    def program(
        self,
        toks: tuple[Token, ...],
        i: int,
        ends: list[int],
        prims: dict[str, PrimSpec],
        value: Callable[[int], torch.Tensor],
    ) -> Program | None:
        """The compiled reduction at token i (None: not a reduction, or not compiled)."""
        kind, v = toks[i]
        if kind != "p" or prims[str(v)].op.kind != "reduce":
            return None
        if self.pk.segments[prims[str(v)].in_types[0]].starts is None:  # segments the kernel cannot walk
            return None
        key = toks[i : ends[i]]
        if key in self.programs:
            return self.programs[key]
        if len(self.programs) >= self.PROGRAMS:
            self.programs.clear()
        prog = compile_reduction(toks, i, ends, prims, self.index, self.rows, lambda k: int(value(k).shape[0]))
        self.programs[key] = prog
        return prog

    def run(self, prog: Program, scalars: list[torch.Tensor], T: type) -> torch.Tensor:
        """The reduction's packed value [Bk, L], `scalars` being its `scale` arguments' values."""
        L = self.pk.num_layers
        scal = np.empty((len(scalars), self.pk.num_bits, L))
        for k, s in enumerate(scalars):
            scal[k] = s.detach().numpy()  # [1 or B, L] broadcast to B rows
        sg = self.pk.segments[T]
        return torch.from_numpy(run(prog, self.terms, scal, sg.starts, sg.lengths))
