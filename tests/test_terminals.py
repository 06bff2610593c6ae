"""The terminal registry: common checks over every terminal, and a derived terminal added in one place."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest
import sympy
import torch

from emq.errors import EmqError
from emq.proxy import ProxyContext
from emq.rendering import to_python, to_sympy
from emq.search_space import primitives
from emq.search_space.evaluate import TableEvaluator
from emq.search_space.primitives import PRESETS, TERMINALS, Scalar, TerminalSpec, WeightT
from emq.search_space.proxyfile import EvolvedProxy
from emq.search_space.terminals import layer_terminal


@pytest.fixture(scope="module")
def stats(tiny_setting):
    return tiny_setting[0]


def _numpy_terminals(stats, layer: int, names) -> dict[str, np.ndarray]:
    return {n: layer_terminal(stats, layer, n).numpy() for n in names}


@pytest.mark.parametrize("name", list(TERMINALS))
def test_every_terminal(name, stats):
    spec = TERMINALS[name]
    if primitives.raw_sources(name) & set(primitives.MEASURED_TERMINALS):  # a measured table [S, B] to read
        table = np.arange(stats.num_slots * len(stats.bits), dtype=float).reshape(stats.num_slots, -1).tolist()
        measured = {"bits": list(stats.bits), "tables": {k: table for k in ("kl", "loss", "nsr")}}
        keys = {
            primitives.MEASURED_TERMINALS[r] for r in primitives.raw_sources(name) & set(primitives.MEASURED_TERMINALS)
        }
        stats = dataclasses.replace(stats, meta={**stats.meta, **dict.fromkeys(keys, measured)})
    assert isinstance(spec.symbol(), sympy.Expr) and spec.latex and spec.description
    for i in range(len(stats.layers)):
        v = layer_terminal(stats, i, name)
        assert v.dtype == torch.float64 and v.shape[0] == (len(stats.bits) if spec.bit_dependent else 1)
        assert (v.dim() == 1) == (spec.type is Scalar)
        if spec.derive is not None:  # the numpy source of exported proxies computes the same values
            t = _numpy_terminals(stats, i, spec.needs)
            np.testing.assert_allclose(eval(spec.python, {"np": np, "t": t}), v.numpy(), rtol=1e-12)


def test_presets_follow_raw_sources():
    assert "pow2b" in PRESETS["no-hessian"] and "pow2b" in PRESETS["no-activations"]
    assert primitives.raw_sources("pow2b") == {"b"}


# A derived terminal: the whole definition, as a new one would be written in primitives.py.
GW = TerminalSpec(
    "GW",
    WeightT,
    bit_dependent=False,
    description="gradient times weight (SNIP's saliency)",
    latex=r"G \odot W",
    default=False,
    derive=lambda t: t["G"] * t["W"],
    needs=("G", "W"),
    python="t['G'] * t['W']",
)


@pytest.fixture()
def with_gw():
    primitives.register_terminal(GW)  # with the checks of the built-in table
    try:
        yield GW
    finally:
        TERMINALS.remove("GW")


def test_a_derived_terminal_is_one_registration(with_gw, stats, tmp_path):
    derived = [("p", "l1_w"), ("t", "GW")]
    spelled = [("p", "l1_w"), ("p", "mul_w"), ("t", "G"), ("t", "W")]
    ev = TableEvaluator(stats)
    assert "GW" in ev.terminals
    torch.testing.assert_close(ev.table(derived), ev.table(spelled), rtol=0, atol=0)
    assert to_sympy(derived, ev.prims) == sympy.Function("l1")(sympy.Symbol("GW"))
    p = EvolvedProxy(derived, 1, name="gw")
    path = tmp_path / "gw.py"
    path.write_text(to_python(p))
    spec = importlib.util.spec_from_file_location("gw", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    np.testing.assert_allclose(mod.table(stats), p.table(ProxyContext(None, tuple(stats.bits), stats=stats)), rtol=1e-9)


def test_registry_refuses_bad_terminals():
    base = list(TERMINALS.values())
    with pytest.raises(EmqError, match="defined twice"):
        primitives._registry([*base, TERMINALS["W"]])
    with pytest.raises(EmqError, match="needs"):
        primitives._registry(
            [
                *base,
                TerminalSpec(
                    "x",
                    Scalar,
                    bit_dependent=False,
                    description="x",
                    latex="x",
                    derive=lambda t: t["nope"],
                    needs=("nope",),
                    python="t['nope']",
                ),
            ]
        )
    with pytest.raises(EmqError, match="together"):
        primitives._registry(
            [
                *base,
                TerminalSpec(
                    "x", Scalar, bit_dependent=False, description="x", latex="x", derive=lambda t: t["b"], needs=("b",)
                ),
            ]
        )
