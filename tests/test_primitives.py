"""Every primitive's sympy and Python renderings agree numerically with its torch semantics."""

import numpy as np
import pytest
import sympy
import torch

from emq.search_space.evaluate import TableEvaluator, layer_value
from emq.search_space.primitives import NUMPY_HELPERS, OPS, PRIMITIVES, SYMPY_FUNCTIONS, TERMINALS, Scalar, WeightT
from emq.search_space.pset import make_space
from emq.search_space.terminals import available_terminals

HELPERS: dict = {}
exec(compile(NUMPY_HELPERS, "numpy_helpers", "exec"), HELPERS)  # our own constant source
SYMPY_MODULES = [
    {k: HELPERS[k] for k in SYMPY_FUNCTIONS},
    {"Min": np.minimum, "Max": np.maximum},
    "numpy",
]


def _inputs(op, rng):
    if op.kind == "network":  # a per-layer scalar of 7 layers, 3 bits; ties and a zero row
        x = rng.normal(size=(3, 7)) * 2
        x[0, 2] = x[0, 5]
        x[2] = 0.0
        return [x]
    x = rng.normal(size=(3, 4, 5)) * 2
    x[0, 0, 0] = 0.0  # protected ops must stay finite at 0
    y = rng.normal(size=(3, 4, 5))
    if op.kind == "scale":
        return [x, rng.normal(size=(3,))]
    return [x, y][: op.arity]


@pytest.mark.parametrize("name", sorted(OPS))
def test_sympy_rendering_matches_torch(name):
    op = OPS[name]
    rng = np.random.default_rng(0)
    args = _inputs(op, rng)
    want = op.fn(*[torch.tensor(a) for a in args]).numpy()
    syms = sympy.symbols(f"x0:{op.arity}")
    expr = op.sympy(*syms)
    f = sympy.lambdify(syms, expr, modules=SYMPY_MODULES)
    sym_args = list(args)
    if op.kind == "scale":  # sympy renders x * s; numpy needs s broadcast over the layer
        sym_args[1] = args[1].reshape(3, 1, 1)
    got = np.broadcast_to(f(*sym_args), want.shape)
    assert np.all(np.isfinite(want))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPS))
def test_python_rendering_matches_torch(name):
    op = OPS[name]
    args = _inputs(op, np.random.default_rng(1))
    want = op.fn(*[torch.tensor(a) for a in args]).numpy()
    src = op.python.format(*[f"a{i}" for i in range(op.arity)])
    got = eval(src, dict(HELPERS), {f"a{i}": a for i, a in enumerate(args)})  # our own template
    np.testing.assert_allclose(np.broadcast_to(got, want.shape), want, rtol=1e-9, atol=1e-12)


def test_every_typed_primitive_packed_equals_per_layer(tiny_setting):
    stats = tiny_setting[0]
    names = available_terminals(
        stats
    )  # the measured-sensitivity terminals need a measurement: tests/test_sensitivity.py
    space = make_space(terminals=list(names), include_ops=list(OPS))
    ev = TableEvaluator(stats, space.terminals, space.prims)
    pick = {T: [n for n in names if TERMINALS[n].type is T] for T in {TERMINALS[n].type for n in names}}
    for name, p in PRIMITIVES.items():
        tokens = [("p", name)] + [
            ("t", pick[T][i % len(pick[T])] if T is not WeightT else ("Q", "W")[i]) for i, T in enumerate(p.in_types)
        ]
        if p.out_type is not Scalar:
            tokens = [("p", {"w": "mean_w", "a": "mean_a", "y": "mean_y"}[name.rsplit("_", 1)[1]])] + tokens
        table = ev.layer_table(tokens)
        ref = torch.stack([layer_value(tokens, stats, i).expand(len(stats.bits)) for i in range(len(stats.layers))])
        torch.testing.assert_close(table, ref, rtol=1e-7, atol=1e-10, msg=name)


def test_space_restriction_and_errors():
    from emq.errors import EmqError

    w = make_space("weights-only")
    assert set(w.terminals) <= {"W", "Q", "E", "b", "pow2b", "params", "out_channels"}
    assert not any(n.endswith("_a") or n.endswith("_y") for n in w.prims)
    nh = make_space("no-hessian")
    assert not {"H", "trace", "eig"} & set(nh.terminals)
    assert "tanh_w" not in make_space().prims and "tanh_w" in make_space(include_ops=["tanh"]).prims
    assert "mul_s" not in make_space(exclude_ops=["mul"]).prims
    with pytest.raises(EmqError, match="bit-dependent"):
        make_space(terminals=["W", "params"])
    with pytest.raises(EmqError, match="unknown"):
        make_space(exclude_terminals=["nope"])
