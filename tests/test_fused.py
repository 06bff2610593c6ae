"""The compiled reductions (search_space/fused.py) give what applying the tree op by op gives."""

import math
import random

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from emq.evolution.evaluator import CandidateEvaluator
from emq.search_space import evaluate, fused
from emq.search_space.evaluate import TableEvaluator, subtree_ends
from emq.search_space.primitives import OPS, PRIMITIVES
from emq.search_space.pset import gen_half_and_half, make_space, to_tokens

SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, -1e-300, 40.0, -40.0, 1e200, -1e200, 0.7, -2.5, 3.0]


def test_an_empty_layer_sums_to_zero_and_averages_to_nan():
    """numpy's error model: the mean of nothing is NaN, not a ZeroDivisionError out of the kernel."""
    x = np.arange(4.0)
    got = {}
    for name in ("sum", "mean", "var"):
        prog = fused.Program(np.array([(fused._LOAD, 0, 0, 1, 0, 0)], dtype=np.int64), (), fused.REDUCE[name], 1, 1)
        starts, lengths = np.array([0, 2, 2], dtype=np.int64), np.array([2, 0, 2], dtype=np.int64)
        got[name] = fused.run(prog, fused.terminal_list([x[None]]), np.empty((0, 1, 3)), starts, lengths)[0]
    np.testing.assert_array_equal(got["sum"], [1.0, 0.0, 5.0])
    np.testing.assert_array_equal(got["mean"], [0.5, np.nan, 2.5])
    np.testing.assert_array_equal(got["var"], [0.25, np.nan, 0.25])


def test_every_opcode_names_an_op_of_its_kind():
    """An opcode under a name no op has would silently leave that op unfused (or fuse the wrong one)."""
    for table, kind in ((fused.UNARY, "unary"), (fused.BINARY, "binary"), (fused.REDUCE, "reduce")):
        assert {n: OPS[n].kind for n in table} == dict.fromkeys(table, kind)
    assert {n for n, o in OPS.items() if o.kind in ("unary", "binary", "reduce")} == {
        *fused.UNARY,
        *fused.BINARY,
        *fused.REDUCE,
    }


def _elementwise(code: list[tuple[int, ...]], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Run a program with every element its own layer, summed: the elementwise value itself."""
    prog = fused.Program(np.asarray(code, dtype=np.int64), (), fused.REDUCE["sum"], 1, 2)
    starts = np.arange(a.size, dtype=np.int64)
    return fused.run(prog, fused.terminal_list([a[None], b[None]]), np.empty((0, 1, a.size)), starts, starts * 0 + 1)[0]


@pytest.mark.parametrize("name", sorted(fused.UNARY))
def test_unary_ops_follow_torch_on_special_values(name):
    x = np.array(SPECIAL)
    got = _elementwise([(fused._LOAD, 0, 0, 1, 0, 0), (fused.UNARY[name], 0, 0, 1, 0, 0)], x, x)
    want = OPS[name].fn(torch.tensor(SPECIAL, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", sorted(fused.BINARY))
def test_binary_ops_follow_torch_on_special_values(name):
    a, b = (np.array([[x, y] for x in SPECIAL for y in SPECIAL])[:, k].copy() for k in (0, 1))
    code = [(fused._LOAD, 0, 0, 1, 0, 0), (fused._LOAD, 1, 1, 1, 0, 0), (fused.BINARY[name], 0, 1, 1, 1, 1)]
    got = _elementwise(code, a, b)
    want = OPS[name].fn(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0, equal_nan=True)


@pytest.mark.parametrize("name", sorted(fused.REDUCE))
def test_reductions_equal_the_packed_path_per_layer(tiny_setting, name):
    """Each reduction over a bit-dependent product, a broadcast (1 row x 3 rows) and a scale by a
    per-layer scalar, on real statistics: the layer table of the op-by-op path."""
    stats, _, _ = tiny_setting
    space = make_space()
    tree = [("p", f"{name}_w"), ("p", "scale_w"), ("p", "mul_w"), ("t", "G"), ("t", "E"), ("t", "b")]
    tables = [TableEvaluator(stats, space.terminals, space.prims, fused_reductions=f).layer_table(tree) for f in (0, 1)]
    torch.testing.assert_close(tables[1], tables[0], rtol=1e-12, atol=0)


def test_a_compiled_reduction_recurring_elsewhere_in_another_tree_reads_its_own_scalars(tiny_setting):
    """Programs are kept by subtree: one compiled at the root of one tree serves the same subtree deeper
    in the next, whose `scale` argument sits at other token positions."""
    stats, _, _ = tiny_setting
    space = make_space()
    inner = [("p", "l1_w"), ("p", "scale_w"), ("t", "E"), ("p", "netmean_s"), ("t", "b")]
    trees = [inner, [("p", "add_s"), ("p", "mean_w"), ("t", "W"), *inner], [("p", "mul_s"), *inner, ("t", "trace")]]
    evaluators = [TableEvaluator(stats, space.terminals, space.prims, fused_reductions=f) for f in (0, 1)]
    for t in trees:
        torch.testing.assert_close(evaluators[1].layer_table(t), evaluators[0].layer_table(t), rtol=1e-12, atol=0)


def test_a_subtree_with_a_layer_op_is_left_to_the_packed_path(tiny_setting):
    stats, _, _ = tiny_setting
    space = make_space()
    ev = TableEvaluator(stats, space.terminals, space.prims)
    pk = ev._fused[id(ev.packed)]
    for tree, compiled in (
        ([("p", "l1_w"), ("p", "normalize_w"), ("t", "E")], False),
        ([("p", "l1_w"), ("p", "mul_w"), ("t", "E"), ("t", "E")], True),
    ):
        toks = tuple(tree)
        prog = pk.program(toks, 0, subtree_ends(toks, PRIMITIVES), PRIMITIVES, lambda k: ev.packed.values["b"])
        assert (prog is not None) is compiled


def test_a_terminal_read_twice_is_loaded_once_per_block():
    toks = (("p", "sum_w"), ("p", "mul_w"), ("t", "E"), ("p", "mul_w"), ("t", "E"), ("t", "G"))
    prog = fused.compile_reduction(
        toks, 0, subtree_ends(toks, PRIMITIVES), PRIMITIVES, {"E": 0, "G": 1}, {"E": 3, "G": 1}, lambda k: 1
    )
    ops = prog.code[:, 0].tolist()
    assert ops.count(fused._LOAD) == 2 and ops.count(fused._COPY) == 2 and prog.depth == 4


def test_random_trees_score_as_op_by_op_with_the_same_rejections(tiny_setting):
    """Over random trees: the same screening outcome and, as search_speed.py checks at scale, fitness that
    ranks candidates as the op-by-op path does (Spearman >= 0.999). A Spearman can still move a little: where
    configurations tie in exact arithmetic (std(A) + b, equal bit sums), rounding in another order breaks the
    tie another way, in both paths."""
    stats, data, _ = tiny_setting
    space = make_space()
    evaluators = []
    for f in (False, True):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(evaluate, "FUSED", f)
            evaluators.append(CandidateEvaluator(stats, data.for_campaign(), space, 4))
    assert not evaluators[0].benches[0].tables._fused and evaluators[1].benches[0].tables._fused
    random.seed(11)
    rhos = []
    for _ in range(300):
        t = to_tokens(gen_half_and_half(space, 1, 5))
        a, b = (e.evaluate(t) for e in evaluators)
        assert a.reason == b.reason, t
        if a.valid:
            rhos.append((a.fitness, b.fitness))
    ref, got = np.array(rhos).T
    assert len(ref) >= 50
    assert spearmanr(ref, got).statistic >= 0.999
    assert np.mean(np.abs(ref - got) < 1e-9) >= 0.95 and np.abs(ref - got).max() < 0.01
