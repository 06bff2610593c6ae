"""Proxy files round-trip exactly; malformed files are rejected; every export rendering works."""

import importlib.util
import json

import numpy as np
import pytest
import sympy

from emq.cli.main import main
from emq.errors import EmqError
from emq.proxy import ProxyContext
from emq.rendering import export, simplify, to_sympy
from emq.search_space.proxyfile import EvolvedProxy, load_proxy, save_proxy

TOKENS = [
    ("p", "mul_s"),
    ("p", "div_s"),
    ("t", "trace"),
    ("t", "params"),
    ("p", "add_s"),
    ("c", 0.5),
    ("p", "square_s"),
    ("p", "l2_w"),
    ("p", "scale_w"),
    ("t", "E"),
    ("t", "pow2b"),
]

# scale-free: network ops (nested), the slot share and the input variance, on bit-dependent noise
NET_TOKENS = [
    ("p", "mul_s"),
    ("p", "netrank_s"),
    ("p", "netmean_s"),
    ("t", "varA"),
    ("p", "add_s"),
    ("p", "netmax_s"),
    ("p", "square_s"),
    ("p", "l2_w"),
    ("t", "E"),
    ("p", "mul_s"),
    ("p", "netmean_s"),
    ("t", "tied"),
    ("t", "b"),
]


def _ctx(stats, bits=None):
    return ProxyContext(target=None, bits=tuple(bits or stats.bits), stats=stats)


def test_loaded_proxy_scores_exactly_as_the_original(tmp_path, tiny_setting):
    stats, fd, _ = tiny_setting
    p = EvolvedProxy(TOKENS, -1, name="x", meta={"fitness": {"search_spearman": 0.5}})
    path = save_proxy(p, tmp_path / "p.json")
    q = load_proxy(path)
    assert q.tokens == p.tokens and q.orientation == -1 and q.meta["fitness"]["search_spearman"] == 0.5
    np.testing.assert_array_equal(
        q.score_configs(_ctx(stats), fd.search.configs), p.score_configs(_ctx(stats), fd.search.configs)
    )
    sub = q.table(_ctx(stats, (4, 2)))  # a context may ask for bits in its own order
    np.testing.assert_array_equal(sub, p.table(_ctx(stats))[:, [2, 0]])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="emq-proxy/9"), "format"),
        (lambda d: d.pop("tree"), "'tree' is missing"),
        (lambda d: d["tree"].update(op="evil_op"), "unknown primitive"),
        (lambda d: d["tree"]["args"].pop(), "takes 2 argument"),
        (lambda d: d["tree"]["args"].__setitem__(0, {"term": "__import__('os')"}), "unknown terminal"),
        (lambda d: d["tree"]["args"].__setitem__(0, {"term": "W"}), "weight where a scalar"),
        (lambda d: d.update(orientation=2), "orientation"),
        (lambda d: d["tree"]["args"].__setitem__(0, {"const": "1e9"}), "finite number"),
    ],
)
def test_malformed_proxy_files_are_rejected(tmp_path, mutate, message):
    obj = EvolvedProxy(TOKENS).to_json()
    mutate(obj)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(obj))
    with pytest.raises(EmqError, match=message):
        load_proxy(path)
    path.write_text("{not json")
    with pytest.raises(EmqError, match="not valid JSON"):
        load_proxy(path)


def test_scale_free_proxy_round_trips_and_exports_the_same_table(tmp_path, tiny_setting):
    """Proxies with network ops load back to the same tree and table; the exported module
    computes them over all layers and agrees with the engine (tied layers: 10 layers, 8 slots)."""
    stats, fd, _ = tiny_setting
    assert len(set(stats.layer_slot)) < len(stats.layers)
    p = EvolvedProxy(NET_TOKENS, -1, name="scalefree")
    q = load_proxy(save_proxy(p, tmp_path / "p.json"))
    assert q.tokens == p.tokens and q.key == p.key
    table = p.table(_ctx(stats))
    np.testing.assert_array_equal(q.table(_ctx(stats)), table)
    written = export(q, ["python", "latex", "sympy"], tmp_path)
    spec = importlib.util.spec_from_file_location("scalefree", written["python"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    np.testing.assert_allclose(mod.table(stats), table, rtol=1e-9, atol=1e-12)
    assert "\\operatorname{rank}_{\\ell}" in written["latex"].read_text()
    assert "netrank(netmean(varA))" in written["sympy"].read_text()


def test_python_export_computes_the_same_table(tmp_path, tiny_setting):
    stats = tiny_setting[0]
    p = EvolvedProxy(TOKENS, 1, name="hawqish")
    written = export(p, "all", tmp_path)
    assert set(written) == {"json", "sympy", "latex", "python", "dot", "png"}
    spec = importlib.util.spec_from_file_location("hawqish", written["python"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    np.testing.assert_allclose(mod.table(stats), p.table(_ctx(stats)), rtol=1e-9)
    assert written["png"].read_bytes()[:4] == b"\x89PNG"
    dot = written["dot"].read_text()
    assert dot.startswith('digraph "hawqish"') and dot.count("->") == len(TOKENS) - 1
    assert "\\operatorname{Tr}H" in written["latex"].read_text()


def test_sympy_rendering_and_guard():
    p = EvolvedProxy([("p", "mul_s"), ("t", "b"), ("t", "params")])
    b, n = sympy.symbols("b params")
    assert sympy.simplify(to_sympy(p.tokens, p.prims) - b * n) == 0
    big = sum(sympy.Symbol(f"x{i}") ** i for i in range(80))
    assert simplify(big)[1].startswith("not simplified")


def test_cli_export_and_errors(tmp_path, capsys):
    path = save_proxy(EvolvedProxy(TOKENS, 1, name="cli"), tmp_path / "cli.json")
    assert main(["export", str(path), "--to", "latex", "--out", str(tmp_path / "o"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"latex": str(tmp_path / "o" / "cli.tex")}
    path.write_text('{"format": "emq-proxy/1", "tree": {"op": "nope", "args": []}, "orientation": 1}')
    assert main(["export", str(path), "--out", str(tmp_path / "o2")]) == 2
    assert "unknown primitive" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


def test_png_export_leaves_the_users_matplotlib_backend_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    figures = plt.get_fignums()
    matplotlib.use("svg")
    try:
        png = export(EvolvedProxy(TOKENS, 1, name="backend"), "png", tmp_path)["png"]
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == figures
    finally:
        matplotlib.use(before)
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "name",
    ['x"""\nimport os; os.system("touch PWNED")\n"""', "../../../escaped", "/abs/path", ".hidden", "a/b", "", "x" * 65],
)
def test_a_proxy_name_never_becomes_code_or_a_path(tmp_path, name):
    good = tmp_path / "good.json"
    save_proxy(EvolvedProxy(TOKENS, 1, name="fine"), good)
    doc = json.loads(good.read_text())
    doc["name"] = name
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(EmqError, match="field 'name'"):
        load_proxy(bad)
    with pytest.raises(EmqError, match="name="):
        EvolvedProxy(TOKENS, 1, name=name)
    assert main(["export", str(bad), "--to", "all", "--out", str(tmp_path / "out")]) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bad.json", "good.json"]  # nothing written anywhere


def test_python_export_docstring_is_an_escaped_literal(tmp_path):
    proxy = EvolvedProxy(TOKENS, -1, name="safe-name.v1")
    out = export(proxy, "python", tmp_path)["python"]
    spec = importlib.util.spec_from_file_location("exported", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.__doc__.startswith("Proxy safe-name.v1: ") and module.ORIENTATION == -1
