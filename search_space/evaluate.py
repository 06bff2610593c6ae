"""Evaluate a proxy tree into its table P[L, B] (and P[S, B] per bit slot).

A tree is a prefix token list: ("p", primitive name) | ("t", terminal name) | ("c", value).
The fast path walks it once over the *packed* terminals (terminals.py), so all layers and
all bits come out of one pass; reductions and per-layer standardisations become segment
operations; the values of scalar subtrees are kept between trees (a campaign's offspring
share most of them with their parents). `naive_config_score` is the slow reference (how EMQ
scores: recompute the proxy layer by layer for every configuration) used by tests and
benchmarks/search_speed.py.

Network ops (normalizations over the network's layers, primitives.py) see every packed
layer in the packed path; the per-layer reference computes their argument on every layer
of the statistics first, so both paths give the same table. A probe pack (a few layers,
for screening) normalizes over its own layers only: a cheap approximation used to reject
degenerate trees, never for a fitness or a table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from .netstats import NetworkStats
from .primitives import EPS, PRIMITIVES, TERMINALS, PrimSpec, Scalar
from .terminals import DEFAULT_ACT_SAMPLES, Packed, Segments, available_terminals, layer_terminal, pack

Token = tuple[str, object]
MEMO_ENTRIES = 8192  # scalar subtree values kept per pack (TableEvaluator): 4 MB for 22 layers x 3 bits
FUSED = True  # reductions run by the compiled kernel (fused.py) on the CPU in float64; False: op by op


def _segsum(x: torch.Tensor, sg: Segments) -> torch.Tensor:
    if sg.starts is not None:  # contiguous segments on the CPU: numpy's reduceat, ~20x index_add_ along dim 1
        return torch.from_numpy(np.add.reduceat(x.detach().numpy(), sg.starts, axis=1))
    return x.new_zeros(x.shape[0], sg.n).index_add_(1, sg.seg, x)


def _segext(x: torch.Tensor, sg: Segments, how: str) -> torch.Tensor:
    if sg.starts is not None:
        ufunc = np.maximum if how == "amax" else np.minimum
        return torch.from_numpy(ufunc.reduceat(x.detach().numpy(), sg.starts, axis=1))
    init = float("-inf") if how == "amax" else float("inf")
    return x.new_full((x.shape[0], sg.n), init).scatter_reduce_(
        1, sg.seg.expand(x.shape[0], -1), x, how, include_self=True
    )


def _spread(v: torch.Tensor, sg: Segments) -> torch.Tensor:
    """Per-segment values [Bk, L] repeated over their elements [Bk, N]."""
    if sg.lengths is not None:
        return torch.from_numpy(np.repeat(v.detach().numpy(), sg.lengths, axis=1))
    return v[:, sg.seg]


def _segvar(x: torch.Tensor, sg: Segments) -> tuple[torch.Tensor, torch.Tensor]:
    spread = _spread(_segsum(x, sg) / sg.cnt, sg)  # a fresh [Bk, N]: written in place (as in the ops below)
    d = torch.sub(x, spread, out=spread)
    return d, _segsum(d * d, sg) / sg.cnt


def _packed_reduce(op: str, x: torch.Tensor, sg: Segments) -> torch.Tensor:
    if op == "mean":
        return _segsum(x, sg) / sg.cnt
    if op == "sum":
        return _segsum(x, sg)
    if op == "l1":
        return _segsum(x.abs(), sg)
    if op == "l2":
        return _segsum(x * x, sg).sqrt()
    if op == "maxabs":
        return _segext(x.abs(), sg, "amax")
    if op == "var":
        return _segvar(x, sg)[1]
    if op == "std":
        return _segvar(x, sg)[1].sqrt()
    raise KeyError(op)


def _packed_layer(op: str, x: torch.Tensor, sg: Segments) -> torch.Tensor:
    if op == "normalize":
        d, var = _segvar(x, sg)
        return d.div_(_spread(var.sqrt() + EPS, sg))
    if op == "minmax":
        lo, hi = _segext(x, sg, "amin"), _segext(x, sg, "amax")
        low = _spread(lo, sg)
        return torch.sub(x, low, out=low).div_(_spread(hi - lo + EPS, sg))
    if op == "softmax":
        top = _spread(_segext(x, sg, "amax"), sg)
        e = torch.sub(x, top, out=top).exp_()
        return e.div_(_spread(_segsum(e, sg), sg))
    raise KeyError(op)


def _apply_packed(p: PrimSpec, args: list[torch.Tensor], packed: Packed) -> torch.Tensor:
    kind = p.op.kind
    if kind in ("unary", "binary"):
        return p.op.fn(*args)
    if kind == "network":  # a packed scalar is [Bk, L]: the op acts along the layers
        return p.op.fn(args[0])
    sg = packed.segments[p.in_types[0]]
    if kind == "reduce":
        return _packed_reduce(p.op.op, args[0], sg)
    if kind == "layer":
        return _packed_layer(p.op.op, args[0], sg)
    return args[0] * _spread(args[1], sg)  # scale


def tree_terminals(tokens: Sequence[Token]) -> set[str]:
    return {str(t[1]) for t in tokens if t[0] == "t"}


def is_bit_dependent(tokens: Sequence[Token]) -> bool:
    """Static check: a tree without a bit-dependent terminal cannot rank configurations."""
    return any(TERMINALS[n].bit_dependent for n in tree_terminals(tokens))


class _Memo:
    """Scalar values [Bk, L] of subtrees already evaluated on one pack, the least recently used overwritten.

    A campaign's offspring share most of their subtrees with their parents (and reductions of the
    same noise tensors recur everywhere), so a reduction is computed once, not once per candidate.
    Evaluation is a pure function of the subtree: a value from the memo is the value computing it
    again would give, bit for bit. Values live in one block allocated up front: many small tensors
    held for long, between the large temporaries of tensor ops, made the allocator map fresh pages
    for those temporaries (60x the page faults, tensor ops several times slower). Tensor-valued
    subtrees are not kept for the same reason. Subtrees are looked up by their interned id
    (`SubtreeIds`), valid for one epoch of the interner.
    """

    def __init__(
        self, entries: int, num_bits: int, num_layers: int, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.block = torch.empty(entries, num_bits, num_layers, device=device, dtype=dtype)
        self.rows = self.block.unbind(0)  # one view per entry (indexing the block per call costs more)
        self.where: OrderedDict[int, tuple[int, int]] = OrderedDict()  # subtree id -> (entry, rows)
        self.epoch = 0

    @property
    def entries(self) -> int:
        return len(self.rows)

    def start(self, epoch: int) -> None:
        """Before a tree: ids of another epoch name other subtrees, so their values are dropped."""
        if epoch != self.epoch:
            self.where.clear()
            self.epoch = epoch

    def get(self, key: int) -> torch.Tensor | None:
        hit = self.where.get(key)
        if hit is None:
            return None
        self.where.move_to_end(key)
        return self.rows[hit[0]][: hit[1]]

    def put(self, key: int, value: torch.Tensor) -> torch.Tensor:
        """Keep `value` and return the kept copy. The entry overwritten is the least recently used:
        never one read or written during the current tree while a tree has fewer nodes than entries."""
        if len(self.where) < len(self.rows):
            entry = len(self.where)
        else:
            entry = self.where.popitem(last=False)[1][0]
        rows = int(value.shape[0])
        kept = self.rows[entry][:rows]
        kept.copy_(value)
        self.where[key] = (entry, rows)
        return kept


def subtree_ends(tokens: Sequence[Token], prims: dict[str, PrimSpec]) -> list[int]:
    """For every position of a prefix token list, the index just past the subtree starting there."""
    ends = [0] * len(tokens)
    pending: list[int] = []  # ends of the subtrees after the current position, nearest last
    for i in range(len(tokens) - 1, -1, -1):
        kind, v = tokens[i]
        end = i + 1
        if kind == "p":
            for _ in range(prims[str(v)].op.arity):
                end = pending.pop()
        ends[i] = end
        pending.append(end)
    return ends


class SubtreeIds:
    """Hash-consing of subtrees: equal subtrees get one int id, made from their root token and their
    children's ids, so that a memo looks a subtree up by an int rather than by hashing its token slice,
    and a candidate is parsed once for all the benches and packs sharing this table (the last parse is
    kept). The table is emptied when it holds LIMIT ids; the epoch then changes and memos drop what they
    hold."""

    LIMIT = 1 << 19  # about 85 MB (160 bytes an id); a 100 x 64 four-network campaign makes 11,331

    def __init__(self) -> None:
        self.ids: dict[tuple, int] = {}
        self.epoch = 0
        self._last: tuple = ((), None, [], [])

    def parse(
        self, tokens: Sequence[Token], prims: dict[str, PrimSpec]
    ) -> tuple[tuple[Token, ...], list[int], list[int]]:
        """(tokens as tuples, subtree_ends, the id of the subtree at every position)."""
        toks = tuple(map(tuple, tokens))
        last = self._last
        if last[1] is prims and last[0] == toks:
            return last[0], last[2], last[3]
        if len(self.ids) + len(toks) > self.LIMIT:
            self.ids.clear()
            self.epoch += 1
        ends = subtree_ends(toks, prims)
        ids = [0] * len(toks)
        table = self.ids
        for i in range(len(toks) - 1, -1, -1):  # children before parents
            key: tuple = toks[i]
            if key[0] == "p":
                j = i + 1
                while j < ends[i]:  # the children's ids, in order
                    key += (ids[j],)
                    j = ends[j]
            ids[i] = table.setdefault(key, len(table))
        self._last = (toks, prims, ends, ids)
        return toks, ends, ids


class TableEvaluator:
    """Evaluates trees over one NetworkStats: full tables, slot tables and cheap probes. The values
    of scalar subtrees are kept (`_Memo`, `memo_entries` per pack, default MEMO_ENTRIES, 0 = none): a
    population re-evaluates few."""

    def __init__(
        self,
        stats: NetworkStats,
        terminals: Sequence[str] | None = None,
        prims: dict[str, PrimSpec] | None = None,
        *,
        act_samples: int = DEFAULT_ACT_SAMPLES,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        probe_layers: int = 3,
        memo_entries: int | None = None,
        fused_reductions: bool | None = None,
        subtrees: SubtreeIds | None = None,
    ) -> None:
        self.stats = stats
        self.subtrees = subtrees or SubtreeIds()  # evaluators of one candidate's benches share one
        self.prims = prims or PRIMITIVES
        self.terminals = tuple(terminals or available_terminals(stats))
        self.act_samples = act_samples
        self.device, self.dtype = torch.device(device), dtype
        self.packed = pack(stats, self.terminals, act_samples=act_samples, device=device, dtype=dtype)
        L = len(stats.layers)
        picks = sorted({round(i * (L - 1) / max(probe_layers - 1, 1)) for i in range(min(probe_layers, L))})
        self.probe_packed = pack(stats, self.terminals, picks, act_samples=act_samples, device=device, dtype=dtype)
        self.probe_layers = torch.tensor(picks, device=self.device)
        self.layer_slot = torch.tensor(stats.layer_slot, device=self.device)
        self.num_slots = stats.num_slots
        self._memos = {
            id(pk): _Memo(
                MEMO_ENTRIES if memo_entries is None else memo_entries,
                pk.num_bits,
                pk.num_layers,
                device=self.device,
                dtype=dtype,
            )
            for pk in (self.packed, self.probe_packed)
        }
        fuse = FUSED if fused_reductions is None else fused_reductions
        fuse = fuse and self.device.type == "cpu" and dtype == torch.float64
        self._fused = {}
        if fuse:
            from .fused import FusedPack  # numba loads here, not with every command that imports emq

            self._fused = {id(pk): FusedPack(pk) for pk in (self.packed, self.probe_packed)}

    def _value(self, tokens: Sequence[Token], pk: Packed) -> torch.Tensor:
        """The root's packed value [Bk, L], scalar subtrees taken from the memo where they are there."""
        toks, ends, ids = self.subtrees.parse(tokens, self.prims)
        memo = self._memos.get(id(pk))
        if memo is not None and len(toks) >= memo.entries:
            memo = None
        if memo is not None:
            memo.start(self.subtrees.epoch)
        fp = self._fused.get(id(pk))

        def value(i: int) -> torch.Tensor:
            kind, v = toks[i]
            if kind == "t":
                return pk.values[str(v)]
            scalar = kind == "c" or self.prims[str(v)].out_type is Scalar
            out = memo.get(ids[i]) if scalar and memo is not None else None
            if out is not None:
                return out
            if kind == "c":
                out = torch.full((1, pk.num_layers), float(v), device=self.device, dtype=self.dtype)
            elif fp is not None and (prog := fp.program(toks, i, ends, self.prims, value)) is not None:
                out = fp.run(prog, [value(i + k) for k in prog.scalars], self.prims[str(v)].in_types[0])
            else:
                p = self.prims[str(v)]
                args, j = [], i + 1
                for _ in range(p.op.arity):
                    args.append(value(j))
                    j = ends[j]
                out = _apply_packed(p, args, pk)
            return memo.put(ids[i], out) if scalar and memo is not None else out

        return value(0).clone()  # the memo's block is overwritten later: the caller gets its own copy

    def layer_table(self, tokens: Sequence[Token], packed: Packed | None = None) -> torch.Tensor:
        """P[L, B] for the packed layers (all layers unless `packed` is the probe)."""
        pk = packed or self.packed
        return self._value(tokens, pk).expand(pk.num_bits, pk.num_layers).T

    def probe(self, tokens: Sequence[Token]) -> torch.Tensor:
        return self.layer_table(tokens, self.probe_packed)

    def probe_is_rows(self, tokens: Sequence[Token]) -> bool:
        """Whether the probe's table is the full layer table's rows at `probe_layers`: every op but a network
        op acts within a layer, and a network op normalizes over the layers it is given (the probe's three)."""
        return not any(kind == "p" and self.prims[str(v)].op.kind == "network" for kind, v in tokens)

    def table(self, tokens: Sequence[Token]) -> torch.Tensor:
        """P[S, B]: layer rows of tied layers summed into their bit slot."""
        return self.slot_table(self.layer_table(tokens))

    def slot_table(self, layer_table: torch.Tensor) -> torch.Tensor:
        """P[S, B] from P[L, B]."""
        return layer_table.new_zeros(self.num_slots, layer_table.shape[1]).index_add_(0, self.layer_slot, layer_table)


def layer_value(
    tokens: Sequence[Token],
    stats: NetworkStats,
    layer: int,
    *,
    bit_index: int | None = None,
    prims: dict[str, PrimSpec] | None = None,
    act_samples: int = DEFAULT_ACT_SAMPLES,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Reference per-layer semantics: the tree on one layer's own tensors -> [Bk].

    With `bit_index`, bit-dependent terminals are restricted to that one bit first. A network
    op's argument is computed on every layer (the same way), then the op picks this layer.
    """
    prims = prims or PRIMITIVES

    def leaf(tok: Token) -> torch.Tensor:
        if tok[0] == "c":
            return torch.tensor([float(tok[1])], dtype=dtype)
        v = layer_terminal(stats, layer, str(tok[1]), act_samples=act_samples, dtype=dtype)
        if bit_index is not None and TERMINALS[str(tok[1])].bit_dependent:
            v = v[bit_index : bit_index + 1]
        return v

    def rec(i: int) -> tuple[torch.Tensor, int]:
        if tokens[i][0] != "p":
            return leaf(tokens[i]), i + 1
        p = prims[str(tokens[i][1])]
        if p.op.kind == "network":
            end = subtree_ends(tokens, prims)[i + 1]
            per = [
                layer_value(
                    tokens[i + 1 : end],
                    stats,
                    j,
                    bit_index=bit_index,
                    prims=prims,
                    act_samples=act_samples,
                    dtype=dtype,
                )
                for j in range(len(stats.layers))
            ]
            bk = max(v.shape[0] for v in per)
            return p.op.fn(torch.stack([v.expand(bk) for v in per], dim=1))[:, layer], end
        args, j = [], i + 1
        for _ in range(p.op.arity):
            a, j = rec(j)
            args.append(a)
        return p.op.fn(*args), j

    return rec(0)[0]


def naive_config_score(
    tokens: Sequence[Token],
    stats: NetworkStats,
    config_bit_idx: Sequence[int],
    *,
    prims: dict[str, PrimSpec] | None = None,
    act_samples: int = DEFAULT_ACT_SAMPLES,
) -> float:
    """Score one configuration (bit index per slot) by recomputing the proxy on every layer."""
    return float(
        sum(
            float(
                layer_value(tokens, stats, i, bit_index=int(config_bit_idx[s]), prims=prims, act_samples=act_samples)[0]
            )
            for i, s in enumerate(stats.layer_slot)
        )
    )
