"""Table evaluation equals naive per-configuration scoring; screening rejects degenerate trees."""

import random

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from test_export import NET_TOKENS

from emq.evolution.evaluator import CandidateEvaluator
from emq.evolution.screening import table_problem
from emq.search_space.evaluate import TableEvaluator, naive_config_score
from emq.search_space.pset import HANDMADE, canonical, gen_half_and_half, make_space, to_tokens


@pytest.fixture()
def setting(tiny_setting):
    return tiny_setting


def test_tiny_setting_layout(tiny_setting):
    """The shared fixture is the layout the search tests assume (conftest.py)."""
    stats, fd, lm = tiny_setting
    assert len(stats.layers) == len(lm.layers) == 10 and stats.num_slots == lm.num_slots == 8
    assert stats.layers[0].Q.shape == (3, *stats.layers[0].W.shape)
    assert len(fd.search) == 30 and np.ptp(fd.search.target) > 0


def test_table_scores_equal_naive_per_configuration(setting):
    stats, fd, _ = setting
    space = make_space()
    ev = TableEvaluator(stats, space.terminals, space.prims)
    random.seed(3)
    trees = [t for _, t in space.handmade().values()] + [NET_TOKENS]  # network ops: per-layer path sees all layers
    while len(trees) < 16:
        t = to_tokens(gen_half_and_half(space, 1, 3))
        if torch.isfinite(ev.table(t)).all():
            trees.append(t)
    bit_idx = np.vectorize({b: i for i, b in enumerate(stats.bits)}.get)(fd.search.configs[:8])
    for t in trees:
        fast = fd.search.scores(ev.table(t))[:8]
        slow = np.array([naive_config_score(t, stats, c) for c in bit_idx])
        np.testing.assert_allclose(fast, slow, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "tokens, reason",
    [
        ([("p", "l2_w"), ("t", "W")], "no_bit_terminal"),  # cannot see bits at all
        ([("p", "mul_s"), ("t", "b"), ("c", 0.0)], "probe_bit_insensitive"),  # constant zero
        ([("p", "sub_s"), ("t", "b"), ("t", "b")], "probe_bit_insensitive"),
        (
            [("p", "mean_w"), ("p", "mul_w"), ("t", "Q"), ("p", "sub_w"), ("t", "W"), ("t", "W")],
            "probe_bit_insensitive",
        ),  # Q * 0
        (
            [*[("p", "square_s")] * 5, ("p", "exp_s"), ("p", "mul_s"), ("t", "b"), ("c", 8.0)],
            "probe_nonfinite",
        ),  # (e^30)^32 overflows
        # a finite table (max 7e307) whose sum over slots overflows:
        # mul_s(mul_s(8,8), mul_s(square_s^4(exp_s(mul_s(8,4))), square_s^3(exp_s(7b))))
        (
            [
                ("p", "mul_s"),
                ("p", "mul_s"),
                ("c", 8.0),
                ("c", 8.0),
                ("p", "mul_s"),
                *[("p", "square_s")] * 4,
                ("p", "exp_s"),
                ("p", "mul_s"),
                ("c", 8.0),
                ("c", 4.0),
                *[("p", "square_s")] * 3,
                ("p", "exp_s"),
                ("p", "add_s"),
                ("p", "mul_s"),
                ("t", "b"),
                ("c", 4.0),
                ("p", "mul_s"),
                ("t", "b"),
                ("c", 3.0),
            ],
            "nonfinite_scores",
        ),
    ],
)
def test_screening_rejects_degenerate_trees(setting, tokens, reason):
    stats, fd, _ = setting
    space = make_space()
    out = CandidateEvaluator(stats, fd, space, act_samples=4).evaluate(tokens)
    assert out.reason == reason and out.fitness < 0 and not out.valid


def test_screening_accepts_handmade_and_measures_them(setting):
    stats, fd, _ = setting
    ce = CandidateEvaluator(stats, fd, make_space(), act_samples=4)
    out = ce.evaluate(HANDMADE["size"][1])
    # the size proxy scores a configuration by sum_layers params x bits: its Spearman, by hand
    params = np.zeros(stats.num_slots)
    np.add.at(params, stats.layer_slot, [layer.params for layer in stats.layers])
    rho = spearmanr(fd.search.configs @ params, fd.search.target).statistic
    assert out.valid and out.orientation == np.sign(rho)
    assert out.fitness == pytest.approx(abs(rho), abs=1e-9) and out.rho_search == pytest.approx(abs(rho), abs=1e-9)
    assert abs(float(out.signature @ out.signature) - 1) < 1e-5


def test_full_table_checks():
    assert table_problem(torch.tensor([[1.0, float("nan")]])) == "nonfinite"
    assert table_problem(torch.tensor([[1.0, 1.0], [2.0, 2.0]])) == "bit_insensitive"
    assert table_problem(torch.zeros(3, 2)) == "bit_insensitive"
    assert table_problem(torch.tensor([[1.0, 2.0]])) is None


def test_canonical_form_identifies_commuted_trees():
    space = make_space()
    a = [("p", "mul_s"), ("t", "b"), ("t", "params")]
    b = [("p", "mul_s"), ("t", "params"), ("t", "b")]
    c = [("p", "div_s"), ("t", "b"), ("t", "params")]
    assert canonical(a, space.prims) == canonical(b, space.prims) != canonical(c, space.prims)


def test_the_cpu_segment_path_equals_the_generic_one(setting):
    from emq.search_space.terminals import Segments

    stats, _, _ = setting
    space = make_space()
    fast = TableEvaluator(stats, space.terminals, space.prims)
    generic = TableEvaluator(stats, space.terminals, space.prims)
    generic.packed._segments = {T: Segments(s.seg, s.cnt, None, None) for T, s in generic.packed.segments.items()}
    assert all(s.starts is not None for s in fast.packed.segments.values())
    random.seed(5)
    compared = 0
    while compared < 40:
        t = to_tokens(gen_half_and_half(space, 1, 4))
        a, b = fast.layer_table(t), generic.layer_table(t)
        if torch.isfinite(b).all():
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
            compared += 1


def test_the_subtree_memo_gives_what_computing_again_gives(setting):
    """Tables with the memo (a small one: entries are overwritten all the time) equal, bit for bit,
    tables computed from scratch, on a second pass over the same trees (hits) as on the first."""
    stats, _, _ = setting
    space = make_space()
    plain = TableEvaluator(stats, space.terminals, space.prims, memo_entries=0)
    memo = TableEvaluator(stats, space.terminals, space.prims, memo_entries=48)
    random.seed(7)
    trees = [to_tokens(gen_half_and_half(space, 2, 5)) for _ in range(60)]
    for t in trees + trees[::-1]:
        for a, b in ((plain.table(t), memo.table(t)), (plain.probe(t), memo.probe(t))):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    assert not plain._memos[id(plain.packed)].where
    assert len(memo._memos[id(memo.packed)].where) == 48  # full: every later value overwrote an older one


@pytest.mark.skipif(
    not __import__("platform").libc_ver()[0].startswith("glibc"), reason="the allocator setting is for glibc"
)
def test_fitness_processes_keep_freed_memory():
    """On glibc the thresholds are set (libc found, mallopt accepted both), once per process."""
    from emq.allocator import keep_freed_memory

    assert keep_freed_memory() is True and keep_freed_memory() is True


def test_subtree_ids_renewed_when_full_leave_no_stale_values(setting, monkeypatch):
    """Subtrees are memoized by interned id; when the id table fills it starts again (a new epoch), and
    a memo must then forget its values, whose ids now name other subtrees: tables stay exact."""
    from emq.search_space.evaluate import SubtreeIds

    stats, _, _ = setting
    space = make_space()
    monkeypatch.setattr(SubtreeIds, "LIMIT", 40)
    plain = TableEvaluator(stats, space.terminals, space.prims, memo_entries=0)
    memo = TableEvaluator(stats, space.terminals, space.prims)
    random.seed(11)
    trees = [to_tokens(gen_half_and_half(space, 2, 4)) for _ in range(40)]
    for t in trees + trees[::-1]:
        torch.testing.assert_close(plain.table(t), memo.table(t), rtol=0, atol=0, equal_nan=True)
    assert memo.subtrees.epoch > 5 and len(memo.subtrees.ids) <= 40


def test_the_probe_read_off_the_full_table_is_the_probe(setting):
    """Past the first bench a probe's verdict is read off the full layer table's rows: those rows are the
    probe's own table unless a network op (which normalizes over the layers it sees) is in the tree, and
    the verdict, rho and signature are those of the walked probe."""
    stats, fd, _ = setting
    space = make_space()
    ce = CandidateEvaluator(stats, fd, space, act_samples=4)
    bench = ce.benches[0]
    ev = bench.tables
    assert not ev.probe_is_rows(NET_TOKENS)
    assert not torch.equal(ev.layer_table(NET_TOKENS)[ev.probe_layers], ev.probe(NET_TOKENS))
    random.seed(13)
    verdicts = set()
    for _ in range(400):
        t = to_tokens(gen_half_and_half(space, 1, 4))
        if not ev.probe_is_rows(t):
            continue
        torch.testing.assert_close(ev.layer_table(t)[ev.probe_layers], ev.probe(t), rtol=0, atol=0, equal_nan=True)
        walked, read = bench.measure(t, walk_probe=True), bench.measure(t, walk_probe=False)
        assert walked[0] == read[0] and (walked[1] == read[1] or (np.isnan(walked[1]) and np.isnan(read[1])))
        assert (walked[2] is None and read[2] is None) or np.array_equal(walked[2], read[2])
        verdicts.add(walked[0])
    assert {None, "probe_bit_insensitive"} <= verdicts  # both kinds of outcome were compared
